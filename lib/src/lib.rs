//! # gaidaros
//!
//! An async socket server framework for people who want low-level control
//! and speed with sane defaults. An event loop hosts pluggable handlers;
//! server types decide where loops run; socket options are one flag each;
//! a conf file and CLI flags drive deployments; your own handler crates get
//! the same CLI and conf through [`run`].
//!
//! ## The layers, bottom up
//!
//! ```text
//!  cli / config   flags > GAIDAROS_* env > conf file > defaults  ──► Settings
//!        │
//!  server         -S blocking | thread (-N loops, SO_REUSEPORT per loop)
//!        │
//!  event_loop     accept, read into loop buffers, framing, timers, write path
//!        │  ▲
//!        ▼  │     bytes in, commands out: handlers never make syscalls
//!  handlers       Service (request → response)   Protocol (evented, N conns)
//!        │
//!  poll / net     mio (epoll, edge-triggered); socket2 listeners and options
//!  sys            sendfile, rlimits (the OS layer)
//! ```
//!
//! - [`net`]: listeners (IPv4, IPv6, dual stack, backlog, SO_REUSEPORT) and
//!   per-connection options (TCP_NODELAY, TCP_CORK).
//! - [`event_loop`]: one [`Loop`] per thread; owns connections, buffers,
//!   timers and the write path (vectored writes, sendfile).
//! - [`server`]: lays loops over threads and handles signals.
//! - [`service`] and [`protocol`]: the two handler APIs.
//! - [`handler`]: the registry of named handlers a binary offers.
//! - [`config`] and [`cli`]: settings and the shared entry point.
//!
//! ## Writing a handler
//!
//! A [`Service`] answers framed requests; a [`Protocol`] reacts to events on
//! one or more connections and asks the loop, through [`Ctx`], to write,
//! send files, connect, pause, time out or close. See docs/handlers.md.

#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod event_loop;
pub mod fs;
pub mod handler;
pub mod net;
pub mod protocol;
pub mod server;
pub mod service;
pub mod settings;

// Internals. `pools` stays reachable for the library's own integration
// tests and the fuzz targets (its wire codec), not as an API.
mod master;
mod poll;
#[doc(hidden)]
pub mod pools;
mod sys;

pub use cli::{run, run_with_args};
pub use event_loop::{Ctx, Limits, ListenerSetup, Loop, LoopHandle, LoopSettings, Unconsumed};
pub use handler::{Handler, HandlerSpec, OptionError, OptionSpec, Options, Registry};
pub use poll::PollType;
pub use pools::ExecMode;
pub use protocol::{
    CloseReason, ConnId, ConnectError, Protocol, ProtocolFactory, Queued, TimerId, WriteError,
};
pub use server::{ServeError, Server, ServerType, SignalWatch};
pub use service::{line_end, Keep, Service, ServiceError};

/// docs/handlers.md, compiled as a doctest so its example stays true.
#[cfg(doctest)]
#[doc = include_str!("../../docs/handlers.md")]
pub struct HandlersGuide;
