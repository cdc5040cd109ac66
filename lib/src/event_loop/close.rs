//! Closing connections and telling their sessions.

use std::sync::atomic::Ordering;

use tracing::{debug, trace};

use super::{Core, Deferred};
use crate::protocol::{CloseReason, ConnId};

impl Core {
    /// Close at once, dropping pending output.
    pub(super) fn abort(&mut self, id: ConnId, reason: CloseReason) {
        debug!(%id, %reason, "closing connection");
        self.close(id, Some(reason));
    }

    /// Remove a connection and tell its session.
    pub(super) fn close(&mut self, id: ConnId, reason: Option<CloseReason>) {
        // Dropping the socket closes it, which also removes it from the poll
        // set: no deregister syscall needed.
        let Some(mut conn) = self.conns.remove(id) else {
            return;
        };
        if conn.accepted {
            self.setups[conn.listener]
                .active
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.bufs.give(std::mem::take(&mut conn.input));
        let session = conn.proto.session;
        let told = conn.proto.attempt.is_none();
        if let Some(src) = conn.proto.fed_by {
            self.lost_splice_destination(src, id);
        }
        // Under -T completion, a connection with submissions out lives on
        // (output and socket) until they complete.
        if let Some(mut conn) = self.release(id, conn) {
            conn.out.clear(&mut self.bufs);
        }
        trace!(%id, "closed");
        // The session counts it as live until on_close has told it, so
        // that it cannot end in between and miss that call.
        if let Some(key) = session {
            if self.sessions.contains(key) {
                let reason = reason.unwrap_or(CloseReason::Local);
                self.deferred.push_back(match told {
                    true => Deferred::Closed(key, id, reason),
                    false => Deferred::Forget(key),
                });
            }
        }
    }

    /// `gone`, the connection `src` was spliced into, has closed: `src`
    /// must not wait for it to drain, and its bytes go to on_data from now
    /// on (unless it has been spliced elsewhere since).
    pub(super) fn lost_splice_destination(&mut self, src: ConnId, gone: ConnId) {
        if !self.conns.contains(src) {
            return;
        }
        self.splice_target_gone(src, gone);
        let s = &mut self.conns[src];
        if s.proto.splice_to == Some(gone) {
            s.life.holds.splice_stalled = false;
            self.ready.push_back(src);
        }
    }
}
