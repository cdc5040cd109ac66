//! The loop's state that handler callbacks may touch through [`Ctx`]: the
//! connection and session tables, deadlines, and carrying out what callbacks
//! asked for.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crossbeam_channel::Receiver;
use mio::net::TcpStream;
use tracing::{debug, error, warn};

use super::datagram::{UdpBuffers, UdpSock};
use super::io::Backend;
use super::mailbox::{Letter, Mailbox, Post, SpawnSlot};
use super::output::BufPool;
use super::slots::Slots;
use super::timer::{Due, Timers};
use super::{Conn, Ctx, Deferred, Expiry, Lifecycle, ListenerSetup, Session, SessionKey};
use crate::poll::Interest;
use crate::pools::{Done, OffloadPool, ReplyTo};
use crate::protocol::{CloseReason, ConnId, Protocol, UdpId};

/// The loop's state that handler callbacks may touch through [`Ctx`].
pub(crate) struct Core {
    /// Who carries out the I/O (`-T`). First, so it is dropped first: the
    /// kernel lets go of the connections' buffers before they are freed.
    pub(super) backend: Backend,
    /// Connections by id. Callbacks never remove one: they ask for
    /// closes, which the loop carries out when they return; so a
    /// connection the loop is working on stays while it calls one.
    pub(super) conns: Slots<ConnId, Conn>,
    pub(super) sessions: Slots<SessionKey, Session>,
    /// Datagram sockets by id.
    pub(super) udps: Slots<UdpId, UdpSock>,
    /// Datagram sockets with datagrams queued since the last flush.
    pub(super) udp_dirty: Vec<UdpId>,
    /// Datagram sockets that yielded with datagrams left to read.
    pub(super) udp_ready: VecDeque<UdpId>,
    pub(super) udp_bufs: UdpBuffers,
    pub(super) setups: Vec<Arc<ListenerSetup>>,
    /// Closed connections whose submissions are still out (completion).
    pub(super) zombies: HashMap<ConnId, Conn>,
    pub(super) timers: Timers,
    pub(super) bufs: BufPool,
    pub(super) dirty: Vec<ConnId>,
    pub(super) ready: VecDeque<ConnId>,
    pub(super) deferred: VecDeque<Deferred>,
    pub(super) now: Instant,
    /// The system time of this iteration, read the first time a session
    /// asks ([`Ctx::wall_now`]) and forgotten when `now` moves.
    pub(super) wall: Cell<Option<SystemTime>>,
    /// Shutting down: no new outbound connections.
    pub(super) stopping: bool,
    /// Where pools send finished requests for this loop, and where they
    /// arrive.
    pub(super) reply: ReplyTo,
    pub(super) completions: Receiver<Done>,
    /// This loop's post (for the addresses and spawners it hands out),
    /// and the letters that arrive through it.
    pub(super) post: Post,
    pub(super) letters: Receiver<Letter>,
    /// Where [`Ctx::offload`] sends jobs, and the last job id given.
    pub(super) offload: Arc<OffloadPool>,
    pub(super) last_job: u64,
    /// Connections waiting for room in a full pool.
    pub(super) pool_waiters: Vec<ConnId>,
    /// Jobs handed to a pool and not yet back.
    pub(super) jobs_out: usize,
    /// Poll for a moment before sleeping while jobs are out: the pool is
    /// in this process and answers within microseconds. (Not for worker
    /// processes: their round trip needs the CPU the spinning would take.)
    pub(super) spin_for_jobs: bool,
}

impl Core {
    /// The output cap of `id`: its listener's, or its pipe's capacity
    /// when another connection is spliced into it.
    pub(super) fn cap_of(&self, id: ConnId) -> usize {
        let conn = &self.conns[id];
        let cap = self.setups[conn.listener].limits.output_cap;
        conn.out.pipe_capacity().map_or(cap, |p| cap.min(p))
    }

    pub(super) fn add_conn(
        &mut self,
        sock: TcpStream,
        listener: usize,
        life: Lifecycle,
        interest: Interest,
    ) -> io::Result<ConnId> {
        let full = || io::Error::other("this loop holds as many connections as it can");
        let id = self.conns.next_key().ok_or_else(full)?;
        let watched = self.register(&sock, id, interest)?;
        let mut conn = Conn::new(sock, listener, life, self.now);
        conn.interest = watched;
        self.conns.insert(conn).ok_or_else(full)
    }

    pub(super) fn add_session(
        &mut self,
        proto: Box<dyn Protocol>,
        listener: usize,
    ) -> Option<SessionKey> {
        // One connection per session at least, so as many sessions fit as
        // connections: the connection table refuses first.
        self.sessions.insert(Session::new(proto, listener))
    }

    /// Take in the letters other threads posted: sessions to start and
    /// messages for live ones.
    pub(super) fn take_letters(&mut self) {
        while let Ok(letter) = self.letters.try_recv() {
            match letter {
                Letter::Start {
                    proto,
                    listener,
                    mailbox,
                    slot,
                } => self.start_session(proto, listener, mailbox, slot),
                Letter::Message { to, msg } => {
                    to.queued.fetch_sub(1, Ordering::AcqRel);
                    // The key's generation tells this session from a later
                    // one in its slot.
                    let live = to.key.get().copied().filter(|k| self.takes_events(*k));
                    match live {
                        Some(key) => {
                            self.call(key, |p, ctx| p.on_message(ctx, msg));
                        }
                        None => debug!("a message reached a session that has ended: dropped"),
                    }
                }
                Letter::Resolved {
                    key,
                    job,
                    result,
                    how,
                } => self.resolved(key, job, result, how),
                Letter::Done { key, job, result } => {
                    if self.takes_events(key) {
                        self.call(key, |p, ctx| p.on_done(ctx, job, result));
                    } else {
                        debug!("an offloaded job finished after its session ended: result dropped");
                    }
                }
            }
            self.settle();
        }
    }

    /// Start a spawned session: it has no connection and is kept until it
    /// ends itself.
    fn start_session(
        &mut self,
        proto: Box<dyn Protocol>,
        listener: usize,
        mailbox: Arc<Mailbox>,
        slot: SpawnSlot,
    ) {
        if self.stopping {
            mailbox.end();
            debug!("a session to start reached a loop that is stopping: dropped");
            return;
        }
        let mut session = Session::new(proto, listener);
        session.kept = true;
        session.mailbox = Some(mailbox.clone());
        session._slot = Some(slot);
        let Some(key) = self.sessions.insert(session) else {
            warn!("this loop holds as many sessions as it can: a spawned session was dropped");
            return;
        };
        let _ = mailbox.key.set(key);
        self.call(key, |p, ctx| p.on_start(ctx));
        self.end_if_over(key);
    }

    /// Is session `key` there to be told of timers, messages and jobs (it
    /// has not ended, nor asked to)?
    pub(super) fn takes_events(&self, key: SessionKey) -> bool {
        self.sessions.get(key).is_some_and(|s| !s.ending)
    }

    /// The connections session `key` owns.
    fn conns_of(&self, key: SessionKey) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.proto.session == Some(key))
            .map(|(id, _)| id)
            .collect()
    }

    /// Remove session `key` if it has ended (see [`Session::is_over`]).
    pub(super) fn end_if_over(&mut self, key: SessionKey) {
        if self.sessions.get(key).is_some_and(Session::is_over) {
            self.remove_session(key);
        }
    }

    fn remove_session(&mut self, key: SessionKey) {
        self.sessions.remove(key);
        self.timers.forget_deadline(key);
        self.close_udps_of(key);
    }

    /// Session `key`'s [`Protocol::poll_timeout`] came due: tell it if the
    /// deadline it reports now has passed (it may have moved since).
    pub(super) fn deadline_due(&mut self, key: SessionKey) {
        if !self.takes_events(key) {
            return;
        }
        self.call(key, |p, ctx| {
            if p.poll_timeout().is_some_and(|at| at <= ctx.now()) {
                p.on_timeout(ctx);
            }
        });
    }

    /// Session `key` asked to end: close its connections (each once its
    /// output is written); it is removed when the last has closed.
    fn end_session(&mut self, key: SessionKey) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        session.ending = true;
        if let Some(mb) = &session.mailbox {
            mb.end();
        }
        let owned = self.conns_of(key);
        for id in owned {
            if let Some(c) = self.conns.get_mut(id) {
                c.life.close(None);
                self.mark_dirty(id);
            }
        }
        self.end_if_over(key);
    }

    /// Run one callback of a session with a [`Ctx`] on this core. Returns
    /// `false` when the session is gone (ended, or it panicked and was
    /// closed): its connections may no longer exist.
    pub(super) fn call(
        &mut self,
        key: SessionKey,
        f: impl FnOnce(&mut dyn Protocol, &mut Ctx<'_>),
    ) -> bool {
        let Some(session) = self.sessions.get_mut(key) else {
            return false;
        };
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
            let owned = self.conns_of(key);
            error!(
                connections = owned.len(),
                "protocol handler panicked: its session is closed"
            );
            self.remove_session(key);
            for id in owned {
                self.close(id, Some(CloseReason::Panicked));
            }
            return false;
        }
        match self.sessions.get_mut(key) {
            Some(session) => {
                let next = if session.ending {
                    None
                } else {
                    proto.poll_timeout()
                };
                session.proto = Some(proto);
                if let Some(at) = next {
                    self.timers.arm_deadline(key, at);
                }
                true
            }
            None => false,
        }
    }

    pub(super) fn mark_dirty(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            c.mark_dirty(id, &mut self.dirty);
        }
    }

    /// After output was queued on `id`: note whether it is over the cap.
    /// Returns `true` while under it.
    pub(super) fn note_output(&mut self, id: ConnId) -> bool {
        let cap = self.cap_of(id);
        let conn = &mut self.conns[id];
        conn.life.output_grew(conn.out.len(), cap)
    }

    /// Arm the deadline entry of `id` if none is armed as early.
    pub(super) fn ensure_armed(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let limits = &self.setups[conn.listener].limits;
        if let Some((at, _)) = conn.deadline(limits) {
            if conn.armed.is_none_or(|armed| at < armed) {
                conn.armed = Some(at);
                self.timers.arm(at, Due::Conn(id));
            }
        }
    }

    pub(super) fn conn_due(&mut self, id: ConnId, at: Instant) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.armed != Some(at) {
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
                self.connect_failed(id, io::ErrorKind::TimedOut);
            }
            Some((_, Expiry::Linger)) => self.close(id, None),
            Some((_, Expiry::Shutdown)) => {
                warn!(%id, "shutdown grace over: closing a connection whose request did not complete");
                self.close(id, Some(CloseReason::Shutdown));
            }
            Some((_, Expiry::Idle)) => {
                debug!(%id, "idle timeout");
                self.abort(id, CloseReason::Idle);
            }
        }
    }

    pub(super) fn settle(&mut self) {
        loop {
            while let Some(id) = self.dirty.pop() {
                if let Some(c) = self.conns.get_mut(id) {
                    c.dirty = false;
                    self.flush(id);
                }
            }
            self.flush_udps();
            match self.deferred.pop_front() {
                None => return,
                Some(Deferred::Connected(key, id, result)) => {
                    self.call(key, |p, ctx| p.on_connect(ctx, id, result));
                }
                Some(Deferred::Writable(key, id)) => {
                    self.call(key, |p, ctx| p.on_writable(ctx, id));
                }
                Some(Deferred::Closed(key, id, reason)) => {
                    if let Some(s) = self.sessions.get_mut(key) {
                        s.live = s.live.saturating_sub(1);
                    }
                    self.call(key, |p, ctx| p.on_close(ctx, id, reason));
                    self.end_if_over(key);
                }
                Some(Deferred::UdpWritable(key, sock)) => {
                    if self.takes_events(key) {
                        self.call(key, |p, ctx| p.on_udp_writable(ctx, sock));
                    }
                }
                Some(Deferred::UdpError(key, sock, error)) => {
                    if self.takes_events(key) {
                        self.call(key, |p, ctx| p.on_udp_error(ctx, sock, error));
                    }
                }
                Some(Deferred::Forget(key)) => {
                    if let Some(s) = self.sessions.get_mut(key) {
                        s.live = s.live.saturating_sub(1);
                    }
                    self.end_if_over(key);
                }
                Some(Deferred::Resolved(key, job, result)) => {
                    if self.takes_events(key) {
                        self.call(key, |p, ctx| p.on_resolved(ctx, job, result));
                    }
                    self.end_if_over(key);
                }
                Some(Deferred::End(key)) => self.end_session(key),
            }
        }
    }
}
