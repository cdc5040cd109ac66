//! `hello`: answers every line with a fixed greeting and closes, like the
//! seed's hello world. The greeting is the option `greeting`.
#![forbid(unsafe_code)]

use std::sync::Arc;

use gaidaros::{
    Handler, HandlerSpec, Keep, OptionError, OptionSpec, Options, Service, ServiceError,
};

/// The hello service.
#[derive(Debug, Clone)]
pub struct Hello {
    reply: Vec<u8>,
}

impl Hello {
    /// A service answering `greeting` followed by a newline.
    pub fn new(greeting: &str) -> Self {
        let mut reply = greeting.as_bytes().to_vec();
        reply.push(b'\n');
        Hello { reply }
    }
}

impl Service for Hello {
    fn handle(&self, _request: &[u8], response: &mut Vec<u8>) -> Result<Keep, ServiceError> {
        response.extend_from_slice(&self.reply);
        Ok(Keep::Close)
    }
}

fn build(options: &Options) -> Result<Handler, OptionError> {
    let greeting = options.get("greeting").unwrap_or("Hello, World!");
    if greeting.contains('\n') {
        return Err(OptionError {
            key: "greeting".into(),
            value: greeting.into(),
            expected: "one line of text".into(),
        });
    }
    Ok(Handler::Service(Arc::new(Hello::new(greeting))))
}

/// Registry entry.
pub fn spec() -> HandlerSpec {
    HandlerSpec {
        name: "hello",
        about: "answers any line with a greeting, then closes",
        options: &[OptionSpec {
            name: "greeting",
            default: Some("Hello, World!"),
            help: "the line sent back",
        }],
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_and_closes() {
        let mut out = Vec::new();
        assert_eq!(Hello::new("hey").handle(b"x\n", &mut out), Ok(Keep::Close));
        assert_eq!(out, b"hey\n");
    }
}
