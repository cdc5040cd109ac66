//! # gaidaros
//!
//! An async socket server framework for people who want low-level control
//! and speed with sane defaults. An event loop hosts pluggable handlers;
//! server types decide where loops run, handler pools where service
//! requests run; socket options are one flag each; a conf file and CLI
//! flags drive deployments; your own handler crates get the same CLI and
//! conf through [`run`].
//!
//! This page is a handler author's manual: what a handler implements, what
//! it may ask of the loop, and how a program embeds the loop. The map of
//! the code is docs/ARCHITECTURE.md.
//!
//! ## The layers, bottom up
//!
//! ```text
//!  cli / config   flags > GAIDAROS_* env > conf file > defaults ──► settings::Settings
//!        │
//!  server         -S blocking | thread | procpool | proc: where loops run, signals
//!        │
//!  pools          -X blocking | thread | threadpool | gthread[pool] | proc[pool]:
//!        │        where service requests run, answered in order per connection
//!  event_loop     one connection state machine (accept, read, framing, backpressure,
//!        │  ▲     linger, timers, write path), carried out by the poll backend
//!        ▼  │     bytes in, commands out: handlers never make syscalls
//!  handlers       Service (request → response)   Protocol (evented, N connections)
//!        │
//!  poll / net     -T edge (mio, EPOLLET) | level (epoll) | completion (io_uring);
//!  sys            socket2 listeners and options; sendfile, splice, openat2 (the OS layer)
//! ```
//!
//! - [`service`] and [`protocol`]: the two handler APIs. A [`Service`]
//!   answers framed requests and can run in any handler pool; a
//!   [`Protocol`] reacts to events on one or more connections and asks the
//!   loop, through [`Ctx`], to write ([`Queued`] or [`WriteError`]), send
//!   file ranges, splice, connect ([`ConnectError`]), pause, time out or
//!   close; it is told why a connection closed ([`CloseReason`]).
//! - [`Unconsumed`]: the loop's routine for input a handler keeps itself.
//! - [`fs`]: files opened beneath a root, for handlers that serve them.
//! - [`handler`]: the [`Registry`] of named handlers a binary offers, with
//!   their options.
//! - [`event_loop`]: [`Loop`] and what it is built from ([`ListenerSetup`],
//!   [`Limits`], [`LoopSettings`]), for programs that embed one.
//! - [`net`]: listeners (IPv4, IPv6, dual stack, backlog, SO_REUSEPORT) and
//!   per-connection options (TCP_NODELAY, TCP_CORK).
//! - [`server`], [`settings`], [`config`] and [`cli`]: the server types,
//!   the resolved settings, the layered conf and the shared entry point.
//!
//! ## Writing a handler
//!
//! See docs/handlers.md (compiled as a doctest): a service in a dozen
//! lines, a protocol with backpressure, and a crate of your own run with
//! the binary's CLI through [`run`].

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
pub use event_loop::{
    Bound, Ctx, Limits, ListenerSetup, Loop, LoopHandle, LoopSettings, Message, SendError,
    SessionRef, SpawnError, SpawnRefused, Spawner, Unconsumed,
};
pub use handler::{Handler, HandlerSpec, OptionError, OptionSpec, Options, Registry};
pub use poll::PollType;
pub use pools::{ExecMode, OffloadPool};
pub use protocol::{
    CloseReason, ConnId, ConnectError, ConnectOptions, JobId, OffloadError, Protocol,
    ProtocolFactory, Queued, SendToError, TimerId, UdpError, UdpId, WriteError,
};
pub use server::{ServeError, Server, ServerType, SignalWatch};
pub use service::{line_end, Keep, Service, ServiceError};

/// docs/handlers.md, compiled as a doctest so its example stays true.
#[cfg(doctest)]
#[doc = include_str!("../../docs/handlers.md")]
pub struct HandlersGuide;
