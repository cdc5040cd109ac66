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
//! A session can also be started without an accept, from any thread
//! ([`crate::Spawner::spawn`]; a factory gets a spawner per loop in
//! [`ProtocolFactory::on_loop_start`]): it lives on its timers, messages
//! and outbound connections until it calls [`Ctx::end_session`] or the
//! server stops. Any thread holding its [`crate::SessionRef`] can send it
//! messages, delivered on its loop as [`Protocol::on_message`] and bounded
//! per session.
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

/// A datagram socket owned by a loop ([`Ctx::bind_udp`], or a `-P udp`
/// listener's). Ids are never reused while a session could still hold
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UdpId {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

impl fmt::Display for UdpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "udp#{}.{}", self.slot, self.generation)
    }
}

/// Why [`Ctx::send_to`] did not queue a datagram. The datagram stays the
/// caller's: nothing is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendToError {
    /// The socket's queue holds the listener's `udp_queue` datagrams; try
    /// again after [`Protocol::on_udp_writable`] (as quinn's
    /// `SendDatagramError::Blocked`).
    Blocked,
    /// The socket is closed, or is not this session's.
    NotOpen,
    /// Longer than a UDP datagram can be (65507 bytes).
    TooLarge,
}

impl fmt::Display for SendToError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendToError::Blocked => "the socket's send queue is full",
            SendToError::NotOpen => "datagram socket not open (or not this session's)",
            SendToError::TooLarge => "longer than a UDP datagram can be",
        })
    }
}

impl std::error::Error for SendToError {}

/// What went wrong on a datagram socket, as told to
/// [`Protocol::on_udp_error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpError {
    /// The kernel refused `datagrams` queued datagrams to `to` (too large
    /// for the path, no route, a connected peer unreachable): they were
    /// not sent.
    Send {
        /// Where they were for.
        to: Option<std::net::SocketAddr>,
        /// What the kernel said.
        kind: io::ErrorKind,
        /// How many datagrams were dropped.
        datagrams: usize,
    },
    /// An error the kernel reported on receiving (an ICMP error on a
    /// connected socket, `ECONNREFUSED`). The socket stays open.
    Receive {
        /// What the kernel said.
        kind: io::ErrorKind,
    },
}

impl fmt::Display for UdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UdpError::Send {
                to,
                kind,
                datagrams,
            } => match to {
                Some(to) => write!(f, "{datagrams} datagram(s) to {to} not sent: {kind}"),
                None => write!(f, "{datagrams} datagram(s) not sent: {kind}"),
            },
            UdpError::Receive { kind } => write!(f, "receive error: {kind}"),
        }
    }
}

/// A timer armed with [`Ctx::set_timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub(crate) u64);

/// A job handed to the offload pool with [`Ctx::offload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub(crate) u64);

/// Why [`Ctx::offload`] did not take a job.
pub enum OffloadError {
    /// The pool's queue holds `[server] offload_queue` jobs: the job is
    /// handed back (try again later, from a timer say).
    Full(Box<dyn FnOnce() -> crate::Message + Send>),
}

impl fmt::Debug for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OffloadError::Full(..)")
    }
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the offload pool's queue is full")
    }
}

impl std::error::Error for OffloadError {}

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
    /// The peer sent bytes that are not a request of the service; it got
    /// the service's error reply first.
    Malformed,
    /// The service failed on a request (a panic in it included); the peer
    /// got the service's error reply first.
    Failed,
    /// The protocol handler panicked: its session and all its
    /// connections were closed, the rest of the loop goes on.
    Panicked,
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
            CloseReason::Malformed => f.write_str("malformed request"),
            CloseReason::Failed => f.write_str("handler failed on a request"),
            CloseReason::Panicked => f.write_str("protocol handler panicked"),
        }
    }
}

/// Output a session queued with [`Ctx::write`] or [`Ctx::send_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Under the connection's output cap: go on producing.
    UnderCap,
    /// The pending output reached the cap. The bytes are queued all the
    /// same (never dropped); stop producing for this connection (pause its
    /// source) until [`Protocol::on_writable`].
    OverCap,
}

/// Why output was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// The connection is closed, or is not this session's.
    NotOpen,
    /// It is closing ([`Ctx::close`], or the loop is shutting down), or
    /// its write side was shut down ([`Ctx::shutdown_write`]).
    Shut,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteError::NotOpen => "connection not open (or not this session's)",
            WriteError::Shut => "connection closing or its write side shut down",
        })
    }
}

impl std::error::Error for WriteError {}

/// How [`Ctx::connect_with`] makes an outbound connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Bind to this local address before connecting (the source address
    /// the peer sees; port 0 lets the kernel choose one). It must be of
    /// the destination's family.
    pub source: Option<std::net::SocketAddr>,
    /// Socket options (TCP_NODELAY, TCP_CORK) instead of the listener's.
    pub options: Option<crate::net::ConnOptions>,
}

/// Why [`Ctx::connect`] could not start a connection.
#[derive(Debug)]
pub enum ConnectError {
    /// The server is shutting down: no new outbound connections.
    ShuttingDown,
    /// The session that asked has ended.
    SessionEnded,
    /// [`Ctx::connect_host`]: the offload pool that resolves names is
    /// full (`[server] offload_queue`); try again later.
    ResolverBusy,
    /// [`Ctx::connect_host`]: the name did not resolve (no such host, no
    /// address of the family a source address asks for, a malformed
    /// `HOST:PORT`). What the resolver said.
    Resolve(String),
    /// The socket could not be made or the connect not started (no
    /// descriptors left, an address of the wrong kind, ...).
    Io(io::Error),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::ShuttingDown => f.write_str("server is shutting down"),
            ConnectError::SessionEnded => f.write_str("session has ended"),
            ConnectError::ResolverBusy => f.write_str("the offload pool resolving names is full"),
            ConnectError::Resolve(why) => write!(f, "cannot resolve: {why}"),
            ConnectError::Io(e) => write!(f, "cannot connect: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        ConnectError::Io(e)
    }
}

/// Creates one protocol session per accepted connection. Shared by every
/// loop of a listener, hence `Send + Sync`.
pub trait ProtocolFactory: Send + Sync + 'static {
    /// A new session for a freshly accepted connection.
    fn open(&self) -> Box<dyn Protocol>;

    /// A loop serving this factory's listener is built: `spawner` starts
    /// sessions on it that no accept made (a transfer started at start-up
    /// or by a control request). Called once per loop, on the thread that
    /// builds it, before it runs. The default keeps nothing.
    fn on_loop_start(&self, spawner: crate::Spawner) {
        let _ = spawner;
    }

    /// Can its sessions serve a `-P udp` listener (they take
    /// [`Protocol::on_udp_open`] and [`Protocol::on_datagram`])? The
    /// default, false, is for stream protocols: the server refuses to
    /// start such a handler over UDP.
    fn datagrams(&self) -> bool {
        false
    }
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
    /// answered [`Queued::OverCap`].
    fn on_writable(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        let _ = (ctx, conn);
    }

    /// An outbound connection opened with [`Ctx::connect`] is established
    /// (`Ok`) or failed (`Err`; [`Protocol::on_close`] follows).
    fn on_connect(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, result: io::Result<()>) {
        let _ = (ctx, conn, result);
    }

    /// A datagram arrived on `sock` from `from` (empty datagrams too). The
    /// bytes are the loop's: copy what is kept.
    fn on_datagram(
        &mut self,
        ctx: &mut Ctx<'_>,
        sock: UdpId,
        from: std::net::SocketAddr,
        data: &[u8],
    ) {
        let _ = (ctx, sock, from, data);
    }

    /// The send queue of `sock` drained to half after [`Ctx::send_to`]
    /// answered [`SendToError::Blocked`].
    fn on_udp_writable(&mut self, ctx: &mut Ctx<'_>, sock: UdpId) {
        let _ = (ctx, sock);
    }

    /// Something went wrong on `sock` (it stays open). The default logs it
    /// at debug.
    fn on_udp_error(&mut self, ctx: &mut Ctx<'_>, sock: UdpId, error: UdpError) {
        let _ = ctx;
        tracing::debug!(%sock, "{error}");
    }

    /// The loop's socket of a `-P udp` listener is this session's (one
    /// session per loop, made by the factory when the loop is built, kept
    /// until the server stops): its first callback.
    fn on_udp_open(&mut self, ctx: &mut Ctx<'_>, sock: UdpId) {
        let _ = (ctx, sock);
    }

    /// The name given to [`Ctx::connect_host`] (job `job`) resolved and
    /// the connection to its first address was started (`Ok`: its
    /// [`Protocol::on_connect`] follows), or it did not resolve or could
    /// not be started (`Err`). The default does nothing with it.
    fn on_resolved(&mut self, ctx: &mut Ctx<'_>, job: JobId, result: Result<ConnId, ConnectError>) {
        let _ = (ctx, job, result);
    }

    /// A timer armed with [`Ctx::set_timer`] fired.
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: TimerId) {
        let _ = (ctx, timer);
    }

    /// The session's next deadline, for a session that keeps its own
    /// timers (a sans-I/O core with retransmission, pacing and idle
    /// timers, as quinn's `Connection::poll_timeout`) instead of arming
    /// [`Ctx::set_timer`] ids. The loop asks after every callback of the
    /// session and calls [`Protocol::on_timeout`] once the deadline has
    /// passed; a deadline that moves later costs nothing, one that moves
    /// earlier arms a new wake-up. Honoured to the microsecond under every
    /// backend. The default has none.
    fn poll_timeout(&self) -> Option<std::time::Instant> {
        None
    }

    /// The deadline [`Protocol::poll_timeout`] reported has passed
    /// ([`Ctx::now`] is at or after it).
    fn on_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }

    /// `conn` is closed; its id is no longer valid. Called once per
    /// connection. A session born from an accept ends when all its
    /// connections have closed, unless it called [`Ctx::keep_session`].
    fn on_close(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, reason: CloseReason) {
        let _ = (ctx, conn, reason);
    }

    /// A session started by [`crate::Spawner::spawn`] is on its loop: its
    /// first callback. It has no connection yet.
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }

    /// A message sent with [`crate::SessionRef::send`] arrived (in the
    /// order sent). The default drops it.
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: crate::Message) {
        let _ = (ctx, msg);
    }

    /// A job of this session given to [`Ctx::offload`] has finished: what
    /// it returned, or the message of its panic. The default drops it.
    fn on_done(&mut self, ctx: &mut Ctx<'_>, job: JobId, result: Result<crate::Message, String>) {
        let _ = (ctx, job, result);
    }
}
