//! The OS layer: the system calls that neither std nor mio wrap, one file
//! per concern. Together with [`crate::poll`] (the poll backends, io_uring
//! among them) this is the only place of the crate with `unsafe` code;
//! every block says why it is sound in a `// SAFETY:` line.
//!
//! | file | provides |
//! |---|---|
//! | `sendfile.rs` | [`sendfile`]: file ranges to a socket, zero-copy (the readiness backends' file path) |
//! | `pipe.rs` | [`Pipe`]: kernel pipes and splice(2) between sockets (`Ctx::splice`), taking bytes back out |
//! | `fdpass.rs` | [`send_fds`], [`recv_fds`], [`stdin_socket`]: descriptors between a procpool master and its workers |
//! | `fs.rs` | [`open_beneath`]: a file opened beneath a root directory, never outside it (openat2) |
//! | `udp.rs` | `RecvBatch`, `SendBatch`: recvmmsg(2) with UDP GRO, sendmmsg(2) with UDP GSO |
//! | `limits.rs` | [`raise_nofile_limit`], [`ignore_file_size_signal`], [`set_timer_slack`] |
//!
//! Most calls go through `nix` or `rustix`; what `unsafe` remains takes
//! ownership of descriptors the kernel has just made.

mod fdpass;
mod fs;
mod limits;
mod pipe;
mod sendfile;
pub(crate) mod udp;

pub use fdpass::{recv_fds, send_fds, stdin_socket};
pub use fs::open_beneath;
pub use limits::{ignore_file_size_signal, raise_nofile_limit, set_timer_slack};
pub use pipe::Pipe;
pub use sendfile::sendfile;
