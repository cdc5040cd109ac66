//! The settings a loop is built from: the limits and setup of each listener,
//! the loop-wide settings, and the handle that stops a running loop.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::handler::Handler;
use crate::net::ConnOptions;
use crate::poll::{PollType, Waker};
use crate::pools::{OffloadPool, Pool};

/// The limits of one listener. Each is a conf key of `[listener.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request (services) or unconsumed input (protocols), bytes.
    pub max_request: usize,
    /// Pending output per connection above which reading pauses, bytes.
    pub output_cap: usize,
    /// Close connections with no read or write progress for this long.
    pub idle_timeout: Option<Duration>,
    /// Open connections of this listener across all loops of the process.
    pub max_connections: usize,
    /// Requests of one connection in flight in a handler pool (`-X`) at
    /// once; reading pauses at the limit.
    pub max_pipelined: usize,
    /// Deadline for outbound connects made by protocols.
    pub connect_timeout: Duration,
    /// After an error reply, how long to wait for the peer's FIN while
    /// discarding its input, so the reply is not destroyed by a reset.
    pub linger_timeout: Duration,
    /// Bytes asked for per read(2).
    pub recv_size: usize,
    /// Messages sent to one session ([`crate::SessionRef::send`]) and not
    /// yet delivered; a send beyond it is refused.
    pub mailbox: usize,
    /// Sessions started by [`crate::Spawner::spawn`] alive (or starting)
    /// on this listener across all loops of the process; a spawn beyond it
    /// is refused.
    pub max_sessions: usize,
    /// Datagrams queued on one datagram socket and not yet sent; a
    /// [`crate::Ctx::send_to`] beyond it is refused.
    pub udp_queue: usize,
    /// Longest datagram received, bytes: the receive buffer of each; a
    /// longer one is dropped (and counted), never handed over cut short.
    pub max_datagram: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request: 64 * 1024,
            output_cap: 1024 * 1024,
            idle_timeout: Some(Duration::from_secs(60)),
            max_connections: 10_000,
            max_pipelined: 64,
            connect_timeout: Duration::from_secs(10),
            linger_timeout: Duration::from_secs(2),
            recv_size: 64 * 1024,
            mailbox: 1024,
            max_sessions: 10_000,
            udp_queue: 1024,
            max_datagram: 65_535,
        }
    }
}

/// Everything a loop needs to know about one listener.
pub struct ListenerSetup {
    /// The listener's name (`[listener.NAME]`), for logs.
    pub name: String,
    /// What serves its connections.
    pub handler: Handler,
    /// Socket options applied to every connection.
    pub conn_options: ConnOptions,
    /// Gather responses into one write per read batch (off with `-K`).
    pub coalesce: bool,
    /// Its limits.
    pub limits: Limits,
    /// Connections open across all loops (for `max_connections`).
    pub(crate) active: AtomicUsize,
    /// Spawned sessions alive or starting across all loops (for
    /// `max_sessions`).
    pub(crate) sessions: AtomicUsize,
    /// Where service requests run; `None` runs them inline (`-X blocking`).
    pub(crate) pool: Option<Arc<dyn Pool>>,
}

impl ListenerSetup {
    /// A setup with no open connections.
    pub fn new(
        name: impl Into<String>,
        handler: Handler,
        conn_options: ConnOptions,
        coalesce: bool,
        limits: Limits,
    ) -> Self {
        ListenerSetup {
            name: name.into(),
            handler,
            conn_options,
            coalesce,
            limits,
            active: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            pool: None,
        }
    }

    /// Run this listener's service requests in `pool` (`-X`) instead of on
    /// the loop. Protocol handlers always run on their loop.
    pub fn with_pool(mut self, pool: Option<Arc<dyn Pool>>) -> Self {
        self.pool = pool;
        self
    }

    /// Connections open right now across all loops.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

/// Tells a running loop to stop: stop accepting, let pending output drain
/// (at most the drain timeout), then return from [`Loop::run`](super::Loop::run).
#[derive(Clone)]
pub struct LoopHandle {
    pub(super) waker: Arc<Waker>,
    pub(super) stop: Arc<AtomicBool>,
}

impl LoopHandle {
    /// Ask the loop to shut down gracefully.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            warn!("cannot wake loop for shutdown: {e}");
        }
    }
}

/// Settings of a loop that are not per listener.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// After a stop request, how long pending output may take to drain.
    pub drain_timeout: Duration,
    /// Return from [`Loop::run`](super::Loop::run) once the last connection has closed (a
    /// loop serving one adopted connection, `-S proc`).
    pub exit_when_idle: bool,
    /// The poll backend (`-T`).
    pub poll: PollType,
    /// The listening sockets are shared with other processes (`-S
    /// procpool` workers). Under `-T completion` they are then polled and
    /// accepted from here rather than accepted by the kernel on the ring's
    /// behalf: a worker killed at that moment would take the connections
    /// its ring had accepted with it, while the others could have served
    /// them.
    pub shared_listeners: bool,
    /// Where [`crate::Ctx::offload`] runs jobs: one pool per process,
    /// shared by its loops (`[server] offload_threads`, `offload_queue`).
    pub offload: Arc<OffloadPool>,
    /// How late the kernel may end the loop's timed waits (its thread's
    /// timer slack, `[server] timer_slack`): the precision of timers and
    /// [`crate::Protocol::poll_timeout`] deadlines.
    pub timer_slack: Duration,
}

impl Default for LoopSettings {
    fn default() -> Self {
        LoopSettings {
            drain_timeout: Duration::from_secs(10),
            exit_when_idle: false,
            poll: PollType::Edge,
            shared_listeners: false,
            offload: Arc::new(OffloadPool::default()),
            timer_slack: Duration::from_micros(1),
        }
    }
}
