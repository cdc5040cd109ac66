//! Descriptors passed between processes over unix sockets (SCM_RIGHTS):
//! how a procpool master hands listeners and connections to its workers.

use std::io;

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
