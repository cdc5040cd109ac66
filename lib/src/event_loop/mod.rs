//! Layer 3: the event loop.
//!
//! One loop owns its listeners' accept path, its connections, their buffers,
//! the timer table and the write path. It reads into its own buffers and
//! hands bytes to handlers; it carries out the writes, file sends, connects,
//! pauses and timers that handlers ask for. Handlers never make syscalls.
//!
//! ```text
//!  poll (edge) ──► accept ──► Conn ──read──► scratch ──┬─► Service framing ─► handle ─┐
//!                                                      └─► Protocol::on_data ─────────┤
//!                                                                                     ▼
//!  socket ◄── writev / sendfile ◄── OutQueue ◄────────────── response bytes / file ranges
//! ```
//!
//! Bounds, all from the listener's [`Limits`]:
//! - reads go into one loop-wide scratch buffer; only an incomplete request
//!   is copied into the connection (at most `max_request` + one read);
//! - output above `output_cap` pauses reading from that connection (services)
//!   or makes [`Ctx::write`] return `false` (protocols) until it drains to
//!   half the cap;
//! - every connection has an idle deadline; outbound connects a connect
//!   deadline; closes after an error reply a lingering deadline;
//! - reads continue until the socket is drained (WouldBlock, or a short
//!   read, which empties the queue just as surely: new bytes raise a new
//!   edge); a readiness event reads at most [`READ_BUDGET`] times before the
//!   connection goes to the back of the ready queue, so one fast peer cannot
//!   starve the others.

mod completion;
mod ctx;
// The output queue is internal; the `bench-internals` feature opens it to
// the criterion benchmarks in benches/ (it is not a stable API).
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod output;
#[cfg(not(feature = "bench-internals"))]
pub(crate) mod output;
pub(crate) mod timer;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};

use slab::Slab;
use tracing::{debug, error, trace, warn};

pub use ctx::Ctx;

use crate::handler::Handler;
use crate::net::{self, ConnOptions};
use crate::poll::{self as backend, Cqe, Event, Interest, PollType, Readiness, Ring, Waker};
use crate::pools::Job;
use crate::pools::{Done, ExecMode, Pool, ReplyTo};
use crate::protocol::{CloseReason, ConnId, Protocol, TimerId};
use crate::service::{self, BatchEnd, Keep, Service, ServiceError};
use crate::sys;
use output::{BufPool, OutQueue};
use timer::{Due, Timers};

/// Reads per readiness event before a connection yields to the others.
pub const READ_BUDGET: usize = 16;

/// On shutdown, how long a connection whose request is still arriving may
/// take to complete it (at most the drain timeout).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How long a loop with requests out in a handler pool polls for their
/// answers before it sleeps.
const JOB_SPIN: Duration = Duration::from_micros(50);
/// Provided buffers of a `-T completion` loop, each of the largest
/// `recv_size` of its listeners up to [`RING_BUFFER_MAX`]: at most 4 MiB
/// per loop, touched only as far as bytes arrive.
const RING_BUFFERS: u16 = 256;
const RING_BUFFER_MAX: usize = 16 * 1024;
/// How long a listener stops accepting after EMFILE/ENFILE or at
/// `max_connections`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const WAKER: usize = usize::MAX;
const LISTENER_BASE: usize = usize::MAX / 2;

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
/// (at most the drain timeout), then return from [`Loop::run`].
#[derive(Clone)]
pub struct LoopHandle {
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionKey {
    slot: usize,
    generation: u64,
}

struct Session {
    generation: u64,
    /// Taken out while one of its callbacks runs.
    proto: Option<Box<dyn Protocol>>,
    /// Connections it owns that have not closed yet.
    live: usize,
    /// The listener that accepted its first connection: its limits and
    /// options apply to the outbound connections too.
    listener: usize,
}

pub(crate) struct Conn {
    sock: TcpStream,
    generation: u32,
    listener: usize,
    session: Option<SessionKey>,
    accepted: bool,
    peer: Option<SocketAddr>,
    input: Vec<u8>,
    out: OutQueue,
    last_active: Instant,
    /// Instant of the heap entry that will re-check this connection.
    armed: Option<Instant>,
    connect_deadline: Option<Instant>,
    linger_deadline: Option<Instant>,
    read_paused: bool,
    over_cap: bool,
    read_eof: bool,
    closing: bool,
    close_reason: Option<CloseReason>,
    shut_wr_pending: bool,
    wr_shut: bool,
    writable_interest: bool,
    dirty: bool,
    /// The poller reported the peer's FIN or an error: read to the end
    /// even after a short read (no new edge will come for it).
    hup: bool,
    /// Bytes read from this connection are spliced to that one's pipe
    /// instead of going through `on_data` ([`Ctx::splice`]).
    splice_to: Option<ConnId>,
    /// The connection whose bytes are spliced into this one's pipe.
    fed_by: Option<ConnId>,
    /// Splicing stopped because the destination is at its cap; resumed
    /// when it drains to half.
    splice_stalled: bool,
    /// Requests handed to a pool: the next one's sequence number, and the
    /// oldest one not yet answered. Responses leave in this order.
    next_seq: u64,
    write_seq: u64,
    /// Finished requests from `write_seq` on (None: still running).
    pending: VecDeque<Option<Done>>,
    /// A complete request waits in `input` for room in the pool or under
    /// `max_pipelined`: reading stops until a job finishes.
    pool_waiting: bool,
    /// Nothing read yet: its first request may be on its way.
    fresh: bool,
    /// Shutting down while this connection's request was still arriving:
    /// it gets until then to complete and be answered.
    shutdown_deadline: Option<Instant>,
    /// What the readiness backend watches it for.
    interest: Interest,
    /// Its submissions under `-T completion`.
    io: completion::Inflight,
}

impl Conn {
    fn new(sock: TcpStream, generation: u32, listener: usize, now: Instant) -> Self {
        Conn {
            sock,
            generation,
            listener,
            session: None,
            accepted: true,
            peer: None,
            input: Vec::new(),
            out: OutQueue::default(),
            last_active: now,
            armed: None,
            connect_deadline: None,
            linger_deadline: None,
            read_paused: false,
            over_cap: false,
            read_eof: false,
            closing: false,
            close_reason: None,
            shut_wr_pending: false,
            wr_shut: false,
            writable_interest: false,
            dirty: false,
            hup: false,
            splice_to: None,
            fed_by: None,
            splice_stalled: false,
            next_seq: 0,
            write_seq: 0,
            pending: VecDeque::new(),
            pool_waiting: false,
            fresh: true,
            shutdown_deadline: None,
            interest: Interest::NONE,
            io: completion::Inflight::default(),
        }
    }

    fn id(&self, slot: usize) -> ConnId {
        ConnId {
            slot: slot as u32,
            generation: self.generation,
        }
    }

    fn reading_blocked(&self) -> bool {
        self.read_paused
            || self.splice_stalled
            || self.pool_waiting
            || (self.over_cap && self.session.is_none())
            || self.read_eof
            || (self.closing && self.linger_deadline.is_none())
            || self.connect_deadline.is_some()
    }

    /// The earliest deadline of this connection and what happens then.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Expiry)> {
        let mut best: Option<(Instant, Expiry)> = None;
        let mut consider = |at: Option<Instant>, what: Expiry| {
            if let Some(at) = at {
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, what));
                }
            }
        };
        consider(self.connect_deadline, Expiry::Connect);
        consider(self.linger_deadline, Expiry::Linger);
        consider(self.shutdown_deadline, Expiry::Shutdown);
        // A request still running in a pool is not idleness.
        if self.pending.is_empty() {
            consider(
                limits.idle_timeout.map(|d| self.last_active + d),
                Expiry::Idle,
            );
        }
        best
    }
}

#[derive(Debug, Clone, Copy)]
enum Expiry {
    Connect,
    Linger,
    Idle,
    Shutdown,
}

enum Deferred {
    Connected(SessionKey, ConnId, io::Result<()>),
    Writable(SessionKey, ConnId),
    Closed(SessionKey, ConnId, CloseReason),
}

/// The loop's state that handler callbacks may touch through [`Ctx`].
pub(crate) struct Core {
    /// The ring (`-T completion`). First, so it is dropped first: the
    /// kernel lets go of the connections' buffers before they are freed.
    ring: Option<Box<Ring>>,
    conns: Slab<Conn>,
    sessions: Slab<Session>,
    next_generation: u64,
    setups: Vec<Arc<ListenerSetup>>,
    /// The readiness backend (`-T edge`, `-T level`), when there is no ring.
    poller: Option<Box<dyn Readiness>>,
    /// Level-triggered: interest follows what the loop can act on.
    level: bool,
    /// Closed connections whose submissions are still out (completion).
    zombies: HashMap<(usize, u32), Conn>,
    timers: Timers,
    cancelled: HashSet<TimerId>,
    bufs: BufPool,
    dirty: Vec<usize>,
    ready: VecDeque<ConnId>,
    deferred: VecDeque<Deferred>,
    now: Instant,
    /// Shutting down: no new outbound connections.
    stopping: bool,
    /// Where pools send finished requests for this loop, and where they
    /// arrive.
    reply: ReplyTo,
    completions: Receiver<Done>,
    /// Connections waiting for room in a full pool.
    pool_waiters: Vec<ConnId>,
    /// Jobs handed to a pool and not yet back.
    jobs_out: usize,
    /// Poll for a moment before sleeping while jobs are out: the pool is
    /// in this process and answers within microseconds. (Not for worker
    /// processes: their round trip needs the CPU the spinning would take.)
    spin_for_jobs: bool,
}

struct ListenerSlot {
    sock: Option<TcpListener>,
    paused: bool,
    last_warning: Option<Instant>,
    /// A multishot accept is out (completion).
    armed: bool,
    /// Which one (completion): its user data carries this, so what a
    /// cancelled one still reports is not taken for the current one's.
    accept_gen: u32,
    /// Connections the kernel accepted while the listener was at its
    /// limit (completion): served when it resumes.
    backlog: VecDeque<std::net::TcpStream>,
}

/// Settings of a loop that are not per listener.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// After a stop request, how long pending output may take to drain.
    pub drain_timeout: Duration,
    /// Return from [`Loop::run`] once the last connection has closed (a
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
}

impl Default for LoopSettings {
    fn default() -> Self {
        LoopSettings {
            drain_timeout: Duration::from_secs(10),
            exit_when_idle: false,
            poll: PollType::Edge,
            shared_listeners: false,
        }
    }
}

/// One event loop: a poll instance, its listeners and connections.
pub struct Loop {
    events: Vec<Event>,
    cqes: Vec<Cqe>,
    waker: Arc<Waker>,
    core: Core,
    listeners: Vec<ListenerSlot>,
    scratch: Vec<u8>,
    stop: Arc<AtomicBool>,
    settings: LoopSettings,
}

impl Loop {
    /// A loop serving `listeners`, each a bound listening socket with its
    /// setup. Returns the loop and the handle that stops it.
    pub fn new(
        listeners: Vec<(std::net::TcpListener, Arc<ListenerSetup>)>,
        settings: LoopSettings,
    ) -> io::Result<(Loop, LoopHandle)> {
        Loop::build(
            listeners.into_iter().map(|(l, s)| (Some(l), s)).collect(),
            settings,
        )
    }

    /// A loop with no listening socket that serves one connection accepted
    /// elsewhere (a `-S proc` worker): `stream` is served as if listener
    /// `listener` of `setups` had accepted it.
    pub fn for_connection(
        setups: Vec<Arc<ListenerSetup>>,
        listener: usize,
        stream: std::net::TcpStream,
        settings: LoopSettings,
    ) -> io::Result<(Loop, LoopHandle)> {
        if listener >= setups.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no such listener",
            ));
        }
        let (mut lp, handle) =
            Loop::build(setups.into_iter().map(|s| (None, s)).collect(), settings)?;
        // The ring does the waiting under -T completion: its sockets block.
        stream.set_nonblocking(lp.core.ring.is_none())?;
        let peer = stream.peer_addr()?;
        lp.adopt(listener, TcpStream::from_std(stream), peer);
        Ok((lp, handle))
    }

    fn build(
        listeners: Vec<(Option<std::net::TcpListener>, Arc<ListenerSetup>)>,
        settings: LoopSettings,
    ) -> io::Result<(Loop, LoopHandle)> {
        let waker = Arc::new(Waker::new(settings.poll == PollType::Completion)?);
        let mut scratch_len = 0;
        for (_, setup) in &listeners {
            scratch_len = scratch_len.max(setup.limits.recv_size.max(1));
        }
        let (mut poller, mut ring) = match settings.poll {
            PollType::Completion => (
                None,
                Some(Box::new(Ring::new(
                    RING_BUFFERS,
                    scratch_len.min(RING_BUFFER_MAX),
                )?)),
            ),
            kind => (Some(backend::readiness(kind)?), None),
        };
        let level = poller.as_ref().is_some_and(|p| p.is_level());
        if let Some(p) = poller.as_mut() {
            p.set_interest(waker.as_fd(), WAKER, Interest::NONE, Interest::READ)?;
        }
        if let Some(r) = ring.as_mut() {
            r.read_waker(waker.raw_fd())?;
        }
        let mut slots = Vec::new();
        let mut setups = Vec::new();
        for (i, (std_listener, setup)) in listeners.into_iter().enumerate() {
            let sock = match std_listener {
                Some(l) => {
                    l.set_nonblocking(ring.is_none() || settings.shared_listeners)?;
                    let sock = TcpListener::from_std(l);
                    if let Some(p) = poller.as_mut() {
                        p.set_interest(
                            sock.as_fd(),
                            LISTENER_BASE + i,
                            Interest::NONE,
                            Interest::READ,
                        )?;
                    }
                    Some(sock)
                }
                None => None,
            };
            slots.push(ListenerSlot {
                sock,
                paused: false,
                last_warning: None,
                armed: false,
                accept_gen: 0,
                backlog: VecDeque::new(),
            });
            setups.push(setup);
        }
        let spin_for_jobs = setups.iter().any(|s: &Arc<ListenerSetup>| {
            s.pool
                .as_ref()
                .is_some_and(|p| !matches!(p.kind(), ExecMode::Proc | ExecMode::ProcPool))
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, completions) = crossbeam_channel::unbounded();
        let reply = ReplyTo {
            tx,
            waker: waker.clone(),
        };
        let handle = LoopHandle {
            waker,
            stop: stop.clone(),
        };
        let core = Core {
            conns: Slab::new(),
            sessions: Slab::new(),
            next_generation: 0,
            setups,
            poller,
            ring,
            level,
            zombies: HashMap::new(),
            timers: Timers::default(),
            cancelled: HashSet::new(),
            bufs: BufPool::new(),
            dirty: Vec::new(),
            ready: VecDeque::new(),
            deferred: VecDeque::new(),
            now: Instant::now(),
            stopping: false,
            reply,
            completions,
            pool_waiters: Vec::new(),
            jobs_out: 0,
            spin_for_jobs,
        };
        let mut lp = Loop {
            events: Vec::with_capacity(1024),
            cqes: Vec::with_capacity(1024),
            waker: handle.waker.clone(),
            core,
            listeners: slots,
            scratch: vec![0; scratch_len],
            stop,
            settings,
        };
        if lp.core.ring.is_some() {
            for li in 0..lp.listeners.len() {
                lp.accept(li);
            }
        }
        Ok((lp, handle))
    }

    /// Run until stopped through the [`LoopHandle`] and drained.
    pub fn run(mut self) -> io::Result<()> {
        let result = self.run_until_done();
        if self.core.ring.is_some() {
            self.retire_ring();
        }
        result
    }

    fn run_until_done(&mut self) -> io::Result<()> {
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let timeout = if !self.core.ready.is_empty() {
                Some(Duration::ZERO)
            } else {
                let next = match (self.core.timers.next(), drain_deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                next.map(|t| t.saturating_duration_since(Instant::now()))
            };
            // A pool answers within microseconds as a rule: look for the
            // answer (and new requests) for a moment before sleeping, so
            // that a request does not pay the loop's wake-up as well.
            let spun = self.core.spin_for_jobs
                && self.core.jobs_out > 0
                && timeout != Some(Duration::ZERO)
                && self.spin_for_jobs()?;
            if spun {
                // The events found while spinning are in self.events.
            } else if let Err(e) = self.wait(timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.core.now = Instant::now();
            self.handle_events();
            self.run_ready();
            self.run_timers();
            self.settle();
            if drain_deadline.is_none() && self.stop.load(Ordering::SeqCst) {
                drain_deadline = Some(self.core.now + self.settings.drain_timeout);
                self.begin_shutdown();
                self.settle();
            }
            if self.settings.exit_when_idle && self.core.conns.is_empty() {
                return Ok(());
            }
            if let Some(deadline) = drain_deadline {
                if self.core.conns.is_empty() {
                    return Ok(());
                }
                if self.core.now >= deadline {
                    warn!(
                        connections = self.core.conns.len(),
                        "drain timeout reached: closing connections with output still pending"
                    );
                    return Ok(());
                }
            }
        }
    }

    /// Wait for events or completions, at most `timeout`.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if let Some(ring) = self.core.ring.as_deref_mut() {
            return ring.wait(&mut self.cqes, timeout);
        }
        match self.core.poller.as_deref_mut() {
            Some(p) => p.wait(&mut self.events, timeout),
            None => Ok(()),
        }
    }

    /// Act on what the last wait brought.
    fn handle_events(&mut self) {
        if self.core.ring.is_some() {
            let cqes = std::mem::take(&mut self.cqes);
            for cqe in &cqes {
                self.on_cqe(*cqe);
            }
            self.cqes = cqes;
            return;
        }
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            match ev.token {
                WAKER => {
                    if self.core.level {
                        self.waker.reset();
                    }
                    self.core.complete_jobs();
                }
                t if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE),
                slot => self.conn_event(slot, ev),
            }
        }
        self.events = events;
    }

    /// Poll without sleeping for up to [`JOB_SPIN`] while jobs are out.
    /// True when events came (they are in `self.events` or `self.cqes`).
    fn spin_for_jobs(&mut self) -> io::Result<bool> {
        let start = Instant::now();
        while start.elapsed() < JOB_SPIN {
            match self.wait(Some(Duration::ZERO)) {
                Ok(()) if !self.events.is_empty() || !self.cqes.is_empty() => return Ok(true),
                Ok(()) => std::hint::spin_loop(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    fn begin_shutdown(&mut self) {
        self.core.stopping = true;
        for (i, l) in self.listeners.iter_mut().enumerate() {
            let Some(sock) = l.sock.take() else {
                continue;
            };
            if let Some(p) = self.core.poller.as_deref_mut() {
                if let Err(e) = p.set_interest(
                    sock.as_fd(),
                    LISTENER_BASE + i,
                    Interest::READ,
                    Interest::NONE,
                ) {
                    debug!("deregister listener {i}: {e}");
                }
            }
            if let Some(ring) = self.core.ring.as_deref_mut() {
                l.backlog.clear();
                if l.armed {
                    let ud = backend::user_data(backend::Op::Accept, i, l.accept_gen);
                    if let Err(e) = ring.cancel(ud) {
                        debug!("cancel accept of listener {i}: {e}");
                    }
                }
            }
        }
        let slots: Vec<usize> = self.core.conns.iter().map(|(k, _)| k).collect();
        let grace = self.core.now + SHUTDOWN_GRACE.min(self.settings.drain_timeout);
        for slot in slots {
            if let Some(c) = self.core.conns.get_mut(slot) {
                if c.session.is_none()
                    && (c.fresh || !c.input.is_empty())
                    && c.out.is_empty()
                    && c.pending.is_empty()
                    && !c.closing
                {
                    // A request may be arriving (a client that connected
                    // just before the stop, or one half read): answer it,
                    // then close. Losing it would refuse work that a
                    // reload promises to keep.
                    c.shutdown_deadline = Some(grace);
                    self.core.ensure_armed(slot);
                    continue;
                }
                c.closing = true;
                c.close_reason.get_or_insert(CloseReason::Shutdown);
            }
            self.core.mark_dirty(slot);
        }
    }

    fn pause_listener(&mut self, li: usize, why: &str) {
        let now = self.core.now;
        if self.listeners[li].paused {
            return;
        }
        self.listener_interest(li, Interest::READ, Interest::NONE);
        let l = &mut self.listeners[li];
        l.paused = true;
        if l.last_warning
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            l.last_warning = Some(now);
            warn!(
                listener = %self.core.setups[li].name,
                "not accepting for {} ms: {why}",
                ACCEPT_BACKOFF.as_millis()
            );
        }
        self.core
            .timers
            .arm(now + ACCEPT_BACKOFF, Due::Listener(li));
    }

    /// Level-triggered: a listener that is not accepting must not be
    /// watched, or its queue would be reported again and again.
    fn listener_interest(&mut self, li: usize, old: Interest, new: Interest) {
        if !self.core.level {
            return;
        }
        let (Some(sock), Some(p)) = (
            self.listeners[li].sock.as_ref(),
            self.core.poller.as_deref_mut(),
        ) else {
            return;
        };
        if let Err(e) = p.set_interest(sock.as_fd(), LISTENER_BASE + li, old, new) {
            warn!(listener = %self.core.setups[li].name, "cannot change listener interest: {e}");
        }
    }

    fn accept(&mut self, li: usize) {
        if self.core.ring.is_some() && !self.settings.shared_listeners {
            self.uring_accept(li);
            return;
        }
        let setup = self.core.setups[li].clone();
        loop {
            let slot = &self.listeners[li];
            if slot.paused {
                return;
            }
            let Some(listener) = slot.sock.as_ref() else {
                return;
            };
            if setup.active() >= setup.limits.max_connections {
                let why = format!("max_connections ({}) reached", setup.limits.max_connections);
                self.pause_listener(li, &why);
                return;
            }
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.adopt(li, stream, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.core.ring.is_some() {
                        self.uring_poll_listener(li);
                    }
                    return;
                }
                Err(e) if sys::is_resource_exhaustion(&e) => {
                    self.pause_listener(li, &format!("accept: {e}"));
                    return;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    self.pause_listener(li, &format!("accept: {e}"));
                    return;
                }
            }
        }
    }

    /// Serve `stream`, accepted on listener `li`.
    fn adopt(&mut self, li: usize, stream: TcpStream, peer: SocketAddr) {
        let setup = self.core.setups[li].clone();
        if let Err(e) = net::configure(&stream, setup.conn_options) {
            warn!(listener = %setup.name, %peer, "cannot set socket options: {e}");
            return;
        }
        match self.core.add_conn(stream, li, Interest::READ) {
            Ok(slot) => {
                setup.active.fetch_add(1, Ordering::Relaxed);
                let conn = &mut self.core.conns[slot];
                conn.peer = Some(peer);
                let id = conn.id(slot);
                trace!(listener = %setup.name, %peer, %id, "accepted");
                if let Handler::Protocol(factory) = &setup.handler {
                    let key = self.core.add_session(factory.open(), li);
                    self.core.sessions[key.slot].live = 1;
                    self.core.conns[slot].session = Some(key);
                    self.core.call(key, |p, ctx| p.on_open(ctx, id));
                }
                self.core.ensure_armed(slot);
                if self.core.ring.is_some() {
                    self.core.uring_arm_recv(slot);
                }
            }
            Err(e) => warn!(listener = %setup.name, "cannot register connection: {e}"),
        }
    }

    fn conn_event(&mut self, slot: usize, ev: &Event) {
        let Some(conn) = self.core.conns.get(slot) else {
            return;
        };
        if conn.connect_deadline.is_some() {
            let id = conn.id(slot);
            if ev.writable || ev.error || ev.write_closed {
                self.core.finish_connect(slot);
            }
            // on_connect is told before on_data sees the first bytes (and
            // may close this connection, whose slot a new one may take).
            self.settle();
            if self.core.get(id).is_none() {
                return;
            }
        }
        if ev.writable {
            self.core.mark_dirty(slot);
        }
        if ev.read_closed || ev.error {
            self.core.conns[slot].hup = true;
        }
        if ev.readable || ev.read_closed || ev.error {
            self.read(slot);
        }
        self.settle();
    }

    fn run_ready(&mut self) {
        let n = self.core.ready.len();
        for _ in 0..n {
            let Some(id) = self.core.ready.pop_front() else {
                break;
            };
            if self.core.get(id).is_some() {
                self.read(id.slot as usize);
                self.settle();
            }
        }
    }

    fn read(&mut self, slot: usize) {
        if self.core.ring.is_some() {
            self.uring_read(slot);
            return;
        }
        let Some(conn) = self.core.conns.get(slot) else {
            return;
        };
        if conn.linger_deadline.is_some() {
            self.discard_input(slot);
        } else if let Some(key) = conn.session {
            self.read_protocol(slot, key);
        } else {
            self.read_service(slot);
        }
        if self.core.level {
            self.core.update_interest(slot);
        }
    }

    /// Act on what one completed receive gave (`-T completion`): the
    /// readiness backends' read loops do the same per read.
    fn handle_step(&mut self, slot: usize, step: ReadStep) {
        let Some(conn) = self.core.conns.get_mut(slot) else {
            return;
        };
        if matches!(step, ReadStep::Eof) {
            conn.read_eof = true;
        }
        if conn.linger_deadline.is_some() {
            if !matches!(step, ReadStep::Data(_)) {
                self.core.close(slot, None);
            }
            return;
        }
        if let Some(key) = conn.session {
            self.protocol_step(slot, key, step);
            return;
        }
        let setup = self.core.setups[conn.listener].clone();
        let Handler::Service(service) = &setup.handler else {
            return;
        };
        match step {
            ReadStep::Data(n) => {
                self.core
                    .feed_service(slot, &**service, &setup, &self.scratch[..n]);
            }
            ReadStep::Failed(kind) => {
                self.core.abort(slot, CloseReason::Io(kind));
                return;
            }
            _ => {}
        }
        self.core.service_read_done(slot);
    }

    /// Before reading again after a pause: a service answers what it has
    /// buffered first.
    fn prime(&mut self, slot: usize) {
        let conn = &self.core.conns[slot];
        if conn.session.is_some() || conn.input.is_empty() || conn.over_cap {
            return;
        }
        let setup = self.core.setups[conn.listener].clone();
        if let Handler::Service(service) = &setup.handler {
            self.core.feed_service(slot, &**service, &setup, &[]);
            self.core.service_read_done(slot);
        }
    }

    /// Lingering close: read and drop whatever the peer still sends until its
    /// FIN or the linger deadline.
    fn discard_input(&mut self, slot: usize) {
        let core = &mut self.core;
        for _ in 0..READ_BUDGET {
            let Some(conn) = core.conns.get_mut(slot) else {
                return;
            };
            match conn.sock.read(&mut self.scratch) {
                Ok(0) => {
                    core.close(slot, None);
                    return;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    core.close(slot, None);
                    return;
                }
            }
        }
        let id = core.conns[slot].id(slot);
        core.ready.push_back(id);
    }

    fn read_service(&mut self, slot: usize) {
        let core = &mut self.core;
        let setup = core.setups[core.conns[slot].listener].clone();
        let Handler::Service(service) = &setup.handler else {
            return;
        };
        let service = &**service;
        let recv = setup.limits.recv_size.min(self.scratch.len());
        // Input left over while output was over the cap comes first.
        if !core.conns[slot].input.is_empty() && !core.conns[slot].over_cap {
            core.feed_service(slot, service, &setup, &[]);
        }
        let mut budget = READ_BUDGET;
        loop {
            match core.read_step(slot, &mut budget, &mut self.scratch[..recv]) {
                ReadStep::Data(n) => {
                    core.feed_service(slot, service, &setup, &self.scratch[..n]);
                    if n < recv && !core.conns[slot].hup {
                        // A short read emptied the socket's queue; new bytes
                        // raise a new edge. Saves the read that would only
                        // return WouldBlock.
                        break;
                    }
                }
                // Services are never spliced.
                ReadStep::Eof | ReadStep::Stop | ReadStep::Spliced { .. } => break,
                ReadStep::Failed(kind) => {
                    core.abort(slot, CloseReason::Io(kind));
                    return;
                }
            }
        }
        core.service_read_done(slot);
    }

    fn read_protocol(&mut self, slot: usize, key: SessionKey) {
        let core = &mut self.core;
        let limits = &core.setups[core.conns[slot].listener].limits;
        let recv = limits.recv_size.min(self.scratch.len());
        let mut budget = READ_BUDGET;
        loop {
            let core = &mut self.core;
            let Some(conn) = core.conns.get(slot) else {
                return;
            };
            let step = match conn.splice_to {
                Some(to) => core.splice_step(slot, to, &mut budget),
                None => core.read_step(slot, &mut budget, &mut self.scratch[..recv]),
            };
            // A short read or splice emptied the socket's queue: new bytes
            // raise a new edge (see read_service).
            let drained = match step {
                ReadStep::Spliced { drained } => drained,
                ReadStep::Data(n) => n < recv,
                _ => true,
            };
            if !self.protocol_step(slot, key, step) {
                return;
            }
            if drained && self.core.conns.get(slot).is_none_or(|c| !c.hup) {
                return;
            }
        }
    }

    /// Hand what one read gave to the protocol. False: stop reading.
    fn protocol_step(&mut self, slot: usize, key: SessionKey, step: ReadStep) -> bool {
        let core = &mut self.core;
        let Some(id) = core.conns.get(slot).map(|c| c.id(slot)) else {
            return false;
        };
        match step {
            ReadStep::Spliced { .. } => true,
            ReadStep::Eof => {
                core.call(key, |p, ctx| p.on_read_closed(ctx, id));
                false
            }
            ReadStep::Stop => false,
            ReadStep::Failed(kind) => {
                core.abort(slot, CloseReason::Io(kind));
                false
            }
            ReadStep::Data(n) => {
                let max_request = core.setups[core.conns[slot].listener].limits.max_request;
                let data = &self.scratch[..n];
                if let Some(to) = core.conns[slot].splice_to.filter(|_| core.ring.is_some()) {
                    // Completion: a spliced connection's bytes were received
                    // into the ring's buffers; they are queued on `to`
                    // (unless it has closed: then on_data gets them).
                    if core.relay(slot, to, data) {
                        return true;
                    }
                }
                let conn = &mut core.conns[slot];
                if conn.input.is_empty() {
                    let mut used = 0;
                    if !core.call(key, |p, ctx| used = p.on_data(ctx, id, data)) {
                        return false;
                    }
                    let used = used.min(n);
                    if used < n {
                        let conn = &mut core.conns[slot];
                        conn.input = core.bufs.take();
                        conn.input.extend_from_slice(&data[used..]);
                    }
                } else {
                    conn.input.extend_from_slice(data);
                    let input = std::mem::take(&mut conn.input);
                    let mut used = 0;
                    if !core.call(key, |p, ctx| used = p.on_data(ctx, id, &input)) {
                        return false;
                    }
                    let mut input = input;
                    input.drain(..used.min(input.len()));
                    if input.is_empty() {
                        core.bufs.give(input);
                    } else {
                        core.conns[slot].input = input;
                    }
                }
                if core.conns[slot].input.len() > max_request {
                    core.abort(slot, CloseReason::TooLarge);
                    return false;
                }
                true
            }
        }
    }

    fn run_timers(&mut self) {
        let now = self.core.now;
        while let Some((at, due)) = self.core.timers.pop_due(now) {
            match due {
                Due::Conn(id) => self.core.conn_due(id, at),
                Due::Session {
                    slot,
                    generation,
                    timer,
                } => {
                    if self.core.cancelled.remove(&timer) {
                        continue;
                    }
                    let key = SessionKey { slot, generation };
                    self.core.call(key, |p, ctx| p.on_timer(ctx, timer));
                }
                Due::Listener(li) => {
                    if self.listeners[li].paused {
                        self.listeners[li].paused = false;
                        self.listener_interest(li, Interest::NONE, Interest::READ);
                    }
                    self.accept(li);
                }
            }
            self.settle();
        }
    }

    /// Carry out what handlers asked for until nothing is left: flush dirty
    /// connections, deliver deferred events.
    fn settle(&mut self) {
        self.core.settle();
    }
}

/// What one read attempt on a connection gave.
enum ReadStep {
    /// `n` bytes are in the buffer.
    Data(usize),
    /// Bytes were spliced to the destination's pipe; `drained` when fewer
    /// came than there was room for (the socket's queue is empty).
    Spliced {
        /// A short splice: no need to try again before the next edge.
        drained: bool,
    },
    /// The peer sent FIN.
    Eof,
    /// Nothing more now: would block, reading is blocked, or the budget is
    /// spent (then the connection is queued to read again).
    Stop,
    /// A socket error.
    Failed(io::ErrorKind),
}

impl Core {
    /// One read(2) from `slot` into `buf`, within the event's `budget`.
    fn read_step(&mut self, slot: usize, budget: &mut usize, buf: &mut [u8]) -> ReadStep {
        let Some(conn) = self.conns.get_mut(slot) else {
            return ReadStep::Stop;
        };
        if conn.reading_blocked() {
            return ReadStep::Stop;
        }
        if *budget == 0 {
            let id = conn.id(slot);
            self.ready.push_back(id);
            return ReadStep::Stop;
        }
        *budget -= 1;
        loop {
            match conn.sock.read(buf) {
                Ok(0) => {
                    conn.read_eof = true;
                    return ReadStep::Eof;
                }
                Ok(n) => {
                    conn.last_active = self.now;
                    conn.fresh = false;
                    return ReadStep::Data(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadStep::Stop,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return ReadStep::Failed(e.kind()),
            }
        }
    }

    /// One splice(2) from `slot`'s socket into the pipe of `to`'s output
    /// queue, within the event's `budget` and the pipe's free room.
    fn splice_step(&mut self, slot: usize, to: ConnId, budget: &mut usize) -> ReadStep {
        let to_slot = to.slot as usize;
        let Some(conn) = self.conns.get_mut(slot) else {
            return ReadStep::Stop;
        };
        if conn.reading_blocked() {
            return ReadStep::Stop;
        }
        let id = conn.id(slot);
        let room = self
            .conns
            .get(to_slot)
            .filter(|d| d.generation == to.generation)
            .and_then(|d| d.out.pipe_room())
            .map(|(_, room)| room);
        let Some(room) = room else {
            // The destination is gone: its bytes go through on_data again.
            self.conns[slot].splice_to = None;
            self.ready.push_back(id);
            return ReadStep::Stop;
        };
        if room == 0 {
            // Full: wait until the destination drains to half its cap.
            self.conns[slot].splice_stalled = true;
            self.conns[to_slot].over_cap = true;
            return ReadStep::Stop;
        }
        if *budget == 0 {
            self.ready.push_back(id);
            return ReadStep::Stop;
        }
        *budget -= 1;
        let Some((src, dst)) = self.conns.get2_mut(slot, to_slot) else {
            return ReadStep::Stop;
        };
        let Some((pipe, _)) = dst.out.pipe_room() else {
            return ReadStep::Stop;
        };
        loop {
            match pipe.fill_from(&src.sock, room) {
                Ok(0) => {
                    src.read_eof = true;
                    return ReadStep::Eof;
                }
                Ok(n) => {
                    src.last_active = self.now;
                    dst.out.push_piped(n);
                    self.mark_dirty(to_slot);
                    if !self.note_output(to_slot) {
                        self.conns[slot].splice_stalled = true;
                    }
                    return ReadStep::Spliced { drained: n < room };
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if room < pipe.capacity() {
                        // The pipe holds bytes, so it may be out of slots
                        // (one per spliced segment) rather than the socket
                        // empty: no new edge would come if the peer waits
                        // for window. Resume when the destination drains.
                        src.splice_stalled = true;
                        dst.over_cap = true;
                    }
                    return ReadStep::Stop;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return ReadStep::Failed(e.kind()),
            }
        }
    }

    /// The output cap of `slot`: its listener's, or its pipe's capacity
    /// when another connection is spliced into it.
    fn cap_of(&self, slot: usize) -> usize {
        let conn = &self.conns[slot];
        let cap = self.setups[conn.listener].limits.output_cap;
        conn.out.pipe_capacity().map_or(cap, |p| cap.min(p))
    }

    /// Hand the complete requests in `data` (after what `slot` holds) to
    /// `pool`, in order, until the pool or the connection's in-flight limit
    /// is full; the rest stays in the connection's input.
    fn feed_pool(
        &mut self,
        slot: usize,
        pool: &Arc<dyn Pool>,
        shared: &Arc<dyn Service>,
        setup: &ListenerSetup,
        data: &[u8],
    ) {
        let conn = &mut self.conns[slot];
        let mut input = std::mem::take(&mut conn.input);
        let buf: &[u8] = if input.is_empty() {
            data
        } else {
            input.extend_from_slice(data);
            &input
        };
        let id = conn.id(slot);
        let max = setup.limits.max_request;
        let mut pos = 0;
        while pos < buf.len() && !conn.closing {
            if conn.pending.len() >= setup.limits.max_pipelined {
                conn.pool_waiting = true;
                break;
            }
            let rest = &buf[pos..];
            let len = match service::next_frame(&**shared, rest, max) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    // Answered in order, after the requests already running.
                    let mut response = Vec::new();
                    service::reply_error(&**shared, &e, &mut response);
                    let seq = conn.next_seq;
                    conn.next_seq += 1;
                    conn.pending.push_back(Some(Done {
                        conn: id,
                        seq,
                        response,
                        outcome: Err(e),
                    }));
                    pos = buf.len();
                    break;
                }
            };
            let job = Job {
                service: Arc::clone(shared),
                listener: conn.listener as u32,
                request: rest[..len].to_vec(),
                conn: id,
                seq: conn.next_seq,
                reply: self.reply.clone(),
                running: None,
            };
            // Full: ask to be woken when there is room, then try once more
            // (the room may have been made in between).
            let taken = pool.submit(job).or_else(|job| {
                pool.notify_room(&self.reply.waker);
                pool.submit(job)
            });
            match taken {
                Ok(()) => {
                    conn.next_seq += 1;
                    conn.pending.push_back(None);
                    pos += len;
                    self.jobs_out += 1;
                }
                Err(_) => {
                    conn.pool_waiting = true;
                    self.pool_waiters.push(id);
                    break;
                }
            }
        }
        let rest = &buf[pos.min(buf.len())..];
        let keep = if rest.is_empty() || conn.closing {
            Vec::new()
        } else if input.is_empty() {
            let mut fresh = self.bufs.take();
            fresh.extend_from_slice(rest);
            fresh
        } else {
            input.drain(..pos);
            std::mem::take(&mut input)
        };
        self.bufs.give(input);
        conn.input = keep;
        self.emit_done(slot);
    }

    /// Take in the requests pools have finished for this loop, and retry
    /// the connections that found a pool full (the wake may be the pool
    /// saying it has room).
    fn complete_jobs(&mut self) {
        while let Ok(done) = self.completions.try_recv() {
            self.jobs_out = self.jobs_out.saturating_sub(1);
            let slot = done.conn.slot as usize;
            let Some(conn) = self
                .conns
                .get_mut(slot)
                .filter(|c| c.generation == done.conn.generation)
            else {
                // Its connection closed meanwhile.
                continue;
            };
            let Some(at) = done.seq.checked_sub(conn.write_seq) else {
                continue;
            };
            match conn.pending.get_mut(at as usize) {
                Some(entry @ None) => *entry = Some(done),
                // Not waited for (the connection is closing early).
                _ => continue,
            }
            conn.last_active = self.now;
            self.emit_done(slot);
            let conn = &mut self.conns[slot];
            if conn.pool_waiting && !self.pool_waiters.contains(&conn.id(slot)) {
                // It waited on its own in-flight limit: one has finished.
                conn.pool_waiting = false;
                self.ready.push_back(conn.id(slot));
            }
        }
        for id in std::mem::take(&mut self.pool_waiters) {
            if let Some(conn) = self
                .conns
                .get_mut(id.slot as usize)
                .filter(|c| c.generation == id.generation)
            {
                conn.pool_waiting = false;
                self.ready.push_back(id);
            }
        }
    }

    /// Move the finished responses at the head of `slot`'s pending list
    /// into its output, in request order.
    fn emit_done(&mut self, slot: usize) {
        let cap = self.cap_of(slot);
        let conn = &mut self.conns[slot];
        let mut wrote = false;
        while let Some(Some(_)) = conn.pending.front() {
            let Some(Some(done)) = conn.pending.pop_front() else {
                break;
            };
            conn.write_seq += 1;
            conn.out.push_bytes(&done.response, &mut self.bufs);
            wrote = true;
            match done.outcome {
                Ok(Keep::Alive) => continue,
                Ok(Keep::Close) => {
                    conn.close_reason = Some(CloseReason::Local);
                }
                Err(e) => {
                    debug!(peer = ?conn.peer, "request error: {e}");
                    conn.close_reason = Some(match e {
                        ServiceError::TooLarge { .. } => CloseReason::TooLarge,
                        _ => CloseReason::Io(io::ErrorKind::InvalidData),
                    });
                }
            }
            // Nothing after a closing response is sent: forget the rest.
            conn.closing = true;
            conn.pending.clear();
            conn.input.clear();
            break;
        }
        if conn.out.len() >= cap {
            conn.over_cap = true;
        }
        if wrote {
            self.mark_dirty(slot);
        }
    }

    /// A service connection's reads are done for now: at the end of its
    /// stream it closes after its answers.
    fn service_read_done(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.read_eof && !conn.over_cap && !conn.pool_waiting {
            // Everything complete was answered (or handed to a pool); an
            // incomplete tail can never complete now.
            conn.closing = true;
            conn.close_reason.get_or_insert(CloseReason::Local);
        }
        self.mark_dirty(slot);
    }

    /// Queue bytes received on `slot` on `to`, the connection it is
    /// spliced to (`-T completion`). False when `to` has closed.
    fn relay(&mut self, slot: usize, to: ConnId, data: &[u8]) -> bool {
        let to_slot = to.slot as usize;
        let Some(dst) = self
            .conns
            .get_mut(to_slot)
            .filter(|d| d.generation == to.generation)
        else {
            self.conns[slot].splice_to = None;
            return false;
        };
        dst.out.push_bytes(data, &mut self.bufs);
        self.mark_dirty(to_slot);
        if !self.note_output(to_slot) {
            self.conns[slot].splice_stalled = true;
        }
        true
    }

    /// What the readiness backend should watch `slot` for now: always
    /// reads under edge triggering (an edge is not repeated); under level
    /// triggering only when reading is not blocked.
    fn update_interest(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let want = Interest {
            read: !self.level || !conn.reading_blocked(),
            write: conn.writable_interest,
        };
        if want == conn.interest {
            return;
        }
        let Some(p) = self.poller.as_deref_mut() else {
            return;
        };
        match p.set_interest(conn.sock.as_fd(), slot, conn.interest, want) {
            Ok(()) => conn.interest = want,
            Err(e) => self.abort(slot, CloseReason::Io(e.kind())),
        }
    }

    fn get(&self, id: ConnId) -> Option<&Conn> {
        self.conns
            .get(id.slot as usize)
            .filter(|c| c.generation == id.generation)
    }

    fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(id.slot as usize)
            .filter(|c| c.generation == id.generation)
    }

    fn add_conn(
        &mut self,
        sock: TcpStream,
        listener: usize,
        interest: Interest,
    ) -> io::Result<usize> {
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if let Some(p) = self.poller.as_deref_mut() {
            p.set_interest(sock.as_fd(), slot, Interest::NONE, interest)?;
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        let mut conn = Conn::new(sock, self.next_generation as u32, listener, self.now);
        if self.poller.is_some() {
            conn.interest = interest;
        }
        entry.insert(conn);
        Ok(slot)
    }

    fn add_session(&mut self, proto: Box<dyn Protocol>, listener: usize) -> SessionKey {
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let slot = self.sessions.insert(Session {
            generation,
            proto: Some(proto),
            live: 0,
            listener,
        });
        SessionKey { slot, generation }
    }

    /// Run one callback of a session with a [`Ctx`] on this core. Returns
    /// `false` when the session is gone (ended, or it panicked and was
    /// closed): its connections may no longer exist.
    fn call(&mut self, key: SessionKey, f: impl FnOnce(&mut dyn Protocol, &mut Ctx<'_>)) -> bool {
        let Some(session) = self.sessions.get_mut(key.slot) else {
            return false;
        };
        if session.generation != key.generation {
            return false;
        }
        let Some(mut proto) = session.proto.take() else {
            return false;
        };
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            let mut ctx = Ctx {
                core: &mut *self,
                session: key,
            };
            f(&mut *proto, &mut ctx);
        }));
        if outcome.is_err() {
            // The session's state is unknown after a panic: drop it and
            // close its connections; the rest of the loop goes on.
            let owned: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| c.session == Some(key))
                .map(|(slot, _)| slot)
                .collect();
            error!(
                connections = owned.len(),
                "protocol handler panicked: its session is closed"
            );
            self.sessions.remove(key.slot);
            for slot in owned {
                self.close(slot, Some(CloseReason::Io(io::ErrorKind::Other)));
            }
            return false;
        }
        match self.sessions.get_mut(key.slot) {
            Some(session) if session.generation == key.generation => {
                session.proto = Some(proto);
                true
            }
            _ => false,
        }
    }

    fn mark_dirty(&mut self, slot: usize) {
        if let Some(c) = self.conns.get_mut(slot) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    /// After output was queued on `slot`: note whether it is over the cap.
    /// Returns `true` while under it.
    fn note_output(&mut self, slot: usize) -> bool {
        let cap = self.cap_of(slot);
        let conn = &mut self.conns[slot];
        if conn.out.len() >= cap {
            conn.over_cap = true;
            false
        } else {
            true
        }
    }

    /// Arm the deadline entry of `slot` if none is armed as early.
    fn ensure_armed(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let limits = &self.setups[conn.listener].limits;
        if let Some((at, _)) = conn.deadline(limits) {
            if conn.armed.is_none_or(|armed| at < armed) {
                conn.armed = Some(at);
                let id = conn.id(slot);
                self.timers.arm(at, Due::Conn(id));
            }
        }
    }

    fn conn_due(&mut self, id: ConnId, at: Instant) {
        let slot = id.slot as usize;
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.generation != id.generation || conn.armed != Some(at) {
            return;
        }
        conn.armed = None;
        let limits = &self.setups[conn.listener].limits;
        match conn.deadline(limits) {
            None => {}
            Some((real, _)) if real > self.now => {
                conn.armed = Some(real);
                self.timers.arm(real, Due::Conn(id));
            }
            Some((_, Expiry::Connect)) => {
                self.connect_failed(slot, io::ErrorKind::TimedOut);
            }
            Some((_, Expiry::Linger)) => self.close(slot, None),
            Some((_, Expiry::Shutdown)) => {
                warn!(%id, "shutdown grace over: closing a connection whose request did not complete");
                self.close(slot, Some(CloseReason::Shutdown));
            }
            Some((_, Expiry::Idle)) => {
                debug!(%id, "idle timeout");
                self.abort(slot, CloseReason::Idle);
            }
        }
    }

    /// Feed bytes read from a service connection through framing and the
    /// service. `data` empty means: process what the connection holds.
    fn feed_service(
        &mut self,
        slot: usize,
        service: &dyn Service,
        setup: &ListenerSetup,
        data: &[u8],
    ) {
        if let (Some(pool), Handler::Service(shared)) = (&setup.pool, &setup.handler) {
            self.feed_pool(slot, pool, shared, setup, data);
            self.close_after_grace(slot);
            return;
        }
        let direct = self.ring.is_none();
        let conn = &mut self.conns[slot];
        if conn.input.is_empty() {
            let used = serve(conn, &mut self.bufs, service, setup, data, direct);
            if used < data.len() && !conn.closing {
                conn.input = self.bufs.take();
                conn.input.extend_from_slice(&data[used..]);
            }
        } else {
            conn.input.extend_from_slice(data);
            let mut input = std::mem::take(&mut conn.input);
            let used = serve(conn, &mut self.bufs, service, setup, &input, direct);
            input.drain(..used);
            if input.is_empty() || conn.closing {
                self.bufs.give(input);
            } else {
                conn.input = input;
            }
        }
        conn.out.trim(&mut self.bufs);
        self.close_after_grace(slot);
    }

    /// Shutting down with a request of `slot` still arriving: once nothing
    /// incomplete is left, it closes after its answers.
    fn close_after_grace(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if conn.shutdown_deadline.is_some() && conn.input.is_empty() && !conn.pool_waiting {
            conn.closing = true;
            conn.close_reason.get_or_insert(CloseReason::Shutdown);
        }
    }

    /// Write what `slot` has pending and act on its state: interest changes,
    /// half-close, close, lingering, and leaving the over-cap state.
    fn flush(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.connect_deadline.is_some() {
            return;
        }
        if !conn.out.is_empty() {
            let sent = if self.ring.is_some() {
                self.uring_send(slot)
            } else {
                let flushed = conn.out.flush(&mut conn.sock, &mut self.bufs);
                if flushed.is_ok() {
                    conn.last_active = self.now;
                }
                flushed.map(|_| ())
            };
            if let Err(e) = sent {
                self.abort(slot, CloseReason::Io(e.kind()));
                return;
            }
        }
        let conn = &mut self.conns[slot];
        let cork = self.setups[conn.listener].conn_options.cork;
        let id = conn.id(slot);
        if conn.out.is_empty() {
            if cork {
                // Push out the last partial frame; failing here only delays it.
                if let Err(e) = net::push_corked(&conn.sock) {
                    debug!(%id, "uncork: {e}");
                }
            }
            if conn.writable_interest {
                conn.writable_interest = false;
                self.update_interest(slot);
                if !self.conns.contains(slot) {
                    return;
                }
            }
            let conn = &mut self.conns[slot];
            if conn.shut_wr_pending {
                conn.shut_wr_pending = false;
                conn.wr_shut = true;
                if let Err(e) = conn.sock.shutdown(Shutdown::Write) {
                    debug!(%id, "shutdown(write): {e}");
                }
            }
            if conn.closing && conn.linger_deadline.is_none() && conn.pending.is_empty() {
                let reason = conn.close_reason.clone();
                if !conn.read_eof {
                    // Give the last reply time to arrive: closing over unread
                    // input would reset the connection and destroy it.
                    if let Err(e) = conn.sock.shutdown(Shutdown::Write) {
                        debug!(%id, "shutdown(write): {e}");
                    }
                    let linger = self.setups[conn.listener].limits.linger_timeout;
                    conn.linger_deadline = Some(self.now + linger);
                    self.ensure_armed(slot);
                    self.ready.push_back(id);
                } else {
                    self.close(slot, reason);
                }
                return;
            }
        } else if !conn.writable_interest && self.poller.is_some() {
            conn.writable_interest = true;
            self.update_interest(slot);
            if !self.conns.contains(slot) {
                return;
            }
        }
        let cap = self.cap_of(slot);
        let conn = &mut self.conns[slot];
        if conn.over_cap && conn.out.len() <= cap / 2 {
            conn.over_cap = false;
            match conn.session {
                // Services: answer what is buffered, then read again.
                None => self.ready.push_back(id),
                Some(key) => self.deferred.push_back(Deferred::Writable(key, id)),
            }
            if let Some(src) = conn.fed_by {
                if let Some(s) = self
                    .conns
                    .get_mut(src.slot as usize)
                    .filter(|s| s.generation == src.generation && s.splice_stalled)
                {
                    s.splice_stalled = false;
                    self.ready.push_back(src);
                }
            }
        }
    }

    fn settle(&mut self) {
        loop {
            while let Some(slot) = self.dirty.pop() {
                if let Some(c) = self.conns.get_mut(slot) {
                    c.dirty = false;
                    self.flush(slot);
                }
            }
            match self.deferred.pop_front() {
                None => return,
                Some(Deferred::Connected(key, id, result)) => {
                    self.call(key, |p, ctx| p.on_connect(ctx, id, result));
                }
                Some(Deferred::Writable(key, id)) => {
                    self.call(key, |p, ctx| p.on_writable(ctx, id));
                }
                Some(Deferred::Closed(key, id, reason)) => {
                    self.call(key, |p, ctx| p.on_close(ctx, id, reason));
                    if let Some(s) = self.sessions.get(key.slot) {
                        if s.generation == key.generation && s.live == 0 {
                            self.sessions.remove(key.slot);
                        }
                    }
                }
            }
        }
    }

    /// Close at once, dropping pending output.
    fn abort(&mut self, slot: usize, reason: CloseReason) {
        debug!(slot, %reason, "closing connection");
        self.close(slot, Some(reason));
    }

    /// Remove a connection and tell its session.
    fn close(&mut self, slot: usize, reason: Option<CloseReason>) {
        if !self.conns.contains(slot) {
            return;
        }
        // Dropping the socket closes it, which also removes it from the poll
        // set: no deregister syscall needed.
        let mut conn = self.conns.remove(slot);
        if conn.accepted {
            self.setups[conn.listener]
                .active
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.bufs.give(std::mem::take(&mut conn.input));
        let id = conn.id(slot);
        let session = conn.session;
        if let Some(src) = conn.fed_by {
            self.lost_splice_destination(src, id);
        }
        // Under -T completion, a connection with submissions out lives on
        // (output and socket) until they complete.
        let gone = if self.ring.is_some() {
            self.uring_close(slot, conn)
        } else {
            Some(conn)
        };
        if let Some(mut conn) = gone {
            conn.out.clear(&mut self.bufs);
        }
        trace!(%id, "closed");
        if let Some(key) = session {
            if let Some(s) = self.sessions.get_mut(key.slot) {
                if s.generation == key.generation {
                    s.live = s.live.saturating_sub(1);
                    let reason = reason.unwrap_or(CloseReason::Local);
                    self.deferred.push_back(Deferred::Closed(key, id, reason));
                }
            }
        }
    }

    /// `gone`, the connection `src` was spliced into, has closed: `src`
    /// must not wait for it to drain, and its bytes go to on_data from now
    /// on (unless it has been spliced elsewhere since).
    fn lost_splice_destination(&mut self, src: ConnId, gone: ConnId) {
        let slot = src.slot as usize;
        if self.get(src).is_none() {
            return;
        }
        if self.ring.is_some() {
            self.uring_cancel_splice(slot, gone);
        }
        let s = &mut self.conns[slot];
        if s.splice_to == Some(gone) {
            s.splice_stalled = false;
            self.ready.push_back(src);
        }
    }

    fn connect(&mut self, session: SessionKey, addr: SocketAddr) -> io::Result<ConnId> {
        if self.stopping {
            return Err(io::Error::other("server is shutting down"));
        }
        let listener = match self.sessions.get(session.slot) {
            Some(s) if s.generation == session.generation => s.listener,
            _ => return Err(io::Error::other("session has ended")),
        };
        let (sock, addr_buf) = if self.ring.is_some() {
            let (sock, buf) = self.uring_connect(addr)?;
            (sock, Some(buf))
        } else {
            (TcpStream::connect(addr)?, None)
        };
        let slot = self.add_conn(sock, listener, Interest::BOTH)?;
        if addr_buf.is_some() {
            self.conns[slot].io.connect = addr_buf;
            if let Err(e) = self.uring_submit_connect(slot) {
                self.conns[slot].io.connect = None;
                self.conns[slot].accepted = false;
                self.close(slot, None);
                return Err(e);
            }
        }
        let timeout = self.setups[listener].limits.connect_timeout;
        let conn = &mut self.conns[slot];
        conn.accepted = false;
        conn.session = Some(session);
        conn.peer = Some(addr);
        conn.writable_interest = true;
        conn.connect_deadline = Some(self.now + timeout);
        let id = conn.id(slot);
        if let Some(s) = self.sessions.get_mut(session.slot) {
            s.live += 1;
        }
        self.ensure_armed(slot);
        Ok(id)
    }

    fn finish_connect(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        let failure = match conn.sock.take_error() {
            Ok(Some(e)) => Some(e.kind()),
            Err(e) => Some(e.kind()),
            Ok(None) => match conn.sock.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => Some(e.kind()),
            },
        };
        if let Some(kind) = failure {
            self.connect_failed(slot, kind);
            return;
        }
        self.connected(slot);
    }

    /// `slot`'s outbound connect succeeded.
    fn connected(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        conn.connect_deadline = None;
        let options = self.setups[conn.listener].conn_options;
        if let Err(e) = net::configure(&conn.sock, options) {
            debug!(slot, "socket options on outbound connection: {e}");
        }
        let id = conn.id(slot);
        if let Some(key) = conn.session {
            self.deferred
                .push_back(Deferred::Connected(key, id, Ok(())));
        }
        // Bytes queued before the connect completed go out now.
        self.mark_dirty(slot);
        self.ready.push_back(id);
    }

    fn connect_failed(&mut self, slot: usize, kind: io::ErrorKind) {
        let conn = &self.conns[slot];
        let id = conn.id(slot);
        if let Some(key) = conn.session {
            let err = io::Error::new(kind, format!("connect to {:?} failed: {kind}", conn.peer));
            self.deferred
                .push_back(Deferred::Connected(key, id, Err(err)));
        }
        self.close(slot, Some(CloseReason::ConnectFailed(kind)));
    }
}

/// Run complete requests at the front of `buf` through `service`, appending
/// responses to the connection's output. Returns the bytes consumed.
fn serve(
    conn: &mut Conn,
    bufs: &mut BufPool,
    service: &dyn Service,
    setup: &ListenerSetup,
    buf: &[u8],
    direct: bool,
) -> usize {
    let max = setup.limits.max_request;
    let cap = setup.limits.output_cap;
    let coalesce = setup.coalesce;
    let mut pos = 0;
    while !conn.closing && !conn.over_cap {
        // Output pending before this batch, and where the batch starts
        // appending in the tail buffer.
        let queued = conn.out.len();
        let tail = conn.out.tail(bufs);
        let start = tail.len();
        let batch = service::serve_batch(service, &buf[pos..], max, tail, |out| {
            // -K stops after every response so it leaves at once.
            !coalesce || queued + out.len().saturating_sub(start) >= cap
        });
        pos += batch.consumed;
        match batch.end {
            BatchEnd::NeedMore => break,
            BatchEnd::Close => {
                conn.closing = true;
                conn.close_reason = Some(CloseReason::Local);
            }
            BatchEnd::Error(e) => {
                fail(conn, bufs, service, &e);
                return buf.len();
            }
            BatchEnd::Stopped => {}
        }
        // (Under -T completion the send is submitted when the batch is
        // done; what follows gathers behind it while it is out.)
        if !coalesce && direct {
            if let Err(e) = conn.out.flush(&mut conn.sock, bufs) {
                conn.closing = true;
                conn.close_reason = Some(CloseReason::Io(e.kind()));
                conn.out.clear(bufs);
                return buf.len();
            }
        } else if !coalesce {
            // Completion: this response leaves in a send of its own.
            conn.out.seal();
        }
        if conn.out.len() >= cap {
            conn.over_cap = true;
        }
    }
    pos
}

/// Send the service's error reply and close after it.
fn fail(conn: &mut Conn, bufs: &mut BufPool, service: &dyn Service, error: &ServiceError) {
    debug!(peer = ?conn.peer, "request error: {error}");
    // A panicking error reply closes without one.
    service::reply_error(service, error, conn.out.tail(bufs));
    conn.closing = true;
    conn.close_reason = Some(match error {
        ServiceError::TooLarge { .. } => CloseReason::TooLarge,
        _ => CloseReason::Io(io::ErrorKind::InvalidData),
    });
}
