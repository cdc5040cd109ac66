//! Splices between connections ([`crate::Ctx::splice`]): the decisions
//! both kinds of backend share. How much room the destination's pipe has
//! (none: the source stalls until the destination drains to half its cap;
//! a closed destination sends the source's bytes to `on_data` again), what
//! a splice that found no room means, and the accounting of what moved.
//! The readiness backends splice here ([`Core::splice_step`]); the
//! completion backend submits splices with the same decisions.

use std::io;
use std::sync::Arc;

use super::read::spend_read;
use super::{Core, ReadStep};
use crate::protocol::ConnId;
use crate::sys::Pipe;

impl Core {
    /// The pipe of `to` that `id`'s bytes may be spliced into now, and its
    /// free room. None when they may not: `to` has closed (its bytes go to
    /// `on_data` again; `id` is queued to read) or its pipe is full (`id`
    /// stalls until `to` drains to half its cap).
    pub(super) fn splice_room(&mut self, id: ConnId, to: ConnId) -> Option<(Arc<Pipe>, usize)> {
        let room = self
            .conns
            .get(to)
            .and_then(|d| d.out.pipe_room())
            .map(|(pipe, room)| (Arc::clone(pipe), room));
        match room {
            None => {
                if let Some(src) = self.conns.get_mut(id) {
                    src.proto.splice_to = None;
                }
                self.ready.push_back(id);
                None
            }
            Some((_, 0)) => {
                self.stall_splice(id, to);
                None
            }
            room => room,
        }
    }

    /// `id` stops splicing into `to` until `to` drains to half its cap.
    fn stall_splice(&mut self, id: ConnId, to: ConnId) {
        if let Some(src) = self.conns.get_mut(id) {
            src.life.holds.splice_stalled = true;
        }
        if let Some(dst) = self.conns.get_mut(to) {
            dst.life.mark_full();
        }
    }

    /// A splice out of `id` moved nothing. If the pipe it splices into
    /// holds bytes, the pipe may be out of slots (one per spliced segment,
    /// whatever its size) rather than the socket empty: wait for the
    /// destination to drain, as when it is full, rather than try again at
    /// once (or never: no new readiness comes). True when it stalled.
    pub(super) fn splice_found_no_room(&mut self, id: ConnId) -> bool {
        let Some(to) = self.conns.get(id).and_then(|c| c.proto.splice_to) else {
            return false;
        };
        let busy = self
            .conns
            .get(to)
            .and_then(|d| d.out.pipe_room().map(|(p, room)| room < p.capacity()))
            .unwrap_or(false);
        if busy {
            self.stall_splice(id, to);
        }
        busy
    }

    /// Account for `n` bytes just spliced into `to`'s pipe by `src` (None:
    /// a source that has closed since); false when `to` has closed. A full
    /// `to` stalls the source.
    pub(super) fn spliced_into(&mut self, src: Option<ConnId>, to: ConnId, n: usize) -> bool {
        let Some(dst) = self.conns.get_mut(to) else {
            return false;
        };
        dst.out.push_piped(n);
        self.mark_dirty(to);
        if !self.note_output(to) {
            if let Some(s) = src.and_then(|s| self.conns.get_mut(s)) {
                s.life.holds.splice_stalled = true;
            }
        }
        true
    }

    /// Queue bytes received on `id` on `to`, the connection it is
    /// spliced to (`-T completion`: bytes received before its splice began). False when `to` has closed.
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

    /// `-T edge | level`: one splice(2) from `id`'s socket into the pipe
    /// of `to`'s output queue, within the event's `budget` and the pipe's
    /// free room.
    pub(super) fn splice_step(&mut self, id: ConnId, to: ConnId, budget: &mut usize) -> ReadStep {
        if self.conns.get(id).is_none_or(|c| !c.may_read()) {
            return ReadStep::Stop;
        }
        let Some((pipe, room)) = self.splice_room(id, to) else {
            return ReadStep::Stop;
        };
        if !spend_read(budget, &mut self.ready, id) {
            return ReadStep::Stop;
        }
        loop {
            let Some(src) = self.conns.get_mut(id) else {
                return ReadStep::Stop;
            };
            match pipe.fill_from(&src.sock, room) {
                Ok(0) => {
                    src.life.note_eof();
                    return ReadStep::Eof;
                }
                Ok(n) => {
                    src.note_read(self.now);
                    self.spliced_into(Some(id), to, n);
                    return ReadStep::Spliced { drained: n < room };
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // No new edge would come if the pipe is out of slots
                    // and the peer waits for window.
                    self.splice_found_no_room(id);
                    return ReadStep::Stop;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return ReadStep::Failed(e.kind()),
            }
        }
    }
}
