//! sendfile(2): file bytes to a socket without a copy through user space.

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
