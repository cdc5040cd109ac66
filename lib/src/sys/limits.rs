//! Process and thread limits and signals: RLIMIT_NOFILE, SIGXFSZ, and the
//! timer slack of a loop's thread.

use std::io;

/// Raise the soft limit on open files to the hard limit, so a server can
/// hold as many connections as the administrator allows. Returns the new
/// soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok(hard.max(soft))
}

/// Ignore SIGXFSZ, so a write past RLIMIT_FSIZE fails with EFBIG (which the
/// handler answers, for example SMTP's 451) instead of killing the server.
pub fn ignore_file_size_signal() -> io::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN installs no handler code, so nothing can run in
    // signal context; this only changes the disposition of SIGXFSZ.
    unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) }
        .map(|_| ())
        .map_err(io::Error::from)
}

/// Let the kernel end this thread's timed waits at most `slack` after
/// their deadline (PR_SET_TIMERSLACK; at least 1 ns). The kernel's default
/// of 50 µs lets it batch wake-ups; a loop pacing datagrams tens of
/// microseconds apart needs its deadlines kept closer than that.
pub fn set_timer_slack(slack: std::time::Duration) -> io::Result<()> {
    let ns = u64::try_from(slack.as_nanos()).unwrap_or(u64::MAX).max(1);
    rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(ns))?;
    Ok(())
}
