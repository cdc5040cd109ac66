//! Reading: from the socket (or the ring's completions) to the service
//! framing or the protocol's `on_data`, and splicing.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Instant;

use super::conn::Conn;
use super::input::Pending;
use super::{ListenerSetup, Loop, SessionKey, READ_BUDGET};
use crate::handler::Handler;
use crate::protocol::{CloseReason, ConnId};

/// What one read attempt on a connection gave.
pub(super) enum ReadStep {
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

impl Loop {
    /// Go on reading `id` (queued to read, or its socket is readable):
    /// what was held back first, then what a service has buffered, then
    /// the socket ([`Loop::read_socket`]).
    pub(super) fn read(&mut self, id: ConnId) {
        let Some(conn) = self.core.conns.get(id) else {
            return;
        };
        let go_on = if !conn.held.is_empty() {
            self.hand_on_held(id)
        } else if conn.proto.replay {
            self.replay_input(id)
        } else {
            if !conn.input.is_empty() {
                self.prime_buffered(id);
            }
            true
        };
        if go_on {
            self.read_socket(id);
        }
        self.core.reading_changed(id);
    }

    /// Hand on what `id` holds back ([`super::conn::Held`], not empty)
    /// once it may read: in pieces of the read size, as reads would have, then the end
    /// of the stream if it came after them. True when it was all handed on
    /// and reading goes on from the socket; false when reading stops for
    /// now (blocked again, the end of the stream, or the connection is
    /// gone).
    fn hand_on_held(&mut self, id: ConnId) -> bool {
        let Some(conn) = self.core.conns.get_mut(id) else {
            return false;
        };
        if conn.reading_blocked() {
            return false;
        }
        let held = std::mem::take(&mut conn.held.bytes);
        if held.is_empty() {
            // Only the end of the stream: what a service buffered first.
            self.prime(id);
        }
        let mut at = 0;
        while at < held.len() {
            let n = (held.len() - at).min(self.scratch.len());
            self.scratch[..n].copy_from_slice(&held[at..at + n]);
            at += n;
            self.handle_step(id, ReadStep::Data(n));
            let Some(conn) = self.core.conns.get_mut(id) else {
                return false;
            };
            if conn.reading_blocked() {
                let mut rest = held[at..].to_vec();
                rest.append(&mut conn.held.bytes);
                conn.held.bytes = rest;
                return false;
            }
        }
        let Some(conn) = self.core.conns.get_mut(id) else {
            return false;
        };
        if conn.reading_blocked() {
            // What was buffered filled the pool or the output again.
            return false;
        }
        if conn.held.eof {
            conn.held.eof = false;
            self.handle_step(id, ReadStep::Eof);
            return false;
        }
        true
    }

    /// The backend received `step` for `id` without being asked just now
    /// (completion: a receive that stays out): handed on as a read's, or
    /// held back while reading is blocked or older held bytes wait, so
    /// that bytes keep their order ([`super::conn::Held`]).
    pub(super) fn received(&mut self, id: ConnId, step: ReadStep) {
        let Some(conn) = self.core.conns.get_mut(id) else {
            return;
        };
        let blocked = conn.reading_blocked();
        if blocked || !conn.held.is_empty() {
            match step {
                ReadStep::Data(n) => {
                    conn.held.bytes.extend_from_slice(&self.scratch[..n]);
                    if !blocked {
                        self.core.ready.push_back(id);
                    }
                    self.core.reading_changed(id);
                }
                ReadStep::Eof => conn.held.eof = true,
                step => {
                    self.handle_step(id, step);
                }
            }
            return;
        }
        self.handle_step(id, step);
        if self.core.conns.contains(id) {
            self.core.reading_changed(id);
        }
    }

    /// `-T edge | level`: read (or splice) until the socket is drained,
    /// reading is blocked or the event's budget is spent, handing each
    /// result on exactly as a completion's is ([`Loop::handle_step`]).
    #[inline]
    pub(super) fn read_ready(&mut self, id: ConnId) {
        let Some(conn) = self.core.conns.get(id) else {
            return;
        };
        // Its listener's setup, once for every read of this event.
        let setup = Arc::clone(&self.core.setups[conn.listener]);
        let recv = setup.limits.recv_size.min(self.scratch.len());
        let mut budget = READ_BUDGET;
        let mut drained = false;
        loop {
            let core = &mut self.core;
            let Some(conn) = core.conns.get_mut(id) else {
                return;
            };
            if drained && !conn.hup {
                return;
            }
            let step = match conn.proto.splice_to {
                Some(to) if !conn.life.is_lingering() => core.splice_step(id, to, &mut budget),
                _ if !conn.may_read() || !spend_read(&mut budget, &mut core.ready, id) => {
                    ReadStep::Stop
                }
                _ => read_once(conn, &mut self.scratch[..recv], core.now),
            };
            // A short read or splice emptied the socket's queue: new bytes
            // raise a new edge, which saves the read that would only
            // return WouldBlock. Not after the poller reported the peer's
            // FIN or an error: no new edge comes for those.
            drained = match step {
                ReadStep::Spliced { drained } => drained,
                ReadStep::Data(n) => n < recv,
                _ => true,
            };
            if !self.step_with(id, step, &setup) {
                return;
            }
        }
    }

    /// Act on what one read gave, under every backend: a lingering
    /// connection drops its input until the peer's FIN; the rest goes to
    /// the protocol or the service. False: stop reading for now.
    pub(super) fn handle_step(&mut self, id: ConnId, step: ReadStep) -> bool {
        let Some(conn) = self.core.conns.get(id) else {
            return false;
        };
        let setup = Arc::clone(&self.core.setups[conn.listener]);
        self.step_with(id, step, &setup)
    }

    /// [`Loop::handle_step`] with `id`'s listener setup at hand.
    #[inline(always)]
    fn step_with(&mut self, id: ConnId, step: ReadStep, setup: &ListenerSetup) -> bool {
        let Some(conn) = self.core.conns.get_mut(id) else {
            return false;
        };
        if matches!(step, ReadStep::Eof) {
            conn.life.note_eof();
        }
        if conn.life.is_lingering() {
            match step {
                ReadStep::Data(_) => return true,
                ReadStep::Stop => {}
                // The peer's FIN (or an error): lingering is over.
                _ => self.core.close(id, None),
            }
            return false;
        }
        if let Some(key) = conn.proto.session {
            return self.protocol_step(id, key, step);
        }
        let Handler::Service(service) = &setup.handler else {
            return false;
        };
        match step {
            ReadStep::Data(n) => {
                self.core
                    .feed_service(id, &**service, setup, &self.scratch[..n]);
                true
            }
            ReadStep::Failed(kind) => {
                self.core.abort(id, CloseReason::Io(kind));
                false
            }
            // Services are never spliced.
            ReadStep::Eof | ReadStep::Stop | ReadStep::Spliced { .. } => {
                conn.service_read_done(id, &mut self.core.dirty);
                false
            }
        }
    }

    /// Before reading again after a pause: a service answers what it has
    /// buffered first.
    #[inline]
    pub(super) fn prime(&mut self, id: ConnId) {
        if self.core.conns.get(id).is_some_and(|c| !c.input.is_empty()) {
            self.prime_buffered(id);
        }
    }

    /// [`Loop::prime`] for a connection that holds input.
    #[inline(never)]
    fn prime_buffered(&mut self, id: ConnId) {
        let Some(conn) = self.core.conns.get(id) else {
            return;
        };
        if conn.session().is_some() || conn.input.is_empty() || conn.life.over_cap() {
            return;
        }
        let setup = self.core.setups[conn.listener].clone();
        if let Handler::Service(service) = &setup.handler {
            self.core.feed_service(id, &**service, &setup, &[]);
        }
    }

    /// A session asked to see `id`'s unconsumed input again
    /// ([`super::Ctx::replay_input`]): hand it to `on_data` as if it had
    /// just arrived. False: stop reading.
    fn replay_input(&mut self, id: ConnId) -> bool {
        let conn = &mut self.core.conns[id];
        if conn.reading_blocked() {
            // Kept for when reading resumes.
            return true;
        }
        conn.proto.replay = false;
        let Some(key) = conn.session() else {
            return true;
        };
        if conn.input.is_empty() || conn.proto.splice_to.is_some() {
            return true;
        }
        self.protocol_step(id, key, ReadStep::Data(0))
    }

    /// Hand what one read gave to the protocol. False: stop reading.
    pub(super) fn protocol_step(&mut self, id: ConnId, key: SessionKey, step: ReadStep) -> bool {
        let core = &mut self.core;
        if !core.conns.contains(id) {
            return false;
        }
        match step {
            ReadStep::Spliced { .. } => true,
            ReadStep::Eof => {
                core.call(key, |p, ctx| p.on_read_closed(ctx, id));
                false
            }
            ReadStep::Stop => false,
            ReadStep::Failed(kind) => {
                core.abort(id, CloseReason::Io(kind));
                false
            }
            ReadStep::Data(n) => {
                let max_request = core.setups[core.conns[id].listener].limits.max_request;
                let data = &self.scratch[..n];
                if let Some(to) = core.conns[id].proto.splice_to {
                    // Bytes of a spliced connection that were read rather
                    // than spliced (completion: received before the splice
                    // began) are queued on `to` (unless it has closed:
                    // then on_data gets them).
                    if core.relay(id, to, data) {
                        return true;
                    }
                }
                let pending = Pending::new(&mut core.conns[id].input, data);
                let mut used = 0;
                let bytes = pending.bytes();
                if !core.call(key, |p, ctx| used = p.on_data(ctx, id, bytes)) {
                    return false;
                }
                // The session is alive, so is its connection: callbacks
                // only ask for closes, carried out when they return.
                core.conns[id].input = pending.keep_rest(used, false, &mut core.bufs);
                if core.conns[id].input.len() > max_request {
                    core.abort(id, CloseReason::TooLarge);
                    return false;
                }
                true
            }
        }
    }
}

/// One read (or splice) of an event's `budget` for `id`. False when the
/// budget is spent: `id` is queued on `ready` to read again, after the
/// other connections' events.
#[inline]
pub(super) fn spend_read(budget: &mut usize, ready: &mut VecDeque<ConnId>, id: ConnId) -> bool {
    if *budget == 0 {
        ready.push_back(id);
        return false;
    }
    *budget -= 1;
    true
}

/// One read(2) from `conn`'s socket into `buf` at `now`.
#[inline]
fn read_once(conn: &mut Conn, buf: &mut [u8], now: Instant) -> ReadStep {
    loop {
        match conn.sock.read(buf) {
            Ok(0) => {
                conn.life.note_eof();
                return ReadStep::Eof;
            }
            Ok(n) => {
                conn.note_read(now);
                return ReadStep::Data(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadStep::Stop,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return ReadStep::Failed(e.kind()),
        }
    }
}
