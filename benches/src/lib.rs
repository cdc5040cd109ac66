//! # gaidaros-benches
//!
//! The benchmark instrument: gaidaros is measured side by side with its
//! peers in one run, never asserted fast in a timed test.
//!
//! ```text
//!  runner ──spawns──► server under test (gaidaros, tokio-echo, ...)
//!    │                  stderr: "listening ... addr=HOST:PORT"  ──► ServerProcess
//!    │                       ▲
//!    │                       │ LF-terminated lines, every echoed byte verified
//!    └──spawns──► loadgen ───┘
//!                   stdout (--json): one Report line
//! ```
//!
//! - `src/bin/loadgen.rs`: the load generator (ping-pong with pipelining, or
//!   idle connections held open); prints a [`Report`].
//! - `src/bin/tokio-echo.rs`: the tokio peer, a line echo server on the
//!   multi-thread runtime; `src/bin/tokio-forward.rs`, the tokio forwarder
//!   of (f); `src/bin/hyper-hello.rs`, the hyper peer for HTTP.
//! - `src/bin/sink.rs` and `src/bin/blast.rs`: the two ends of a throughput
//!   run (blast writes N bytes, sink answers the count it read).
//! - `src/bin/compare/` (`main.rs`, `http.rs` for the HTTP scenarios,
//!   `poll.rs` for the poll backends, `baseline.rs` for old vs new binary):
//!   the side-by-side runner that writes docs/benchmarks.md.
//! - [`report`]: the [`Report`] a load generator run produces, as JSON.
//! - [`server`]: spawn a server, learn its port from its log, read its CPU
//!   time, stop it.
//! - [`measure`]: perf syscall and (where the CPU has counters) user and
//!   kernel instruction counts, callgrind instruction totals, RSS.
//! - [`stats`]: one [`Sample`] per run, medians, pair-by-pair ratios.
//! - [`chart`]: the SVG bar chart of the ratios.
//! - [`wrk`]: wrk's output as numbers (the HTTP scenarios' load).
//! - [`peer`]: argument parsing, the runtime and the accept loop the peer
//!   binaries share.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chart;
pub mod measure;
pub mod peer;
pub mod report;
pub mod server;
pub mod stats;
pub mod wrk;

pub use report::{Mode, Report};
pub use server::{
    parse_listening_addr, process_cpu_time, tree_cpu_time, tree_cpu_times, CpuTimes, ServerProcess,
    SpawnError,
};
pub use stats::Sample;
