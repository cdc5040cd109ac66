//! The frames between the server and its worker processes (`-X proc`,
//! `-X procpool`), over a unix socketpair. Sans-I/O: encoders append to a
//! buffer, the decoder looks at a buffer and says how much it used.
//!
//! ```text
//!  request:  listener u32 BE | length u32 BE | request bytes
//!  response: kind u8 (0 keep alive, 1 close, 2 error) | length u32 BE | bytes
//! ```
//!
//! For an error the bytes are the service's error reply, already rendered
//! by the worker.

use crate::service::{Keep, ServiceError};

/// The largest frame body either side accepts (a request is bounded by
/// `max_request` long before this; a response by the service).
pub const MAX_FRAME: usize = 64 << 20;

/// A decoding failure: the stream cannot be trusted after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A length over [`MAX_FRAME`].
    TooLong(usize),
    /// An unknown response kind.
    BadKind(u8),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::TooLong(n) => write!(f, "frame of {n} bytes (limit {MAX_FRAME})"),
            WireError::BadKind(k) => write!(f, "unknown response kind {k}"),
        }
    }
}

/// Append a request frame for listener `listener`.
pub fn encode_request(listener: u32, request: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&listener.to_be_bytes());
    out.extend_from_slice(&(request.len() as u32).to_be_bytes());
    out.extend_from_slice(request);
}

/// A request frame at the front of `buf`: (listener, body range, frame
/// length), or `None` while incomplete.
pub fn decode_request(
    buf: &[u8],
) -> Result<Option<(u32, std::ops::Range<usize>, usize)>, WireError> {
    let Some(head) = buf.get(..8) else {
        return Ok(None);
    };
    let listener = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLong(len));
    }
    if buf.len() < 8 + len {
        return Ok(None);
    }
    Ok(Some((listener, 8..8 + len, 8 + len)))
}

/// What a response frame says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Keep the connection.
    Alive,
    /// Close after this response.
    Close,
    /// The bytes are an error reply; close after it.
    Error,
}

/// Append a response frame.
pub fn encode_response(kind: Kind, body: &[u8], out: &mut Vec<u8>) {
    out.push(match kind {
        Kind::Alive => 0,
        Kind::Close => 1,
        Kind::Error => 2,
    });
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// A response frame at the front of `buf`: (kind, body range, frame
/// length), or `None` while incomplete.
pub fn decode_response(
    buf: &[u8],
) -> Result<Option<(Kind, std::ops::Range<usize>, usize)>, WireError> {
    let Some(head) = buf.get(..5) else {
        return Ok(None);
    };
    let kind = match head[0] {
        0 => Kind::Alive,
        1 => Kind::Close,
        2 => Kind::Error,
        k => return Err(WireError::BadKind(k)),
    };
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLong(len));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    Ok(Some((kind, 5..5 + len, 5 + len)))
}

/// The kind for a service's outcome.
pub fn kind_of(outcome: &Result<Keep, ServiceError>) -> Kind {
    match outcome {
        Ok(Keep::Alive) => Kind::Alive,
        Ok(Keep::Close) => Kind::Close,
        Err(_) => Kind::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_round_trip() {
        let mut buf = Vec::new();
        encode_request(3, b"hello\n", &mut buf);
        encode_request(0, b"", &mut buf);
        let (l, body, used) = decode_request(&buf).unwrap().unwrap();
        assert_eq!((l, &buf[body]), (3, &b"hello\n"[..]));
        let (l, body, used2) = decode_request(&buf[used..]).unwrap().unwrap();
        assert_eq!((l, body.len(), used + used2), (0, 0, buf.len()));
    }

    #[test]
    fn oversized_and_unknown_frames_are_errors() {
        let mut buf = vec![0, 0, 0, 0];
        buf.extend_from_slice(&((MAX_FRAME + 1) as u32).to_be_bytes());
        assert_eq!(decode_request(&buf), Err(WireError::TooLong(MAX_FRAME + 1)));
        assert_eq!(
            decode_response(&[9, 0, 0, 0, 0]),
            Err(WireError::BadKind(9))
        );
    }

    proptest! {
        /// Any response survives a round trip, and every strict prefix
        /// of a frame decodes as incomplete, never as something else.
        #[test]
        fn responses_round_trip_and_prefixes_wait(kind in 0u8..3, body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let kind = [Kind::Alive, Kind::Close, Kind::Error][kind as usize];
            let mut buf = Vec::new();
            encode_response(kind, &body, &mut buf);
            for cut in 0..buf.len() {
                prop_assert_eq!(decode_response(&buf[..cut]), Ok(None));
            }
            let (k, range, used) = decode_response(&buf).unwrap().unwrap();
            prop_assert_eq!(k, kind);
            prop_assert_eq!(&buf[range], &body[..]);
            prop_assert_eq!(used, buf.len());
        }

        /// Arbitrary bytes never panic the decoders.
        #[test]
        fn decoders_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }
    }
}
