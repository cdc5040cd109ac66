//! Datagram sockets: UDP sockets a session binds ([`crate::Ctx::bind_udp`])
//! or a `-P udp` listener hands its loop, under every backend.
//!
//! Receiving: when a socket is readable (epoll, or a multishot poll on the
//! ring under `-T completion`) the loop takes up to [`RECV_BATCH`]
//! datagrams per recvmmsg(2), with UDP GRO where the kernel has it, and
//! hands each to its session's [`crate::Protocol::on_datagram`] (or, on a
//! service listener, answers it as one request). A datagram longer than the
//! listener's `max_datagram` is truncated by the kernel: it is counted,
//! logged at debug, and dropped, never handed over as if whole. After
//! [`RECV_BUDGET`] batches a socket yields to the rest of the loop.
//!
//! Sending: [`crate::Ctx::send_to`] queues a datagram, at most the
//! listener's `udp_queue` per socket; a full queue hands the datagram back
//! ([`SendToError::Blocked`]) and the session is told
//! [`crate::Protocol::on_udp_writable`] once it has drained to half. When
//! the callback returns, queued datagrams leave in sendmmsg(2) batches;
//! consecutive datagrams to one peer of one size go as one message cut by
//! the kernel (UDP GSO) where it has it. A socket that is full waits for
//! writability. A datagram the kernel refuses (too large for the path, a
//! peer that answered ICMP unreachable on a connected socket) is reported
//! to [`crate::Protocol::on_udp_error`]: nothing the API accepted is
//! dropped silently.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use mio::net::UdpSocket;
use tracing::{debug, warn};

use super::slots::Key;
use super::{Core, Deferred, Loop, SessionKey};
use crate::poll::Interest;
use crate::protocol::{SendToError, UdpError, UdpId};
use crate::sys::udp::{self as sysudp, Outgoing, RecvBatch, SendBatch};

/// Datagrams taken per recvmmsg(2).
pub(super) const RECV_BATCH: usize = 16;
/// Batches per readiness report before a socket yields to the others.
const RECV_BUDGET: usize = 8;
/// Messages per sendmmsg(2).
const SEND_BATCH: usize = 64;
/// Segments the kernel cuts one GSO message into at most.
const GSO_MAX_SEGMENTS: usize = 64;
/// Bytes of one GSO message at most (a UDP length field's worth).
const GSO_MAX_BYTES: usize = 65_000;
/// The largest UDP payload over IPv4 (65535 - 8 - 20); IPv6's is larger
/// but a datagram that size fragments on every real path either way.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// The readiness token of a datagram socket: above the connections'
/// (which stay below 2^56) and below the listeners' ([`super::LISTENER_BASE`]).
pub(super) const UDP_BASE: usize = 1 << 62;

pub(super) fn udp_token(id: UdpId) -> usize {
    UDP_BASE | (id.generation as usize) << 24 | id.slot as usize
}

pub(super) fn token_udp(token: usize) -> UdpId {
    let t = token & !UDP_BASE;
    UdpId::from_parts((t & 0xff_ffff) as u32, (t >> 24) as u32)
}

/// Who the datagrams of a socket are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// A protocol session's.
    Session(SessionKey),
    /// A `-P udp` service listener's: each datagram is a request.
    Service,
}

/// Datagrams queued on a socket: their bytes one after another, and where
/// each starts.
#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    /// Bytes of `bytes` already sent (the front is compacted away).
    head: usize,
    items: VecDeque<(SocketAddr, usize)>,
}

impl Queue {
    fn push(&mut self, to: SocketAddr, data: &[u8]) {
        self.items.push_back((to, data.len()));
        self.bytes.extend_from_slice(data);
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    /// `n` datagrams went.
    fn pop(&mut self, n: usize) {
        for _ in 0..n {
            if let Some((_, len)) = self.items.pop_front() {
                self.head += len;
            }
        }
        if self.items.is_empty() {
            self.bytes.clear();
            self.head = 0;
            if self.bytes.capacity() > 1 << 20 {
                self.bytes = Vec::new();
            }
        } else if self.head > self.bytes.len() / 2 {
            self.bytes.drain(..self.head);
            self.head = 0;
        }
    }
}

/// One datagram socket of a loop.
pub(super) struct UdpSock {
    pub(super) sock: UdpSocket,
    pub(super) owner: Owner,
    /// The listener whose limits apply (the owner's, or the one bound).
    pub(super) listener: usize,
    queue: Queue,
    /// Most datagrams queued (the listener's `udp_queue`).
    cap: usize,
    /// A send was refused for a full queue: tell the owner once it has
    /// drained to half.
    told_full: bool,
    /// Waiting for room in the socket (write interest, or a poll out).
    pub(super) waits_writable: bool,
    /// Queued for a flush when the callback returns.
    dirty: bool,
    /// Reading stops while the queue is full (a service socket, whose
    /// answers are what fills it).
    pub(super) reading_paused: bool,
    /// What the readiness backend watches it for.
    pub(super) interest: Interest,
    /// The kernel takes UDP_SEGMENT here.
    gso: bool,
    /// Datagrams dropped because they were longer than `max_datagram`.
    pub(super) truncated: u64,
    /// A multishot poll for readability is out (completion).
    pub(super) polling: bool,
}

impl UdpSock {
    pub(super) fn new(sock: UdpSocket, owner: Owner, listener: usize, cap: usize) -> Self {
        let gso = sysudp::gso_supported(sock.as_fd());
        // GRO lets the kernel hand a burst from one peer as one buffer.
        let _ = sysudp::enable_gro(sock.as_fd());
        UdpSock {
            sock,
            owner,
            listener,
            queue: Queue::default(),
            cap: cap.max(1),
            told_full: false,
            waits_writable: false,
            dirty: false,
            reading_paused: false,
            interest: Interest::NONE,
            gso,
            truncated: 0,
            polling: false,
        }
    }

    fn is_full(&self) -> bool {
        self.queue.len() >= self.cap
    }

    pub(super) fn may_read(&self) -> bool {
        !self.reading_paused
    }
}

/// The loop's buffers for datagrams: one receive batch (made when the
/// first socket joins) and one send batch.
#[derive(Default)]
pub(super) struct UdpBuffers {
    pub(super) recv: Option<RecvBatch>,
    send: SendBatch,
}

impl Core {
    /// Socket `sock` joins the loop for `owner`.
    pub(super) fn add_udp(
        &mut self,
        sock: UdpSocket,
        owner: Owner,
        listener: usize,
    ) -> io::Result<UdpId> {
        let full = || io::Error::other("this loop holds as many datagram sockets as it can");
        let cap = self.setups[listener].limits.udp_queue;
        let id = self.udps.next_key().ok_or_else(full)?;
        let mut u = UdpSock::new(sock, owner, listener, cap);
        self.register_udp(&mut u, id)?;
        let id = self.udps.insert(u).ok_or_else(full)?;
        let size = self.setups[listener].limits.max_datagram;
        match &self.udp_bufs.recv {
            Some(b) if b.size() >= size => {}
            _ => self.udp_bufs.recv = Some(RecvBatch::new(RECV_BATCH, size)),
        }
        Ok(id)
    }

    /// Bind a datagram socket at `addr` for session `key`.
    pub(super) fn bind_udp(&mut self, key: SessionKey, addr: SocketAddr) -> io::Result<UdpId> {
        let Some(listener) = self.sessions.get(key).map(|s| s.listener) else {
            return Err(io::Error::other("the session has ended"));
        };
        if self.stopping {
            return Err(io::Error::other("the server is shutting down"));
        }
        let sock = crate::net::bind_udp(addr, false)?;
        self.add_udp(UdpSocket::from_std(sock), Owner::Session(key), listener)
    }

    /// Is `id` a socket of session `key`?
    pub(super) fn owns_udp(&self, key: SessionKey, id: UdpId) -> bool {
        self.udps
            .get(id)
            .is_some_and(|u| u.owner == Owner::Session(key))
    }

    /// Queue `data` to `to` on `id`.
    pub(super) fn send_to(
        &mut self,
        id: UdpId,
        to: SocketAddr,
        data: &[u8],
    ) -> Result<(), SendToError> {
        if data.len() > MAX_UDP_PAYLOAD {
            return Err(SendToError::TooLarge);
        }
        let Some(u) = self.udps.get_mut(id) else {
            return Err(SendToError::NotOpen);
        };
        if u.is_full() {
            u.told_full = true;
            return Err(SendToError::Blocked);
        }
        u.queue.push(to, data);
        if !u.dirty {
            u.dirty = true;
            self.udp_dirty.push(id);
        }
        Ok(())
    }

    /// Datagrams queued on `id` and not yet sent.
    pub(super) fn udp_queued(&self, id: UdpId) -> usize {
        self.udps.get(id).map_or(0, |u| u.queue.len())
    }

    /// Close `id`: what is queued is dropped (the session asked).
    pub(super) fn close_udp(&mut self, id: UdpId) {
        if let Some(u) = self.udps.remove(id) {
            if !u.queue.items.is_empty() {
                debug!(sock = %id, queued = u.queue.len(), "datagram socket closed with datagrams queued");
            }
            self.release_udp(id, u);
        }
    }

    /// Close every socket of session `key` (it has ended).
    pub(super) fn close_udps_of(&mut self, key: SessionKey) {
        if self.udps.is_empty() {
            return;
        }
        let owned: Vec<UdpId> = self
            .udps
            .iter()
            .filter(|(_, u)| u.owner == Owner::Session(key))
            .map(|(id, _)| id)
            .collect();
        for id in owned {
            self.close_udp(id);
        }
    }

    /// Send what the dirty sockets queued.
    pub(super) fn flush_udps(&mut self) {
        while let Some(id) = self.udp_dirty.pop() {
            if let Some(u) = self.udps.get_mut(id) {
                u.dirty = false;
                self.flush_udp(id);
            }
        }
    }

    /// Send `id`'s queue until it is empty or the socket is full.
    pub(super) fn flush_udp(&mut self, id: UdpId) {
        loop {
            let Some(u) = self.udps.get_mut(id) else {
                return;
            };
            if u.queue.items.is_empty() || u.waits_writable {
                break;
            }
            // Messages of the batch: runs of one peer and one size, cut by
            // GSO, where the kernel has it.
            let mut msgs: Vec<Outgoing<'_>> = Vec::with_capacity(SEND_BATCH);
            let mut counts: Vec<usize> = Vec::with_capacity(SEND_BATCH);
            let bytes = &u.queue.bytes;
            let mut at = u.queue.head;
            let mut items = u.queue.items.iter().peekable();
            while msgs.len() < SEND_BATCH {
                let Some(&(to, len)) = items.next() else {
                    break;
                };
                let start = at;
                let mut n = 1;
                at += len;
                if u.gso && len > 0 {
                    while n < GSO_MAX_SEGMENTS && at - start + len <= GSO_MAX_BYTES {
                        match items.peek() {
                            // The same peer; the same size, or a shorter
                            // last one.
                            Some(&&(t, l)) if t == to && l <= len && l > 0 => {
                                items.next();
                                at += l;
                                n += 1;
                                if l < len {
                                    break;
                                }
                            }
                            _ => break,
                        }
                    }
                }
                msgs.push(Outgoing {
                    to,
                    data: &bytes[start..at],
                    segment: (n > 1).then_some(len as u16),
                });
                counts.push(n);
            }
            let sent = self.udp_bufs.send.send(u.sock.as_fd(), &msgs);
            drop(msgs);
            match sent {
                Ok(m) => {
                    let n: usize = counts[..m].iter().sum();
                    u.queue.pop(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    u.waits_writable = true;
                    self.watch_udp_writable(id);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL))
                        && counts[0] > 1 =>
                {
                    // The device cannot segment (EIO), or a segment does
                    // not fit its MTU (EINVAL): send each datagram on its
                    // own from now on.
                    warn!(sock = %id, "UDP GSO refused by the device: sending datagrams one by one");
                    u.gso = false;
                }
                Err(e) => {
                    // The first message failed: its datagrams are reported
                    // and dropped, the rest go on.
                    let n = counts[0];
                    let to = u.queue.items.front().map(|(to, _)| *to);
                    u.queue.pop(n);
                    self.udp_failed(
                        id,
                        UdpError::Send {
                            to,
                            kind: e.kind(),
                            datagrams: n,
                        },
                    );
                }
            }
        }
        self.udp_drained(id);
    }

    /// `id`'s queue shrank: tell a session that was refused, once it is at
    /// half; resume reading a service socket.
    fn udp_drained(&mut self, id: UdpId) {
        let Some(u) = self.udps.get_mut(id) else {
            return;
        };
        if u.queue.len() > u.cap / 2 {
            return;
        }
        if u.reading_paused {
            u.reading_paused = false;
            self.udp_ready.push_back(id);
            self.update_udp_interest(id);
        }
        let Some(u) = self.udps.get_mut(id) else {
            return;
        };
        if u.told_full {
            u.told_full = false;
            if let Owner::Session(key) = u.owner {
                self.deferred.push_back(Deferred::UdpWritable(key, id));
            }
        }
    }

    /// The kernel refused a datagram of `id`, or reported an error on it.
    pub(super) fn udp_failed(&mut self, id: UdpId, error: UdpError) {
        let Some(u) = self.udps.get(id) else {
            return;
        };
        match u.owner {
            Owner::Session(key) => self.deferred.push_back(Deferred::UdpError(key, id, error)),
            Owner::Service => {
                debug!(sock = %id, "datagram error: {error}");
            }
        }
    }

    /// `id` can take datagrams again.
    pub(super) fn udp_writable(&mut self, id: UdpId) {
        if let Some(u) = self.udps.get_mut(id) {
            if u.waits_writable {
                u.waits_writable = false;
                self.update_udp_interest(id);
                self.flush_udp(id);
            }
        }
    }

    /// What the readiness backend watches `id` for: reading (unless
    /// paused, under level triggering) and writing while it waits.
    pub(super) fn update_udp_interest(&mut self, id: UdpId) {
        let level = self.backend.is_level();
        let Some(u) = self.udps.get_mut(id) else {
            return;
        };
        let want = Interest {
            read: !level || u.may_read(),
            write: u.waits_writable,
        };
        if want == u.interest {
            return;
        }
        if let Some(p) = self.backend.poller() {
            match p.set_interest(u.sock.as_fd(), udp_token(id), u.interest, want) {
                Ok(()) => u.interest = want,
                Err(e) => warn!(sock = %id, "cannot watch a datagram socket: {e}"),
            }
        }
    }
}

impl Loop {
    /// Take what waits on `id`, up to the budget; true when it drained
    /// (or reading is paused).
    pub(super) fn udp_read(&mut self, id: UdpId) -> bool {
        for _ in 0..RECV_BUDGET {
            let Some(u) = self.core.udps.get(id) else {
                return true;
            };
            if !u.may_read() {
                return true;
            }
            let Some(mut batch) = self.core.udp_bufs.recv.take() else {
                return true;
            };
            let got = batch.recv(u.sock.as_fd());
            let done = match got {
                Ok(n) => {
                    for i in 0..n {
                        if let Some(d) = batch.get(i) {
                            self.deliver_datagram(id, d);
                        }
                    }
                    self.settle();
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                Err(e) => {
                    // An ICMP error the kernel queued on the socket (a
                    // connected socket's peer refused): reported, reading
                    // goes on.
                    self.core
                        .udp_failed(id, UdpError::Receive { kind: e.kind() });
                    self.settle();
                    false
                }
            };
            // A socket bound during the callbacks may have made a larger
            // batch meanwhile: keep the larger.
            match &self.core.udp_bufs.recv {
                Some(b) if b.size() >= batch.size() => {}
                _ => self.core.udp_bufs.recv = Some(batch),
            }
            if done {
                return true;
            }
        }
        // More may wait: come back after the others had their turn.
        self.core.udp_ready.push_back(id);
        false
    }

    /// Hand one received buffer (one datagram, or a GRO run) to its owner.
    fn deliver_datagram(&mut self, id: UdpId, d: sysudp::Received<'_>) {
        let Some(u) = self.core.udps.get_mut(id) else {
            return;
        };
        let Some(from) = d.from else {
            debug!(sock = %id, "a datagram without a readable source address: dropped");
            return;
        };
        if d.truncated {
            u.truncated += 1;
            debug!(sock = %id, %from, limit = d.data.len(), "a datagram over max_datagram: dropped");
            return;
        }
        let owner = u.owner;
        let step = d.segment.unwrap_or(d.data.len()).max(1);
        // An empty datagram is one too (`chunks` yields nothing for it).
        let empty: &[&[u8]] = if d.data.is_empty() { &[&[]] } else { &[] };
        for data in d.data.chunks(step).chain(empty.iter().copied()) {
            match owner {
                Owner::Session(key) => {
                    if !self.core.takes_events(key) {
                        return;
                    }
                    self.core
                        .call(key, |p, ctx| p.on_datagram(ctx, id, from, data));
                }
                Owner::Service => self.serve_datagram(id, from, data),
            }
        }
    }

    /// A service listener's datagram: one request, answered to its sender.
    fn serve_datagram(&mut self, id: UdpId, from: SocketAddr, data: &[u8]) {
        use crate::handler::Handler;
        use crate::service::{self, ServiceError};
        let Some(u) = self.core.udps.get(id) else {
            return;
        };
        let setup = self.core.setups[u.listener].clone();
        let Handler::Service(svc) = &setup.handler else {
            return;
        };
        let mut out = std::mem::take(&mut self.scratch_out);
        out.clear();
        let max = setup.limits.max_request;
        let result = if data.len() > max {
            Err(ServiceError::TooLarge { limit: max })
        } else if data.is_empty() {
            Err(ServiceError::Malformed("empty datagram".into()))
        } else {
            service::respond(svc.as_ref(), data, &mut out).map(|_| ())
        };
        if let Err(e) = result {
            debug!(sock = %id, %from, "datagram request refused: {e}");
            out.clear();
            service::reply_error(svc.as_ref(), &e, &mut out);
        }
        if !out.is_empty() {
            match self.core.send_to(id, from, &out) {
                Ok(()) => {}
                Err(SendToError::Blocked) => {
                    // Answers are what fills the queue: stop taking
                    // requests until it drains (the kernel holds them).
                    if let Some(u) = self.core.udps.get_mut(id) {
                        u.told_full = false;
                        u.reading_paused = true;
                    }
                    self.core.update_udp_interest(id);
                    debug!(sock = %id, "answer queue full: reading paused");
                }
                Err(e) => debug!(sock = %id, %from, "answer not sent: {e}"),
            }
            // A full queue after this answer pauses reading too, so the
            // next request is not taken only to be refused.
            if let Some(u) = self.core.udps.get_mut(id) {
                if u.is_full() {
                    u.reading_paused = true;
                }
            }
        }
        self.scratch_out = out;
    }

    /// Sockets that yielded with datagrams left: their turn again.
    pub(super) fn run_udp_ready(&mut self) {
        let n = self.core.udp_ready.len();
        for _ in 0..n {
            let Some(id) = self.core.udp_ready.pop_front() else {
                break;
            };
            self.udp_read(id);
        }
    }
}
