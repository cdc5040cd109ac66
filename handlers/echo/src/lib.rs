//! `echo`: line echo, the default handler. Every LF-terminated line comes
//! back unchanged; a line longer than the listener's `max_request` gets
//! `ERR request too large (limit N bytes)` and a close.
#![forbid(unsafe_code)]

use std::sync::Arc;

use gaidaros::{Handler, HandlerSpec, Keep, OptionError, Options, Service, ServiceError};

/// The echo service.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Service for Echo {
    fn handle(&self, request: &[u8], response: &mut Vec<u8>) -> Result<Keep, ServiceError> {
        response.extend_from_slice(request);
        Ok(Keep::Alive)
    }
}

fn build(_: &Options) -> Result<Handler, OptionError> {
    Ok(Handler::Service(Arc::new(Echo)))
}

/// Registry entry.
pub fn spec() -> HandlerSpec {
    HandlerSpec {
        name: "echo",
        about: "line echo: every LF-terminated line is sent back (the default handler)",
        options: &[],
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_the_whole_line() {
        let mut out = Vec::new();
        assert_eq!(Echo.handle(b"hi\n", &mut out), Ok(Keep::Alive));
        assert_eq!(out, b"hi\n");
        assert_eq!(Echo.end_request(b"a\nb"), Ok(Some(2)));
    }
}
