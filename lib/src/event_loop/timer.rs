//! The loop's timer table: connection deadlines and handler timers in one
//! min-heap.
//!
//! Connection deadlines (idle, connect, lingering close) are checked lazily:
//! activity only updates a timestamp, and when an entry comes due the loop
//! recomputes the real deadline and re-arms if it moved. That keeps the cost
//! of activity at zero heap operations.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::SessionKey;
use crate::protocol::{ConnId, TimerId};

/// What a due entry concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Due {
    /// Re-check the deadline of a connection.
    Conn(ConnId),
    /// A handler timer of a session.
    Session(SessionKey, TimerId),
    /// Retry accepting on a paused listener.
    Listener(usize),
}

#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, Due)>>,
    seq: u64,
}

impl Timers {
    pub(crate) fn arm(&mut self, at: Instant, due: Due) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, due)));
    }

    /// The earliest armed instant.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Pop one entry due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, Due)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                self.heap.pop().map(|Reverse((at, _, due))| (at, due))
            }
            _ => None,
        }
    }

    pub(crate) fn next_id(&mut self) -> TimerId {
        self.seq += 1;
        TimerId(self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
