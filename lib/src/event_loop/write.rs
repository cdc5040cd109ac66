//! Writing: flushing a connection's output queue and acting on its state
//! afterwards (half-close, close, lingering, leaving the over-cap state).

use std::net::Shutdown;

use tracing::debug;

use super::{AfterDrain, Core, Deferred};
use crate::net::{self};
use crate::protocol::{CloseReason, ConnId};

impl Core {
    /// Write what `id` has pending and act on its state: interest changes,
    /// half-close, close, lingering, and leaving the over-cap state.
    pub(super) fn flush(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.life.is_connecting() {
            return;
        }
        if !conn.out.is_empty() {
            if let Err(e) = self.send(id) {
                self.abort(id, CloseReason::Io(e.kind()));
                return;
            }
        }
        let conn = &mut self.conns[id];
        let cork = self.setups[conn.listener].conn_options.cork;
        let mut over_cap = conn.life.over_cap();
        if conn.out.is_empty() {
            if cork {
                // Push out the last partial frame; failing here only delays it.
                if let Err(e) = net::push_corked(&conn.sock) {
                    debug!(%id, "uncork: {e}");
                }
            }
            // Nothing waits for the drain as a rule: no lookups for it.
            let awaits_drain = conn.life.awaits_drain();
            if conn.writable_interest {
                self.watch_writable(id, false);
                if !self.conns.contains(id) {
                    return;
                }
            }
            if awaits_drain {
                if !self.after_drain(id) {
                    return;
                }
                over_cap = self.conns[id].life.over_cap();
            }
        } else if !conn.writable_interest {
            self.watch_writable(id, true);
            if !self.conns.contains(id) {
                return;
            }
        }
        if over_cap {
            self.leave_cap(id);
        }
    }

    /// `id`'s output has all left and a half-close or a close waited for
    /// it: carry them out. False when it closed or lingers (nothing more
    /// to do for it now).
    fn after_drain(&mut self, id: ConnId) -> bool {
        let conn = &mut self.conns[id];
        let linger = self.setups[conn.listener].limits.linger_timeout;
        let jobs_pending = !conn.jobs.pending.is_empty();
        let drained = conn.life.drained(jobs_pending, self.now, linger);
        if drained.shutdown_write {
            if let Err(e) = conn.sock.shutdown(Shutdown::Write) {
                debug!(%id, "shutdown(write): {e}");
            }
        }
        match drained.then {
            AfterDrain::Stay => true,
            AfterDrain::Linger { .. } => {
                // Give the last reply time to arrive: closing over unread
                // input would reset the connection and destroy it.
                if let Err(e) = conn.sock.shutdown(Shutdown::Write) {
                    debug!(%id, "shutdown(write): {e}");
                }
                self.ensure_armed(id);
                self.ready.push_back(id);
                false
            }
            AfterDrain::Close(reason) => {
                self.close(id, reason);
                false
            }
        }
    }

    /// `id` was over its output cap: once under half of it again, a
    /// service reads again, a protocol is told it may write, and a splice
    /// stalled on it goes on.
    fn leave_cap(&mut self, id: ConnId) {
        let cap = self.cap_of(id);
        let conn = &mut self.conns[id];
        if conn.life.output_drained(conn.out.len(), cap) {
            match conn.proto.session {
                // Services: answer what is buffered, then read again.
                None => self.ready.push_back(id),
                Some(key) => self.deferred.push_back(Deferred::Writable(key, id)),
            }
            if let Some(src) = conn.proto.fed_by {
                if let Some(s) = self
                    .conns
                    .get_mut(src)
                    .filter(|s| s.life.holds.splice_stalled)
                {
                    s.life.holds.splice_stalled = false;
                    self.ready.push_back(src);
                }
            }
        }
    }
}
