//! The per-connection output queue and the loop's buffer pool.
//!
//! Responses are appended to the last byte chunk of the queue, so pipelined
//! responses produced from one read gather into one buffer and leave in one
//! vectored write. File ranges queue as their own chunks and leave through
//! sendfile. An empty queue holds no memory: its buffer goes back to the
//! pool, which is what keeps idle connections small.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

pub use crate::poll::{Lent, MAX_IOVECS};
use crate::sys;

/// Buffers kept for reuse by one loop.
#[derive(Default)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
}

/// Buffers larger than this are freed instead of pooled.
const POOL_MAX_CAPACITY: usize = 64 * 1024;
/// At most this many buffers wait in the pool.
const POOL_MAX_BUFFERS: usize = 64;
/// Capacity of a fresh buffer.
const FRESH_CAPACITY: usize = 4096;
/// Largest sendfile(2) request in one call, so one file cannot hog the loop.
const SENDFILE_STEP: usize = 1 << 20;

impl BufPool {
    pub fn new() -> Self {
        BufPool { free: Vec::new() }
    }

    pub fn take(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(FRESH_CAPACITY))
    }

    pub fn give(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        if buf.capacity() <= POOL_MAX_CAPACITY && self.free.len() < POOL_MAX_BUFFERS {
            buf.clear();
            self.free.push(buf);
        }
    }
}

enum Chunk {
    Bytes(Vec<u8>),
    /// Bytes waiting in the queue's pipe (spliced from another socket).
    Piped(usize),
    /// Bytes of a file range waiting in the queue's file pipe (`-T
    /// completion`, which has no sendfile): always the front chunk.
    Staged(usize),
    File {
        file: Arc<File>,
        offset: u64,
        remaining: u64,
    },
}

/// Bytes and file ranges waiting to be written to one connection.
#[derive(Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head: usize,
    /// The pipe spliced bytes wait in, once a splice feeds this queue
    /// (shared with a splice in flight into it under `-T completion`, which
    /// keeps it open if this connection closes first).
    pipe: Option<Arc<sys::Pipe>>,
    /// Bytes in the pipe (the sum of the Piped chunks).
    piped: usize,
    /// The pipe file ranges pass through under `-T completion`: separate
    /// from `pipe`, whose bytes (spliced in by another connection's
    /// submissions at any time) are behind the file's in the queue. It
    /// lives while file ranges are queued and is dropped after them.
    file_pipe: Option<sys::Pipe>,
    /// The tail byte chunk takes no more bytes: `-K` under `-T completion`
    /// sends each response on its own.
    sealed: bool,
    /// The front chunk is one the kernel reads from right now (a pipe or
    /// a file range, `-T completion`): it stays until its submission
    /// completes.
    locked: bool,
    /// Bytes of leading chunks lent to the ring for a send (`-T
    /// completion`): they come back, in front, when it completes.
    lent: Option<usize>,
    /// The (empty) list the last lent chunks came back in, for the next
    /// send (a few words; dropped when large).
    spare_lent: Vec<Vec<u8>>,
}

/// The next submission that drains a queue (`-T completion`); what it
/// reads stays out of the queue's hands until [`OutQueue::complete`].
#[derive(Debug, PartialEq, Eq)]
pub enum Front {
    /// Leading byte chunks, lent to the ring for a send.
    Bytes(Lent),
    /// `len` bytes waiting in the pipe whose read end is `fd`.
    Pipe { fd: RawFd, len: usize },
    /// `len` bytes of the file `fd` at `offset`, to be spliced into the
    /// pipe whose write end is `pipe`.
    File {
        fd: RawFd,
        offset: u64,
        len: usize,
        pipe: RawFd,
    },
}

/// What a completed submission was ([`OutQueue::complete`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// A send, with the chunks it was lent given back.
    Bytes(Lent),
    /// A splice out of a pipe.
    Pipe,
    /// A splice of a file range into the file pipe.
    File,
}

/// What kind of submission is out on a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sending {
    Bytes,
    Pipe,
    File,
}

impl Front {
    pub fn kind(&self) -> Sending {
        match self {
            Front::Bytes(_) => Sending::Bytes,
            Front::Pipe { .. } => Sending::Pipe,
            Front::File { .. } => Sending::File,
        }
    }
}

/// How a flush ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything was written.
    All,
    /// The socket is full; wait for writability.
    Blocked,
}

impl OutQueue {
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.lent.is_none()
    }

    /// Pending bytes (file ranges count their remaining length).
    #[inline]
    pub fn len(&self) -> usize {
        let total: u64 = self
            .chunks
            .iter()
            .map(|c| match c {
                Chunk::Bytes(b) => b.len() as u64,
                Chunk::Piped(n) | Chunk::Staged(n) => *n as u64,
                Chunk::File { remaining, .. } => *remaining,
            })
            .sum();
        (total as usize).saturating_sub(self.head) + self.lent.unwrap_or(0)
    }

    /// The buffer new bytes are appended to.
    pub fn tail(&mut self, bufs: &mut BufPool) -> &mut Vec<u8> {
        // (A locked front is a pipe or a file range, never the byte chunk
        // at the back; lent byte chunks are out of the queue.)
        if !matches!(self.chunks.back(), Some(Chunk::Bytes(_))) || self.sealed {
            self.sealed = false;
            self.chunks.push_back(Chunk::Bytes(bufs.take()));
        }
        match self.chunks.back_mut() {
            Some(Chunk::Bytes(b)) => b,
            // The branch above just pushed a byte chunk.
            _ => unreachable!("tail chunk is bytes"),
        }
    }

    /// What is queued so far leaves in its own send(s): later bytes start
    /// a new chunk (see [`OutQueue::lock_front`]'s `one_chunk`).
    pub fn seal(&mut self) {
        if matches!(self.chunks.back(), Some(Chunk::Bytes(b)) if !b.is_empty()) {
            self.sealed = true;
        }
    }

    pub fn push_bytes(&mut self, data: &[u8], bufs: &mut BufPool) {
        if !data.is_empty() {
            self.tail(bufs).extend_from_slice(data);
        }
    }

    pub fn push_file(&mut self, file: Arc<File>, offset: u64, len: u64) {
        if len > 0 {
            self.chunks.push_back(Chunk::File {
                file,
                offset,
                remaining: len,
            });
        }
    }

    /// Give this queue a pipe so another socket's bytes can be spliced into
    /// it ([`OutQueue::pipe_room`], [`OutQueue::push_piped`]). Keeps an
    /// existing pipe.
    pub fn attach_pipe(&mut self, capacity: usize) -> io::Result<()> {
        if self.pipe.is_none() {
            self.pipe = Some(Arc::new(sys::Pipe::new(capacity)?));
        }
        Ok(())
    }

    /// The pipe, its capacity and the free room in it.
    pub fn pipe_room(&self) -> Option<(&Arc<sys::Pipe>, usize)> {
        self.pipe
            .as_ref()
            .map(|p| (p, p.capacity().saturating_sub(self.piped)))
    }

    /// Record `n` bytes just spliced into the pipe: they leave after
    /// everything queued before them.
    pub fn push_piped(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.piped += n;
        if let Some(Chunk::Piped(last)) = self.chunks.back_mut() {
            *last += n;
        } else {
            self.chunks.push_back(Chunk::Piped(n));
        }
    }

    /// Capacity of the pipe, if one is attached.
    pub fn pipe_capacity(&self) -> Option<usize> {
        self.pipe.as_ref().map(|p| p.capacity())
    }

    /// Drop a trailing empty byte chunk (left when a handler wrote nothing).
    pub fn trim(&mut self, bufs: &mut BufPool) {
        // (Never a locked or lent chunk: those are not empty byte chunks
        // at the back.)
        if let Some(Chunk::Bytes(b)) = self.chunks.back() {
            if b.is_empty() {
                if let Some(Chunk::Bytes(b)) = self.chunks.pop_back() {
                    bufs.give(b);
                }
            }
        }
    }

    /// Write as much as the socket takes.
    pub fn flush<S>(&mut self, sock: &mut S, bufs: &mut BufPool) -> io::Result<Flushed>
    where
        S: Write + std::os::fd::AsFd,
    {
        loop {
            // A lone byte chunk (the common case) leaves through a plain
            // write, with no iovec array to set up.
            let run = match self.chunks.get(1) {
                Some(Chunk::Bytes(_)) => self.byte_run(MAX_IOVECS),
                _ => 1,
            };
            let result = match self.chunks.front_mut() {
                None => return Ok(Flushed::All),
                Some(Chunk::File {
                    file,
                    offset,
                    remaining,
                }) => {
                    let step = (*remaining).min(SENDFILE_STEP as u64) as usize;
                    match sys::sendfile(&*sock, &**file, offset, step) {
                        Ok(0) => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "file shorter than the range queued for sending",
                            ))
                        }
                        Ok(n) => {
                            *remaining -= n as u64;
                            if *remaining == 0 {
                                self.chunks.pop_front();
                            }
                            continue;
                        }
                        Err(e) => Err(e),
                    }
                }
                Some(Chunk::Piped(_) | Chunk::Staged(_)) => {
                    let (pipe, n) = self.front_pipe()?;
                    match pipe.drain_to(&*sock, n) {
                        Ok(0) => {
                            return Err(io::Error::new(
                                io::ErrorKind::WriteZero,
                                "socket accepted no bytes",
                            ))
                        }
                        Ok(sent) => {
                            self.pipe_sent(sent);
                            continue;
                        }
                        Err(e) => Err(e),
                    }
                }
                Some(Chunk::Bytes(b)) if run == 1 => sock.write(&b[self.head..]),
                Some(Chunk::Bytes(_)) => {
                    let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
                    for (i, chunk) in self.chunks.iter().take(run).enumerate() {
                        if let Chunk::Bytes(b) = chunk {
                            let start = if i == 0 { self.head } else { 0 };
                            slices[i] = IoSlice::new(&b[start..]);
                        }
                    }
                    sock.write_vectored(&slices[..run])
                }
            };
            match result {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket accepted no bytes",
                    ))
                }
                Ok(n) => self.advance(n, bufs),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next submission that drains this queue: leading byte chunks
    /// lent out, or a pipe or file range locked in place; None when it is
    /// empty or a submission is already out. File ranges pass through a
    /// pipe of `pipe_size` of their own, made when the first one is sent.
    /// With `one_chunk`, byte chunks leave one per submission (`-K`).
    pub fn lock_front(&mut self, pipe_size: usize, one_chunk: bool) -> io::Result<Option<Front>> {
        let most = if one_chunk { 1 } else { MAX_IOVECS };
        if self.locked || self.lent.is_some() {
            return Ok(None);
        }
        let front = match self.chunks.front() {
            None => return Ok(None),
            Some(Chunk::Bytes(_)) => {
                let run = self.byte_run(most);
                let mut lent = Lent {
                    bufs: std::mem::take(&mut self.spare_lent),
                    head: std::mem::take(&mut self.head),
                };
                for _ in 0..run {
                    if let Some(Chunk::Bytes(b)) = self.chunks.pop_front() {
                        lent.bufs.push(b);
                    }
                }
                let bytes: usize = lent.slices().map(<[u8]>::len).sum();
                self.lent = Some(bytes);
                Front::Bytes(lent)
            }
            Some(Chunk::Piped(_) | Chunk::Staged(_)) => {
                let (pipe, len) = self.front_pipe()?;
                let fd = pipe.read_fd().as_raw_fd();
                self.locked = true;
                Front::Pipe { fd, len }
            }
            Some(Chunk::File { .. }) => {
                if self.file_pipe.is_none() {
                    self.file_pipe = Some(sys::Pipe::new(pipe_size)?);
                }
                // Empty: staged bytes are always sent before the next range
                // is spliced in.
                let room = self
                    .file_pipe
                    .as_ref()
                    .map_or(0, |p| p.capacity())
                    .min(SENDFILE_STEP);
                let pipe = self.file_pipe.as_ref().map(|p| p.write_fd().as_raw_fd());
                let (
                    Some(Chunk::File {
                        file,
                        offset,
                        remaining,
                    }),
                    Some(pipe),
                ) = (self.chunks.front(), pipe)
                else {
                    return Ok(None);
                };
                self.locked = true;
                Front::File {
                    fd: file.as_raw_fd(),
                    offset: *offset,
                    len: (*remaining).min(room as u64) as usize,
                    pipe,
                }
            }
        };
        Ok(Some(front))
    }

    /// The submission `sent` moved `n` bytes: take back what it was lent,
    /// unlock, and account for them. A file range's bytes are now in the
    /// pipe and leave from there next.
    pub fn complete(&mut self, sent: Sent, n: usize, bufs: &mut BufPool) -> io::Result<()> {
        self.locked = false;
        match sent {
            Sent::Bytes(mut lent) => {
                self.lent = None;
                for b in lent.bufs.drain(..).rev() {
                    self.chunks.push_front(Chunk::Bytes(b));
                }
                if lent.bufs.capacity() <= 4 {
                    self.spare_lent = lent.bufs;
                }
                self.head = lent.head;
                self.advance(n, bufs);
            }
            Sent::Pipe => self.pipe_sent(n),
            Sent::File => {
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shorter than the range queued for sending",
                    ));
                }
                if let Some(Chunk::File {
                    offset, remaining, ..
                }) = self.chunks.front_mut()
                {
                    *offset += n as u64;
                    *remaining -= (n as u64).min(*remaining);
                    if *remaining == 0 {
                        self.chunks.pop_front();
                    }
                }
                self.chunks.push_front(Chunk::Staged(n));
            }
        }
        Ok(())
    }

    /// How many byte chunks at the front leave together, at most `most`:
    /// the one decision of what a write (`flush`) or a send
    /// (`lock_front`) takes, so both backends cut the queue alike.
    fn byte_run(&self, most: usize) -> usize {
        self.chunks
            .iter()
            .take(most)
            .take_while(|c| matches!(c, Chunk::Bytes(_)))
            .count()
    }

    /// The pipe the front chunk's bytes wait in (spliced bytes in `pipe`,
    /// a file range's staged bytes in `file_pipe`), and how many.
    fn front_pipe(&self) -> io::Result<(&sys::Pipe, usize)> {
        let (pipe, n) = match self.chunks.front() {
            Some(Chunk::Piped(n)) => (self.pipe.as_deref(), *n),
            Some(Chunk::Staged(n)) => (self.file_pipe.as_ref(), *n),
            _ => (None, 0),
        };
        let pipe = pipe.ok_or_else(|| io::Error::other("piped bytes queued without a pipe"))?;
        Ok((pipe, n))
    }

    /// `n` bytes of the front chunk left its pipe.
    fn pipe_sent(&mut self, n: usize) {
        match self.chunks.front_mut() {
            Some(Chunk::Piped(left)) => {
                let n = n.min(*left);
                *left -= n;
                self.piped -= n.min(self.piped);
                if *left == 0 {
                    self.chunks.pop_front();
                }
            }
            Some(Chunk::Staged(left)) => {
                *left -= n.min(*left);
                if *left == 0 {
                    self.chunks.pop_front();
                    self.drop_file_pipe();
                }
            }
            _ => {}
        }
    }

    /// The file pipe goes once no file range is next: pipes larger than
    /// the default count against the user's `pipe-user-pages-soft`.
    fn drop_file_pipe(&mut self) {
        if !matches!(self.chunks.front(), Some(Chunk::File { .. })) {
            self.file_pipe = None;
        }
    }

    /// Mark `n` bytes of leading byte chunks written.
    fn advance(&mut self, mut n: usize, bufs: &mut BufPool) {
        while n > 0 {
            let Some(Chunk::Bytes(front)) = self.chunks.front() else {
                return;
            };
            let left = front.len() - self.head;
            if n < left {
                self.head += n;
                return;
            }
            n -= left;
            self.head = 0;
            if let Some(Chunk::Bytes(b)) = self.chunks.pop_front() {
                bufs.give(b);
            }
        }
    }

    /// Give every buffer back to the pool.
    pub fn clear(&mut self, bufs: &mut BufPool) {
        for chunk in self.chunks.drain(..) {
            if let Chunk::Bytes(b) = chunk {
                bufs.give(b);
            }
        }
        self.head = 0;
        // Bytes left in the pipe are dropped with it.
        if self.piped > 0 {
            self.pipe = None;
            self.piped = 0;
        }
        self.file_pipe = None;
        self.sealed = false;
        // What the ring was lent comes back with its completion, to the
        // pool (a closed connection's).
        self.lent = None;
        self.locked = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, BorrowedFd};

    /// A sink that accepts at most `room` bytes per call, then WouldBlock.
    struct Sink {
        got: Vec<u8>,
        room: usize,
        calls: usize,
        file: File,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            let mut total = 0;
            for b in bufs {
                let n = b.len().min(self.room);
                self.room -= n;
                self.got.extend_from_slice(&b[..n]);
                total += n;
            }
            if total == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(total)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl AsFd for Sink {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.file.as_fd()
        }
    }

    fn sink(room: usize) -> Sink {
        Sink {
            got: Vec::new(),
            room,
            calls: 0,
            file: File::open("/dev/null").unwrap(),
        }
    }

    #[test]
    fn pipelined_responses_leave_in_one_write() {
        let mut pool = BufPool::new();
        let mut q = OutQueue::default();
        for i in 0..10 {
            q.push_bytes(format!("resp {i}\n").as_bytes(), &mut pool);
        }
        let mut s = sink(usize::MAX);
        assert_eq!(q.flush(&mut s, &mut pool).unwrap(), Flushed::All);
        assert_eq!(s.calls, 1);
        assert!(q.is_empty());
        assert_eq!(q.len(), 0);
    }

    proptest::proptest! {
        /// Whatever the mix of pushes, file-free chunking and partial writes,
        /// the bytes leave complete and in order.
        #[test]
        fn bytes_leave_complete_and_in_order(
            pushes in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..300), 0..40),
            rooms in proptest::collection::vec(0usize..700, 1..60),
        ) {
            let mut pool = BufPool::new();
            let mut q = OutQueue::default();
            let mut want = Vec::new();
            let mut s = sink(0);
            let mut rooms = rooms.into_iter().cycle();
            for p in &pushes {
                q.push_bytes(p, &mut pool);
                want.extend_from_slice(p);
                s.room = rooms.next().unwrap_or(1);
                q.flush(&mut s, &mut pool).unwrap();
                proptest::prop_assert_eq!(q.len(), want.len() - s.got.len());
            }
            s.room = usize::MAX;
            proptest::prop_assert_eq!(q.flush(&mut s, &mut pool).unwrap(), Flushed::All);
            proptest::prop_assert_eq!(&s.got, &want);
        }
    }

    /// Play the kernel for a send: take up to `room` bytes of what it was
    /// lent.
    fn take_lent(lent: &Lent, room: usize, got: &mut Vec<u8>) -> usize {
        let mut taken = 0;
        for slice in lent.slices() {
            let k = slice.len().min(room - taken);
            got.extend_from_slice(&slice[..k]);
            taken += k;
            if taken == room {
                break;
            }
        }
        taken
    }

    proptest::proptest! {
        /// Under -T completion: bytes pushed while a send is out go behind
        /// what it was lent (never into it), and whatever the partial
        /// completions, everything leaves once, in order.
        #[test]
        fn lent_fronts_leave_complete_and_in_order(
            pushes in proptest::collection::vec(proptest::collection::vec(0u8..=255, 1..300), 1..40),
            rooms in proptest::collection::vec(1usize..700, 1..60),
        ) {
            let mut pool = BufPool::new();
            let mut q = OutQueue::default();
            let mut want = Vec::new();
            let mut got = Vec::new();
            let mut rooms = rooms.into_iter().cycle();
            let mut out: Option<(Lent, Vec<u8>)> = None;
            for p in &pushes {
                q.push_bytes(p, &mut pool);
                want.extend_from_slice(p);
                if let Some((lent, before)) = out.take() {
                    // What was lent did not change under the push.
                    let mut now = Vec::new();
                    take_lent(&lent, usize::MAX, &mut now);
                    proptest::prop_assert_eq!(&now, &before);
                    let sent = take_lent(&lent, rooms.next().unwrap_or(1), &mut got);
                    q.complete(Sent::Bytes(lent), sent, &mut pool).unwrap();
                }
                if let Some(front) = q.lock_front(1 << 16, false).unwrap() {
                    proptest::prop_assert!(q.lock_front(1 << 16, false).unwrap().is_none());
                    let Front::Bytes(lent) = front else { unreachable!() };
                    let mut before = Vec::new();
                    take_lent(&lent, usize::MAX, &mut before);
                    proptest::prop_assert_eq!(q.len(), want.len() - got.len());
                    out = Some((lent, before));
                }
            }
            if let Some((lent, _)) = out.take() {
                let sent = take_lent(&lent, usize::MAX, &mut got);
                q.complete(Sent::Bytes(lent), sent, &mut pool).unwrap();
            }
            while let Some(front) = q.lock_front(1 << 16, false).unwrap() {
                let Front::Bytes(lent) = front else { unreachable!() };
                let sent = take_lent(&lent, usize::MAX, &mut got);
                q.complete(Sent::Bytes(lent), sent, &mut pool).unwrap();
            }
            proptest::prop_assert!(q.is_empty());
            proptest::prop_assert_eq!(&got, &want);
        }
    }

    #[test]
    fn a_file_range_goes_through_the_pipe_in_order_with_the_bytes_around_it() {
        let mut pool = BufPool::new();
        let mut q = OutQueue::default();
        let file = Arc::new(File::open("/dev/zero").unwrap());
        q.push_bytes(b"head", &mut pool);
        q.push_file(file, 10, 100_000);
        q.push_bytes(b"tail", &mut pool);
        let Some(Front::Bytes(lent)) = q.lock_front(65536, false).unwrap() else {
            panic!("the head bytes are first");
        };
        assert_eq!(lent.slices().collect::<Vec<_>>(), [&b"head"[..]]);
        q.complete(Sent::Bytes(lent), 4, &mut pool).unwrap();
        let Some(Front::File { offset, len, .. }) = q.lock_front(65536, false).unwrap() else {
            panic!("the file range is next");
        };
        assert_eq!(offset, 10);
        assert!(len > 0 && len <= 100_000, "{len}");
        // The kernel moved 1000 bytes into the pipe: they leave next.
        q.complete(Sent::File, 1000, &mut pool).unwrap();
        assert_eq!(q.len(), 100_000 + 4);
        let Some(Front::Pipe { len, .. }) = q.lock_front(65536, false).unwrap() else {
            panic!("the piped bytes are next");
        };
        assert_eq!(len, 1000);
        q.complete(Sent::Pipe, 1000, &mut pool).unwrap();
        let Some(Front::File { offset, .. }) = q.lock_front(65536, false).unwrap() else {
            panic!("the rest of the range is next");
        };
        assert_eq!(offset, 1010);
        // A file that ends early is an error, not a hang.
        let err = q.complete(Sent::File, 0, &mut pool).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn file_ranges_pass_through_their_own_pipe_apart_from_spliced_bytes() {
        let mut pool = BufPool::new();
        let mut q = OutQueue::default();
        let file = Arc::new(File::open("/dev/zero").unwrap());
        q.attach_pipe(65536).unwrap();
        let (relay_read, relay_write, capacity) = {
            let (p, room) = q.pipe_room().unwrap();
            (p.read_fd().as_raw_fd(), p.write_fd().as_raw_fd(), room)
        };
        q.push_file(file, 0, 3000);
        // Another connection's bytes are spliced in behind the file range.
        q.push_piped(500);
        let Some(Front::File { pipe, len, .. }) = q.lock_front(65536, false).unwrap() else {
            panic!("the file range is next");
        };
        assert_ne!(
            pipe, relay_write,
            "the file must not share the relay's pipe"
        );
        assert_eq!(len, 3000);
        // The relay's room is not taken by the file.
        assert_eq!(q.pipe_room().unwrap().1, capacity - 500);
        q.complete(Sent::File, 3000, &mut pool).unwrap();
        let Some(Front::Pipe { fd, len }) = q.lock_front(65536, false).unwrap() else {
            panic!("the file's bytes are next");
        };
        assert_ne!(fd, relay_read);
        assert_eq!(len, 3000);
        q.complete(Sent::Pipe, 3000, &mut pool).unwrap();
        assert!(q.file_pipe.is_none(), "no file range left: its pipe goes");
        assert_eq!(
            q.lock_front(65536, false).unwrap(),
            Some(Front::Pipe {
                fd: relay_read,
                len: 500
            })
        );
    }

    #[test]
    fn sealed_responses_leave_one_chunk_per_submission() {
        let mut pool = BufPool::new();
        let mut q = OutQueue::default();
        for r in [&b"one\n"[..], b"two\n", b"three\n"] {
            q.push_bytes(r, &mut pool);
            q.seal();
        }
        let lent_len = |lent: &Lent| lent.slices().map(<[u8]>::len).sum::<usize>();
        let mut sends = Vec::new();
        while let Some(front) = q.lock_front(65536, true).unwrap() {
            let Front::Bytes(lent) = front else {
                panic!("bytes only");
            };
            assert_eq!(lent.bufs.len(), 1);
            let n = lent_len(&lent);
            sends.push(n);
            q.complete(Sent::Bytes(lent), n, &mut pool).unwrap();
        }
        assert_eq!(sends, [4, 4, 6]);
        // Unsealed, they gather into one.
        q.push_bytes(b"one\n", &mut pool);
        q.push_bytes(b"two\n", &mut pool);
        let Some(Front::Bytes(lent)) = q.lock_front(65536, true).unwrap() else {
            panic!("bytes next");
        };
        assert_eq!(lent.bufs.len(), 1);
        assert_eq!(lent_len(&lent), 8);
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut pool = BufPool::new();
        let mut q = OutQueue::default();
        q.push_bytes(b"hello world\n", &mut pool);
        let mut s = sink(5);
        assert_eq!(q.flush(&mut s, &mut pool).unwrap(), Flushed::Blocked);
        assert_eq!(q.len(), 7);
        s.room = 100;
        assert_eq!(q.flush(&mut s, &mut pool).unwrap(), Flushed::All);
        assert_eq!(s.got, b"hello world\n");
    }
}
