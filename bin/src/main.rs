//! The `gaidaros` binary: the library's entry point with the built-in
//! handlers registered.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    gaidaros::run(gaidaros_bin_registry())
}

/// The handlers this binary ships (the first is the default).
fn gaidaros_bin_registry() -> gaidaros::Registry {
    let mut registry = gaidaros::Registry::new();
    registry
        .register(gaidaros_echo::spec())
        .register(gaidaros_hello::spec())
        .register(gaidaros_multiline::spec())
        .register(gaidaros_forward::spec());
    registry
}
