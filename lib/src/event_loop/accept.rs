//! Accepting connections: listener limits, back-off, adopting a socket.

use std::collections::VecDeque;
use std::io::{self};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use tracing::{trace, warn};

use super::timer::Due;
use super::{Lifecycle, Loop, ACCEPT_BACKOFF};
use crate::handler::Handler;
use crate::net::{self};
use crate::poll::Interest;

pub(super) struct ListenerSlot {
    pub(super) sock: Option<TcpListener>,
    pub(super) paused: bool,
    pub(super) last_warning: Option<Instant>,
    /// A multishot accept is out (completion).
    pub(super) armed: bool,
    /// Which one (completion): its user data carries this, so what a
    /// cancelled one still reports is not taken for the current one's.
    pub(super) accept_gen: u32,
    /// Connections the kernel accepted while the listener was at its
    /// limit (completion): served when it resumes.
    pub(super) backlog: VecDeque<std::net::TcpStream>,
}

impl Loop {
    pub(super) fn pause_listener(&mut self, li: usize, why: &str) {
        let now = self.core.now;
        if self.listeners[li].paused {
            return;
        }
        self.listener_interest(li, Interest::READ, Interest::NONE);
        let l = &mut self.listeners[li];
        l.paused = true;
        if l.last_warning
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            l.last_warning = Some(now);
            warn!(
                listener = %self.core.setups[li].name,
                "not accepting for {} ms: {why}",
                ACCEPT_BACKOFF.as_millis()
            );
        }
        self.core
            .timers
            .arm(now + ACCEPT_BACKOFF, Due::Listener(li));
    }

    /// Accept (accept(2) on a non-blocking listener) until the queue is
    /// empty, the listener pauses or it is at its limit. True when it
    /// stopped at an empty queue.
    pub(super) fn accept_ready(&mut self, li: usize) -> bool {
        loop {
            let l = &self.listeners[li];
            if l.paused || l.sock.is_none() || !self.room_to_accept(li) {
                return false;
            }
            let Some(listener) = self.listeners[li].sock.as_ref() else {
                return false;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.adopt(li, stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    if !self.accept_failed(li, &e) {
                        return false;
                    }
                }
            }
        }
    }

    /// Is listener `li` under its `max_connections`? At the limit it
    /// pauses (and says so); under every backend, this is the check.
    pub(super) fn room_to_accept(&mut self, li: usize) -> bool {
        let limits = &self.core.setups[li].limits;
        if self.core.setups[li].active() < limits.max_connections {
            return true;
        }
        let why = format!("max_connections ({}) reached", limits.max_connections);
        self.pause_listener(li, &why);
        false
    }

    /// An accept on listener `li` failed with `e`, under any backend. True
    /// when it may go on at once: the connection went away before it was
    /// taken, or a signal came. Anything else (no descriptors or memory
    /// left, above all) pauses the listener for a moment, so the loop does
    /// not spin on an error that will not go away by itself.
    pub(super) fn accept_failed(&mut self, li: usize, e: &io::Error) -> bool {
        match e.raw_os_error() {
            Some(libc::EINTR | libc::ECONNABORTED | libc::ECONNRESET) => true,
            _ => {
                self.pause_listener(li, &format!("accept: {e}"));
                false
            }
        }
    }

    /// Serve `stream`, accepted on listener `li`.
    pub(super) fn adopt(&mut self, li: usize, stream: TcpStream, peer: SocketAddr) {
        let setup = self.core.setups[li].clone();
        if let Err(e) = net::configure(&stream, setup.conn_options) {
            warn!(listener = %setup.name, %peer, "cannot set socket options: {e}");
            return;
        }
        let service = matches!(setup.handler, Handler::Service(_));
        let life = Lifecycle::accepted(service);
        match self.core.add_conn(stream, li, life, Interest::READ) {
            Ok(id) => {
                setup.active.fetch_add(1, Ordering::Relaxed);
                let conn = &mut self.core.conns[id];
                conn.peer = Some(peer);
                trace!(listener = %setup.name, %peer, %id, "accepted");
                if let Handler::Protocol(factory) = &setup.handler {
                    let Some(key) = self.core.add_session(factory.open(), li) else {
                        // Never while the connection table had room: a
                        // session has one connection at least.
                        warn!(listener = %setup.name, "no room for a session");
                        self.core.close(id, None);
                        return;
                    };
                    self.core.sessions[key].live = 1;
                    self.core.conns[id].proto.session = Some(key);
                    self.core.call(key, |p, ctx| p.on_open(ctx, id));
                }
                self.core.ensure_armed(id);
                self.core.start_reading(id);
            }
            Err(e) => warn!(listener = %setup.name, "cannot register connection: {e}"),
        }
    }
}
