//! The loop under `-T completion`: what it submits and what it does with
//! each completion. The connection state, handlers, framing, output queue
//! and timers are the same as under the readiness backends; only the I/O
//! differs:
//!
//! - a connection that may read has one multishot receive out; its bytes
//!   arrive in the ring's provided buffers and go to the state machine at
//!   once ([`Loop::received`], which holds them back if reading was
//!   blocked meanwhile, and the receive is cancelled); the buffer goes
//!   back to the kernel right after;
//! - a connection with output has one send out (a `send`, `sendmsg`, or a
//!   splice out of its pipe), whose chunks stay locked in the output queue
//!   until it completes;
//! - a connection that closes with submissions out becomes a *zombie*:
//!   they are cancelled and its socket and buffers live until the last one
//!   completes, so the kernel never writes into freed memory.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::net::TcpStream;
use tracing::{debug, error, warn};

use super::io::Backend;
use super::output::{Front, Sending, Sent};
use super::slots::Key;
use super::{Conn, Core, Loop, ReadStep};
use crate::poll::{user_data, Cqe, Op};
use crate::protocol::{CloseReason, ConnId};
use crate::sys::Pipe;

/// Size of the pipe file ranges are spliced through.
const FILE_PIPE: usize = 1 << 20;

/// How long a stopping loop waits for its submissions to complete.
const RETIRE_WAIT: Duration = Duration::from_millis(500);

/// A connection's submissions under `-T completion`.
#[derive(Default)]
pub(crate) struct Inflight {
    /// Its multishot receive.
    pub recv: Recv,
    /// The send out on its output queue, if any (its bytes are lent to
    /// the ring until it completes).
    pub send: Option<Sending>,
    /// The last send moved nothing (`-EAGAIN`): the next one waits until
    /// the socket is writable.
    pub poll_first: bool,
    /// An outbound connect in flight (the ring holds its address).
    pub connecting: bool,
    /// A poll-then-splice into the pipe of the connection it is spliced
    /// to: that pipe, kept open here until it completes, and that
    /// connection (what it moves is counted there, even if the splice was
    /// pointed elsewhere meanwhile).
    pub splice_in: Option<(Arc<Pipe>, ConnId)>,
    /// Bytes a splice moved into the pipe of a connection that closed
    /// meanwhile, read back out (and held, for on_data) once nothing else
    /// holds that pipe (a send of the closed connection may still be
    /// draining it). Reading waits until then, so they stay first.
    pub reclaim: Option<(Arc<Pipe>, usize)>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recv {
    #[default]
    Idle,
    Armed,
    Cancelling,
}

impl Inflight {
    fn count(&self) -> usize {
        usize::from(self.recv != Recv::Idle)
            + usize::from(self.send.is_some())
            + usize::from(self.connecting)
            + usize::from(self.splice_in.is_some())
    }
}

/// The user data of operation `op` of connection `id`.
fn ud(op: Op, id: ConnId) -> u64 {
    user_data(op, id.slot as usize, id.generation)
}

/// The connection a completion is for (it may have closed since).
fn cqe_conn(cqe: &Cqe) -> ConnId {
    ConnId::from_parts(cqe.slot as u32, cqe.generation)
}

impl Core {
    /// Arm `id`'s receive if it may read and none is out (or its splice
    /// into the connection it is spliced to).
    pub(super) fn uring_arm_recv(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.io.reclaim.is_some() {
            return;
        }
        if let Some(to) = conn.proto.splice_to {
            self.uring_arm_splice(id, to);
            return;
        }
        if conn.io.recv != Recv::Idle || !conn.may_read() || conn.io.connecting {
            return;
        }
        let fd = conn.sock.as_raw_fd();
        let Some(ring) = self.backend.ring() else {
            return;
        };
        match ring.recv_multi(fd, id.slot as usize, id.generation) {
            Ok(()) => self.conns[id].io.recv = Recv::Armed,
            Err(e) => self.abort(id, CloseReason::Io(e.kind())),
        }
    }

    /// Splice `id`'s bytes into `to`'s pipe as they come, once its
    /// receive (if one was out before the splice began) has stopped.
    fn uring_arm_splice(&mut self, id: ConnId, to: ConnId) {
        let conn = &mut self.conns[id];
        if conn.io.splice_in.is_some() || !conn.may_read() {
            return;
        }
        match conn.io.recv {
            Recv::Idle => {}
            Recv::Cancelling => return,
            Recv::Armed => {
                // Bytes already on their way arrive first (and are queued
                // on `to`); the splice starts when the receive has ended.
                conn.io.recv = Recv::Cancelling;
                let ud = ud(Op::Recv, id);
                if let Some(ring) = self.backend.ring() {
                    if let Err(e) = ring.cancel(ud) {
                        warn!(%id, "cannot cancel a receive: {e}");
                    }
                }
                return;
            }
        }
        let fd = conn.sock.as_raw_fd();
        let Some((pipe, room)) = self.splice_room(id, to) else {
            return;
        };
        let Some(ring) = self.backend.ring() else {
            return;
        };
        let pipe_fd = pipe.write_fd().as_raw_fd();
        // The socket lives as long as this connection (a zombie until the
        // splice completes), and the pipe as long as the clone kept in
        // `splice_in`, whoever closes first.
        let submitted =
            ring.splice_when_readable(fd, pipe_fd, room, id.slot as usize, id.generation);
        match submitted {
            Ok(()) => self.conns[id].io.splice_in = Some((pipe, to)),
            Err(e) => self.abort(id, CloseReason::Io(e.kind())),
        }
    }

    /// `n` bytes of `id` went into `pipe`, whose connection has closed:
    /// read them back for on_data now if nothing else holds the pipe, else
    /// once the closed connection's last submission is done
    /// ([`Core::uring_reclaim`]).
    fn uring_take_back(&mut self, id: ConnId, pipe: Arc<Pipe>, n: usize) {
        self.conns[id].io.reclaim = Some((pipe, n));
        self.uring_reclaim(id);
    }

    /// Read back what `src` spliced into a closed connection's pipe, once
    /// that pipe is `src`'s alone.
    pub(super) fn uring_reclaim(&mut self, src: ConnId) {
        let Some(conn) = self.conns.get_mut(src) else {
            return;
        };
        if conn
            .io
            .reclaim
            .as_ref()
            .is_none_or(|(pipe, _)| Arc::strong_count(pipe) > 1)
        {
            return;
        }
        let Some((pipe, n)) = conn.io.reclaim.take() else {
            return;
        };
        match pipe.take_last(n) {
            Ok(bytes) => {
                conn.held.bytes.extend_from_slice(&bytes);
                self.ready.push_back(src);
            }
            Err(e) => self.abort(src, CloseReason::Io(e.kind())),
        }
    }

    /// Stop the poll-then-splice of `id` into `gone`, which closed; its
    /// completion arms a receive instead (or hands back what it moved).
    pub(super) fn uring_cancel_splice(&mut self, id: ConnId, gone: ConnId) {
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        if conn.io.splice_in.as_ref().is_none_or(|(_, to)| *to != gone) {
            return;
        }
        if let Some(ring) = self.backend.ring() {
            for op in [Op::Poll, Op::SpliceIn] {
                if let Err(e) = ring.cancel(ud(op, id)) {
                    debug!(%id, "cancel: {e}");
                }
            }
        }
    }

    /// Reading on `id` became blocked: stop its receive.
    pub(super) fn uring_pause_recv(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.io.recv != Recv::Armed || !conn.reading_blocked() {
            return;
        }
        conn.io.recv = Recv::Cancelling;
        let ud = ud(Op::Recv, id);
        if let Some(ring) = self.backend.ring() {
            if let Err(e) = ring.cancel(ud) {
                warn!(%id, "cannot cancel a receive: {e}");
            }
        }
    }

    /// Submit `id`'s next send if it has output and none is out.
    pub(super) fn uring_send(&mut self, id: ConnId) -> io::Result<()> {
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        if conn.io.send.is_some() || conn.io.connecting {
            return Ok(());
        }
        // -K: each response in its own send, as the readiness backends
        // write each at once.
        let one_chunk = !self.setups[conn.listener].coalesce;
        let Some(front) = conn.out.lock_front(FILE_PIPE, one_chunk)? else {
            return Ok(());
        };
        let fd = conn.sock.as_raw_fd();
        let poll_first = conn.io.poll_first;
        let Some(ring) = self.backend.ring() else {
            return Ok(());
        };
        // The socket and the pipes stay open until this completes: a
        // connection that closes first lives on as a zombie until then
        // (`uring_close`); the bytes are the ring's meanwhile.
        let kind = front.kind();
        let send = ud(Op::Send, id);
        match front {
            Front::Bytes(lent) => ring.send(fd, lent, poll_first, send)?,
            Front::Pipe { fd: pipe, len } => ring.splice_when_writable(pipe, fd, len, send)?,
            Front::File {
                fd: file,
                offset,
                len,
                pipe,
            } => ring.splice(file, offset as i64, pipe, len, ud(Op::FileIn, id))?,
        }
        self.conns[id].io.send = Some(kind);
        Ok(())
    }

    /// Submit the connect of `id` (just added) to `addr`; the ring holds
    /// the address, the connection (a zombie if it closes first) the
    /// socket, until it completes.
    pub(super) fn uring_submit_connect(&mut self, id: ConnId, addr: SocketAddr) -> io::Result<()> {
        let fd = self.conns[id].sock.as_raw_fd();
        let Some(ring) = self.backend.ring() else {
            return Ok(());
        };
        ring.connect(fd, socket2::SockAddr::from(addr), ud(Op::Connect, id))?;
        self.conns[id].io.connecting = true;
        Ok(())
    }

    /// `conn` (already out of the table) closes: cancel what it has out and
    /// keep it until that completes. False when nothing was out (drop it).
    pub(super) fn uring_close(&mut self, id: ConnId, conn: Conn) -> Option<Conn> {
        if conn.io.count() == 0 {
            return Some(conn);
        }
        if let Some(ring) = self.backend.ring() {
            let mut cancel = |op| {
                if let Err(e) = ring.cancel(ud(op, id)) {
                    debug!(%id, "cancel: {e}");
                }
            };
            if conn.io.recv == Recv::Armed {
                cancel(Op::Recv);
            }
            match conn.io.send {
                Some(Sending::File) => cancel(Op::FileIn),
                Some(Sending::Pipe) => {
                    cancel(Op::PollOut);
                    cancel(Op::Send);
                }
                Some(Sending::Bytes) => cancel(Op::Send),
                None => {}
            }
            if conn.io.connecting {
                cancel(Op::Connect);
            }
            if conn.io.splice_in.is_some() {
                cancel(Op::Poll);
                cancel(Op::SpliceIn);
            }
        }
        self.zombies.insert(id, conn);
        None
    }
}

impl Loop {
    /// A poll of a datagram socket reported.
    fn uring_udp_polled(&mut self, cqe: Cqe) {
        use super::slots::Key;
        let id = crate::protocol::UdpId::from_parts(cqe.slot as u32, cqe.generation);
        if !self.core.udps.contains(id) || cqe.result == -libc::ECANCELED {
            return;
        }
        match cqe.op {
            Op::UdpPollOut => self.core.udp_writable(id),
            _ => {
                if !cqe.more() {
                    // The kernel ended the multishot poll: arm another.
                    if let Some(u) = self.core.udps.get_mut(id) {
                        u.polling = false;
                        let fd = std::os::fd::AsRawFd::as_raw_fd(&u.sock);
                        if let Some(ring) = self.core.backend.ring() {
                            match ring.poll_udp(fd, cqe.slot, cqe.generation, false) {
                                Ok(_) => {
                                    if let Some(u) = self.core.udps.get_mut(id) {
                                        u.polling = true;
                                    }
                                }
                                Err(e) => warn!(sock = %id, "cannot poll a datagram socket: {e}"),
                            }
                        }
                    }
                }
                self.udp_read(id);
            }
        }
    }

    /// Handle one completion.
    pub(super) fn on_cqe(&mut self, cqe: Cqe) {
        match cqe.op {
            Op::Accept | Op::ListenerPoll => self.uring_accepted(cqe),
            Op::Wake => {
                self.core.complete_jobs();
                self.core.take_letters();
                let fd = self.waker.raw_fd();
                if let Some(ring) = self.core.backend.ring() {
                    if let Err(e) = ring.read_waker(fd) {
                        warn!("cannot rearm the loop's waker: {e}");
                    }
                }
            }
            Op::Cancel | Op::Poll | Op::PollOut => {}
            Op::UdpPoll | Op::UdpPollOut => self.uring_udp_polled(cqe),
            Op::Recv | Op::Send | Op::FileIn | Op::Connect | Op::SpliceIn => {
                if !self.core.conns.contains(cqe_conn(&cqe)) {
                    self.zombie_cqe(cqe);
                    return;
                }
                match cqe.op {
                    Op::Recv => self.uring_received(cqe),
                    Op::Connect => self.uring_connected(cqe),
                    Op::SpliceIn => self.uring_spliced(cqe),
                    _ => self.uring_sent(cqe),
                }
            }
        }
        self.settle();
    }

    /// Before the ring and its buffers go: close what is left (output
    /// still pending after the drain timeout) and wait, at most
    /// [`RETIRE_WAIT`], for the kernel to finish what reads or writes the
    /// loop's memory (receives, sends, splices on its worker threads).
    pub(super) fn retire_ring(&mut self) {
        for id in self.core.conns.keys() {
            let Some(conn) = self.core.conns.remove(id) else {
                continue;
            };
            if let Some(mut conn) = self.core.uring_close(id, conn) {
                conn.out.clear(&mut self.core.bufs);
            }
        }
        let deadline = std::time::Instant::now() + RETIRE_WAIT;
        while !self.core.zombies.is_empty() && std::time::Instant::now() < deadline {
            if self.wait(Some(Duration::from_millis(10))).is_err() {
                break;
            }
            let mut cqes = std::mem::take(&mut self.cqes);
            for cqe in cqes.drain(..) {
                match cqe.op {
                    Op::Recv | Op::Send | Op::FileIn | Op::Connect | Op::SpliceIn => {
                        self.zombie_cqe(cqe);
                    }
                    // Accepted as the loop stopped: closed (dropped with
                    // the completion), not leaked.
                    _ => {}
                }
            }
            self.cqes = cqes;
        }
        if !self.core.zombies.is_empty() {
            warn!(
                connections = self.core.zombies.len(),
                "submissions still out when the loop stopped: their memory and the ring are left allocated"
            );
            // The kernel may still write into their buffers: never free
            // them (the process is stopping as a rule).
            for (_, z) in self.core.zombies.drain() {
                std::mem::forget(z);
            }
            if let Backend::Completion(ring) = &mut self.core.backend {
                std::mem::forget(ring.take());
            }
        }
    }

    /// A completion for a connection that has closed.
    fn zombie_cqe(&mut self, mut cqe: Cqe) {
        if let (Some(bid), Some(ring)) = (cqe.buffer(), self.core.backend.ring()) {
            ring.recycle(bid);
        }
        let key = cqe_conn(&cqe);
        let Some(z) = self.core.zombies.get_mut(&key) else {
            return;
        };
        match cqe.op {
            Op::Recv if !cqe.more() => z.io.recv = super::completion::Recv::Idle,
            Op::Send | Op::FileIn => {
                z.io.send = None;
                // What the ring was lent for the send comes back to the
                // pool: nobody will write it now.
                for b in cqe.lent.take().into_iter().flat_map(|l| l.bufs) {
                    self.core.bufs.give(b);
                }
            }
            Op::Connect => z.io.connecting = false,
            Op::SpliceIn => {
                // Bytes the splice moved before the source closed are in
                // the destination's pipe: they leave with the rest.
                let into = z.io.splice_in.take();
                if let (Ok(n @ 1..), Some((_, to))) = (usize::try_from(cqe.result), into) {
                    self.core.spliced_into(None, to, n);
                }
            }
            _ => {}
        }
        if self
            .core
            .zombies
            .get(&key)
            .is_some_and(|z| z.io.count() == 0)
        {
            let fed_by = self.core.zombies.remove(&key).and_then(|z| z.proto.fed_by);
            // Its pipe is free now: a source may take back what it spliced.
            if let Some(src) = fed_by {
                self.core.uring_reclaim(src);
            }
        }
    }

    fn uring_accepted(&mut self, mut cqe: Cqe) {
        let li = cqe.slot;
        // A cancelled accept may still report after a new one went out:
        // only the current one's end disarms the listener.
        let current = self
            .listeners
            .get(li)
            .is_some_and(|l| l.accept_gen == cqe.generation);
        if !cqe.more() && current {
            self.listeners[li].armed = false;
        }
        if self.settings.shared_listeners {
            // A readiness report of a shared listener: accept from here.
            if cqe.result != -libc::ECANCELED {
                self.accept(li);
            }
            return;
        }
        if cqe.result < 0 {
            let e = cqe.error();
            match -cqe.result {
                // Cancelled by the loop (paused or stopping: `accept` arms
                // nothing then), or ended by the kernel: armed again.
                libc::ECANCELED if !current => {}
                libc::ECANCELED => self.accept(li),
                _ if self.accept_failed(li, &e) => self.accept(li),
                _ => {}
            }
            return;
        }
        let Some(fd) = cqe.accepted.take() else {
            return;
        };
        let std = std::net::TcpStream::from(fd);
        let stopping = self.listeners.get(li).is_none_or(|l| l.sock.is_none());
        if stopping {
            return;
        }
        // Adopted while under max_connections; at the limit the multishot
        // accept is cancelled (`uring_accept`), so what waits here is at
        // most what the kernel had already accepted in that batch (no more
        // than its listen backlog would hold), served as others close.
        self.listeners[li].backlog.push_back(std);
        self.accept(li);
    }

    /// Adopt what the kernel accepted for listener `li` while under its
    /// limit, and keep an accept out while it may accept.
    pub(super) fn uring_accept(&mut self, li: usize) {
        while !self.listeners[li].backlog.is_empty() {
            if !self.room_to_accept(li) {
                break;
            }
            let Some(std) = self.listeners[li].backlog.pop_front() else {
                break;
            };
            match std.peer_addr() {
                Ok(peer) => self.adopt(li, TcpStream::from_std(std), peer),
                Err(e) => debug!("accepted connection gone before it was served: {e}"),
            }
        }
        let l = &mut self.listeners[li];
        let Some(sock) = l.sock.as_ref() else {
            return;
        };
        let fd = sock.as_raw_fd();
        if l.paused {
            // Stop accepting: the kernel keeps new connections in the
            // backlog meanwhile.
            if l.armed {
                l.armed = false;
                let ud = user_data(Op::Accept, li, l.accept_gen);
                if let Some(ring) = self.core.backend.ring() {
                    if let Err(e) = ring.cancel(ud) {
                        warn!("cannot cancel accept: {e}");
                    }
                }
            }
            return;
        }
        if !l.armed {
            l.armed = true;
            l.accept_gen = l.accept_gen.wrapping_add(1);
            let generation = l.accept_gen;
            if let Some(ring) = self.core.backend.ring() {
                if let Err(e) = ring.accept_multi(fd, li, generation) {
                    self.listeners[li].armed = false;
                    self.pause_listener(li, &format!("accept: {e}"));
                }
            }
        }
    }

    /// Keep a readiness poll out on shared listener `li` (see
    /// `LoopSettings::shared_listeners`).
    pub(super) fn uring_poll_listener(&mut self, li: usize) {
        let l = &mut self.listeners[li];
        let Some(sock) = l.sock.as_ref() else {
            return;
        };
        if l.armed {
            return;
        }
        let fd = sock.as_raw_fd();
        l.armed = true;
        l.accept_gen = l.accept_gen.wrapping_add(1);
        let generation = l.accept_gen;
        if let Some(ring) = self.core.backend.ring() {
            if let Err(e) = ring.poll_listener(fd, li, generation) {
                self.listeners[li].armed = false;
                self.pause_listener(li, &format!("poll: {e}"));
            }
        }
    }

    fn uring_received(&mut self, cqe: Cqe) {
        let id = cqe_conn(&cqe);
        let more = cqe.more();
        if !more {
            self.core.conns[id].io.recv = Recv::Idle;
        }
        if cqe.result < 0 {
            if let (Some(bid), Some(ring)) = (cqe.buffer(), self.core.backend.ring()) {
                ring.recycle(bid);
            }
            match -cqe.result {
                // Cancelled (paused), or out of buffers for a moment: armed
                // again when it may read.
                libc::ECANCELED | libc::ENOBUFS | libc::EINTR | libc::EAGAIN => {
                    self.core.ready.push_back(id);
                }
                _ => {
                    let kind = cqe.error().kind();
                    self.core.abort(id, CloseReason::Io(kind));
                }
            }
            return;
        }
        let n = cqe.result as usize;
        if n == 0 {
            // End of stream (after what is held back, if anything is).
            self.core.conns[id].io.recv = Recv::Idle;
            self.received(id, ReadStep::Eof);
            return;
        }
        let Some(bid) = cqe.buffer() else {
            return;
        };
        let Some(ring) = self.core.backend.ring() else {
            return;
        };
        // Copied out so the buffer goes back to the kernel at once, and
        // because handlers may submit (connect, send) while they look at it.
        let n = n.min(self.scratch.len());
        self.scratch[..n].copy_from_slice(ring.buffer(bid, n));
        ring.recycle(bid);
        self.core.conns[id].note_read(self.core.now);
        self.received(id, ReadStep::Data(n));
        if !more {
            self.core.uring_arm_recv(id);
        }
    }

    fn uring_spliced(&mut self, cqe: Cqe) {
        let id = cqe_conn(&cqe);
        let conn = &mut self.core.conns[id];
        let into = conn.io.splice_in.take();
        match cqe.result {
            0 => {
                self.handle_step(id, ReadStep::Eof);
                return;
            }
            n if n > 0 => {
                conn.note_read(self.core.now);
                let n = n as usize;
                if let Some((pipe, to)) = into {
                    if !self.core.spliced_into(Some(id), to, n) {
                        // The destination closed while the splice was out:
                        // the bytes are taken back out of its pipe (kept
                        // open by the splice) and go to on_data, as later
                        // ones will.
                        let conn = &mut self.core.conns[id];
                        if conn.proto.splice_to == Some(to) {
                            conn.proto.splice_to = None;
                        }
                        self.core.uring_take_back(id, pipe, n);
                        return;
                    }
                }
            }
            // The destination's pipe may be out of slots: wait for it to
            // drain rather than poll and fail again at once.
            e if e == -libc::EAGAIN && self.core.splice_found_no_room(id) => return,
            // Nothing to move after all, or the poll was cancelled: try
            // again if it may read.
            e if e == -libc::EAGAIN || e == -libc::ECANCELED || e == -libc::EINTR => {}
            _ => {
                let kind = cqe.error().kind();
                self.core.abort(id, CloseReason::Io(kind));
                return;
            }
        }
        self.core.uring_arm_recv(id);
    }

    fn uring_sent(&mut self, mut cqe: Cqe) {
        let id = cqe_conn(&cqe);
        let conn = &mut self.core.conns[id];
        let Some(kind) = conn.io.send.take() else {
            return;
        };
        let front = match kind {
            Sending::Bytes => match cqe.lent.take() {
                Some(lent) => Sent::Bytes(lent),
                // The ring gives back what it was lent with every send's
                // completion; without it the queue would lose bytes.
                None => {
                    error!(%id, "a send completed without its buffers");
                    self.core.abort(id, CloseReason::Io(io::ErrorKind::Other));
                    return;
                }
            },
            Sending::Pipe => Sent::Pipe,
            Sending::File => Sent::File,
        };
        if cqe.result == -libc::EAGAIN && kind != Sending::File {
            // Nothing moved, and nothing is lost: the socket filled again
            // between a splice's poll and the splice, or io_uring gave a
            // sendmsg up to a worker thread, where the non-blocking socket
            // refuses it (`Ring::sendmsg`). Submitted again, once the
            // socket is writable.
            debug!(%id, "send found no room: submitted again when writable");
            conn.io.poll_first = true;
            if let Err(e) = conn.out.complete(front, 0, &mut self.core.bufs) {
                self.core.abort(id, CloseReason::Io(e.kind()));
                return;
            }
            self.core.mark_dirty(id);
            return;
        }
        if cqe.result < 0 {
            let kind = cqe.error().kind();
            self.core.abort(id, CloseReason::Io(kind));
            return;
        }
        if let Err(e) = conn
            .out
            .complete(front, cqe.result as usize, &mut self.core.bufs)
        {
            self.core.abort(id, CloseReason::Io(e.kind()));
            return;
        }
        conn.io.poll_first = false;
        conn.last_active = self.core.now;
        self.core.mark_dirty(id);
    }

    fn uring_connected(&mut self, cqe: Cqe) {
        let id = cqe_conn(&cqe);
        self.core.conns[id].io.connecting = false;
        if cqe.result < 0 {
            let kind = cqe.error().kind();
            self.core.connect_failed(id, kind);
            return;
        }
        if let Err(e) = crate::net::set_nonblocking(&self.core.conns[id].sock) {
            self.core.connect_failed(id, e.kind());
            return;
        }
        self.core.connected(id);
    }
}
