//! `-T edge`: epoll, edge-triggered, through mio.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Poll, Token};

use super::{Event, Interest, Readiness};

pub(crate) struct Edge {
    poll: Poll,
    events: Events,
}

impl Edge {
    pub fn new() -> io::Result<Edge> {
        Ok(Edge {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
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
        self.poll.poll(&mut self.events, timeout)?;
        events.extend(self.events.iter().map(|e| Event {
            token: e.token().0,
            readable: e.is_readable(),
            writable: e.is_writable(),
            read_closed: e.is_read_closed(),
            write_closed: e.is_write_closed(),
            error: e.is_error(),
        }));
        Ok(())
    }

    fn is_level(&self) -> bool {
        false
    }
}
