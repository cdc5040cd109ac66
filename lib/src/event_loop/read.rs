//! Reading: from the socket (or the ring's completions) to the service
//! framing or the protocol's `on_data`, and splicing.

use std::io::{self, Read};

use super::input::Pending;
use super::{Core, Loop, SessionKey, READ_BUDGET};
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
    pub(super) fn read(&mut self, id: ConnId) {
        if self.core.ring.is_some() {
            self.uring_read(id);
            return;
        }
        let Some(conn) = self.core.conns.get(id) else {
            return;
        };
        if conn.life.is_lingering() {
            self.discard_input(id);
        } else if let Some(key) = conn.proto.session {
            self.read_protocol(id, key);
        } else {
            self.read_service(id);
        }
        if self.core.level {
            self.core.update_interest(id);
        }
    }

    /// Act on what one completed receive gave (`-T completion`): the
    /// readiness backends' read loops do the same per read.
    pub(super) fn handle_step(&mut self, id: ConnId, step: ReadStep) {
        let Some(conn) = self.core.conns.get_mut(id) else {
            return;
        };
        if matches!(step, ReadStep::Eof) {
            conn.life.note_eof();
        }
        if conn.life.is_lingering() {
            if !matches!(step, ReadStep::Data(_)) {
                self.core.close(id, None);
            }
            return;
        }
        if let Some(key) = conn.proto.session {
            self.protocol_step(id, key, step);
            return;
        }
        let setup = self.core.setups[conn.listener].clone();
        let Handler::Service(service) = &setup.handler else {
            return;
        };
        match step {
            ReadStep::Data(n) => {
                self.core
                    .feed_service(id, &**service, &setup, &self.scratch[..n]);
            }
            ReadStep::Failed(kind) => {
                self.core.abort(id, CloseReason::Io(kind));
                return;
            }
            _ => {}
        }
        self.core.service_read_done(id);
    }

    /// Before reading again after a pause: a service answers what it has
    /// buffered first.
    pub(super) fn prime(&mut self, id: ConnId) {
        let conn = &self.core.conns[id];
        if conn.session().is_some() || conn.input.is_empty() || conn.life.over_cap() {
            return;
        }
        let setup = self.core.setups[conn.listener].clone();
        if let Handler::Service(service) = &setup.handler {
            self.core.feed_service(id, &**service, &setup, &[]);
            self.core.service_read_done(id);
        }
    }

    /// Lingering close: read and drop whatever the peer still sends until its
    /// FIN or the linger deadline.
    pub(super) fn discard_input(&mut self, id: ConnId) {
        let core = &mut self.core;
        for _ in 0..READ_BUDGET {
            let Some(conn) = core.conns.get_mut(id) else {
                return;
            };
            match conn.sock.read(&mut self.scratch) {
                Ok(0) => {
                    core.close(id, None);
                    return;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    core.close(id, None);
                    return;
                }
            }
        }
        core.ready.push_back(id);
    }

    pub(super) fn read_service(&mut self, id: ConnId) {
        let core = &mut self.core;
        let setup = core.setups[core.conns[id].listener].clone();
        let Handler::Service(service) = &setup.handler else {
            return;
        };
        let service = &**service;
        let recv = setup.limits.recv_size.min(self.scratch.len());
        // Input left over while output was over the cap comes first.
        if !core.conns[id].input.is_empty() && !core.conns[id].life.over_cap() {
            core.feed_service(id, service, &setup, &[]);
        }
        let mut budget = READ_BUDGET;
        loop {
            match core.read_step(id, &mut budget, &mut self.scratch[..recv]) {
                ReadStep::Data(n) => {
                    core.feed_service(id, service, &setup, &self.scratch[..n]);
                    if n < recv && !core.conns[id].hup {
                        // A short read emptied the socket's queue; new bytes
                        // raise a new edge. Saves the read that would only
                        // return WouldBlock.
                        break;
                    }
                }
                // Services are never spliced.
                ReadStep::Eof | ReadStep::Stop | ReadStep::Spliced { .. } => break,
                ReadStep::Failed(kind) => {
                    core.abort(id, CloseReason::Io(kind));
                    return;
                }
            }
        }
        core.service_read_done(id);
    }

    pub(super) fn read_protocol(&mut self, id: ConnId, key: SessionKey) {
        let core = &mut self.core;
        let limits = &core.setups[core.conns[id].listener].limits;
        let recv = limits.recv_size.min(self.scratch.len());
        let mut budget = READ_BUDGET;
        loop {
            let core = &mut self.core;
            let Some(conn) = core.conns.get(id) else {
                return;
            };
            let step = match conn.proto.splice_to {
                Some(to) => core.splice_step(id, to, &mut budget),
                None => core.read_step(id, &mut budget, &mut self.scratch[..recv]),
            };
            // A short read or splice emptied the socket's queue: new bytes
            // raise a new edge (see read_service).
            let drained = match step {
                ReadStep::Spliced { drained } => drained,
                ReadStep::Data(n) => n < recv,
                _ => true,
            };
            if !self.protocol_step(id, key, step) {
                return;
            }
            if drained && self.core.conns.get(id).is_none_or(|c| !c.hup) {
                return;
            }
        }
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
                if let Some(to) = core.conns[id]
                    .proto
                    .splice_to
                    .filter(|_| core.ring.is_some())
                {
                    // Completion: a spliced connection's bytes were received
                    // into the ring's buffers; they are queued on `to`
                    // (unless it has closed: then on_data gets them).
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

impl Core {
    /// One read(2) from `id` into `buf`, within the event's `budget`.
    pub(super) fn read_step(&mut self, id: ConnId, budget: &mut usize, buf: &mut [u8]) -> ReadStep {
        let Some(conn) = self.conns.get_mut(id) else {
            return ReadStep::Stop;
        };
        if conn.reading_blocked() {
            return ReadStep::Stop;
        }
        if *budget == 0 {
            self.ready.push_back(id);
            return ReadStep::Stop;
        }
        *budget -= 1;
        loop {
            match conn.sock.read(buf) {
                Ok(0) => {
                    conn.life.note_eof();
                    return ReadStep::Eof;
                }
                Ok(n) => {
                    conn.note_read(self.now);
                    return ReadStep::Data(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadStep::Stop,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return ReadStep::Failed(e.kind()),
            }
        }
    }

    /// One splice(2) from `id`'s socket into the pipe of `to`'s output
    /// queue, within the event's `budget` and the pipe's free room.
    pub(super) fn splice_step(&mut self, id: ConnId, to: ConnId, budget: &mut usize) -> ReadStep {
        let Some(conn) = self.conns.get_mut(id) else {
            return ReadStep::Stop;
        };
        if conn.reading_blocked() {
            return ReadStep::Stop;
        }
        let room = self
            .conns
            .get(to)
            .and_then(|d| d.out.pipe_room())
            .map(|(_, room)| room);
        let Some(room) = room else {
            // The destination is gone: its bytes go through on_data again.
            self.conns[id].proto.splice_to = None;
            self.ready.push_back(id);
            return ReadStep::Stop;
        };
        if room == 0 {
            // Full: wait until the destination drains to half its cap.
            self.conns[id].life.holds.splice_stalled = true;
            self.conns[to].life.mark_full();
            return ReadStep::Stop;
        }
        if *budget == 0 {
            self.ready.push_back(id);
            return ReadStep::Stop;
        }
        *budget -= 1;
        let Some((src, dst)) = self.conns.get2_mut(id, to) else {
            return ReadStep::Stop;
        };
        let Some((pipe, _)) = dst.out.pipe_room() else {
            return ReadStep::Stop;
        };
        loop {
            match pipe.fill_from(&src.sock, room) {
                Ok(0) => {
                    src.life.note_eof();
                    return ReadStep::Eof;
                }
                Ok(n) => {
                    src.last_active = self.now;
                    dst.out.push_piped(n);
                    self.mark_dirty(to);
                    if !self.note_output(to) {
                        self.conns[id].life.holds.splice_stalled = true;
                    }
                    return ReadStep::Spliced { drained: n < room };
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if room < pipe.capacity() {
                        // The pipe holds bytes, so it may be out of slots
                        // (one per spliced segment) rather than the socket
                        // empty: no new edge would come if the peer waits
                        // for window. Resume when the destination drains.
                        src.life.holds.splice_stalled = true;
                        dst.life.mark_full();
                    }
                    return ReadStep::Stop;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return ReadStep::Failed(e.kind()),
            }
        }
    }

    /// Queue bytes received on `id` on `to`, the connection it is
    /// spliced to (`-T completion`). False when `to` has closed.
    pub(super) fn relay(&mut self, id: ConnId, to: ConnId, data: &[u8]) -> bool {
        let Some(dst) = self.conns.get_mut(to) else {
            self.conns[id].proto.splice_to = None;
            return false;
        };
        dst.out.push_bytes(data, &mut self.bufs);
        self.mark_dirty(to);
        if !self.note_output(to) {
            self.conns[id].life.holds.splice_stalled = true;
        }
        true
    }
}
