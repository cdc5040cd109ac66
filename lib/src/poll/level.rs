//! `-T level`: epoll, level-triggered, through rustix.
//!
//! A descriptor is reported for as long as its condition holds, so the
//! loop registers only what it can act on (see [`Readiness::is_level`]);
//! a descriptor with nothing to wait for is taken out of the set, since
//! epoll reports a hang-up even with no interest.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};

use super::{Event, Interest, Readiness};

pub(crate) struct Level {
    epoll: OwnedFd,
    raw: Vec<epoll::Event>,
}

// SAFETY: the events buffer holds plain data (each event's user data is a
// token, never a pointer), so the poller may move to the loop's thread.
unsafe impl Send for Level {}

impl Level {
    pub fn new() -> io::Result<Level> {
        Ok(Level {
            epoll: epoll::create(CreateFlags::CLOEXEC)?,
            raw: Vec::with_capacity(super::EPOLL_BATCH),
        })
    }
}

fn flags(i: Interest) -> EventFlags {
    let mut f = EventFlags::empty();
    if i.read {
        f |= EventFlags::IN | EventFlags::RDHUP;
    }
    if i.write {
        f |= EventFlags::OUT;
    }
    f
}

impl Readiness for Level {
    fn set_interest(
        &mut self,
        fd: BorrowedFd<'_>,
        token: usize,
        old: Interest,
        new: Interest,
    ) -> io::Result<()> {
        let data = EventData::new_u64(token as u64);
        match (old.is_none(), new.is_none()) {
            (true, true) => {}
            (_, true) => epoll::delete(&self.epoll, fd)?,
            (true, false) => epoll::add(&self.epoll, fd, data, flags(new))?,
            (false, false) => epoll::modify(&self.epoll, fd, data, flags(new))?,
        }
        Ok(())
    }

    fn wait(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        super::epoll_wait(self.epoll.as_fd(), &mut self.raw, timeout)?;
        events.extend(self.raw.iter().map(|e| {
            let f = e.flags;
            Event {
                token: e.data.u64() as usize,
                readable: f.contains(EventFlags::IN),
                writable: f.contains(EventFlags::OUT),
                read_closed: f.intersects(EventFlags::RDHUP | EventFlags::HUP),
                write_closed: f.contains(EventFlags::HUP),
                error: f.contains(EventFlags::ERR),
            }
        }));
        Ok(())
    }

    fn is_level(&self) -> bool {
        true
    }
}
