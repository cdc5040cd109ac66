//! What the connection state machine asks of the backend, and nothing
//! more: every branch on [`Backend`] for a connection's or a listener's
//! I/O is here. The decisions (may it read, is anything held back, is
//! output waiting, is it closing, may the listener accept) are made before
//! these are called, by the same code under every `-T`; each request says
//! how each backend carries it out, and the backend reports back through
//! the same state machine ([`Loop::handle_step`], [`Loop::received`],
//! [`Core::flush`], [`Core::connected`], ...).
//!
//! | request | edge | level | completion |
//! |---|---|---|---|
//! | [`register`](Core::register) | add to epoll | add to epoll | nothing |
//! | [`start_reading`](Core::start_reading) | nothing: the registration reports bytes already there | the same | arm a multishot receive |
//! | [`read_socket`](Loop::read_socket) | read(2) or splice(2) until drained | the same | keep a multishot receive (or a poll and splice) out |
//! | [`reading_changed`](Core::reading_changed) | nothing: an edge is not repeated | read interest follows the state | cancel the receive once reading is blocked |
//! | [`send`](Core::send) | write, writev, sendfile, splice until the socket is full | the same | submit one send of the queue's front |
//! | [`watch_writable`](Core::watch_writable) | ask for writability while output waits | the same | nothing: the send that is out says |
//! | [`writes_inline`](Core::writes_inline) | a `-K` response is written as it is made | the same | it is sealed and leaves in a send of its own |
//! | [`outbound`](Core::outbound), [`start_connect`](Core::start_connect) | non-blocking connect(2) | the same | a connect submission |
//! | [`release`](Core::release) | drop the socket | the same | cancel what is out; a zombie until it completes |
//! | [`splice_target_gone`](Core::splice_target_gone) | nothing: splices are synchronous | the same | cancel the splice out into it |
//! | [`accept`](Loop::accept) | accept(2) until WouldBlock | the same | a multishot accept (a readiness poll for shared listeners) |
//! | [`stop_listening`](Loop::stop_listening) | unwatch it | the same | cancel its accept |
//! | [`listener_interest`](Loop::listener_interest) | nothing | watch a listener only while it accepts | nothing |

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use mio::net::TcpStream;
use tracing::{debug, warn};

use super::{token, Conn, Core, Loop, LISTENER_BASE};
use crate::net::ConnOptions;
use crate::poll::{user_data, Interest, Op, Readiness, Ring};
use crate::protocol::{CloseReason, ConnId};

/// How a loop does its I/O (`-T`). The connection state machine decides
/// the same under each; this is who carries it out.
pub(super) enum Backend {
    /// `-T edge | level`: the loop makes the syscalls and is told when a
    /// socket can take them. Under `level`, interest follows what the loop
    /// can act on (it would be told again and again otherwise).
    Readiness {
        poller: Box<dyn Readiness>,
        level: bool,
    },
    /// `-T completion`: the loop submits to io_uring and is told when it is
    /// done. None once a stopping loop has left the ring (with memory the
    /// kernel might still use) allocated.
    Completion(Option<Box<Ring>>),
}

impl Backend {
    /// Under `-T completion`?
    #[inline]
    pub(super) fn is_completion(&self) -> bool {
        matches!(self, Backend::Completion(_))
    }

    /// Under `-T level`?
    #[inline]
    pub(super) fn is_level(&self) -> bool {
        matches!(self, Backend::Readiness { level: true, .. })
    }

    /// The ring, under `-T completion`.
    pub(super) fn ring(&mut self) -> Option<&mut Ring> {
        match self {
            Backend::Completion(ring) => ring.as_deref_mut(),
            Backend::Readiness { .. } => None,
        }
    }

    /// The poller, under `-T edge | level`.
    pub(super) fn poller(&mut self) -> Option<&mut dyn Readiness> {
        match self {
            Backend::Readiness { poller, .. } => Some(&mut **poller),
            Backend::Completion(_) => None,
        }
    }
}

impl Core {
    /// Socket `sock` joins the loop as `id`, to be watched for `interest`.
    /// Returns what it is watched for now.
    pub(super) fn register(
        &mut self,
        sock: &TcpStream,
        id: ConnId,
        interest: Interest,
    ) -> io::Result<Interest> {
        match &mut self.backend {
            Backend::Readiness { poller, .. } => {
                poller.set_interest(sock.as_fd(), token(id), Interest::NONE, interest)?;
                Ok(interest)
            }
            Backend::Completion(_) => Ok(Interest::NONE),
        }
    }

    /// What the readiness backend should watch `id` for now: always
    /// reads under edge triggering (an edge is not repeated); under level
    /// triggering only when reading is not blocked.
    pub(super) fn update_interest(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let want = Interest {
            read: !self.backend.is_level() || conn.may_read(),
            write: conn.writable_interest,
        };
        if want == conn.interest {
            return;
        }
        let Some(p) = self.backend.poller() else {
            return;
        };
        match p.set_interest(conn.sock.as_fd(), token(id), conn.interest, want) {
            Ok(()) => conn.interest = want,
            Err(e) => self.abort(id, CloseReason::Io(e.kind())),
        }
    }

    /// `id` has just joined the loop and may read.
    pub(super) fn start_reading(&mut self, id: ConnId) {
        match &self.backend {
            // Registered for reads: the poller reports bytes already there.
            Backend::Readiness { .. } => {}
            Backend::Completion(_) => self.uring_arm_recv(id),
        }
    }

    /// Whether `id` may read may have changed (after a step, a pause or a
    /// resume).
    #[inline]
    pub(super) fn reading_changed(&mut self, id: ConnId) {
        match &self.backend {
            Backend::Readiness { level: false, .. } => {}
            Backend::Readiness { level: true, .. } => self.update_interest(id),
            Backend::Completion(_) => self.uring_pause_recv(id),
        }
    }

    /// Send what `id` has queued.
    #[inline]
    pub(super) fn send(&mut self, id: ConnId) -> io::Result<()> {
        match &self.backend {
            Backend::Readiness { .. } => {
                let conn = &mut self.conns[id];
                conn.out.flush(&mut conn.sock, &mut self.bufs)?;
                conn.note_write(self.now);
                Ok(())
            }
            Backend::Completion(_) => self.uring_send(id),
        }
    }

    /// Output waits on `id` (`on`), or it has all left.
    pub(super) fn watch_writable(&mut self, id: ConnId, on: bool) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.writable_interest == on || self.backend.is_completion() {
            return;
        }
        conn.writable_interest = on;
        self.update_interest(id);
    }

    /// May a service's response be written to the socket as soon as it is
    /// made (`-K`)? Under completion it is sealed instead, and leaves in a
    /// send of its own once the batch is done.
    #[inline]
    pub(super) fn writes_inline(&self) -> bool {
        !self.backend.is_completion()
    }

    /// A socket for an outbound connection to `addr` (see
    /// [`crate::net::outbound`]): its connect already started under the
    /// readiness backends, submitted by [`Core::start_connect`] under
    /// completion (blocking until then).
    pub(super) fn outbound(
        &mut self,
        addr: SocketAddr,
        source: Option<SocketAddr>,
        options: ConnOptions,
    ) -> io::Result<TcpStream> {
        let readiness = !self.backend.is_completion();
        let sock = crate::net::outbound(addr, source, options, readiness)?;
        Ok(TcpStream::from_std(sock))
    }

    /// Connect `id` (just added, from [`Core::outbound`]) to `addr`.
    pub(super) fn start_connect(&mut self, id: ConnId, addr: SocketAddr) -> io::Result<()> {
        match &self.backend {
            Backend::Readiness { .. } => Ok(()),
            Backend::Completion(_) => self.uring_submit_connect(id, addr),
        }
    }

    /// `conn`, just out of the table, closes. Returns it when it may be
    /// dropped now; under completion, one with submissions out is kept
    /// until they complete (the kernel may still use its memory).
    pub(super) fn release(&mut self, id: ConnId, conn: Conn) -> Option<Conn> {
        match &self.backend {
            Backend::Readiness { .. } => Some(conn),
            Backend::Completion(_) => self.uring_close(id, conn),
        }
    }

    /// `gone`, which `src` is spliced into, has closed.
    pub(super) fn splice_target_gone(&mut self, src: ConnId, gone: ConnId) {
        if self.backend.is_completion() {
            self.uring_cancel_splice(src, gone);
        }
    }
}

impl Core {
    /// Datagram socket `u` joins the loop as `id`: watched for reading.
    pub(super) fn register_udp(
        &mut self,
        u: &mut super::datagram::UdpSock,
        id: crate::protocol::UdpId,
    ) -> io::Result<()> {
        use super::slots::Key;
        use std::os::fd::AsRawFd;
        match &mut self.backend {
            Backend::Readiness { poller, .. } => {
                poller.set_interest(
                    u.sock.as_fd(),
                    super::datagram::udp_token(id),
                    Interest::NONE,
                    Interest::READ,
                )?;
                u.interest = Interest::READ;
            }
            Backend::Completion(ring) => {
                if let Some(ring) = ring.as_deref_mut() {
                    ring.poll_udp(
                        u.sock.as_raw_fd(),
                        id.slot() as usize,
                        id.generation(),
                        false,
                    )?;
                    u.polling = true;
                }
            }
        }
        Ok(())
    }

    /// Datagram socket `u`, just out of the table, closes: under
    /// completion its polls are cancelled (what they still report finds
    /// no socket under their generation).
    pub(super) fn release_udp(&mut self, id: crate::protocol::UdpId, u: super::datagram::UdpSock) {
        use super::slots::Key;
        if let Some(ring) = self.backend.ring() {
            let (slot, generation) = (id.slot() as usize, id.generation());
            for (op, out) in [(Op::UdpPoll, u.polling), (Op::UdpPollOut, u.waits_writable)] {
                if out {
                    if let Err(e) = ring.cancel(user_data(op, slot, generation)) {
                        debug!(sock = %id, "cannot cancel a datagram poll: {e}");
                    }
                }
            }
        }
        drop(u);
    }

    /// `id`'s socket is full: be told when it can take datagrams again.
    pub(super) fn watch_udp_writable(&mut self, id: crate::protocol::UdpId) {
        use super::slots::Key;
        use std::os::fd::AsRawFd;
        if self.backend.is_completion() {
            let Some(fd) = self.udps.get(id).map(|u| u.sock.as_raw_fd()) else {
                return;
            };
            if let Some(ring) = self.backend.ring() {
                if let Err(e) = ring.poll_udp(fd, id.slot() as usize, id.generation(), true) {
                    warn!(sock = %id, "cannot watch a datagram socket: {e}");
                }
            }
        } else {
            self.update_udp_interest(id);
        }
    }
}

impl Loop {
    /// Read from `id`'s socket, which may read (nothing is held back).
    #[inline]
    pub(super) fn read_socket(&mut self, id: ConnId) {
        match &self.core.backend {
            Backend::Readiness { .. } => self.read_ready(id),
            Backend::Completion(_) => self.core.uring_arm_recv(id),
        }
    }

    /// Accept on listener `li`, which may accept.
    pub(super) fn accept(&mut self, li: usize) {
        match &self.core.backend {
            Backend::Completion(_) if !self.settings.shared_listeners => self.uring_accept(li),
            Backend::Completion(_) => {
                if self.accept_ready(li) {
                    self.uring_poll_listener(li);
                }
            }
            Backend::Readiness { .. } => {
                self.accept_ready(li);
            }
        }
    }

    /// Listener `li` closes (the loop is stopping): unwatched, or its
    /// accept cancelled and what the kernel had accepted for it dropped.
    pub(super) fn stop_listening(&mut self, li: usize) {
        let l = &mut self.listeners[li];
        let Some(sock) = l.sock.take() else {
            return;
        };
        match &mut self.core.backend {
            Backend::Readiness { poller, .. } => {
                let token = LISTENER_BASE + li;
                if let Err(e) =
                    poller.set_interest(sock.as_fd(), token, Interest::READ, Interest::NONE)
                {
                    debug!("deregister listener {li}: {e}");
                }
            }
            Backend::Completion(ring) => {
                l.backlog.clear();
                let Some(ring) = ring.as_deref_mut() else {
                    return;
                };
                if l.armed {
                    // A shared listener's is a readiness poll.
                    let op = match self.settings.shared_listeners {
                        true => Op::ListenerPoll,
                        false => Op::Accept,
                    };
                    if let Err(e) = ring.cancel(user_data(op, li, l.accept_gen)) {
                        debug!("cancel accept of listener {li}: {e}");
                    }
                }
            }
        }
    }

    /// Listener `li` goes from being watched for `old` to `new`.
    pub(super) fn listener_interest(&mut self, li: usize, old: Interest, new: Interest) {
        let Backend::Readiness {
            poller,
            level: true,
        } = &mut self.core.backend
        else {
            return;
        };
        let Some(sock) = self.listeners[li].sock.as_ref() else {
            return;
        };
        if let Err(e) = poller.set_interest(sock.as_fd(), LISTENER_BASE + li, old, new) {
            warn!(listener = %self.core.setups[li].name, "cannot change listener interest: {e}");
        }
    }
}
