//! The frames between the server and its worker processes
//! (`gaidaros::pools::wire`), both ways.
//!
//! Input: `direction | bytes`. Direction bit 0: the bytes are read as
//! request frames (what a worker reads) or as response frames (what the
//! server reads from a worker); bit 1: they are read as a stream of frames
//! one after another, or encoded as the body of one frame first.
//!
//! Checks:
//! - nothing panics on any bytes;
//! - a frame found lies inside the buffer and its length is the header's;
//!   encoding what was decoded gives back the same bytes (decode, encode);
//! - encoding a value and decoding it gives back the value, and every
//!   strict prefix of a frame is incomplete, never an error or another
//!   frame (encode, decode);
//! - an error is what the header says: a length over `MAX_FRAME` or an
//!   unknown kind.
#![no_main]

use gaidaros::pools::wire::{
    decode_request, decode_response, encode_request, encode_response, Kind, WireError, MAX_FRAME,
};
use libfuzzer_sys::fuzz_target;

/// Read `buf` as request frames, one after another.
fn requests(mut buf: &[u8]) {
    loop {
        match decode_request(buf) {
            Ok(Some((listener, body, used))) => {
                assert_eq!(body, 8..used, "the body follows the header");
                assert!(used <= buf.len());
                let mut again = Vec::new();
                encode_request(listener, &buf[body], &mut again);
                assert_eq!(again, &buf[..used], "decode, encode");
                buf = &buf[used..];
            }
            Ok(None) => {
                let len = buf
                    .get(4..8)
                    .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]));
                match len {
                    None => assert!(buf.len() < 8),
                    Some(len) => assert!(buf.len() < 8 + len as usize, "a whole frame waits"),
                }
                return;
            }
            Err(WireError::TooLong(n)) => {
                assert!(n > MAX_FRAME);
                assert_eq!(
                    u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize,
                    n
                );
                return;
            }
            Err(e) => panic!("a request frame cannot fail with {e}"),
        }
    }
}

/// Read `buf` as response frames, one after another.
fn responses(mut buf: &[u8]) {
    loop {
        match decode_response(buf) {
            Ok(Some((kind, body, used))) => {
                assert_eq!(body, 5..used, "the body follows the header");
                assert!(used <= buf.len());
                let mut again = Vec::new();
                encode_response(kind, &buf[body], &mut again);
                assert_eq!(again, &buf[..used], "decode, encode");
                buf = &buf[used..];
            }
            Ok(None) => {
                if let Some(l) = buf.get(1..5) {
                    let len = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
                    assert!(buf.len() < 5 + len, "a whole frame waits");
                }
                return;
            }
            Err(WireError::TooLong(n)) => {
                assert!(n > MAX_FRAME && buf[0] <= 2);
                return;
            }
            Err(WireError::BadKind(k)) => {
                assert!(k > 2 && k == buf[0]);
                return;
            }
        }
    }
}

/// Strict prefixes of `frame` worth trying: all of a short frame, the
/// header's edges and the last byte of a long one.
fn prefixes(frame: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let n = frame.len();
    (0..n).filter(move |&cut| n <= 64 || cut <= 9 || cut + 2 >= n)
}

fuzz_target!(|data: &[u8]| {
    let Some((&direction, bytes)) = data.split_first() else {
        return;
    };
    match (direction & 1, direction & 2) {
        (0, 0) => requests(bytes),
        (_, 0) => responses(bytes),
        (0, _) => {
            let listener =
                u32::from_be_bytes(std::array::from_fn(|i| bytes.get(i).copied().unwrap_or(0)));
            let mut frame = Vec::new();
            encode_request(listener, bytes, &mut frame);
            for cut in prefixes(&frame) {
                assert_eq!(decode_request(&frame[..cut]), Ok(None), "prefix {cut}");
            }
            let (l, body, used) = decode_request(&frame).unwrap().expect("a whole frame");
            assert_eq!((l, &frame[body], used), (listener, bytes, frame.len()));
        }
        (_, _) => {
            let kind = [Kind::Alive, Kind::Close, Kind::Error][(direction as usize >> 2) % 3];
            let mut frame = Vec::new();
            encode_response(kind, bytes, &mut frame);
            for cut in prefixes(&frame) {
                assert_eq!(decode_response(&frame[..cut]), Ok(None), "prefix {cut}");
            }
            let (k, body, used) = decode_response(&frame).unwrap().expect("a whole frame");
            assert_eq!((k, &frame[body], used), (kind, bytes, frame.len()));
        }
    }
});
