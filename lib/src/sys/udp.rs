//! Datagrams in batches: recvmmsg(2) with UDP GRO and sendmmsg(2) with UDP
//! GSO (`UDP_SEGMENT`), one syscall for many datagrams each way.
//!
//! Written against libc here, not taken from a crate: quinn-udp receives
//! with recvmmsg and GRO but sends one sendmsg per transmit (no sendmmsg),
//! which is what a server answering many small datagrams to many peers
//! spends its syscalls on; nix's `sendmmsg` encodes one control message
//! list for all the messages of a call (the GSO segment size differs from
//! one message to the next) and its `MultiHeaders` keeps raw pointers
//! between calls. Here every pointer is set up inside the call that uses
//! it and points into buffers the batch owns or the caller lends for the
//! call.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::SockAddr;

/// Room for one control message carrying an `int` (UDP_GRO) or a `u16`
/// (UDP_SEGMENT), aligned for `cmsghdr`.
const CMSG_ROOM: usize = 32;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Cmsg([u8; CMSG_ROOM]);

/// Turn UDP GRO on for `sock` (the kernel may then hand several datagrams
/// of one sender as one buffer, cut at a segment size it reports). False
/// when the kernel refuses.
pub fn enable_gro(sock: BorrowedFd<'_>) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor, and the option value is an int that lives
    // across the call.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Does this kernel take UDP GSO on `sock`? (Reading the option answers
/// ENOPROTOOPT where it does not.)
pub fn gso_supported(sock: BorrowedFd<'_>) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid descriptor; value and length point to locals that
    // live across the call.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0
}

/// One datagram (or, with GRO, a run of them) taken by [`RecvBatch::recv`].
#[derive(Debug)]
pub struct Received<'a> {
    /// Who sent it (None when the kernel gave no address it could read).
    pub from: Option<SocketAddr>,
    /// Its bytes. With GRO several datagrams of `from`, each `segment`
    /// long (the last may be shorter).
    pub data: &'a [u8],
    /// The GRO segment size, when the kernel coalesced.
    pub segment: Option<usize>,
    /// It was longer than the buffer: `data` is a prefix (MSG_TRUNC).
    pub truncated: bool,
}

/// Buffers for receiving up to `n` datagrams of up to `size` bytes in one
/// recvmmsg(2).
pub struct RecvBatch {
    size: usize,
    bufs: Vec<u8>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<Cmsg>,
    /// Datagrams the last call took.
    got: usize,
}

// SAFETY: the raw pointers in `hdrs` and `iovs` are written by `recv`
// right before the syscall and point into this batch's own vectors, which
// do not move while it runs; between calls they are never dereferenced.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Room for `n` datagrams of `size` bytes each (a larger one is
    /// truncated and reported so).
    pub fn new(n: usize, size: usize) -> RecvBatch {
        let n = n.max(1);
        RecvBatch {
            size,
            bufs: vec![0; n * size],
            // SAFETY: mmsghdr, iovec and sockaddr_storage are plain C
            // structs for which all-zero bytes are a valid value.
            hdrs: vec![unsafe { mem::zeroed() }; n],
            iovs: vec![unsafe { mem::zeroed() }; n],
            names: vec![unsafe { mem::zeroed() }; n],
            cmsgs: vec![Cmsg([0; CMSG_ROOM]); n],
            got: 0,
        }
    }

    /// The longest datagram it takes whole.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Receive what is waiting on non-blocking `sock`, up to the batch's
    /// room: how many datagrams (WouldBlock when none).
    pub fn recv(&mut self, sock: BorrowedFd<'_>) -> io::Result<usize> {
        self.got = 0;
        let n = self.hdrs.len();
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * self.size..].as_mut_ptr().cast(),
                iov_len: self.size,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].0.as_mut_ptr().cast();
            h.msg_controllen = CMSG_ROOM as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at a name, one iovec and a control
        // buffer of this batch, each of the length given, all alive and
        // unmoved for the call; no timeout is passed.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.got = r as usize;
        Ok(self.got)
    }

    /// Datagram `i` of the last call.
    pub fn get(&self, i: usize) -> Option<Received<'_>> {
        if i >= self.got {
            return None;
        }
        let m = &self.hdrs[i];
        let h = &m.msg_hdr;
        let len = (m.msg_len as usize).min(self.size);
        // SAFETY: the kernel wrote `msg_namelen` bytes of a socket address
        // into this storage, which is large enough for any.
        let from = unsafe { SockAddr::new(self.names[i], h.msg_namelen) }.as_socket();
        let mut segment = None;
        // SAFETY: the header's control pointer and length describe this
        // batch's control buffer as the kernel filled it; the CMSG macros
        // stay within `msg_controllen`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                    let mut v = MaybeUninit::<libc::c_int>::uninit();
                    std::ptr::copy_nonoverlapping(
                        libc::CMSG_DATA(c),
                        v.as_mut_ptr().cast::<u8>(),
                        mem::size_of::<libc::c_int>(),
                    );
                    let v = v.assume_init();
                    if v > 0 {
                        segment = Some(v as usize);
                    }
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        Some(Received {
            from,
            data: &self.bufs[i * self.size..i * self.size + len],
            segment,
            truncated: h.msg_flags & libc::MSG_TRUNC != 0,
        })
    }
}

/// One message for [`SendBatch::send`]: `data` to `to`, cut into
/// datagrams of `segment` bytes by the kernel (GSO) when given.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The peer.
    pub to: SocketAddr,
    /// The bytes: one datagram, or several of `segment` bytes each.
    pub data: &'a [u8],
    /// The GSO segment size, for several datagrams in one message.
    pub segment: Option<u16>,
}

/// The headers of one sendmmsg(2), kept between calls so that sending
/// allocates nothing once they have grown.
#[derive(Default)]
pub struct SendBatch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<SockAddr>,
    cmsgs: Vec<Cmsg>,
}

// SAFETY: as for RecvBatch: the pointers are set up inside `send` and
// used only by its syscall.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// Send `msgs` on non-blocking `sock` in one syscall: how many messages
    /// went (the rest did not; WouldBlock when none did). An error is the
    /// first message's (the kernel stops at a failing message and reports
    /// it only when it is the first).
    pub fn send(&mut self, sock: BorrowedFd<'_>, msgs: &[Outgoing<'_>]) -> io::Result<usize> {
        let n = msgs.len();
        if n == 0 {
            return Ok(0);
        }
        self.names.clear();
        self.names.extend(msgs.iter().map(|m| SockAddr::from(m.to)));
        // SAFETY: all-zero bytes are a valid mmsghdr and iovec.
        self.hdrs.resize(n, unsafe { mem::zeroed() });
        self.iovs.resize(n, unsafe { mem::zeroed() });
        self.cmsgs.resize(n, Cmsg([0; CMSG_ROOM]));
        for (i, m) in msgs.iter().enumerate() {
            self.iovs[i] = libc::iovec {
                iov_base: m.data.as_ptr().cast_mut().cast(),
                iov_len: m.data.len(),
            };
            let h = &mut self.hdrs[i].msg_hdr;
            // SAFETY: all-zero bytes are a valid msghdr.
            *h = unsafe { mem::zeroed() };
            h.msg_name = self.names[i].as_ptr().cast_mut().cast();
            h.msg_namelen = self.names[i].len();
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            if let Some(seg) = m.segment {
                // SAFETY: CMSG_SPACE only computes a length.
                let space = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
                h.msg_control = self.cmsgs[i].0.as_mut_ptr().cast();
                h.msg_controllen = space as _;
                // SAFETY: the control buffer has room for one cmsghdr and a
                // u16 (CMSG_SPACE(2) <= CMSG_ROOM), set as the header's.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
                    std::ptr::copy_nonoverlapping(
                        seg.to_ne_bytes().as_ptr(),
                        libc::CMSG_DATA(c),
                        mem::size_of::<u16>(),
                    );
                }
            }
        }
        // SAFETY: each header points at a name, one iovec over the caller's
        // bytes (borrowed for this call) and, for GSO, a control buffer of
        // this batch, all alive and unmoved for the call.
        let r = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    #[test]
    fn a_batch_goes_out_in_one_call_and_comes_in_with_its_senders() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        let to = rx.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 1 + i as usize]).collect();
        let msgs: Vec<Outgoing<'_>> = payloads
            .iter()
            .map(|p| Outgoing {
                to,
                data: p,
                segment: None,
            })
            .collect();
        let mut out = SendBatch::default();
        assert_eq!(out.send(tx.as_fd(), &msgs).unwrap(), 10);
        let mut batch = RecvBatch::new(16, 2048);
        let n = batch.recv(rx.as_fd()).unwrap();
        assert_eq!(n, 10);
        for (i, want) in payloads.iter().enumerate() {
            let d = batch.get(i).unwrap();
            assert_eq!(d.from, Some(tx.local_addr().unwrap()));
            assert_eq!(d.data, &want[..]);
            assert!(!d.truncated);
        }
        assert_eq!(
            batch.recv(rx.as_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn a_datagram_longer_than_the_buffer_is_marked_truncated() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&[7u8; 100], rx.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::new(4, 64);
        assert_eq!(batch.recv(rx.as_fd()).unwrap(), 1);
        let d = batch.get(0).unwrap();
        assert!(d.truncated);
        assert_eq!(d.data.len(), 64);
    }

    #[test]
    fn gso_cuts_one_message_into_datagrams_where_the_kernel_has_it() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        if !gso_supported(tx.as_fd()) {
            return; // nothing to test on this kernel
        }
        let data: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let mut out = SendBatch::default();
        let msg = Outgoing {
            to: rx.local_addr().unwrap(),
            data: &data,
            segment: Some(1000),
        };
        assert_eq!(out.send(tx.as_fd(), &[msg]).unwrap(), 1);
        // No GRO on the receiver: three datagrams, 1000, 1000 and 500.
        let mut batch = RecvBatch::new(8, 2048);
        let mut got = Vec::new();
        while let Ok(n) = batch.recv(rx.as_fd()) {
            for i in 0..n {
                got.push(batch.get(i).unwrap().data.to_vec());
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got.concat(), data);
        assert_eq!(got[2].len(), 500);
    }
}
