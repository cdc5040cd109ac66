//! Unconsumed input: the bytes a consumer (the service framing, a handler
//! pool's feeder, a protocol's `on_data`, a handler's own parser) did not
//! take yet, kept and put in front of the next bytes. One routine for it,
//! in two steps so the consumer may use the loop's buffers meanwhile:
//!
//! ```text
//!  kept ─┐
//!        ├─► Pending::new ─► bytes() ─► consumer ─► used ─► keep_rest(used) ─► kept
//!  data ─┘   (no copy when nothing is kept)          (a tail copied only if left over)
//! ```
//!
//! When nothing was kept (the common case: whole requests in one read) the
//! consumer reads the new bytes where they are; only a tail it leaves is
//! copied, into a buffer from the pool. Emptied buffers go back to the pool.

use super::output::BufPool;

/// Where the routine takes buffers for a tail and gives emptied ones.
pub(crate) trait Buffers {
    fn take(&mut self) -> Vec<u8>;
    fn give(&mut self, buf: Vec<u8>);
}

impl Buffers for BufPool {
    fn take(&mut self) -> Vec<u8> {
        BufPool::take(self)
    }

    fn give(&mut self, buf: Vec<u8>) {
        BufPool::give(self, buf)
    }
}

/// Emptied buffers up to this capacity are kept by an [`Unconsumed`] for
/// its next tail; larger ones are freed (one large request must not pin
/// its size for the connection's life).
const SPARE_MAX: usize = 64 * 1024;

/// An [`Unconsumed`]'s own pool: one spare buffer.
struct Spare<'a>(&'a mut Vec<u8>);

impl Buffers for Spare<'_> {
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(self.0)
    }

    fn give(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() <= SPARE_MAX {
            buf.clear();
            *self.0 = buf;
        }
    }
}

/// Kept input followed by new bytes, while a consumer looks at them.
pub(crate) enum Pending<'a> {
    /// Nothing was kept: the new bytes, where they are.
    Fresh(&'a [u8]),
    /// What was kept, with the new bytes appended.
    Kept(Vec<u8>),
}

impl<'a> Pending<'a> {
    /// Take what `kept` holds (leaving it empty) and put `data` after it.
    #[inline]
    pub fn new(kept: &mut Vec<u8>, data: &'a [u8]) -> Pending<'a> {
        if kept.is_empty() {
            Pending::Fresh(data)
        } else {
            let mut buf = std::mem::take(kept);
            buf.extend_from_slice(data);
            Pending::Kept(buf)
        }
    }

    /// The bytes to consume.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Pending::Fresh(data) => data,
            Pending::Kept(buf) => buf,
        }
    }

    /// The consumer took `used` bytes (at most all): what is left, to keep
    /// until the next bytes (nothing when `discard`: the connection is
    /// closing and will read no more).
    #[inline]
    pub fn keep_rest(self, used: usize, discard: bool, bufs: &mut impl Buffers) -> Vec<u8> {
        if let Pending::Fresh(data) = &self {
            if used >= data.len() || discard {
                return Vec::new();
            }
        }
        self.keep_rest_slow(used, discard, bufs)
    }

    #[inline(never)]
    fn keep_rest_slow(self, used: usize, discard: bool, bufs: &mut impl Buffers) -> Vec<u8> {
        match self {
            Pending::Fresh(data) => {
                let rest = &data[used.min(data.len())..];
                if rest.is_empty() || discard {
                    return Vec::new();
                }
                let mut buf = bufs.take();
                buf.extend_from_slice(rest);
                buf
            }
            Pending::Kept(mut buf) => {
                buf.drain(..used.min(buf.len()));
                if buf.is_empty() || discard {
                    bufs.give(buf);
                    return Vec::new();
                }
                buf
            }
        }
    }
}

/// Input a handler keeps itself between callbacks (for example to go on
/// parsing buffered requests in `on_writable`, when no new bytes come):
/// the loop's own routine for unconsumed input, for handler crates.
///
/// ```
/// let mut input = gaidaros::Unconsumed::default();
/// // A line parser that takes whole lines only.
/// let lines = |b: &[u8]| b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
/// input.feed(b"GET /a\nGET", lines);
/// assert_eq!(input.as_bytes(), b"GET");
/// input.feed(b" /b\n", lines);
/// assert!(input.is_empty());
/// ```
#[derive(Debug, Default)]
pub struct Unconsumed {
    buf: Vec<u8>,
    /// An emptied buffer, reused for the next tail.
    spare: Vec<u8>,
}

impl Unconsumed {
    /// Hand what is kept, followed by `data`, to `consume`, which returns
    /// how many bytes it took; the rest is kept for the next call.
    pub fn feed(&mut self, data: &[u8], consume: impl FnOnce(&[u8]) -> usize) {
        let pending = Pending::new(&mut self.buf, data);
        let used = consume(pending.bytes());
        self.buf = pending.keep_rest(used, false, &mut Spare(&mut self.spare));
    }

    /// The bytes kept now.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes kept now.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fresh_bytes_consumed_whole_keep_nothing_and_copy_nothing() {
        let mut kept = Vec::new();
        let mut bufs = BufPool::new();
        let p = Pending::new(&mut kept, b"abc");
        assert!(matches!(p, Pending::Fresh(_)));
        assert!(p.keep_rest(3, false, &mut bufs).is_empty());
    }

    #[test]
    fn a_closing_connection_keeps_no_tail() {
        let mut kept = b"ab".to_vec();
        let mut bufs = BufPool::new();
        let p = Pending::new(&mut kept, b"cd");
        assert!(p.keep_rest(1, true, &mut bufs).is_empty());
        let p = Pending::new(&mut kept, b"cd");
        assert!(p.keep_rest(0, true, &mut bufs).is_empty());
    }

    proptest! {
        /// Whatever the consumer takes each time, every byte is seen once,
        /// in order, and the kept tail is exactly what it left.
        #[test]
        fn every_byte_reaches_the_consumer_once_in_order(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..20),
            takes in proptest::collection::vec(0usize..60, 20),
        ) {
            let mut kept = Vec::new();
            let mut bufs = BufPool::new();
            let mut consumed = Vec::new();
            for (chunk, take) in chunks.iter().zip(&takes) {
                let p = Pending::new(&mut kept, chunk);
                let bytes = p.bytes().to_vec();
                let used = (*take).min(bytes.len());
                consumed.extend_from_slice(&bytes[..used]);
                kept = p.keep_rest(used, false, &mut bufs);
                prop_assert_eq!(&kept[..], &bytes[used..]);
            }
            consumed.extend_from_slice(&kept);
            let all: Vec<u8> = chunks.iter().take(takes.len()).flatten().copied().collect();
            prop_assert_eq!(consumed, all);
        }
    }
}
