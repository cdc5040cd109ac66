//! Opening files confined beneath a directory (openat2 RESOLVE_BENEATH).

use std::io;
use std::path::Path;

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
