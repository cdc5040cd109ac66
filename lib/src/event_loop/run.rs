//! Building and running a loop: the wait, acting on what it brought, timers,
//! shutdown.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use tracing::warn;

use super::datagram::{token_udp, UDP_BASE};
use super::io::Backend;
use super::mailbox::{Post, Spawner};
use super::output::BufPool;
use super::slots::Slots;
use super::timer::{Due, Timers};
use super::{
    token_conn, Conn, Core, ListenerSetup, ListenerSlot, LoopHandle, LoopSettings, JOB_SPIN,
    LISTENER_BASE, RING_BUFFERS, RING_BUFFER_MAX, SHUTDOWN_GRACE, WAKER,
};
use crate::handler::Handler;
use crate::poll::{self as backend, Cqe, Event, Interest, PollType, Ring, Waker};
use crate::pools::{ExecMode, ReplyTo};
use crate::protocol::ConnId;

/// A socket a listener serves, as bound.
#[derive(Debug)]
pub enum Bound {
    /// A listening TCP socket (`-P tcp`).
    Tcp(std::net::TcpListener),
    /// A UDP socket (`-P udp`).
    Udp(std::net::UdpSocket),
}

impl From<std::net::TcpListener> for Bound {
    fn from(l: std::net::TcpListener) -> Bound {
        Bound::Tcp(l)
    }
}

impl From<std::net::UdpSocket> for Bound {
    fn from(u: std::net::UdpSocket) -> Bound {
        Bound::Udp(u)
    }
}

/// One event loop: a poll instance, its listeners and connections.
pub struct Loop {
    pub(super) events: Vec<Event>,
    pub(super) cqes: Vec<Cqe>,
    pub(super) waker: Arc<Waker>,
    pub(super) core: Core,
    pub(super) listeners: Vec<ListenerSlot>,
    pub(super) scratch: Vec<u8>,
    /// Where a service's answer to a datagram is made.
    pub(super) scratch_out: Vec<u8>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) settings: LoopSettings,
}

impl Loop {
    /// A loop serving `listeners`, each a bound socket (a TCP listener, or
    /// a UDP socket for a `-P udp` listener) with its setup. Returns the
    /// loop and the handle that stops it.
    pub fn new<B: Into<Bound>>(
        listeners: Vec<(B, Arc<ListenerSetup>)>,
        settings: LoopSettings,
    ) -> io::Result<(Loop, LoopHandle)> {
        Loop::build(
            listeners
                .into_iter()
                .map(|(l, s)| (Some(l.into()), s))
                .collect(),
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
        // Non-blocking under every backend, as accepted sockets are: under
        // -T completion a send or splice that finds a blocking socket full
        // would hold an io_uring worker thread.
        stream.set_nonblocking(true)?;
        let peer = stream.peer_addr()?;
        lp.adopt(listener, TcpStream::from_std(stream), peer);
        Ok((lp, handle))
    }

    pub(super) fn build(
        listeners: Vec<(Option<Bound>, Arc<ListenerSetup>)>,
        settings: LoopSettings,
    ) -> io::Result<(Loop, LoopHandle)> {
        let waker = Arc::new(Waker::new(settings.poll == PollType::Completion)?);
        let mut scratch_len = 0;
        for (_, setup) in &listeners {
            scratch_len = scratch_len.max(setup.limits.recv_size.max(1));
        }
        let mut backend = match settings.poll {
            PollType::Completion => {
                let mut ring = Ring::new(RING_BUFFERS, scratch_len.min(RING_BUFFER_MAX))?;
                ring.read_waker(waker.raw_fd())?;
                Backend::Completion(Some(Box::new(ring)))
            }
            kind => {
                let mut poller = backend::readiness(kind)?;
                poller.set_interest(waker.as_fd(), WAKER, Interest::NONE, Interest::READ)?;
                let level = poller.is_level();
                Backend::Readiness { poller, level }
            }
        };
        let mut slots = Vec::new();
        let mut setups = Vec::new();
        let mut datagram_sockets = Vec::new();
        for (i, (bound, setup)) in listeners.into_iter().enumerate() {
            let std_listener = match bound {
                Some(Bound::Tcp(l)) => Some(l),
                Some(Bound::Udp(u)) => {
                    u.set_nonblocking(true)?;
                    datagram_sockets.push((i, u));
                    None
                }
                None => None,
            };
            let sock = match std_listener {
                Some(l) => {
                    let ring = matches!(backend, Backend::Completion(_));
                    l.set_nonblocking(!ring || settings.shared_listeners)?;
                    let sock = TcpListener::from_std(l);
                    if let Backend::Readiness { poller, .. } = &mut backend {
                        poller.set_interest(
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
        let (letters_tx, letters) = crossbeam_channel::unbounded();
        let post = Post {
            tx: letters_tx,
            waker: waker.clone(),
            stop: stop.clone(),
        };
        let handle = LoopHandle {
            waker,
            stop: stop.clone(),
        };
        // Factories that start sessions of their own learn of this loop.
        for (listener, setup) in setups.iter().enumerate() {
            if let Handler::Protocol(factory) = &setup.handler {
                factory.on_loop_start(Spawner {
                    post: post.clone(),
                    listener,
                    setup: setup.clone(),
                });
            }
        }
        let core = Core {
            conns: Slots::default(),
            sessions: Slots::default(),
            udps: Slots::default(),
            udp_dirty: Vec::new(),
            udp_ready: VecDeque::new(),
            udp_bufs: Default::default(),
            setups,
            backend,
            zombies: HashMap::new(),
            timers: Timers::default(),
            bufs: BufPool::new(),
            dirty: Vec::new(),
            ready: VecDeque::new(),
            deferred: VecDeque::new(),
            now: Instant::now(),
            wall: Cell::new(None),
            stopping: false,
            reply,
            completions,
            post,
            letters,
            offload: settings.offload.clone(),
            last_job: 0,
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
            scratch_out: Vec::new(),
            stop,
            settings,
        };
        if lp.core.backend.is_completion() {
            for li in 0..lp.listeners.len() {
                lp.accept(li);
            }
        }
        for (li, sock) in datagram_sockets {
            lp.adopt_udp_listener(li, mio::net::UdpSocket::from_std(sock))?;
        }
        Ok((lp, handle))
    }

    /// The datagram socket of `-P udp` listener `li` joins the loop: a
    /// service's answers each datagram; a protocol's gets one session of
    /// its own, kept until the loop stops.
    fn adopt_udp_listener(&mut self, li: usize, sock: mio::net::UdpSocket) -> io::Result<()> {
        use super::datagram::Owner;
        let setup = self.core.setups[li].clone();
        match &setup.handler {
            Handler::Service(_) => {
                self.core.add_udp(sock, Owner::Service, li)?;
            }
            Handler::Protocol(factory) => {
                let key = self
                    .core
                    .add_session(factory.open(), li)
                    .ok_or_else(|| io::Error::other("no room for a session"))?;
                self.core.sessions[key].kept = true;
                let id = match self.core.add_udp(sock, Owner::Session(key), li) {
                    Ok(id) => id,
                    Err(e) => {
                        self.core.sessions.remove(key);
                        return Err(e);
                    }
                };
                self.core.call(key, |p, ctx| p.on_udp_open(ctx, id));
                self.settle();
            }
        }
        Ok(())
    }

    /// Run until stopped through the [`LoopHandle`] and drained.
    pub fn run(mut self) -> io::Result<()> {
        // The thread that runs the loop is this one.
        if let Err(e) = crate::sys::set_timer_slack(self.settings.timer_slack) {
            warn!("cannot set the loop thread's timer slack: {e}");
        }
        let result = self.run_until_done();
        if self.core.backend.is_completion() {
            self.retire_ring();
        }
        result
    }

    pub(super) fn run_until_done(&mut self) -> io::Result<()> {
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let timeout = if !self.core.ready.is_empty() || !self.core.udp_ready.is_empty() {
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
            self.core.wall.set(None);
            self.handle_events();
            self.run_ready();
            self.run_udp_ready();
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
    pub(super) fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if let Some(ring) = self.core.backend.ring() {
            return ring.wait(&mut self.cqes, timeout);
        }
        match self.core.backend.poller() {
            Some(p) => p.wait(&mut self.events, timeout),
            None => Ok(()),
        }
    }

    /// Act on what the last wait brought.
    pub(super) fn handle_events(&mut self) {
        if self.core.backend.is_completion() {
            let mut cqes = std::mem::take(&mut self.cqes);
            for cqe in cqes.drain(..) {
                self.on_cqe(cqe);
            }
            self.cqes = cqes;
            return;
        }
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            match ev.token {
                WAKER => {
                    if self.core.backend.is_level() {
                        self.waker.reset();
                    }
                    self.core.complete_jobs();
                    self.core.take_letters();
                }
                t if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE),
                t if t >= UDP_BASE => {
                    let id = token_udp(t);
                    if ev.writable || ev.error {
                        self.core.udp_writable(id);
                    }
                    if ev.readable || ev.error {
                        self.udp_read(id);
                    }
                    self.settle();
                }
                t => self.conn_event(token_conn(t), ev),
            }
        }
        self.events = events;
    }

    /// Poll without sleeping for up to [`JOB_SPIN`] while jobs are out.
    /// True when events came (they are in `self.events` or `self.cqes`).
    pub(super) fn spin_for_jobs(&mut self) -> io::Result<bool> {
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

    pub(super) fn begin_shutdown(&mut self) {
        self.core.stopping = true;
        for li in 0..self.listeners.len() {
            self.stop_listening(li);
        }
        let grace = self.core.now + SHUTDOWN_GRACE.min(self.settings.drain_timeout);
        for id in self.core.conns.keys() {
            if let Some(c) = self.core.conns.get_mut(id) {
                // A request may be arriving (a client that connected just
                // before the stop, or one half read): answer it, then
                // close. Losing it would refuse work that a reload
                // promises to keep.
                let may_arrive = (c.life.fresh() || !c.input.is_empty())
                    && c.out.is_empty()
                    && c.jobs.pending.is_empty();
                if c.life.begin_shutdown(may_arrive, grace) {
                    self.core.ensure_armed(id);
                    continue;
                }
            }
            self.core.mark_dirty(id);
        }
    }

    pub(super) fn run_ready(&mut self) {
        let n = self.core.ready.len();
        for _ in 0..n {
            let Some(id) = self.core.ready.pop_front() else {
                break;
            };
            if self.core.conns.get(id).is_some() {
                self.read(id);
                self.settle();
            }
        }
    }

    pub(super) fn run_timers(&mut self) {
        let now = self.core.now;
        while let Some((at, due)) = self.core.timers.pop_due(now) {
            match due {
                Due::Conn(id) => self.core.conn_due(id, at),
                Due::Session(key, timer) => {
                    // A session that asked to end gets no more timers.
                    if self.core.takes_events(key) {
                        self.core.call(key, |p, ctx| p.on_timer(ctx, timer));
                    }
                }
                Due::Deadline(key) => self.core.deadline_due(key),
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
    pub(super) fn settle(&mut self) {
        self.core.settle();
    }

    pub(super) fn conn_event(&mut self, id: ConnId, ev: &Event) {
        let core = &mut self.core;
        let Some(conn) = core.conns.get_mut(id) else {
            return;
        };
        if conn.life.is_connecting() {
            if !self.connect_event(id, ev) {
                return;
            }
        } else {
            // The usual case, with the one lookup above.
            note_event(conn, id, ev, &mut core.dirty);
        }
        if ev.readable || ev.read_closed || ev.error {
            self.read(id);
        }
        self.settle();
    }

    /// [`Loop::conn_event`] for `id` while it connects: the connect's
    /// outcome first, then the event as for any connection. False when
    /// `id` is gone.
    #[cold]
    fn connect_event(&mut self, id: ConnId, ev: &Event) -> bool {
        if ev.writable || ev.error || ev.write_closed {
            self.core.finish_connect(id);
        }
        // on_connect is told before on_data sees the first bytes (and
        // may close this connection).
        self.settle();
        let Some(conn) = self.core.conns.get_mut(id) else {
            return false;
        };
        note_event(conn, id, ev, &mut self.core.dirty);
        true
    }
}

/// What readiness `ev` tells of `conn` (`id`) besides readable: output
/// may go on (queued on `dirty` to flush), or the peer hung up.
#[inline]
fn note_event(conn: &mut Conn, id: ConnId, ev: &Event, dirty: &mut Vec<ConnId>) {
    if ev.writable {
        conn.mark_dirty(id, dirty);
    }
    if ev.read_closed || ev.error {
        conn.hup = true;
    }
}
