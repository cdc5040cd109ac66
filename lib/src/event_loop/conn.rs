//! One connection's state, and the session that owns it.

use std::collections::VecDeque;
use std::io::{self};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;

use super::lifecycle::{Expiry, Lifecycle};
use super::mailbox::{Mailbox, SpawnSlot};
use super::output::OutQueue;
use super::slots::Key;
use super::Limits;
use crate::poll::Interest;
use crate::pools::Done;
use crate::protocol::{CloseReason, ConnId, Protocol};

/// A session's key in the loop's session table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SessionKey {
    slot: u32,
    generation: u32,
}

impl Key for SessionKey {
    fn from_parts(slot: u32, generation: u32) -> Self {
        SessionKey { slot, generation }
    }
    fn slot(self) -> u32 {
        self.slot
    }
    fn generation(self) -> u32 {
        self.generation
    }
}

pub(super) struct Session {
    /// Taken out while one of its callbacks runs.
    pub(super) proto: Option<Box<dyn Protocol>>,
    /// Connections it owns that have not closed yet, or whose close it has
    /// not been told of yet.
    pub(super) live: usize,
    /// The listener that accepted its first connection (or that it was
    /// spawned for): its limits and options apply to the outbound
    /// connections too.
    pub(super) listener: usize,
    /// It outlives its connections ([`super::Ctx::keep_session`], or it
    /// was spawned): it ends only with [`super::Ctx::end_session`] or at
    /// shutdown.
    pub(super) kept: bool,
    /// It asked to end: its connections are closing, no timer or message
    /// reaches it any more.
    pub(super) ending: bool,
    /// Its mailbox, once it has an address ([`super::SessionRef`]).
    pub(super) mailbox: Option<Arc<Mailbox>>,
    /// Its place under `max_sessions`, when spawned.
    pub(super) _slot: Option<SpawnSlot>,
}

impl Session {
    pub(super) fn new(proto: Box<dyn Protocol>, listener: usize) -> Self {
        Session {
            proto: Some(proto),
            live: 0,
            listener,
            kept: false,
            ending: false,
            mailbox: None,
            _slot: None,
        }
    }

    /// Has it ended: no connection left, and it was not kept or it asked
    /// to end?
    pub(super) fn is_over(&self) -> bool {
        self.live == 0 && (!self.kept || self.ending)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // However it ends (asked, its last connection, a panic, the loop
        // stopping), its address stops taking messages.
        if let Some(mb) = &self.mailbox {
            mb.end();
        }
    }
}

/// One connection: its socket, buffers and interest, its [`Lifecycle`],
/// and what only a service's or only a protocol's connection has.
pub(crate) struct Conn {
    pub(super) sock: TcpStream,
    pub(super) listener: usize,
    /// Accepted by a listener (counted in its `active`), not opened by a
    /// session.
    pub(super) accepted: bool,
    pub(super) peer: Option<SocketAddr>,
    /// Unconsumed input (see [`super::input`]).
    pub(super) input: Vec<u8>,
    pub(super) out: OutQueue,
    pub(super) last_active: Instant,
    /// Instant of the heap entry that will re-check this connection.
    pub(super) armed: Option<Instant>,
    /// Phase, write side, holds on reading, backpressure.
    pub(super) life: Lifecycle,
    pub(super) writable_interest: bool,
    pub(super) dirty: bool,
    /// The poller reported the peer's FIN or an error: read to the end
    /// even after a short read (no new edge will come for it).
    pub(super) hup: bool,
    /// What the readiness backend watches it for.
    pub(super) interest: Interest,
    /// Received while reading was blocked, handed on when it resumes.
    pub(super) held: Held,
    /// Its submissions under `-T completion`.
    pub(super) io: super::completion::Inflight,
    /// A service connection's requests in a handler pool.
    pub(super) jobs: Jobs,
    /// A protocol connection's session and splices.
    pub(super) proto: ProtoConn,
}

/// What arrived for a connection after its reading was blocked, kept in
/// order until it may read again. Only a backend that receives on its own
/// (completion: a multishot receive still out when reading blocked, or
/// bytes a splice moved into a pipe whose connection closed) ever holds
/// any: the readiness backends do not read while blocked.
#[derive(Default)]
pub(super) struct Held {
    /// Bytes not yet handed on.
    pub(super) bytes: Vec<u8>,
    /// The end of the stream came after them.
    pub(super) eof: bool,
}

impl Held {
    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty() && !self.eof
    }
}

/// Requests of a service connection handed to a pool (`-X`): responses
/// leave in request order.
#[derive(Default)]
pub(super) struct Jobs {
    /// The next request's sequence number.
    pub(super) next_seq: u64,
    /// The oldest request not yet answered.
    pub(super) write_seq: u64,
    /// Finished requests from `write_seq` on (None: still running).
    pub(super) pending: VecDeque<Option<Done>>,
}

/// What only a protocol session's connection has.
#[derive(Default)]
pub(super) struct ProtoConn {
    /// The session that owns it (none: a service connection).
    pub(super) session: Option<SessionKey>,
    /// Bytes read from this connection are spliced to that one's pipe
    /// instead of going through `on_data` ([`super::Ctx::splice`]).
    pub(super) splice_to: Option<ConnId>,
    /// The connection whose bytes are spliced into this one's pipe.
    pub(super) fed_by: Option<ConnId>,
    /// Socket options it was opened with, instead of its listener's
    /// ([`crate::ConnectOptions::options`]).
    pub(super) options: Option<crate::net::ConnOptions>,
    /// Its unconsumed input goes to `on_data` again before the next read
    /// ([`super::Ctx::replay_input`]).
    pub(super) replay: bool,
    /// A connect to one address of a name ([`super::Ctx::connect_host`]):
    /// the session does not know this connection until it is established
    /// (its `on_resolved`), and a failure moves on to the next address
    /// without telling it.
    pub(super) attempt: Option<Box<Attempt>>,
}

/// What [`ProtoConn::attempt`] needs to go on.
pub(super) struct Attempt {
    /// The session's [`super::Ctx::connect_host`] request.
    pub(super) job: crate::protocol::JobId,
    /// The addresses not tried yet, the next last.
    pub(super) rest: Vec<std::net::SocketAddr>,
    pub(super) how: crate::protocol::ConnectOptions,
}

impl Conn {
    pub(super) fn new(sock: TcpStream, listener: usize, life: Lifecycle, now: Instant) -> Self {
        Conn {
            sock,
            listener,
            accepted: true,
            peer: None,
            input: Vec::new(),
            out: OutQueue::default(),
            last_active: now,
            armed: None,
            life,
            writable_interest: false,
            dirty: false,
            hup: false,
            interest: Interest::NONE,
            held: Held::default(),
            io: super::completion::Inflight::default(),
            jobs: Jobs::default(),
            proto: ProtoConn::default(),
        }
    }

    /// The session that owns it, if a protocol's.
    #[inline]
    pub(super) fn session(&self) -> Option<SessionKey> {
        self.proto.session
    }

    #[inline]
    pub(super) fn reading_blocked(&self) -> bool {
        self.life.reading_blocked()
    }

    /// May bytes be read from its socket now: reading is not blocked and
    /// nothing held back waits to be handed on first.
    #[inline]
    pub(super) fn may_read(&self) -> bool {
        !self.reading_blocked() && self.held.is_empty()
    }

    /// Queue it (`id`) on `dirty` to be flushed, once.
    #[inline]
    pub(super) fn mark_dirty(&mut self, id: ConnId, dirty: &mut Vec<ConnId>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(id);
        }
    }

    /// A service connection's reads are done for now: at the end of its
    /// stream it closes after its answers, and what it answered is
    /// queued on `dirty` to be flushed.
    #[inline]
    pub(super) fn service_read_done(&mut self, id: ConnId, dirty: &mut Vec<ConnId>) {
        self.life.reads_done();
        self.mark_dirty(id, dirty);
    }

    /// Shutting down with a request still arriving: once nothing
    /// incomplete is left, it closes after its answers.
    #[inline]
    pub(super) fn check_grace(&mut self) {
        self.life.grace_check(self.input.is_empty());
    }

    /// Bytes left at `now`: activity for the idle deadline.
    #[inline]
    pub(super) fn note_write(&mut self, now: Instant) {
        self.last_active = now;
    }

    /// Bytes came in at `now`: activity for the idle deadline.
    #[inline]
    pub(super) fn note_read(&mut self, now: Instant) {
        self.last_active = now;
        self.life.note_read();
    }

    /// The earliest deadline of this connection and what happens then.
    pub(super) fn deadline(&self, limits: &Limits) -> Option<(Instant, Expiry)> {
        // A request still running in a pool is not idleness.
        let idle = match self.jobs.pending.is_empty() {
            true => limits.idle_timeout.map(|d| self.last_active + d),
            false => None,
        };
        self.life.deadline(idle)
    }
}

pub(super) enum Deferred {
    Connected(SessionKey, ConnId, io::Result<()>),
    Writable(SessionKey, ConnId),
    Closed(SessionKey, ConnId, CloseReason),
    /// A connection the session was never told of (a failed
    /// [`ProtoConn::attempt`]) has closed: it no longer counts as live.
    Forget(SessionKey),
    /// A datagram socket's queue drained to half after a refused send.
    UdpWritable(SessionKey, crate::protocol::UdpId),
    /// Something went wrong on a datagram socket.
    UdpError(
        SessionKey,
        crate::protocol::UdpId,
        crate::protocol::UdpError,
    ),
    /// What became of a [`super::Ctx::connect_host`] request.
    Resolved(
        SessionKey,
        crate::protocol::JobId,
        Result<ConnId, crate::protocol::ConnectError>,
    ),
    /// The session asked to end ([`super::Ctx::end_session`]).
    End(SessionKey),
}
