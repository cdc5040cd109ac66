//! Kernel pipes and splice(2): socket bytes moved to another socket
//! without a copy through user space.

use std::io;
use std::os::fd::AsFd;

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
