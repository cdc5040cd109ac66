//! The OS layer: the few system calls that neither std nor mio wrap.
//!
//! Everything here goes through `nix`, so no `unsafe` is needed; a backend
//! that needs raw FFI (io_uring) will live here too.

use std::io;
use std::os::fd::AsFd;

/// Send up to `count` bytes of `file` from `offset` to `socket` without
/// copying through user space. Advances `offset`; returns the bytes sent.
pub fn sendfile(
    socket: impl AsFd,
    file: impl AsFd,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    let mut off = i64::try_from(*offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset beyond i64"))?;
    let sent = nix::sys::sendfile::sendfile(socket, file, Some(&mut off), count)
        .map_err(io::Error::from)?;
    *offset = off as u64;
    Ok(sent)
}

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

/// Is this accept(2) error a shortage of descriptors or memory, after which
/// the listener must back off instead of retrying at once?
pub fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}
