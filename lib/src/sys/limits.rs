//! Process limits and signals: RLIMIT_NOFILE and SIGXFSZ.

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
