//! `-T edge`: epoll, edge-triggered. Descriptors are registered through
//! mio; the wait is `epoll_pwait2` on mio's epoll (see
//! [`super::epoll_wait`]), since mio's `Poll::poll` rounds every timeout up
//! to a whole millisecond. The events read are mio's (each registration's
//! user data is its token) and are read the way mio reads them.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Poll, Token};
use rustix::event::epoll::{self, EventFlags};

use super::{Event, Interest, Readiness};

pub(crate) struct Edge {
    poll: Poll,
    raw: Vec<epoll::Event>,
}

// SAFETY: the events buffer holds plain data (each event's user data is a
// token, never a pointer), so the poller may move to the loop's thread.
unsafe impl Send for Edge {}

impl Edge {
    pub fn new() -> io::Result<Edge> {
        Ok(Edge {
            poll: Poll::new()?,
            raw: Vec::with_capacity(super::EPOLL_BATCH),
        })
    }
}

fn mio_interest(i: Interest) -> Option<mio::Interest> {
    match (i.read, i.write) {
        (true, true) => Some(mio::Interest::READABLE | mio::Interest::WRITABLE),
        (true, false) => Some(mio::Interest::READABLE),
        (false, true) => Some(mio::Interest::WRITABLE),
        (false, false) => None,
    }
}

/// One epoll event as mio's `Event` would report it (mio 1's
/// `sys::unix::selector::epoll::event`).
fn event(e: &epoll::Event) -> Event {
    let f = e.flags;
    let hup = f.contains(EventFlags::HUP);
    let err = f.contains(EventFlags::ERR);
    Event {
        token: e.data.u64() as usize,
        readable: f.intersects(EventFlags::IN | EventFlags::PRI),
        writable: f.contains(EventFlags::OUT),
        read_closed: hup || (f.contains(EventFlags::IN) && f.contains(EventFlags::RDHUP)),
        write_closed: hup || (f.contains(EventFlags::OUT) && err) || f == EventFlags::ERR,
        error: err,
    }
}

impl Readiness for Edge {
    fn set_interest(
        &mut self,
        fd: BorrowedFd<'_>,
        token: usize,
        old: Interest,
        new: Interest,
    ) -> io::Result<()> {
        let registry = self.poll.registry();
        let raw = fd.as_raw_fd();
        let mut source = SourceFd(&raw);
        match (mio_interest(old), mio_interest(new)) {
            (_, None) if old.is_none() => Ok(()),
            (_, None) => registry.deregister(&mut source),
            (None, Some(n)) => registry.register(&mut source, Token(token), n),
            (Some(_), Some(n)) => registry.reregister(&mut source, Token(token), n),
        }
    }

    fn wait(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        // SAFETY: the descriptor is the poll's epoll, open for as long as
        // `self.poll` lives, which outlives this borrow.
        let epoll = unsafe { BorrowedFd::borrow_raw(self.poll.as_raw_fd()) };
        super::epoll_wait(epoll, &mut self.raw, timeout)?;
        events.extend(self.raw.iter().map(event));
        Ok(())
    }

    fn is_level(&self) -> bool {
        false
    }
}
