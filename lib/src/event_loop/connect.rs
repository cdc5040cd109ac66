//! Outbound connections opened by protocol sessions.

use std::io::{self};
use std::net::SocketAddr;

use mio::net::TcpStream;
use tracing::debug;

use super::{Core, Deferred, Lifecycle, SessionKey};
use crate::net::{self};
use crate::poll::Interest;
use crate::protocol::{CloseReason, ConnId, ConnectError};

impl Core {
    pub(super) fn connect(
        &mut self,
        session: SessionKey,
        addr: SocketAddr,
    ) -> Result<ConnId, ConnectError> {
        if self.stopping {
            return Err(ConnectError::ShuttingDown);
        }
        let listener = match self.sessions.get(session.slot) {
            Some(s) if s.generation == session.generation => s.listener,
            _ => return Err(ConnectError::SessionEnded),
        };
        let (sock, addr_buf) = if self.ring.is_some() {
            let (sock, buf) = self.uring_connect(addr)?;
            (sock, Some(buf))
        } else {
            (TcpStream::connect(addr)?, None)
        };
        let timeout = self.setups[listener].limits.connect_timeout;
        let life = Lifecycle::outbound(self.now + timeout);
        let slot = self.add_conn(sock, listener, life, Interest::BOTH)?;
        if addr_buf.is_some() {
            self.conns[slot].io.connect = addr_buf;
            if let Err(e) = self.uring_submit_connect(slot) {
                self.conns[slot].io.connect = None;
                self.conns[slot].accepted = false;
                self.close(slot, None);
                return Err(e.into());
            }
        }
        let conn = &mut self.conns[slot];
        conn.accepted = false;
        conn.proto.session = Some(session);
        conn.peer = Some(addr);
        conn.writable_interest = true;
        let id = conn.id(slot);
        if let Some(s) = self.sessions.get_mut(session.slot) {
            s.live += 1;
        }
        self.ensure_armed(slot);
        Ok(id)
    }

    pub(super) fn finish_connect(&mut self, slot: usize) {
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
    pub(super) fn connected(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        conn.life.connected();
        let options = self.setups[conn.listener].conn_options;
        if let Err(e) = net::configure(&conn.sock, options) {
            debug!(slot, "socket options on outbound connection: {e}");
        }
        let id = conn.id(slot);
        if let Some(key) = conn.proto.session {
            self.deferred
                .push_back(Deferred::Connected(key, id, Ok(())));
        }
        // Bytes queued before the connect completed go out now.
        self.mark_dirty(slot);
        self.ready.push_back(id);
    }

    pub(super) fn connect_failed(&mut self, slot: usize, kind: io::ErrorKind) {
        let conn = &self.conns[slot];
        let id = conn.id(slot);
        if let Some(key) = conn.proto.session {
            let err = io::Error::new(kind, format!("connect to {:?} failed: {kind}", conn.peer));
            self.deferred
                .push_back(Deferred::Connected(key, id, Err(err)));
        }
        self.close(slot, Some(CloseReason::ConnectFailed(kind)));
    }
}
