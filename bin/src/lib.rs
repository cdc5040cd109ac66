//! The handlers the `gaidaros` binary ships, as one registry.
#![forbid(unsafe_code)]

/// The built-in handlers (echo, the default, first).
pub fn registry() -> gaidaros::Registry {
    let mut registry = gaidaros::Registry::new();
    registry
        .register(gaidaros_echo::spec())
        .register(gaidaros_hello::spec())
        .register(gaidaros_multiline::spec())
        .register(gaidaros_forward::spec())
        .register(gaidaros_http::spec())
        .register(gaidaros_smtp::spec());
    registry
}
