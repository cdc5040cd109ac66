//! The handler registry: names, options and constructors of the handlers a
//! binary offers.
//!
//! The `gaidaros` binary composes its built-in handlers into a [`Registry`];
//! a user's crate builds its own registry (with or without the built-ins)
//! and passes it to [`crate::run`] to get the same CLI and conf handling.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::protocol::ProtocolFactory;
use crate::service::Service;

/// A built handler, ready to serve a listener.
#[derive(Clone)]
pub enum Handler {
    /// A request/response service, run by the loop's framing machinery.
    Service(Arc<dyn Service>),
    /// An evented protocol: one session per accepted connection.
    Protocol(Arc<dyn ProtocolFactory>),
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Handler::Service(_) => f.write_str("Handler::Service"),
            Handler::Protocol(_) => f.write_str("Handler::Protocol"),
        }
    }
}

/// One option a handler accepts (`-o KEY=VALUE`, or `KEY = VALUE` in its
/// `[listener.NAME]` section).
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    /// The key.
    pub name: &'static str,
    /// The default, shown in `--list-handlers`; `None` when required.
    pub default: Option<&'static str>,
    /// One line of help.
    pub help: &'static str,
}

/// How to build a handler from its options.
pub type BuildFn = fn(&Options) -> Result<Handler, OptionError>;

/// A handler the registry offers.
#[derive(Clone)]
pub struct HandlerSpec {
    /// The name used by `--handler` and `handler =`.
    pub name: &'static str,
    /// One line saying what it does.
    pub about: &'static str,
    /// The options it accepts; any other key is an error.
    pub options: &'static [OptionSpec],
    /// The constructor.
    pub build: BuildFn,
}

/// The handlers a binary offers, by name.
#[derive(Clone, Default)]
pub struct Registry {
    specs: Vec<HandlerSpec>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Add a handler; a later one with the same name replaces the earlier.
    pub fn register(&mut self, spec: HandlerSpec) -> &mut Self {
        self.specs.retain(|s| s.name != spec.name);
        self.specs.push(spec);
        self
    }

    /// The handler called `name`.
    pub fn find(&self, name: &str) -> Option<&HandlerSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// All handlers, in registration order.
    pub fn specs(&self) -> &[HandlerSpec] {
        &self.specs
    }

    /// Comma-separated handler names, for error messages.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.specs.iter().map(|s| s.name).collect();
        names.join(", ")
    }

    /// Build the handler `name` from `options`, checking that every option
    /// key is one it declares.
    pub fn build(&self, name: &str, options: &Options) -> Result<Handler, OptionError> {
        let spec = self.find(name).ok_or_else(|| OptionError {
            key: "handler".into(),
            value: name.into(),
            expected: format!("one of: {}", self.names()),
        })?;
        for key in options.values.keys() {
            if !spec.options.iter().any(|o| o.name == key) {
                let known: Vec<&str> = spec.options.iter().map(|o| o.name).collect();
                return Err(OptionError {
                    key: key.clone(),
                    value: options.values[key].clone(),
                    expected: if known.is_empty() {
                        format!("no option: handler {name} takes none")
                    } else {
                        format!("an option of handler {name}: {}", known.join(", "))
                    },
                });
            }
        }
        (spec.build)(options)
    }
}

/// A bad handler option: which key, which value, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    /// The option key.
    pub key: String,
    /// The value given.
    pub value: String,
    /// What would have been accepted.
    pub expected: String,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "option {} = {:?}: expected {}",
            self.key, self.value, self.expected
        )
    }
}

impl std::error::Error for OptionError {}

/// The options given to a handler, as strings, with typed accessors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    values: BTreeMap<String, String>,
}

impl Options {
    /// No options.
    pub fn new() -> Self {
        Options::default()
    }

    /// Set `key` to `value`.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.values.insert(key.into(), value.into());
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// `key` parsed as `T`, or `default` when absent.
    pub fn parse_or<T: FromStr>(
        &self,
        key: &str,
        default: T,
        expected: &str,
    ) -> Result<T, OptionError> {
        match self.values.get(key) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| OptionError {
                key: key.into(),
                value: v.clone(),
                expected: expected.into(),
            }),
        }
    }

    /// `key` parsed as `T`; an error naming the key when absent or invalid.
    pub fn require<T: FromStr>(&self, key: &str, expected: &str) -> Result<T, OptionError> {
        match self.values.get(key) {
            None => Err(OptionError {
                key: key.into(),
                value: String::new(),
                expected: format!("{expected} (this option is required)"),
            }),
            Some(v) => v.trim().parse().map_err(|_| OptionError {
                key: key.into(),
                value: v.clone(),
                expected: expected.into(),
            }),
        }
    }

    /// Every key and value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}
