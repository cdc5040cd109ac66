//! The `gaidaros` binary: the library's entry point with the built-in
//! handlers registered.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    gaidaros::run(gaidaros_bin::registry())
}
