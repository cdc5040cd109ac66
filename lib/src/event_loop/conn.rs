//! One connection's state, and the session that owns it.

use std::collections::VecDeque;
use std::io::{self};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;

use super::output::OutQueue;
use super::Limits;
use crate::poll::Interest;
use crate::pools::Done;
use crate::protocol::{CloseReason, ConnId, Protocol};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionKey {
    pub(super) slot: usize,
    pub(super) generation: u64,
}

pub(super) struct Session {
    pub(super) generation: u64,
    /// Taken out while one of its callbacks runs.
    pub(super) proto: Option<Box<dyn Protocol>>,
    /// Connections it owns that have not closed yet.
    pub(super) live: usize,
    /// The listener that accepted its first connection: its limits and
    /// options apply to the outbound connections too.
    pub(super) listener: usize,
}

pub(crate) struct Conn {
    pub(super) sock: TcpStream,
    pub(super) generation: u32,
    pub(super) listener: usize,
    pub(super) session: Option<SessionKey>,
    pub(super) accepted: bool,
    pub(super) peer: Option<SocketAddr>,
    pub(super) input: Vec<u8>,
    pub(super) out: OutQueue,
    pub(super) last_active: Instant,
    /// Instant of the heap entry that will re-check this connection.
    pub(super) armed: Option<Instant>,
    pub(super) connect_deadline: Option<Instant>,
    pub(super) linger_deadline: Option<Instant>,
    pub(super) read_paused: bool,
    pub(super) over_cap: bool,
    pub(super) read_eof: bool,
    pub(super) closing: bool,
    pub(super) close_reason: Option<CloseReason>,
    pub(super) shut_wr_pending: bool,
    pub(super) wr_shut: bool,
    pub(super) writable_interest: bool,
    pub(super) dirty: bool,
    /// The poller reported the peer's FIN or an error: read to the end
    /// even after a short read (no new edge will come for it).
    pub(super) hup: bool,
    /// Bytes read from this connection are spliced to that one's pipe
    /// instead of going through `on_data` ([`Ctx::splice`]).
    pub(super) splice_to: Option<ConnId>,
    /// The connection whose bytes are spliced into this one's pipe.
    pub(super) fed_by: Option<ConnId>,
    /// Splicing stopped because the destination is at its cap; resumed
    /// when it drains to half.
    pub(super) splice_stalled: bool,
    /// Requests handed to a pool: the next one's sequence number, and the
    /// oldest one not yet answered. Responses leave in this order.
    pub(super) next_seq: u64,
    pub(super) write_seq: u64,
    /// Finished requests from `write_seq` on (None: still running).
    pub(super) pending: VecDeque<Option<Done>>,
    /// A complete request waits in `input` for room in the pool or under
    /// `max_pipelined`: reading stops until a job finishes.
    pub(super) pool_waiting: bool,
    /// Nothing read yet: its first request may be on its way.
    pub(super) fresh: bool,
    /// Shutting down while this connection's request was still arriving:
    /// it gets until then to complete and be answered.
    pub(super) shutdown_deadline: Option<Instant>,
    /// What the readiness backend watches it for.
    pub(super) interest: Interest,
    /// Its submissions under `-T completion`.
    pub(super) io: super::completion::Inflight,
}

impl Conn {
    pub(super) fn new(sock: TcpStream, generation: u32, listener: usize, now: Instant) -> Self {
        Conn {
            sock,
            generation,
            listener,
            session: None,
            accepted: true,
            peer: None,
            input: Vec::new(),
            out: OutQueue::default(),
            last_active: now,
            armed: None,
            connect_deadline: None,
            linger_deadline: None,
            read_paused: false,
            over_cap: false,
            read_eof: false,
            closing: false,
            close_reason: None,
            shut_wr_pending: false,
            wr_shut: false,
            writable_interest: false,
            dirty: false,
            hup: false,
            splice_to: None,
            fed_by: None,
            splice_stalled: false,
            next_seq: 0,
            write_seq: 0,
            pending: VecDeque::new(),
            pool_waiting: false,
            fresh: true,
            shutdown_deadline: None,
            interest: Interest::NONE,
            io: super::completion::Inflight::default(),
        }
    }

    pub(super) fn id(&self, slot: usize) -> ConnId {
        ConnId {
            slot: slot as u32,
            generation: self.generation,
        }
    }

    pub(super) fn reading_blocked(&self) -> bool {
        self.read_paused
            || self.splice_stalled
            || self.pool_waiting
            || (self.over_cap && self.session.is_none())
            || self.read_eof
            || (self.closing && self.linger_deadline.is_none())
            || self.connect_deadline.is_some()
    }

    /// The earliest deadline of this connection and what happens then.
    pub(super) fn deadline(&self, limits: &Limits) -> Option<(Instant, Expiry)> {
        let mut best: Option<(Instant, Expiry)> = None;
        let mut consider = |at: Option<Instant>, what: Expiry| {
            if let Some(at) = at {
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, what));
                }
            }
        };
        consider(self.connect_deadline, Expiry::Connect);
        consider(self.linger_deadline, Expiry::Linger);
        consider(self.shutdown_deadline, Expiry::Shutdown);
        // A request still running in a pool is not idleness.
        if self.pending.is_empty() {
            consider(
                limits.idle_timeout.map(|d| self.last_active + d),
                Expiry::Idle,
            );
        }
        best
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Expiry {
    Connect,
    Linger,
    Idle,
    Shutdown,
}

pub(super) enum Deferred {
    Connected(SessionKey, ConnId, io::Result<()>),
    Writable(SessionKey, ConnId),
    Closed(SessionKey, ConnId, CloseReason),
}
