//! Layer 2: the poll backends (`-T`).
//!
//! Three ways for a loop to learn what its sockets can do:
//!
//! - [`PollType::Edge`]: epoll, edge-triggered, through mio. A readiness
//!   event is raised once per change; the loop reads and writes until
//!   `WouldBlock` (or a short read) and is told again only when new bytes
//!   or new room arrive. The default.
//! - [`PollType::Level`]: epoll, level-triggered, through rustix. A socket is
//!   reported for as long as it is readable or writable, so the loop keeps
//!   each socket's interest exactly what it can act on: no read interest
//!   while reading is paused, no write interest while nothing is queued.
//! - [`PollType::Completion`]: io_uring. The loop does not make the I/O
//!   syscalls itself: it submits accepts, receives into loop-owned provided
//!   buffers, sends, splices and connects, and is told when they are done.
//!
//! Handlers never make syscalls, which is what lets one loop
//! ([`crate::event_loop`]) drive every handler over any of the three.

use std::fmt;
use std::str::FromStr;

/// The poll backend (`-T`, `[server] poll`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PollType {
    /// epoll, edge-triggered, through mio.
    #[default]
    Edge,
    /// epoll, level-triggered, through rustix.
    Level,
    /// io_uring completions.
    Completion,
}

impl PollType {
    /// The names `-T` accepts.
    pub const NAMES: &'static str = "edge, level or completion";
}

impl FromStr for PollType {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "edge" => Ok(PollType::Edge),
            "level" => Ok(PollType::Level),
            "completion" => Ok(PollType::Completion),
            _ => Err(()),
        }
    }
}

impl fmt::Display for PollType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PollType::Edge => "edge",
            PollType::Level => "level",
            PollType::Completion => "completion",
        })
    }
}
