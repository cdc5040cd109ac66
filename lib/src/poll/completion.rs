//! `-T completion`: io_uring.
//!
//! The loop submits operations and is told when they are done; it makes no
//! I/O syscall of its own on the hot path. What it submits:
//!
//! - a multishot accept per listener (one submission, a completion per
//!   connection);
//! - a multishot receive per connection into *provided buffers*: one ring
//!   of loop-owned buffers registered with the kernel, which picks a buffer
//!   only when bytes arrive, so an idle connection holds none;
//! - sends (`send` for one buffer, `sendmsg` for several);
//! - file bodies as two splices (file to a pipe, pipe to the socket), since
//!   io_uring has no sendfile;
//! - connects, cancellations, and a read of the loop's waker (an eventfd);
//! - the wait itself carries the timer deadline (`IORING_ENTER_EXT_ARG`).
//!
//! Each submission's user data names the operation and the connection (its
//! slot and generation), so a completion that arrives after its connection
//! closed is recognised and dropped.

use std::alloc::{self, Layout};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

/// The group id of the loop's provided buffers.
const BUF_GROUP: u16 = 0;

/// `IORING_RECVSEND_POLL_FIRST` (send/sendmsg `ioprio`): wait until the
/// socket is writable before trying. The io-uring crate keeps its `sys`
/// constants private, so it is repeated here from the kernel's uapi.
const RECVSEND_POLL_FIRST: u16 = 1;

/// What a submission was, in the top byte of its user data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    /// A multishot accept; the slot is the listener's index.
    Accept = 1,
    /// A multishot receive into a provided buffer.
    Recv,
    /// A send, sendmsg, or a splice from the connection's pipe: one at a
    /// time per connection.
    Send,
    /// A splice from a file into the connection's pipe.
    FileIn,
    Connect,
    /// The read of the loop's waker.
    Wake,
    /// A cancellation (its own completion carries nothing).
    Cancel,
    /// The readability poll in front of a `SpliceIn` (its completion
    /// carries nothing the loop needs).
    Poll,
    /// A splice from a connection's socket into another's pipe.
    SpliceIn,
    /// The writability poll in front of a splice from a connection's pipe
    /// to its socket (the splice itself completes as `Send`).
    PollOut,
    /// A multishot readability poll of a listener shared with other
    /// processes (its results are poll masks, not descriptors).
    ListenerPoll,
    /// A multishot readability poll of a datagram socket (the loop then
    /// takes the datagrams with recvmmsg).
    UdpPoll,
    /// A writability poll of a datagram socket whose socket was full.
    UdpPollOut,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::FileIn,
            5 => Op::Connect,
            6 => Op::Wake,
            7 => Op::Cancel,
            8 => Op::Poll,
            9 => Op::SpliceIn,
            10 => Op::PollOut,
            11 => Op::ListenerPoll,
            12 => Op::UdpPoll,
            13 => Op::UdpPollOut,
            _ => return None,
        })
    }
}

/// Pack an operation and its connection (slot below 2^24, generation)
/// into user data.
pub(crate) fn user_data(op: Op, slot: usize, generation: u32) -> u64 {
    (u64::from(op as u8) << 56) | (((slot as u64) & 0xff_ffff) << 32) | u64::from(generation)
}

/// Most byte buffers one send gathers.
pub const MAX_IOVECS: usize = 64;

/// Byte buffers lent to the ring for one send (the first from `head`):
/// the ring owns them until the send completes and gives them back in its
/// completion ([`Cqe::lent`]), so the kernel never reads freed memory.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lent {
    /// The buffers, in order.
    pub bufs: Vec<Vec<u8>>,
    /// Bytes of the first one already sent before.
    pub head: usize,
}

impl Lent {
    /// The bytes, in order.
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs.iter().enumerate().map(|(i, b)| {
            if i == 0 {
                &b[self.head.min(b.len())..]
            } else {
                &b[..]
            }
        })
    }
}

/// What the kernel reads while a submission is out, owned by the ring
/// until its completion.
enum Held {
    /// A send's buffers, with the array and header a `sendmsg` names them
    /// in.
    Send {
        lent: Lent,
        iov: Option<Box<[libc::iovec; MAX_IOVECS]>>,
        msg: Option<Box<libc::msghdr>>,
    },
    /// A connect's address.
    Connect { _addr: Box<socket2::SockAddr> },
}

/// An iovec array and a header, unused: kept for the next sendmsg.
struct SpareMsg(Box<[libc::iovec; MAX_IOVECS]>, Box<libc::msghdr>);

// SAFETY: the pointers in a spare array and header are stale and never
// read; they are overwritten before the next submission names them.
unsafe impl Send for SpareMsg {}

/// Hashes user data, which is already unique per submission out: one
/// multiply spreads its bits (SipHash, the default, costs more than the
/// rest of a send's bookkeeping; no peer chooses these keys).
#[derive(Default)]
struct UdHasher(u64);

impl Hasher for UdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

// SAFETY: the raw pointers in the iovec array and header point into the
// buffers held beside them, which move with them; the ring (and the
// thread that owns it) is their only user besides the kernel.
unsafe impl Send for Held {}

/// One completion.
#[derive(Debug)]
pub(crate) struct Cqe {
    pub op: Op,
    pub slot: usize,
    pub generation: u32,
    /// The syscall-style result: bytes, a descriptor, or `-errno`.
    pub result: i32,
    pub flags: u32,
    /// A send's buffers, given back.
    pub lent: Option<Lent>,
    /// The connection an accept made, owned from here on.
    pub accepted: Option<OwnedFd>,
}

impl Cqe {
    /// More completions will come for this submission (multishot).
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// What a failed operation (`result` < 0) failed with.
    pub fn error(&self) -> io::Error {
        io::Error::from_raw_os_error(-self.result)
    }

    /// The provided buffer holding a receive's bytes.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// A ring of provided buffers (`IORING_REGISTER_PBUF_RING`): the kernel
/// takes buffers from its head as bytes arrive; the loop gives them back
/// at its tail once it has handed their bytes on.
struct BufRing {
    /// The entries shared with the kernel (page-aligned).
    entries: *mut BufRingEntry,
    layout: Layout,
    /// The buffers themselves.
    memory: Vec<u8>,
    size: usize,
    count: u16,
    tail: u16,
}

// SAFETY: the ring's memory is owned by this value and only touched by the
// thread that owns the loop (the kernel reads it asynchronously, which the
// tail's release store orders).
unsafe impl Send for BufRing {}

impl BufRing {
    fn new(count: u16, size: usize) -> io::Result<BufRing> {
        let layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size (count > 0).
        let entries = unsafe { alloc::alloc_zeroed(layout) } as *mut BufRingEntry;
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(BufRing {
            entries,
            layout,
            memory: vec![0; usize::from(count) * size],
            size,
            count,
            tail: 0,
        })
    }

    /// Put buffer `bid` at the tail (seen by the kernel after `publish`).
    fn push(&mut self, bid: u16) {
        let mask = self.count - 1;
        // SAFETY: the index is masked into the ring; the entry is plain data.
        let entry = unsafe { &mut *self.entries.add(usize::from(self.tail & mask)) };
        let start = usize::from(bid) * self.size;
        entry.set_addr(self.memory[start..].as_ptr() as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: `entries` is the ring's first entry; its tail field is a
        // u16 the kernel reads: a release store makes the entries written
        // before it visible first.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.size;
        &self.memory[start..start + len.min(self.size)]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout. The ring (declared
        // before this field in `Ring`) is closed by now.
        unsafe { alloc::dealloc(self.entries as *mut u8, self.layout) };
    }
}

/// One loop's io_uring.
pub(crate) struct Ring {
    // Dropped first: the kernel lets go of the buffers before they are freed.
    ring: IoUring,
    bufs: BufRing,
    /// Where the waker's counter is read into.
    wake_buf: Box<u64>,
    /// What sends and connects out read, by user data.
    held: HashMap<u64, Held, BuildHasherDefault<UdHasher>>,
    /// Arrays and headers of completed sendmsgs, for the next ones.
    spare_msgs: Vec<SpareMsg>,
    /// Submissions were pushed and not yet passed to the kernel.
    unsubmitted: bool,
    enabled: bool,
}

impl Ring {
    /// A ring with `buffers` provided buffers of `buf_size` bytes. Errors
    /// are the kernel's refusal (see [`super::uring_refusal`]).
    pub fn new(buffers: u16, buf_size: usize) -> io::Result<Ring> {
        let entries = 4096;
        // One issuer (the loop's thread) with task work run only when it
        // waits: the fewest interruptions. The ring starts disabled and is
        // enabled by the thread that runs the loop, which becomes its issuer.
        let (ring, enabled) = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_r_disabled()
            .setup_cqsize(entries * 4)
            .build(entries)
        {
            Ok(r) => (r, false),
            // Kernels before 6.1 lack DEFER_TASKRUN: a plain ring works.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (
                IoUring::builder()
                    .setup_cqsize(entries * 4)
                    .build(entries)?,
                true,
            ),
            Err(e) => return Err(e),
        };
        let count = buffers.next_power_of_two().max(2);
        let mut bufs = BufRing::new(count, buf_size)?;
        // SAFETY: the entries live as long as the ring (see field order).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.entries as u64,
                count,
                BUF_GROUP,
                0,
            )?;
        }
        for bid in 0..count {
            bufs.push(bid);
        }
        bufs.publish();
        Ok(Ring {
            ring,
            bufs,
            wake_buf: Box::new(0),
            held: HashMap::default(),
            spare_msgs: Vec::new(),
            unsubmitted: false,
            enabled,
        })
    }

    /// Queue a submission.
    ///
    /// # Safety
    /// Whatever memory or descriptor `sqe` refers to must stay valid until
    /// its last completion arrives.
    unsafe fn push(&mut self, sqe: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller's promise.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                self.unsubmitted = true;
                return Ok(());
            }
            // The queue is full: hand it to the kernel and go on.
            self.enable()?;
            self.ring.submit()?;
        }
    }

    fn enable(&mut self) -> io::Result<()> {
        if !self.enabled {
            self.ring.submitter().register_enable_rings()?;
            self.enabled = true;
        }
        Ok(())
    }

    /// Accept connections on `fd` until cancelled or failed; completions
    /// carry `listener` as their slot and `generation` as theirs.
    pub fn accept_multi(&mut self, fd: RawFd, listener: usize, generation: u32) -> io::Result<()> {
        // Non-blocking, as every socket of the loop is: io_uring's socket
        // operations wait by polling whatever the mode, and splices to or
        // from a non-blocking socket never hold a kernel worker waiting.
        let sqe = opcode::AcceptMulti::new(Fd(fd))
            .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .build()
            .user_data(user_data(Op::Accept, listener, generation));
        // SAFETY: no memory; the listener outlives its accept (it is
        // cancelled before the listener is dropped, and the kernel holds
        // its own reference to the file meanwhile).
        unsafe { self.push(sqe) }
    }

    /// Report readability of the listening socket `fd` until cancelled:
    /// for a socket shared with other processes, whose connections must
    /// stay in its queue until this process really takes them.
    pub fn poll_listener(&mut self, fd: RawFd, listener: usize, generation: u32) -> io::Result<()> {
        let sqe = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(Op::ListenerPoll, listener, generation));
        // SAFETY: no memory; as for accept_multi.
        unsafe { self.push(sqe) }
    }

    /// Report readability (`out`: writability, once) of the datagram
    /// socket `fd`, known as `slot` and `generation`; `ud` is returned.
    pub fn poll_udp(
        &mut self,
        fd: RawFd,
        slot: usize,
        generation: u32,
        out: bool,
    ) -> io::Result<u64> {
        let (op, events, multi) = match out {
            false => (Op::UdpPoll, libc::POLLIN, true),
            true => (Op::UdpPollOut, libc::POLLOUT, false),
        };
        let ud = user_data(op, slot, generation);
        let sqe = opcode::PollAdd::new(Fd(fd), events as u32)
            .multi(multi)
            .build()
            .user_data(ud);
        // SAFETY: no memory; the kernel holds its own reference to the file
        // until the poll completes or is cancelled.
        unsafe { self.push(sqe) }?;
        Ok(ud)
    }

    /// Receive on `fd` into provided buffers until cancelled, out of
    /// buffers, at the end of the stream, or failed.
    pub fn recv_multi(&mut self, fd: RawFd, slot: usize, generation: u32) -> io::Result<()> {
        let sqe = opcode::RecvMulti::new(Fd(fd), BUF_GROUP)
            .build()
            .user_data(user_data(Op::Recv, slot, generation));
        // SAFETY: the buffers belong to the ring itself.
        unsafe { self.push(sqe) }
    }

    /// Cancel the submission with user data `target`.
    pub fn cancel(&mut self, target: u64) -> io::Result<()> {
        let sqe = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data(Op::Cancel, 0, 0));
        // SAFETY: no memory.
        unsafe { self.push(sqe) }
    }

    /// Read the waker's counter into the ring's own word.
    pub fn read_waker(&mut self, fd: RawFd) -> io::Result<()> {
        let buf = &mut *self.wake_buf as *mut u64 as *mut u8;
        let sqe = opcode::Read::new(Fd(fd), buf, 8)
            .build()
            .user_data(user_data(Op::Wake, 0, 0));
        // SAFETY: the word is boxed and owned by the ring; the waker's
        // eventfd outlives the loop.
        unsafe { self.push(sqe) }
    }

    /// Send the bytes of `lent` on socket `fd` (one buffer with `send`,
    /// several with `sendmsg`); with `poll_first`, only once the socket is
    /// writable (after a send that found it full). The ring keeps the
    /// buffers until the completion, which gives them back.
    ///
    /// A `sendmsg` completes with `-EAGAIN` now and then on a non-blocking
    /// socket: io_uring waits for room by polling, but after many wakes
    /// that found no room it hands the send to a worker thread, where
    /// sendmsg (unlike send) honours `O_NONBLOCK`. The caller submits again
    /// with `poll_first`. (sendmsg, not writev: a write to a non-blocking
    /// file fails with EAGAIN in io_uring at once, where a socket operation
    /// polls first.)
    ///
    /// The socket must stay open until the completion (a connection that
    /// closes first is kept as a zombie by the loop).
    pub fn send(&mut self, fd: RawFd, lent: Lent, poll_first: bool, ud: u64) -> io::Result<()> {
        let ioprio = if poll_first { RECVSEND_POLL_FIRST } else { 0 };
        let n = lent.bufs.len().min(MAX_IOVECS);
        let (sqe, held) = if n <= 1 {
            let bytes = lent.slices().next().unwrap_or(&[]);
            let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            let sqe = opcode::Send::new(Fd(fd), bytes.as_ptr(), len)
                .flags(libc::MSG_NOSIGNAL)
                .ioprio(ioprio)
                .build()
                .user_data(ud);
            let held = Held::Send {
                lent,
                iov: None,
                msg: None,
            };
            (sqe, held)
        } else {
            let SpareMsg(mut iov, mut msg) = self.spare_msgs.pop().unwrap_or_else(|| {
                let iov = Box::new(
                    [libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    }; MAX_IOVECS],
                );
                // SAFETY: a msghdr is plain data; all-zero is an empty
                // header.
                SpareMsg(iov, Box::new(unsafe { std::mem::zeroed() }))
            });
            for (v, s) in iov.iter_mut().zip(lent.slices()) {
                *v = libc::iovec {
                    iov_base: s.as_ptr() as *mut libc::c_void,
                    iov_len: s.len(),
                };
            }
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = n;
            let sqe = opcode::SendMsg::new(Fd(fd), &*msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .ioprio(ioprio)
                .build()
                .user_data(ud);
            let held = Held::Send {
                lent,
                iov: Some(iov),
                msg: Some(msg),
            };
            (sqe, held)
        };
        // The heap memory the entry points into moves with `held`'s boxes
        // and vectors, not with them: kept until the completion.
        self.held.insert(ud, held);
        // SAFETY: the bytes, the array and the header are in `self.held`
        // until this submission's completion (`wait` takes them out then).
        let pushed = unsafe { self.push(sqe) };
        if pushed.is_err() {
            self.held.remove(&ud);
        }
        pushed
    }

    /// splice(2) `len` bytes from `fd_in` (at `off_in`, or -1 for a pipe)
    /// to `fd_out`. No memory: both descriptors must stay open until the
    /// completion (the loop keeps them: zombies, pipes held in flight).
    pub fn splice(
        &mut self,
        fd_in: RawFd,
        off_in: i64,
        fd_out: RawFd,
        len: usize,
        ud: u64,
    ) -> io::Result<()> {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let sqe = opcode::Splice::new(Fd(fd_in), off_in, Fd(fd_out), -1, len)
            .flags(libc::SPLICE_F_MOVE)
            .build()
            .user_data(ud);
        // SAFETY: no memory.
        unsafe { self.push(sqe) }
    }

    /// Once socket `fd` is readable, splice up to `len` bytes of it into
    /// the pipe whose write end is `pipe` (a poll linked to a non-blocking
    /// splice: a splice on its own would park a kernel worker thread until
    /// bytes come). Completions: `Op::Poll`, then `Op::SpliceIn`. Both
    /// descriptors must stay open until the splice's completion.
    pub fn splice_when_readable(
        &mut self,
        fd: RawFd,
        pipe: RawFd,
        len: usize,
        slot: usize,
        generation: u32,
    ) -> io::Result<()> {
        let events = (libc::POLLIN | libc::POLLRDHUP) as u32;
        let poll = user_data(Op::Poll, slot, generation);
        let splice = user_data(Op::SpliceIn, slot, generation);
        self.poll_then_splice((fd, events, poll), fd, pipe, len, splice)
    }

    /// Once socket `fd` is writable, splice up to `len` bytes from the pipe
    /// whose read end is `pipe` into it (a poll linked to a non-blocking
    /// splice: io_uring runs splices on its worker threads, and a blocking
    /// one would hold a thread for as long as a slow peer does not read).
    /// Completions: `Op::PollOut`, then `ud` (`-EAGAIN` when the socket
    /// filled again first). Both descriptors must stay open until the
    /// splice's completion.
    pub fn splice_when_writable(
        &mut self,
        pipe: RawFd,
        fd: RawFd,
        len: usize,
        ud: u64,
    ) -> io::Result<()> {
        let poll = (ud & !(0xff << 56)) | (u64::from(Op::PollOut as u8) << 56);
        self.poll_then_splice((fd, libc::POLLOUT as u32, poll), pipe, fd, len, ud)
    }

    /// A poll for `events` on `poll.0` (user data `poll.2`), linked to a
    /// non-blocking splice of up to `len` bytes from `fd_in` to `fd_out`
    /// (user data `ud`): the splice runs once the poll reports.
    fn poll_then_splice(
        &mut self,
        poll: (RawFd, u32, u64),
        fd_in: RawFd,
        fd_out: RawFd,
        len: usize,
        ud: u64,
    ) -> io::Result<()> {
        // The two must be submitted together for the link to hold.
        let free = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if free < 2 {
            self.enable()?;
            self.ring.submit()?;
        }
        let (fd, events, poll_ud) = poll;
        let poll = opcode::PollAdd::new(Fd(fd), events)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(poll_ud);
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let splice = opcode::Splice::new(Fd(fd_in), -1, Fd(fd_out), -1, len)
            .flags(libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK)
            .build()
            .user_data(ud);
        // SAFETY: no memory.
        unsafe {
            self.push(poll)?;
            self.push(splice)
        }
    }

    /// Connect socket `fd` to `addr`, which the ring keeps until the
    /// completion. The socket must stay open until then.
    pub fn connect(&mut self, fd: RawFd, addr: socket2::SockAddr, ud: u64) -> io::Result<()> {
        let addr = Box::new(addr);
        let sqe = opcode::Connect::new(Fd(fd), addr.as_ptr(), addr.len())
            .build()
            .user_data(ud);
        // The box's memory does not move with the box.
        self.held.insert(ud, Held::Connect { _addr: addr });
        // SAFETY: the address is in `self.held` until the completion.
        let pushed = unsafe { self.push(sqe) };
        if pushed.is_err() {
            self.held.remove(&ud);
        }
        pushed
    }

    /// The bytes a receive put in provided buffer `bid`.
    pub fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        self.bufs.bytes(bid, len)
    }

    /// Give buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.bufs.push(bid);
        self.bufs.publish();
    }

    /// Submit what is queued, wait for at least one completion or
    /// `timeout` (None: no limit; zero: do not wait), and move the
    /// completions into `out` (cleared first).
    pub fn wait(&mut self, out: &mut Vec<Cqe>, timeout: Option<Duration>) -> io::Result<()> {
        out.clear();
        self.enable()?;
        let result = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        self.unsubmitted = false;
        match result {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        for cqe in self.ring.completion() {
            let ud = cqe.user_data();
            let Some(op) = Op::from_u8((ud >> 56) as u8) else {
                continue;
            };
            let result = cqe.result();
            let flags = cqe.flags();
            // What the kernel read is free once the last completion of its
            // submission is in.
            // (Only sends and connects hold anything: receives, the
            // common case, look nothing up.)
            let lent = match op {
                Op::Send | Op::Connect if !cqueue::more(flags) => match self.held.remove(&ud) {
                    Some(Held::Send { lent, iov, msg }) => {
                        if let (Some(iov), Some(msg)) = (iov, msg) {
                            self.spare_msgs.push(SpareMsg(iov, msg));
                        }
                        Some(lent)
                    }
                    Some(Held::Connect { .. }) | None => None,
                },
                _ => None,
            };
            let accepted = (op == Op::Accept && result >= 0)
                // SAFETY: the kernel has just made this descriptor for
                // this process, and this completion is read once: nothing
                // else knows it, so this OwnedFd is its only owner.
                .then(|| unsafe { OwnedFd::from_raw_fd(result) });
            out.push(Cqe {
                op,
                slot: ((ud >> 32) & 0xff_ffff) as usize,
                generation: ud as u32,
                result,
                flags,
                lent,
                accepted,
            });
        }
        Ok(())
    }
}
