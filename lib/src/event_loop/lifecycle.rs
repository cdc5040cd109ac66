//! A connection's life as a plain state machine: no socket, no clock (the
//! instants it needs are arguments), so every transition is tested below
//! without a loop.
//!
//! ```text
//!            connect done                 close / error reply / EOF
//!  (outbound) ─────────► Open ──────────────────────────────────► Closing{reason}
//!                          │                                         │ output written,
//!                          │ shutdown_write: FIN once output is out  │ no job pending
//!                          ▼                                         ▼
//!                    write side Shut          peer's FIN seen? ── yes ──► closed (reason)
//!                                                    │ no
//!                                                    ▼
//!                              Lingering{deadline}: FIN sent, input read and dropped
//!                              until the peer's FIN or the deadline ──► closed
//! ```
//!
//! Reading stops while any *hold* is on (the protocol paused it, its splice
//! destination is full, a complete request waits for a pool), a service's
//! output is over the cap, the stream ended, it is closing, or its connect
//! is still in flight; never while it lingers: a lingering connection reads
//! (and drops) its input to see the FIN, whatever else held it. [`Lifecycle::reading_blocked`] is the one place that
//! says so.

use std::time::{Duration, Instant};

use crate::protocol::CloseReason;

/// Where a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading and writing.
    Open,
    /// Closes once its output is written and no job of it is pending;
    /// `reason` is told to its session (none: the session asked).
    Closing { reason: Option<CloseReason> },
    /// Its last reply is out and its FIN sent: input is read and dropped
    /// until the peer's FIN or `deadline`, so closing over unread input
    /// does not reset the connection and destroy that reply.
    Lingering { deadline: Instant },
}

/// The write side, apart from the phase: a protocol may half-close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteSide {
    Open,
    /// FIN goes out once the pending output is written.
    ShutPending,
    Shut,
}

/// Reasons to stop reading, each set and lifted by its own part of the
/// loop.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Holds {
    /// The protocol asked ([`crate::Ctx::pause_read`]).
    pub paused: bool,
    /// The connection it is spliced into is full; lifted when that one
    /// drains to half its cap.
    pub splice_stalled: bool,
    /// A complete request waits for room in the pool or under
    /// `max_pipelined`; lifted when a job finishes or the pool has room.
    pub pool_waiting: bool,
}

/// What a connection's deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    Connect,
    Linger,
    Idle,
    Shutdown,
}

/// What to do now that a connection's output queue is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Send FIN now (a half-close asked for earlier).
    pub shutdown_write: bool,
    pub then: AfterDrain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AfterDrain {
    /// Nothing more: it stays open (or waits for its jobs).
    Stay,
    /// Send FIN and linger until the deadline (the peer has not sent its
    /// FIN yet).
    Linger { deadline: Instant },
    /// Close now, telling the session this reason.
    Close(Option<CloseReason>),
}

/// One connection's lifecycle, holds and backpressure state.
#[derive(Debug, Clone)]
pub(crate) struct Lifecycle {
    phase: Phase,
    write: WriteSide,
    /// An outbound connect is in flight until this deadline.
    connecting: Option<Instant>,
    /// The peer sent FIN.
    read_eof: bool,
    /// Pending output reached the cap; left when it drains to half.
    over_cap: bool,
    /// A service connection stops reading over the cap; a protocol's
    /// keeps reading (`Ctx::write` tells it to stop producing).
    service: bool,
    /// Nothing read yet: its first request may be on its way.
    fresh: bool,
    /// Shutting down while its request was still arriving: it has until
    /// then to complete and be answered.
    shutdown_deadline: Option<Instant>,
    pub holds: Holds,
}

impl Lifecycle {
    /// An accepted connection (a service's, or a protocol session's).
    pub fn accepted(service: bool) -> Lifecycle {
        Lifecycle {
            phase: Phase::Open,
            write: WriteSide::Open,
            connecting: None,
            read_eof: false,
            over_cap: false,
            service,
            fresh: true,
            shutdown_deadline: None,
            holds: Holds::default(),
        }
    }

    /// An outbound connection of a protocol session, connecting until
    /// `deadline`.
    pub fn outbound(deadline: Instant) -> Lifecycle {
        Lifecycle {
            connecting: Some(deadline),
            ..Lifecycle::accepted(false)
        }
    }

    #[cfg(test)]
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Closing or lingering: no new output is taken, no new request read.
    #[inline]
    pub fn is_closing(&self) -> bool {
        !matches!(self.phase, Phase::Open)
    }

    #[inline]
    pub fn is_lingering(&self) -> bool {
        matches!(self.phase, Phase::Lingering { .. })
    }

    #[inline]
    pub fn is_connecting(&self) -> bool {
        self.connecting.is_some()
    }

    #[inline]
    pub fn over_cap(&self) -> bool {
        self.over_cap
    }

    #[inline]
    pub fn fresh(&self) -> bool {
        self.fresh
    }

    /// Is reading stopped now? (The one place that says so.)
    #[inline]
    pub fn reading_blocked(&self) -> bool {
        if self.is_lingering() {
            return false;
        }
        let Holds {
            paused,
            splice_stalled,
            pool_waiting,
        } = self.holds;
        paused
            || splice_stalled
            || pool_waiting
            || (self.over_cap && self.service)
            || self.read_eof
            || matches!(self.phase, Phase::Closing { .. })
            || self.connecting.is_some()
    }

    /// Bytes came from the peer.
    #[inline]
    pub fn note_read(&mut self) {
        self.fresh = false;
    }

    /// The peer sent FIN.
    #[inline]
    pub fn note_eof(&mut self) {
        self.read_eof = true;
    }

    /// The outbound connect completed.
    pub fn connected(&mut self) {
        self.connecting = None;
    }

    /// Close once the output is written, for `reason` (replacing an
    /// earlier one; `None` keeps it). A lingering connection is past that.
    pub fn close(&mut self, reason: Option<CloseReason>) {
        match &mut self.phase {
            Phase::Open => self.phase = Phase::Closing { reason },
            Phase::Closing { reason: old } => {
                if reason.is_some() {
                    *old = reason;
                }
            }
            Phase::Lingering { .. } => {}
        }
    }

    /// Close once the output is written, for `reason` unless one was given
    /// already.
    pub fn close_unless_closing(&mut self, reason: CloseReason) {
        match &mut self.phase {
            Phase::Open => {
                self.phase = Phase::Closing {
                    reason: Some(reason),
                }
            }
            Phase::Closing { reason: old } => {
                old.get_or_insert(reason);
            }
            Phase::Lingering { .. } => {}
        }
    }

    /// Can new output be queued ([`crate::Ctx::write`])?
    #[inline]
    pub fn takes_output(&self) -> bool {
        matches!((&self.phase, &self.write), (Phase::Open, WriteSide::Open))
    }

    /// Send FIN once the pending output is written. True when that is new
    /// (the connection must be flushed).
    pub fn shutdown_write(&mut self) -> bool {
        if self.write == WriteSide::Shut {
            return false;
        }
        self.write = WriteSide::ShutPending;
        true
    }

    /// Output was queued and `pending` bytes wait, against `cap`. True
    /// while under the cap.
    #[inline]
    pub fn output_grew(&mut self, pending: usize, cap: usize) -> bool {
        if pending >= cap {
            self.over_cap = true;
            false
        } else {
            true
        }
    }

    /// Treat the output as full until it drains (a splice found its pipe
    /// full or out of slots).
    pub fn mark_full(&mut self) {
        self.over_cap = true;
    }

    /// Output was written and `pending` bytes wait, against `cap`. True
    /// when this leaves the over-cap state (at half the cap): readers and
    /// producers resume.
    #[inline]
    pub fn output_drained(&mut self, pending: usize, cap: usize) -> bool {
        if self.over_cap && pending <= cap / 2 {
            self.over_cap = false;
            true
        } else {
            false
        }
    }

    /// Would [`Lifecycle::drained`] do anything (a half-close or a close
    /// waits for the output to drain)? The flush's fast path asks first.
    #[inline]
    pub fn awaits_drain(&self) -> bool {
        self.write == WriteSide::ShutPending || matches!(self.phase, Phase::Closing { .. })
    }

    /// The output queue is empty: the half-close and close it waited for.
    /// `jobs_pending`: requests of it still run in a handler pool (their
    /// answers come first).
    pub fn drained(&mut self, jobs_pending: bool, now: Instant, linger: Duration) -> Drained {
        let shutdown_write = self.write == WriteSide::ShutPending;
        if shutdown_write {
            self.write = WriteSide::Shut;
        }
        let then = match &self.phase {
            Phase::Closing { reason } if !jobs_pending => {
                if self.read_eof {
                    AfterDrain::Close(reason.clone())
                } else {
                    let deadline = now + linger;
                    self.phase = Phase::Lingering { deadline };
                    AfterDrain::Linger { deadline }
                }
            }
            _ => AfterDrain::Stay,
        };
        Drained {
            shutdown_write,
            then,
        }
    }

    /// A service connection's reads are done for now: at the end of its
    /// stream, with nothing waiting to be read, it closes after its
    /// answers (an incomplete tail can never complete now).
    #[inline]
    pub fn reads_done(&mut self) {
        if self.read_eof && !self.over_cap && !self.holds.pool_waiting {
            self.close_unless_closing(CloseReason::Local);
        }
    }

    /// The loop is shutting down. `request_may_arrive`: a service
    /// connection with nothing to answer that may have a request on its
    /// way (it has read nothing yet, or holds part of one). That one gets
    /// until `grace` to complete it and is answered; the rest close after
    /// their output. True when a grace deadline was set.
    pub fn begin_shutdown(&mut self, request_may_arrive: bool, grace: Instant) -> bool {
        if request_may_arrive && self.service && self.phase == Phase::Open {
            self.shutdown_deadline = Some(grace);
            return true;
        }
        self.close_unless_closing(CloseReason::Shutdown);
        false
    }

    /// Shutting down within a grace period: once nothing incomplete is
    /// left (`input_empty`, no request waiting for a pool), it closes
    /// after its answers.
    #[inline]
    pub fn grace_check(&mut self, input_empty: bool) {
        if self.shutdown_deadline.is_some() && input_empty && !self.holds.pool_waiting {
            self.close_unless_closing(CloseReason::Shutdown);
        }
    }

    /// The earliest deadline and what happens then; `idle` is when the
    /// connection counts as idle (none: never, or a job is running).
    pub fn deadline(&self, idle: Option<Instant>) -> Option<(Instant, Expiry)> {
        let linger = match self.phase {
            Phase::Lingering { deadline } => Some(deadline),
            _ => None,
        };
        [
            (self.connecting, Expiry::Connect),
            (linger, Expiry::Linger),
            (self.shutdown_deadline, Expiry::Shutdown),
            (idle, Expiry::Idle),
        ]
        .into_iter()
        .filter_map(|(at, what)| at.map(|at| (at, what)))
        // The first of equal instants wins, as listed.
        .reduce(|best, next| if next.0 < best.0 { next } else { best })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_secs(2);

    #[test]
    fn an_accepted_connection_reads_until_a_hold_or_the_end_of_its_stream() {
        let mut l = Lifecycle::accepted(true);
        assert!(!l.reading_blocked());
        for set in [
            |h: &mut Holds| h.paused = true,
            |h: &mut Holds| h.splice_stalled = true,
            |h: &mut Holds| h.pool_waiting = true,
        ] {
            let mut held = l.clone();
            set(&mut held.holds);
            assert!(held.reading_blocked());
            held.holds = Holds::default();
            assert!(!held.reading_blocked());
        }
        l.note_eof();
        assert!(l.reading_blocked());
    }

    #[test]
    fn a_service_stops_reading_at_the_cap_and_resumes_at_half() {
        let cap = 1000;
        let mut l = Lifecycle::accepted(true);
        assert!(l.output_grew(999, cap));
        assert!(!l.reading_blocked());
        assert!(!l.output_grew(1000, cap));
        assert!(l.reading_blocked());
        assert!(!l.output_drained(501, cap), "above half the cap");
        assert!(l.reading_blocked());
        assert!(l.output_drained(500, cap));
        assert!(!l.reading_blocked());
        assert!(!l.output_drained(0, cap), "left the over-cap state once");
    }

    #[test]
    fn a_protocol_keeps_reading_over_the_cap_and_is_told_at_half() {
        let mut l = Lifecycle::accepted(false);
        assert!(!l.output_grew(5000, 1000));
        assert!(l.over_cap());
        assert!(!l.reading_blocked());
        assert!(l.output_drained(100, 1000));
    }

    #[test]
    fn closing_after_the_peers_fin_closes_as_soon_as_output_is_written() {
        let now = Instant::now();
        let mut l = Lifecycle::accepted(true);
        l.note_eof();
        l.close(Some(CloseReason::TooLarge));
        assert!(!l.takes_output());
        let d = l.drained(false, now, LINGER);
        assert_eq!(d.then, AfterDrain::Close(Some(CloseReason::TooLarge)));
        assert!(!d.shutdown_write);
    }

    #[test]
    fn closing_before_the_peers_fin_lingers_and_reads_until_the_deadline() {
        let now = Instant::now();
        let mut l = Lifecycle::accepted(true);
        l.close(None);
        assert!(l.reading_blocked(), "closing: no new requests are read");
        let d = l.drained(false, now, LINGER);
        assert_eq!(
            d.then,
            AfterDrain::Linger {
                deadline: now + LINGER
            }
        );
        assert!(l.is_lingering());
        assert!(!l.reading_blocked(), "lingering reads to see the FIN");
        l.holds.paused = true;
        assert!(!l.reading_blocked(), "whatever held it before");
        assert_eq!(l.deadline(None), Some((now + LINGER, Expiry::Linger)));
        // Lingering is past closing: a later close changes nothing.
        l.close(Some(CloseReason::Shutdown));
        assert!(l.is_lingering());
    }

    #[test]
    fn a_close_waits_for_jobs_still_running_in_a_pool() {
        let now = Instant::now();
        let mut l = Lifecycle::accepted(true);
        l.note_eof();
        l.close(None);
        assert_eq!(l.drained(true, now, LINGER).then, AfterDrain::Stay);
        assert_eq!(l.drained(false, now, LINGER).then, AfterDrain::Close(None));
    }

    #[test]
    fn a_half_close_sends_fin_once_after_the_output_and_keeps_reading() {
        let now = Instant::now();
        let mut l = Lifecycle::accepted(false);
        assert!(l.shutdown_write());
        assert!(!l.takes_output(), "nothing may follow the FIN");
        assert!(!l.reading_blocked());
        let d = l.drained(false, now, LINGER);
        assert!(d.shutdown_write);
        assert_eq!(d.then, AfterDrain::Stay);
        assert!(!l.drained(false, now, LINGER).shutdown_write, "only once");
        assert!(!l.shutdown_write(), "already shut");
    }

    #[test]
    fn draining_does_something_only_when_a_fin_or_a_close_waits_for_it() {
        let now = Instant::now();
        let linger = Duration::from_secs(1);
        let stays = |l: &mut Lifecycle| {
            let d = l.drained(false, now, linger);
            !d.shutdown_write && d.then == AfterDrain::Stay
        };
        let mut open = Lifecycle::accepted(true);
        assert!(!open.awaits_drain());
        assert!(stays(&mut open));
        let mut eof = Lifecycle::accepted(true);
        eof.note_eof();
        assert!(!eof.awaits_drain());
        assert!(stays(&mut eof));
        let mut half = Lifecycle::accepted(false);
        assert!(half.shutdown_write());
        assert!(half.awaits_drain());
        assert!(!stays(&mut half));
        assert!(!half.awaits_drain(), "the FIN is sent once");
        let mut closing = Lifecycle::accepted(true);
        closing.close(None);
        assert!(closing.awaits_drain());
        assert!(!stays(&mut closing));
    }

    #[test]
    fn a_given_reason_is_replaced_by_the_next_and_kept_by_a_default() {
        let mut l = Lifecycle::accepted(true);
        l.close_unless_closing(CloseReason::Local);
        l.close_unless_closing(CloseReason::Shutdown);
        assert_eq!(
            l.phase(),
            &Phase::Closing {
                reason: Some(CloseReason::Local)
            }
        );
        l.close(None);
        assert_eq!(
            l.phase(),
            &Phase::Closing {
                reason: Some(CloseReason::Local)
            }
        );
        l.close(Some(CloseReason::TooLarge));
        assert_eq!(
            l.phase(),
            &Phase::Closing {
                reason: Some(CloseReason::TooLarge)
            }
        );
    }

    #[test]
    fn shutdown_gives_an_arriving_request_its_grace_and_closes_the_rest() {
        let now = Instant::now();
        let grace = now + Duration::from_secs(1);
        let mut waiting = Lifecycle::accepted(true);
        assert!(waiting.begin_shutdown(true, grace));
        assert!(!waiting.is_closing());
        assert_eq!(waiting.deadline(None), Some((grace, Expiry::Shutdown)));
        waiting.grace_check(false);
        assert!(!waiting.is_closing(), "part of a request is still held");
        waiting.grace_check(true);
        assert_eq!(
            waiting.phase(),
            &Phase::Closing {
                reason: Some(CloseReason::Shutdown)
            }
        );

        let mut busy = Lifecycle::accepted(true);
        assert!(!busy.begin_shutdown(false, grace));
        assert!(busy.is_closing());

        // A protocol's connection gets no grace: its session decides.
        let mut proto = Lifecycle::accepted(false);
        assert!(!proto.begin_shutdown(true, grace));
        assert!(proto.is_closing());
    }

    #[test]
    fn an_outbound_connection_waits_for_its_connect_before_reading() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(10);
        let mut l = Lifecycle::outbound(deadline);
        assert!(l.reading_blocked());
        assert!(l.takes_output(), "bytes written meanwhile are queued");
        let idle = now + Duration::from_secs(60);
        assert_eq!(l.deadline(Some(idle)), Some((deadline, Expiry::Connect)));
        l.connected();
        assert!(!l.reading_blocked());
        assert_eq!(l.deadline(Some(idle)), Some((idle, Expiry::Idle)));
    }

    #[test]
    fn the_end_of_a_service_stream_closes_it_once_nothing_waits() {
        let mut l = Lifecycle::accepted(true);
        l.note_eof();
        l.holds.pool_waiting = true;
        l.reads_done();
        assert!(!l.is_closing(), "a request still waits for the pool");
        l.holds.pool_waiting = false;
        l.reads_done();
        assert_eq!(
            l.phase(),
            &Phase::Closing {
                reason: Some(CloseReason::Local)
            }
        );
    }
}
