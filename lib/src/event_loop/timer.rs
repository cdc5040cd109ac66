//! The loop's timer table: connection deadlines and handler timers in one
//! min-heap.
//!
//! Connection deadlines (idle, connect, lingering close) are checked lazily:
//! activity only updates a timestamp, and when an entry comes due the loop
//! recomputes the real deadline and re-arms if it moved. That keeps the cost
//! of activity at zero heap operations.
//!
//! Session timers are entries too, with a table of those armed and neither
//! fired nor cancelled. Cancelling takes a timer out of the table at once;
//! its heap entry is skipped when it comes due, and the heap is compacted
//! when such entries are more than half of it, so a session that sets and
//! cancels timers without end (a retransmission timer, say) keeps memory
//! flat whatever their deadlines.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use super::SessionKey;
use crate::protocol::{ConnId, TimerId};

/// Cancelled entries tolerated in the heap before it is compacted, however
/// small it is (compacting a tiny heap again and again buys nothing).
const COMPACT_MIN: usize = 64;

/// What a due entry concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Due {
    /// Re-check the deadline of a connection.
    Conn(ConnId),
    /// A handler timer of a session.
    Session(SessionKey, TimerId),
    /// Retry accepting on a paused listener.
    Listener(usize),
    /// The deadline a session reported through `poll_timeout`.
    Deadline(SessionKey),
}

#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, Due)>>,
    seq: u64,
    /// Session timers armed and neither fired nor cancelled: their session.
    armed: HashMap<TimerId, SessionKey>,
    /// The deadline entry armed for each session that reported one.
    deadlines: HashMap<SessionKey, Instant>,
    /// Entries of cancelled session timers (and replaced deadlines) still
    /// in the heap.
    stale: usize,
}

impl Timers {
    /// Re-check a connection or a listener at `at`.
    pub(crate) fn arm(&mut self, at: Instant, due: Due) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, due)));
    }

    /// A timer of session `key` at `at`: its id.
    pub(crate) fn arm_session(&mut self, at: Instant, key: SessionKey) -> TimerId {
        self.seq += 1;
        let id = TimerId(self.seq);
        self.armed.insert(id, key);
        self.arm(at, Due::Session(key, id));
        id
    }

    /// Cancel `timer` of session `key`. False (and nothing changes) when it
    /// is not an armed timer of that session: it fired or was cancelled
    /// already, or it is another session's.
    pub(crate) fn cancel(&mut self, key: SessionKey, timer: TimerId) -> bool {
        if self.armed.get(&timer) != Some(&key) {
            return false;
        }
        self.armed.remove(&timer);
        self.went_stale();
        true
    }

    /// Session `key` reports its next deadline `at`: arm an entry unless
    /// one as early is armed already.
    pub(crate) fn arm_deadline(&mut self, key: SessionKey, at: Instant) {
        match self.deadlines.insert(key, at) {
            Some(armed) if armed <= at => {
                self.deadlines.insert(key, armed);
                return;
            }
            Some(_) => self.went_stale(),
            None => {}
        }
        self.arm(at, Due::Deadline(key));
    }

    /// Session `key` has ended: its deadline entry is void.
    pub(crate) fn forget_deadline(&mut self, key: SessionKey) {
        if self.deadlines.remove(&key).is_some() {
            self.went_stale();
        }
    }

    /// One more entry in the heap is void: compact it once they are more
    /// than half of it.
    fn went_stale(&mut self) {
        self.stale += 1;
        if self.stale > COMPACT_MIN && self.stale * 2 > self.heap.len() {
            let (armed, deadlines) = (&self.armed, &self.deadlines);
            self.heap.retain(|Reverse((at, _, due))| match due {
                Due::Session(_, t) => armed.contains_key(t),
                Due::Deadline(k) => deadlines.get(k) == Some(at),
                Due::Conn(_) | Due::Listener(_) => true,
            });
            self.stale = 0;
        }
    }

    /// The earliest armed instant (a cancelled timer's may still count:
    /// the loop then wakes once for nothing).
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Pop one entry due at or before `now` (cancelled timers are skipped).
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, Due)> {
        loop {
            match self.heap.peek() {
                Some(Reverse((at, _, _))) if *at <= now => {}
                _ => return None,
            }
            let Reverse((at, _, due)) = self.heap.pop()?;
            let live = match due {
                Due::Session(_, timer) => self.armed.remove(&timer).is_some(),
                Due::Deadline(key) => {
                    let live = self.deadlines.get(&key) == Some(&at);
                    if live {
                        self.deadlines.remove(&key);
                    }
                    live
                }
                Due::Conn(_) | Due::Listener(_) => true,
            };
            if !live {
                self.stale = self.stale.saturating_sub(1);
                continue;
            }
            return Some((at, due));
        }
    }

    /// Entries in the heap, cancelled ones included (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_loop::slots::Key;
    use std::time::Duration;

    fn session(n: u32) -> SessionKey {
        SessionKey::from_parts(n, 1)
    }

    #[test]
    fn entries_come_due_in_time_order() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.arm(t0 + Duration::from_secs(2), Due::Listener(2));
        t.arm(t0 + Duration::from_secs(1), Due::Listener(1));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert!(t.pop_due(t0).is_none());
        let later = t0 + Duration::from_secs(5);
        assert_eq!(t.pop_due(later).map(|d| d.1), Some(Due::Listener(1)));
        assert_eq!(t.pop_due(later).map(|d| d.1), Some(Due::Listener(2)));
        assert!(t.pop_due(later).is_none());
    }

    #[test]
    fn a_cancelled_timer_never_fires_and_a_fired_one_cannot_be_cancelled() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let a = t.arm_session(t0 + Duration::from_secs(1), session(1));
        let b = t.arm_session(t0 + Duration::from_secs(2), session(1));
        assert!(t.cancel(session(1), a));
        assert!(!t.cancel(session(1), a), "cancelled once");
        let later = t0 + Duration::from_secs(5);
        assert_eq!(
            t.pop_due(later).map(|d| d.1),
            Some(Due::Session(session(1), b))
        );
        assert!(t.pop_due(later).is_none());
        assert!(!t.cancel(session(1), b), "it fired");
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_session_cannot_cancel_another_sessions_timer() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let a = t.arm_session(t0, session(1));
        assert!(!t.cancel(session(2), a));
        assert_eq!(
            t.pop_due(t0).map(|d| d.1),
            Some(Due::Session(session(1), a))
        );
    }

    #[test]
    fn a_million_set_and_cancel_cycles_keep_the_table_small() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        // Deadlines far off, so none comes due and only cancelling can
        // keep the heap from growing; a few live timers and a connection
        // deadline stay throughout.
        let keep: Vec<TimerId> = (0..10)
            .map(|i| t.arm_session(t0 + Duration::from_secs(3600 + i), session(7)))
            .collect();
        t.arm(t0 + Duration::from_secs(7200), Due::Listener(0));
        let mut most = 0;
        for i in 0..1_000_000u64 {
            let id = t.arm_session(t0 + Duration::from_secs(60 + i % 1000), session(1));
            assert!(t.cancel(session(1), id));
            most = most.max(t.len());
        }
        assert!(
            most <= 2 * (keep.len() + 1) + COMPACT_MIN + 2,
            "heap reached {most}"
        );
        assert_eq!(t.armed.len(), keep.len());
        assert!(t.armed.capacity() < 1024);
        assert!(
            t.heap.capacity() < 1024,
            "heap capacity {}",
            t.heap.capacity()
        );
        // The ones kept still fire, in order, and nothing else does.
        let fired: Vec<Due> = std::iter::from_fn(|| t.pop_due(t0 + Duration::from_secs(9000)))
            .map(|d| d.1)
            .collect();
        let mut expect: Vec<Due> = keep.iter().map(|&k| Due::Session(session(7), k)).collect();
        expect.push(Due::Listener(0));
        assert_eq!(fired, expect);
    }

    #[test]
    fn a_deadline_arms_only_when_it_moves_earlier() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = Timers::default();
        t.arm_deadline(session(1), t0 + ms(10));
        t.arm_deadline(session(1), t0 + ms(20));
        assert_eq!(t.len(), 1, "a later deadline arms nothing");
        t.arm_deadline(session(1), t0 + ms(5));
        assert_eq!(t.next(), Some(t0 + ms(5)));
        // The replaced entry at 10 ms never comes due.
        let fired: Vec<(Instant, Due)> = std::iter::from_fn(|| t.pop_due(t0 + ms(30))).collect();
        assert_eq!(fired, vec![(t0 + ms(5), Due::Deadline(session(1)))]);
        // Once due, the next report arms again, even a later one.
        t.arm_deadline(session(1), t0 + ms(40));
        assert_eq!(
            t.pop_due(t0 + ms(40)).map(|d| d.1),
            Some(Due::Deadline(session(1)))
        );
    }

    #[test]
    fn an_ended_sessions_deadline_never_comes_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.arm_deadline(session(1), t0);
        t.arm_deadline(session(2), t0);
        t.forget_deadline(session(1));
        let fired: Vec<Due> = std::iter::from_fn(|| t.pop_due(t0)).map(|d| d.1).collect();
        assert_eq!(fired, vec![Due::Deadline(session(2))]);
    }

    #[test]
    fn a_million_deadlines_moved_earlier_keep_the_heap_small() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let mut most = 0;
        for i in 0..1_000_000u64 {
            // Each round: a far deadline (an idle timeout), then an earlier
            // one (a pacing interval) that replaces it.
            t.arm_deadline(session(1), t0 + Duration::from_secs(3600 + i));
            t.arm_deadline(session(1), t0 + Duration::from_micros(10 + i));
            most = most.max(t.len());
            if i % 2 == 0 {
                t.forget_deadline(session(1));
            }
        }
        assert!(most <= 2 * COMPACT_MIN + 4, "heap reached {most}");
        assert!(t.heap.capacity() < 1024, "capacity {}", t.heap.capacity());
    }
}
