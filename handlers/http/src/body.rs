//! Request bodies: Content-Length and chunked, decoded as bytes arrive.
//!
//! The decoder consumes what it is given, appends the body's bytes to the
//! request, and never holds more than `max_body` decoded bytes or more than
//! a bounded amount of chunk framing (a chunk-size line with extensions, a
//! trailer section), whatever the peer sends.

use crate::error::HttpError;

/// Longest chunk-size line (size, extensions, CRLF) we accept.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section we read (and discard).
const MAX_TRAILERS: usize = 8192;

/// Where a body decoder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyDecoder {
    /// This many bytes of a Content-Length body are still to come.
    Length(u64),
    /// Inside a chunked body.
    Chunked(Chunked),
}

/// The chunked decoder's state (RFC 9112 7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunked {
    /// Reading the hex chunk size; `digits` so far.
    Size {
        size: u64,
        digits: usize,
        line: usize,
    },
    /// After the size: optional whitespace before `;` or CR.
    SizeWs { size: u64, line: usize },
    /// After `;`: extensions up to CR.
    Extension { size: u64, line: usize },
    /// Expecting the LF of the size line.
    SizeLf { size: u64 },
    /// Inside the chunk's data.
    Data { left: u64 },
    /// Expecting the CR after the data.
    DataCr,
    /// Expecting the LF after the data.
    DataLf,
    /// Reading trailer lines; `line` bytes of the current one, `total` of all.
    Trailer { line: usize, total: usize },
    /// Expecting the LF of a trailer line (`empty`: the line was empty).
    TrailerLf { empty: bool, total: usize },
    /// The body is complete.
    Done,
}

impl BodyDecoder {
    /// A decoder for a chunked body.
    pub fn chunked() -> Self {
        BodyDecoder::Chunked(Chunked::Size {
            size: 0,
            digits: 0,
            line: 0,
        })
    }

    /// Decode from `input` into `out` (which must not pass `max` bytes).
    /// Returns the bytes consumed and whether the body is complete.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<(usize, bool), HttpError> {
        match self {
            BodyDecoder::Length(left) => {
                let n = (*left).min(input.len() as u64) as usize;
                out.extend_from_slice(&input[..n]);
                *left -= n as u64;
                Ok((n, *left == 0))
            }
            BodyDecoder::Chunked(state) => decode_chunked(state, input, out, max),
        }
    }
}

fn bad(why: &'static str) -> HttpError {
    HttpError::BadRequest(why)
}

fn decode_chunked(
    state: &mut Chunked,
    input: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(usize, bool), HttpError> {
    let mut i = 0;
    while i < input.len() {
        match state {
            Chunked::Data { left } => {
                let n = (*left).min((input.len() - i) as u64) as usize;
                if out.len() + n > max {
                    return Err(HttpError::BodyTooLarge);
                }
                out.extend_from_slice(&input[i..i + n]);
                i += n;
                *left -= n as u64;
                if *left == 0 {
                    *state = Chunked::DataCr;
                }
                continue;
            }
            Chunked::Done => return Ok((i, true)),
            _ => {}
        }
        let b = input[i];
        i += 1;
        *state = match std::mem::replace(state, Chunked::Done) {
            Chunked::Size { size, digits, line } => {
                if line + 1 > MAX_CHUNK_LINE {
                    return Err(bad("chunk size line too long"));
                }
                match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        if digits >= 15 {
                            return Err(HttpError::BodyTooLarge);
                        }
                        Chunked::Size {
                            size: size * 16 + d,
                            digits: digits + 1,
                            line: line + 1,
                        }
                    }
                    b';' if digits > 0 => Chunked::Extension {
                        size,
                        line: line + 1,
                    },
                    b' ' | b'\t' if digits > 0 => Chunked::SizeWs {
                        size,
                        line: line + 1,
                    },
                    b'\r' if digits > 0 => Chunked::SizeLf { size },
                    _ => return Err(bad("invalid chunk size")),
                }
            }
            Chunked::SizeWs { size, line } => {
                if line + 1 > MAX_CHUNK_LINE {
                    return Err(bad("chunk size line too long"));
                }
                // RFC 9112 7.1.1: only BWS, then `;` (an extension) or CRLF.
                match b {
                    b' ' | b'\t' => Chunked::SizeWs {
                        size,
                        line: line + 1,
                    },
                    b';' => Chunked::Extension {
                        size,
                        line: line + 1,
                    },
                    b'\r' => Chunked::SizeLf { size },
                    _ => return Err(bad("invalid chunk size")),
                }
            }
            Chunked::Extension { size, line } => {
                if line + 1 > MAX_CHUNK_LINE {
                    return Err(bad("chunk extension too long"));
                }
                // Tokens, `=`, `;`, quoted strings and whitespace: visible
                // ASCII, SP and HTAB. Control bytes and non-ASCII are refused
                // so no proxy in front can read the line differently.
                match b {
                    b'\r' => Chunked::SizeLf { size },
                    b' ' | b'\t' | 0x21..=0x7e => Chunked::Extension {
                        size,
                        line: line + 1,
                    },
                    _ => return Err(bad("invalid byte in a chunk extension")),
                }
            }
            Chunked::SizeLf { size } => {
                if b != b'\n' {
                    return Err(bad("chunk size line not ended by CRLF"));
                }
                if size == 0 {
                    Chunked::Trailer { line: 0, total: 0 }
                } else if out.len() as u64 + size > max as u64 {
                    return Err(HttpError::BodyTooLarge);
                } else {
                    Chunked::Data { left: size }
                }
            }
            Chunked::DataCr => {
                if b != b'\r' {
                    return Err(bad("chunk data not followed by CRLF"));
                }
                Chunked::DataLf
            }
            Chunked::DataLf => {
                if b != b'\n' {
                    return Err(bad("chunk data not followed by CRLF"));
                }
                Chunked::Size {
                    size: 0,
                    digits: 0,
                    line: 0,
                }
            }
            Chunked::Trailer { line, total } => {
                if total + 1 > MAX_TRAILERS {
                    return Err(HttpError::HeaderTooLarge("trailer section too large"));
                }
                match b {
                    b'\r' => Chunked::TrailerLf {
                        empty: line == 0,
                        total: total + 1,
                    },
                    b'\n' | b'\0' => return Err(bad("bare LF or NUL in a trailer")),
                    _ => Chunked::Trailer {
                        line: line + 1,
                        total: total + 1,
                    },
                }
            }
            Chunked::TrailerLf { empty, total } => {
                if b != b'\n' {
                    return Err(bad("trailer line not ended by CRLF"));
                }
                if empty {
                    *state = Chunked::Done;
                    return Ok((i, true));
                }
                Chunked::Trailer { line: 0, total }
            }
            // Handled above the match.
            s @ (Chunked::Data { .. } | Chunked::Done) => s,
        };
    }
    Ok((i, matches!(state, Chunked::Done)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        let mut k = 0;
        while !rest.is_empty() {
            let n = sizes.get(k).copied().unwrap_or(7).clamp(1, rest.len());
            k += 1;
            out.extend_from_slice(format!("{n:x};ext=1\r\n").as_bytes());
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        out.extend_from_slice(b"0\r\nX-Trailer: y\r\n\r\n");
        out
    }

    fn decode_in_pieces(
        wire: &[u8],
        cuts: &[usize],
        max: usize,
    ) -> Result<(Vec<u8>, usize), HttpError> {
        let mut d = BodyDecoder::chunked();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut pieces: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        pieces.push(wire.len());
        pieces.sort_unstable();
        for end in pieces {
            if end < pos {
                continue;
            }
            let mut at = pos;
            while at < end {
                let (n, done) = d.decode(&wire[at..end], &mut out, max)?;
                at += n;
                if done {
                    return Ok((out, at));
                }
                if n == 0 {
                    break;
                }
            }
            pos = at;
        }
        Err(HttpError::BadRequest("incomplete"))
    }

    #[test]
    fn decodes_chunks_with_extensions_and_trailers() {
        let wire = b"4\r\nWiki\r\n5 ;a=\"b c\"\r\npedia\r\n0\r\nT: 1\r\n\r\nNEXT";
        let mut d = BodyDecoder::chunked();
        let mut out = Vec::new();
        let (n, done) = d.decode(wire, &mut out, 100).unwrap();
        assert!(done);
        assert_eq!(out, b"Wikipedia");
        assert_eq!(&wire[n..], b"NEXT");
    }

    #[test]
    fn too_large_is_refused_from_the_chunk_size() {
        let mut d = BodyDecoder::chunked();
        let mut out = Vec::new();
        assert_eq!(
            d.decode(b"100\r\n", &mut out, 255),
            Err(HttpError::BodyTooLarge)
        );
        let mut d = BodyDecoder::chunked();
        assert_eq!(
            d.decode(b"ffffffffffffffffff\r\n", &mut out, 255),
            Err(HttpError::BodyTooLarge)
        );
    }

    #[test]
    fn malformed_framing_is_400() {
        for bad in [
            &b"x\r\n"[..],
            b"4\nWiki\r\n",
            b"4\r\nWikiXX",
            b"\r\n",
            b"0\r\n\n",
        ] {
            let mut d = BodyDecoder::chunked();
            let mut out = Vec::new();
            assert!(
                matches!(d.decode(bad, &mut out, 100), Err(HttpError::BadRequest(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn content_length_stops_at_the_end() {
        let mut d = BodyDecoder::Length(3);
        let mut out = Vec::new();
        assert_eq!(d.decode(b"ab", &mut out, 10), Ok((2, false)));
        assert_eq!(d.decode(b"cdef", &mut out, 10), Ok((1, true)));
        assert_eq!(out, b"abc");
    }

    proptest! {
        #[test]
        fn any_chunking_and_any_split_decodes_the_same(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            sizes in proptest::collection::vec(1usize..300, 0..20),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let wire = encode(&body, &sizes);
            let (out, used) = decode_in_pieces(&wire, &cuts, 4096).unwrap();
            prop_assert_eq!(out, body);
            prop_assert_eq!(used, wire.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic_or_overflow(bytes in proptest::collection::vec(any::<u8>(), 0..500)) {
            let mut d = BodyDecoder::chunked();
            let mut out = Vec::new();
            if let Ok((n, _)) = d.decode(&bytes, &mut out, 64) {
                prop_assert!(n <= bytes.len());
                prop_assert!(out.len() <= 64);
            }
        }
    }
}
