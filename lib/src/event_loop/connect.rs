//! Outbound connections opened by protocol sessions.

use std::io::{self};
use std::net::SocketAddr;

use tracing::debug;

use super::{Core, Deferred, Lifecycle, SessionKey};
use crate::net::{self};
use crate::poll::Interest;
use crate::protocol::{CloseReason, ConnId, ConnectError, ConnectOptions};

impl Core {
    pub(super) fn connect(
        &mut self,
        session: SessionKey,
        addr: SocketAddr,
        how: ConnectOptions,
    ) -> Result<ConnId, ConnectError> {
        if self.stopping {
            return Err(ConnectError::ShuttingDown);
        }
        let Some(listener) = self.sessions.get(session).map(|s| s.listener) else {
            return Err(ConnectError::SessionEnded);
        };
        let options = how.options.unwrap_or(self.setups[listener].conn_options);
        let sock = self.outbound(addr, how.source, options)?;
        let timeout = self.setups[listener].limits.connect_timeout;
        let life = Lifecycle::outbound(self.now + timeout);
        let id = self.add_conn(sock, listener, life, Interest::BOTH)?;
        if let Err(e) = self.start_connect(id, addr) {
            self.conns[id].accepted = false;
            self.close(id, None);
            return Err(e.into());
        }
        let conn = &mut self.conns[id];
        conn.accepted = false;
        conn.proto.session = Some(session);
        conn.proto.options = how.options;
        conn.peer = Some(addr);
        conn.writable_interest = true;
        if let Some(s) = self.sessions.get_mut(session) {
            s.live += 1;
        }
        self.ensure_armed(id);
        Ok(id)
    }

    pub(super) fn finish_connect(&mut self, id: ConnId) {
        let conn = &mut self.conns[id];
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
            self.connect_failed(id, kind);
            return;
        }
        self.connected(id);
    }

    /// `id`'s outbound connect succeeded.
    pub(super) fn connected(&mut self, id: ConnId) {
        let conn = &mut self.conns[id];
        conn.life.connected();
        let options = conn
            .proto
            .options
            .unwrap_or(self.setups[conn.listener].conn_options);
        if let Err(e) = net::configure(&conn.sock, options) {
            debug!(%id, "socket options on outbound connection: {e}");
        }
        if let Some(key) = conn.proto.session {
            self.deferred
                .push_back(Deferred::Connected(key, id, Ok(())));
        }
        // Bytes queued before the connect completed go out now.
        self.mark_dirty(id);
        self.ready.push_back(id);
    }

    pub(super) fn connect_failed(&mut self, id: ConnId, kind: io::ErrorKind) {
        let conn = &self.conns[id];
        if let Some(key) = conn.proto.session {
            let err = io::Error::new(kind, format!("connect to {:?} failed: {kind}", conn.peer));
            self.deferred
                .push_back(Deferred::Connected(key, id, Err(err)));
        }
        self.close(id, Some(CloseReason::ConnectFailed(kind)));
    }
}
