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

mod completion;
mod edge;
mod level;

pub(crate) use completion::{user_data, Cqe, Op, Ring};
pub use completion::{Lent, MAX_IOVECS};

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::event::{eventfd, EventfdFlags};

/// What a readiness backend is asked to report for one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Interest {
    pub read: bool,
    pub write: bool,
}

impl Interest {
    pub const NONE: Interest = Interest {
        read: false,
        write: false,
    };
    pub const READ: Interest = Interest {
        read: true,
        write: false,
    };
    pub const BOTH: Interest = Interest {
        read: true,
        write: true,
    };

    pub fn is_none(self) -> bool {
        !self.read && !self.write
    }
}

/// One readiness report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event {
    pub token: usize,
    pub readable: bool,
    pub writable: bool,
    /// The peer sent FIN (or the connection is gone).
    pub read_closed: bool,
    pub write_closed: bool,
    pub error: bool,
}

/// The readiness backends: the loop makes the I/O syscalls itself and is
/// told when a descriptor can take them.
pub(crate) trait Readiness: Send {
    /// Change what `fd` (known as `token`) is watched for, from `old` to
    /// `new`. `Interest::NONE` means not registered at all: a level-
    /// triggered poller would otherwise report a hung-up socket forever.
    fn set_interest(
        &mut self,
        fd: BorrowedFd<'_>,
        token: usize,
        old: Interest,
        new: Interest,
    ) -> io::Result<()>;

    /// Wait at most `timeout` (None: until something happens) and put what
    /// happened in `events` (cleared first).
    fn wait(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()>;

    /// Level-triggered: the loop keeps each interest to what it can act on
    /// now, or it would be woken again and again for the same state.
    fn is_level(&self) -> bool;
}

/// Events taken per epoll wait.
const EPOLL_BATCH: usize = 1024;

/// Wait on `epoll` at most `timeout` (None: no limit) and put what it
/// reports in `raw` (cleared first). Through `epoll_pwait2` (rustix's
/// `linux_5_11`), so a deadline keeps its nanoseconds: `epoll_wait` takes
/// whole milliseconds, and a loop pacing datagrams 10 µs apart cannot wait
/// a millisecond for each. Where the kernel (or a sandbox, or valgrind)
/// does not know `epoll_pwait2`, the process falls back to `epoll_wait`
/// for good, with timeouts rounded up to the millisecond, and says so once.
fn epoll_wait(
    epoll: BorrowedFd<'_>,
    raw: &mut Vec<rustix::event::epoll::Event>,
    timeout: Option<Duration>,
) -> io::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static NO_PWAIT2: AtomicBool = AtomicBool::new(false);
    raw.clear();
    if !NO_PWAIT2.load(Ordering::Relaxed) {
        let ts = timeout.map(|t| rustix::event::Timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        match rustix::event::epoll::wait(epoll, rustix::buffer::spare_capacity(raw), ts.as_ref()) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::NOSYS) => {
                NO_PWAIT2.store(true, Ordering::Relaxed);
                tracing::warn!(
                    "epoll_pwait2 is not available here: timers are rounded up to whole milliseconds"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    let ms = timeout.map_or(-1, |t| {
        let ms = t.as_nanos().div_ceil(1_000_000);
        i32::try_from(ms).unwrap_or(i32::MAX)
    });
    let cap = i32::try_from(raw.capacity()).unwrap_or(i32::MAX);
    // SAFETY: rustix's epoll `Event` has the layout of the kernel's struct
    // epoll_event (repr(C), packed on x86_64 as the kernel's and libc's
    // are); the kernel writes at most `cap` of them into the vector's
    // spare capacity, and the length is set to what it reports.
    let n = unsafe {
        libc::epoll_wait(
            std::os::fd::AsRawFd::as_raw_fd(&epoll),
            raw.as_mut_ptr().cast::<libc::epoll_event>(),
            cap,
            ms,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel initialised the first `n` (at most `cap`) events.
    unsafe { raw.set_len(n as usize) };
    Ok(())
}

/// A readiness backend of the given type.
pub(crate) fn readiness(kind: PollType) -> io::Result<Box<dyn Readiness>> {
    Ok(match kind {
        PollType::Level => Box::new(level::Level::new()?),
        _ => Box::new(edge::Edge::new()?),
    })
}

/// Gets a loop out of its wait from another thread: an eventfd every
/// backend watches (epoll for readiness, a read for completion).
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// `blocking` for the ring, whose read of a non-blocking eventfd would
    /// complete at once with EAGAIN instead of waiting for a wake.
    pub(crate) fn new(blocking: bool) -> io::Result<Waker> {
        let flags = if blocking {
            EventfdFlags::CLOEXEC
        } else {
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK
        };
        Ok(Waker {
            fd: eventfd(0, flags)?,
        })
    }

    /// Wake the loop.
    pub fn wake(&self) -> io::Result<()> {
        loop {
            match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
                Ok(_) => return Ok(()),
                // The counter is full: nobody has read it for 2^64 wakes.
                // Reset it; the loop is woken either way.
                Err(rustix::io::Errno::AGAIN) => self.reset(),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Clear the counter (a level-triggered poller reports it until then).
    pub(crate) fn reset(&self) {
        let mut buf = [0u8; 8];
        // Nothing to read (already clear) is fine.
        let _ = rustix::io::read(&self.fd, &mut buf);
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The oldest kernel the completion backend runs on: multishot receives
/// came in 6.0 (multishot accepts and provided-buffer rings in 5.19).
const URING_MIN_KERNEL: (u32, u32) = (6, 0);

/// Set up (and drop) a ring as a loop would: the kernel's refusal, if any,
/// comes out here, before any loop is built. A kernel too old for the
/// operations the loop submits is refused here too, rather than failing
/// on the first connection.
pub fn probe_uring() -> io::Result<()> {
    if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        if let Some(version) = kernel_version(&release) {
            if version < URING_MIN_KERNEL {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "Linux {}.{} is older than {}.{}, which multishot receives need",
                        version.0, version.1, URING_MIN_KERNEL.0, URING_MIN_KERNEL.1
                    ),
                ));
            }
        }
    }
    Ring::new(2, 4096).map(drop)
}

/// "6.18.44-generic" -> (6, 18).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Why io_uring cannot be used here, in words an operator can act on.
pub fn uring_refusal(err: &io::Error) -> String {
    let why = match err.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no io_uring (too old, or built without it)",
        Some(libc::EPERM) => {
            "io_uring is not permitted (a seccomp filter, or sysctl kernel.io_uring_disabled)"
        }
        Some(libc::EACCES) => "io_uring is restricted to a group (sysctl kernel.io_uring_group)",
        Some(libc::EINVAL) => {
            "the kernel lacks an io_uring feature gaidaros needs (Linux 6.0 or later)"
        }
        Some(libc::ENOMEM) => "no memory for the ring (RLIMIT_MEMLOCK on kernels before 5.12)",
        _ => "the kernel cannot run it",
    };
    format!("io_uring cannot be used: {why} ({err})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip() {
        for kind in [PollType::Edge, PollType::Level, PollType::Completion] {
            assert_eq!(kind.to_string().parse::<PollType>(), Ok(kind));
        }
        assert!("epoll".parse::<PollType>().is_err());
    }

    #[test]
    fn kernel_versions_are_read_from_the_release() {
        assert_eq!(kernel_version("6.18.44-fc-v657\n"), Some((6, 18)));
        assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(kernel_version("6.1"), Some((6, 1)));
        assert_eq!(kernel_version("garbage"), None);
        assert!((5, 19) < URING_MIN_KERNEL && (6, 0) >= URING_MIN_KERNEL);
    }

    #[test]
    fn refusals_name_the_reason() {
        let why = |errno| uring_refusal(&io::Error::from_raw_os_error(errno));
        assert!(why(libc::EPERM).contains("seccomp"), "{}", why(libc::EPERM));
        assert!(why(libc::ENOSYS).contains("no io_uring"));
        assert!(why(libc::EACCES).contains("io_uring_group"));
        assert!(why(libc::EPERM).contains("Operation not permitted"));
    }
}
