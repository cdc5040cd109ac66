//! Protocols: the evented, per-connection kind of handler.
//!
//! A protocol session is created for each accepted connection. The loop
//! tells it what happened (open, data, writable space, connect result,
//! timers, end of input, close) and the session answers through [`Ctx`]:
//! write bytes, send a file range, open an outbound connection, pause or
//! resume reading, arm a timer, half-close or close. A session may own
//! several connections (the accepted one plus the outbound ones it opened);
//! every event names the connection it concerns. This is what proxies,
//! relays and file transfers are built from.
//!
//! Sessions never make syscalls: [`Ctx`] records what they ask for and the
//! loop carries it out, which is what lets every poll backend drive them.
//!
//! Backpressure follows the familiar stream pattern: [`Ctx::write`] returns
//! `false` once the connection's pending output reaches its output cap, and
//! [`Protocol::on_writable`] is called when it has drained below half of it.

use std::fmt;
use std::io;

pub use crate::event_loop::Ctx;

/// A connection owned by a loop. Ids are never reused while a session could
/// still hold them (a generation counter guards each slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}.{}", self.slot, self.generation)
    }
}

/// A timer armed with [`Ctx::set_timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub(crate) u64);

/// Why a connection closed, as told to [`Protocol::on_close`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The session asked for it with [`Ctx::close`].
    Local,
    /// Nothing was read or written for the listener's `idle_timeout`.
    Idle,
    /// The server is shutting down.
    Shutdown,
    /// The peer kept unconsumed input beyond the listener's `max_request`.
    TooLarge,
    /// An outbound connection could not be established.
    ConnectFailed(io::ErrorKind),
    /// A socket error (for example a reset from the peer).
    Io(io::ErrorKind),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed by handler"),
            CloseReason::Idle => f.write_str("idle timeout"),
            CloseReason::Shutdown => f.write_str("server shutdown"),
            CloseReason::TooLarge => f.write_str("unconsumed input over max_request"),
            CloseReason::ConnectFailed(kind) => write!(f, "connect failed: {kind}"),
            CloseReason::Io(kind) => write!(f, "socket error: {kind}"),
        }
    }
}

/// Creates one protocol session per accepted connection. Shared by every
/// loop of a listener, hence `Send + Sync`.
pub trait ProtocolFactory: Send + Sync + 'static {
    /// A new session for a freshly accepted connection.
    fn open(&self) -> Box<dyn Protocol>;
}

/// An evented, per-connection handler. Every method has a default except
/// [`Protocol::on_data`].
pub trait Protocol: Send {
    /// The accepted connection `conn` is ready.
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        let _ = (ctx, conn);
    }

    /// Bytes arrived on `conn`. Return how many were consumed; the rest is
    /// kept by the loop and presented again, in front of the next bytes.
    /// Unconsumed input beyond the listener's `max_request` closes the
    /// connection with [`CloseReason::TooLarge`].
    fn on_data(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, data: &[u8]) -> usize;

    /// The peer of `conn` sent end-of-file (it will send no more). Pending
    /// output can still be written. The default closes the connection once
    /// its output has drained.
    fn on_read_closed(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        ctx.close(conn);
    }

    /// Output of `conn` drained below half its cap after a [`Ctx::write`]
    /// returned `false`.
    fn on_writable(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        let _ = (ctx, conn);
    }

    /// An outbound connection opened with [`Ctx::connect`] is established
    /// (`Ok`) or failed (`Err`; [`Protocol::on_close`] follows).
    fn on_connect(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, result: io::Result<()>) {
        let _ = (ctx, conn, result);
    }

    /// A timer armed with [`Ctx::set_timer`] fired.
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: TimerId) {
        let _ = (ctx, timer);
    }

    /// `conn` is closed; its id is no longer valid. Called once per
    /// connection. The session ends when all its connections have closed.
    fn on_close(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, reason: CloseReason) {
        let _ = (ctx, conn, reason);
    }
}
