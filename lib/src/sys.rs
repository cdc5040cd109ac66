//! The OS layer: the few system calls that neither std nor mio wrap.
//!
//! Everything here goes through `nix`, so no `unsafe` is needed; a backend
//! that needs raw FFI (io_uring) will live here too.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;

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

/// A kernel pipe used to move socket bytes to another socket without
/// copying them through user space: `splice(2)` from the source socket
/// into the pipe, then from the pipe into the destination socket (the
/// pages move by reference on Linux). Both ends are non-blocking.
#[derive(Debug)]
pub struct Pipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// A pipe holding up to about `want` bytes: the kernel rounds to pages
    /// and caps it at `/proc/sys/fs/pipe-max-size` for unprivileged users;
    /// if it refuses the size, the default (64 KiB) stays.
    pub fn new(want: usize) -> io::Result<Pipe> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        use std::os::fd::AsRawFd;
        let (read, write) =
            nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let want = i32::try_from(want).unwrap_or(i32::MAX);
        // Refused sizes (over the limit) keep the default: not an error.
        let _ = fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(want));
        let capacity = fcntl(write.as_raw_fd(), FcntlArg::F_GETPIPE_SZ).map_err(io::Error::from)?;
        Ok(Pipe {
            read,
            write,
            capacity: usize::try_from(capacity).unwrap_or(0),
        })
    }

    /// The read end.
    pub fn read_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The write end.
    pub fn write_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.write.as_fd()
    }

    /// Bytes the pipe holds when full.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Move up to `len` bytes from `socket` into the pipe. Ok(0) is the
    /// peer's end of stream; WouldBlock means nothing to read (the caller
    /// keeps `len` within the pipe's free room, so a full pipe is never
    /// the reason).
    pub fn fill_from(&self, socket: impl AsFd, len: usize) -> io::Result<usize> {
        use nix::fcntl::{splice, SpliceFFlags};
        splice(
            socket,
            None,
            &self.write,
            None,
            len,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        )
        .map_err(io::Error::from)
    }

    /// Read out the last `n` bytes the pipe holds, discarding any before
    /// them: how bytes spliced into the pipe of a connection that closed
    /// meanwhile are taken back (`-T completion`).
    pub fn take_last(&self, n: usize) -> io::Result<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let held = usize::try_from(rustix::io::ioctl_fionread(&self.read)?).unwrap_or(usize::MAX);
        let mut skip = held.saturating_sub(n);
        let mut out = vec![0; n.min(held)];
        let mut scratch = [0u8; 4096];
        let mut at = 0;
        while skip > 0 || at < out.len() {
            let buf = if skip > 0 {
                let len = skip.min(scratch.len());
                &mut scratch[..len]
            } else {
                &mut out[at..]
            };
            match nix::unistd::read(self.read.as_raw_fd(), buf) {
                Ok(0) => break,
                Ok(got) if skip > 0 => skip -= got,
                Ok(got) => at += got,
                Err(nix::errno::Errno::EINTR) => {}
                // Fewer bytes than FIONREAD said: keep what came.
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
        out.truncate(at);
        Ok(out)
    }

    /// Move up to `len` bytes from the pipe to `socket`. WouldBlock means
    /// the socket's send buffer is full.
    pub fn drain_to(&self, socket: impl AsFd, len: usize) -> io::Result<usize> {
        use nix::fcntl::{splice, SpliceFFlags};
        splice(
            &self.read,
            None,
            socket,
            None,
            len,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        )
        .map_err(io::Error::from)
    }
}

/// Send `fds` over the unix socket `sock` (SCM_RIGHTS) with one byte of
/// payload, `tag`: how a master hands its listening sockets, or an accepted
/// connection and its listener's index, to a worker process it started.
pub fn send_fds(
    sock: &std::os::unix::net::UnixStream,
    tag: u8,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let payload = [tag];
    let iov = [std::io::IoSlice::new(&payload)];
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receive the tag and descriptors [`send_fds`] sent, taking ownership of
/// the descriptors.
pub fn recv_fds(
    sock: &std::os::unix::net::UnixStream,
    max: usize,
) -> io::Result<(u8, Vec<std::os::fd::OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut payload = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut payload)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 64]);
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.map_err(io::Error::from)?,
        }
    };
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: the kernel has just installed this descriptor in
                // our table for this message (SCM_RIGHTS); nothing else in
                // the process knows it, so this OwnedFd is its only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.bytes == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if fds.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} descriptors, expected at most {max}", fds.len()),
        ));
    }
    Ok((payload[0], fds))
}

/// This process's standard input as a unix socket: a worker process's
/// control channel to its master (the master passes one end of a
/// socketpair as the worker's stdin).
pub fn stdin_socket() -> io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::{AsFd, OwnedFd};
    // A duplicate, so fd 0 itself stays open and owned by std.
    let fd: OwnedFd = io::stdin().as_fd().try_clone_to_owned()?;
    let kind =
        nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "stdin is not a socket: --server-worker is started by a -S procpool master",
            )
        })?;
    if kind != nix::sys::socket::SockType::Stream {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "stdin is not a stream socket",
        ));
    }
    Ok(std::os::unix::net::UnixStream::from(fd))
}

/// Open `path` (relative) for reading beneath the directory `root`, never
/// leaving it: `..` that climbs out, absolute paths and symlinks (anywhere
/// along the path) that point outside `root` are refused by the kernel
/// (openat2 with RESOLVE_BENEATH, Linux 5.6+; `PermissionDenied`). Symlinks
/// that stay inside `root` are followed. On a kernel without openat2 the
/// path is canonicalized and checked against `root`'s canonical path.
/// Opened with O_NONBLOCK, so a FIFO cannot block the caller (reads of
/// regular files are unaffected).
pub fn open_beneath(
    root: &std::fs::File,
    root_path: &Path,
    path: &Path,
) -> io::Result<std::fs::File> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    loop {
        match openat2(root.as_raw_fd(), path, how) {
            // SAFETY: openat2 has just returned this new descriptor; nothing
            // else in the process knows it, so this OwnedFd is its only owner.
            Ok(fd) => return Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) })),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EXDEV) => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "path leaves the root directory",
                ))
            }
            // No openat2 (before 5.6), or a seccomp filter that refuses it
            // (older container profiles answer EPERM).
            Err(nix::errno::Errno::ENOSYS | nix::errno::Errno::EPERM) => break,
            Err(e) => return Err(e.into()),
        }
    }
    // Resolve in user space instead.
    // A symlink swapped in between the check and the open could still
    // escape, which is why openat2 is tried first.
    let real_root = root_path.canonicalize()?;
    let real = real_root.join(path).canonicalize()?;
    if !real.starts_with(&real_root) || path.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "path leaves the root directory",
        ));
    }
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(real)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_last_returns_the_newest_bytes_of_a_pipe() {
        let pipe = Pipe::new(65536).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let written = nix::unistd::write(pipe.write_fd(), &data).unwrap();
        assert_eq!(written, data.len());
        assert_eq!(pipe.take_last(3000).unwrap(), &data[7000..]);
        // Emptied: nothing is left to take.
        assert!(pipe.take_last(10).unwrap().is_empty());
    }
}
