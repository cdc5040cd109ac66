//! The loop's state that handler callbacks may touch through [`Ctx`]: the
//! connection and session tables, deadlines, and carrying out what callbacks
//! asked for.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::AsFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use mio::net::TcpStream;
use slab::Slab;
use tracing::{debug, error, warn};

use super::output::BufPool;
use super::timer::{Due, Timers};
use super::{Conn, Ctx, Deferred, Expiry, Lifecycle, ListenerSetup, Session, SessionKey};
use crate::poll::{Interest, Readiness, Ring};
use crate::pools::{Done, ReplyTo};
use crate::protocol::{CloseReason, ConnId, Protocol, TimerId};

/// The loop's state that handler callbacks may touch through [`Ctx`].
pub(crate) struct Core {
    /// The ring (`-T completion`). First, so it is dropped first: the
    /// kernel lets go of the connections' buffers before they are freed.
    pub(super) ring: Option<Box<Ring>>,
    pub(super) conns: Slab<Conn>,
    pub(super) sessions: Slab<Session>,
    pub(super) next_generation: u64,
    pub(super) setups: Vec<Arc<ListenerSetup>>,
    /// The readiness backend (`-T edge`, `-T level`), when there is no ring.
    pub(super) poller: Option<Box<dyn Readiness>>,
    /// Level-triggered: interest follows what the loop can act on.
    pub(super) level: bool,
    /// Closed connections whose submissions are still out (completion).
    pub(super) zombies: HashMap<(usize, u32), Conn>,
    pub(super) timers: Timers,
    pub(super) cancelled: HashSet<TimerId>,
    pub(super) bufs: BufPool,
    pub(super) dirty: Vec<usize>,
    pub(super) ready: VecDeque<ConnId>,
    pub(super) deferred: VecDeque<Deferred>,
    pub(super) now: Instant,
    /// Shutting down: no new outbound connections.
    pub(super) stopping: bool,
    /// Where pools send finished requests for this loop, and where they
    /// arrive.
    pub(super) reply: ReplyTo,
    pub(super) completions: Receiver<Done>,
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
    /// The output cap of `slot`: its listener's, or its pipe's capacity
    /// when another connection is spliced into it.
    pub(super) fn cap_of(&self, slot: usize) -> usize {
        let conn = &self.conns[slot];
        let cap = self.setups[conn.listener].limits.output_cap;
        conn.out.pipe_capacity().map_or(cap, |p| cap.min(p))
    }

    pub(super) fn get(&self, id: ConnId) -> Option<&Conn> {
        self.conns
            .get(id.slot as usize)
            .filter(|c| c.generation == id.generation)
    }

    pub(super) fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(id.slot as usize)
            .filter(|c| c.generation == id.generation)
    }

    pub(super) fn add_conn(
        &mut self,
        sock: TcpStream,
        listener: usize,
        life: Lifecycle,
        interest: Interest,
    ) -> io::Result<usize> {
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if let Some(p) = self.poller.as_deref_mut() {
            p.set_interest(sock.as_fd(), slot, Interest::NONE, interest)?;
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        let mut conn = Conn::new(sock, self.next_generation as u32, listener, life, self.now);
        if self.poller.is_some() {
            conn.interest = interest;
        }
        entry.insert(conn);
        Ok(slot)
    }

    pub(super) fn add_session(&mut self, proto: Box<dyn Protocol>, listener: usize) -> SessionKey {
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
    pub(super) fn call(
        &mut self,
        key: SessionKey,
        f: impl FnOnce(&mut dyn Protocol, &mut Ctx<'_>),
    ) -> bool {
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
                .filter(|(_, c)| c.proto.session == Some(key))
                .map(|(slot, _)| slot)
                .collect();
            error!(
                connections = owned.len(),
                "protocol handler panicked: its session is closed"
            );
            self.sessions.remove(key.slot);
            for slot in owned {
                self.close(slot, Some(CloseReason::Panicked));
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

    pub(super) fn mark_dirty(&mut self, slot: usize) {
        if let Some(c) = self.conns.get_mut(slot) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    /// After output was queued on `slot`: note whether it is over the cap.
    /// Returns `true` while under it.
    pub(super) fn note_output(&mut self, slot: usize) -> bool {
        let cap = self.cap_of(slot);
        let conn = &mut self.conns[slot];
        conn.life.output_grew(conn.out.len(), cap)
    }

    /// Arm the deadline entry of `slot` if none is armed as early.
    pub(super) fn ensure_armed(&mut self, slot: usize) {
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

    pub(super) fn conn_due(&mut self, id: ConnId, at: Instant) {
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

    pub(super) fn settle(&mut self) {
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

    /// What the readiness backend should watch `slot` for now: always
    /// reads under edge triggering (an edge is not repeated); under level
    /// triggering only when reading is not blocked.
    pub(super) fn update_interest(&mut self, slot: usize) {
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
}
