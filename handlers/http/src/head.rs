//! The request head: found line by line under the size limits, then parsed.
//!
//! Parsing happens in two steps (STYLE.md): [`HeadScan`] walks the bytes
//! as they arrive and finds where the head ends, refusing it as soon as a
//! limit is passed or a byte is not allowed (bare LF, obs-fold, NUL), so a
//! peer can never make us hold more than the limits; then [`parse`] hands
//! the complete head to httparse and checks the framing headers
//! (Content-Length, Transfer-Encoding, Host, Connection) into a
//! [`Request`].

use std::ops::Range;

use crate::error::HttpError;
use crate::request::{BodyKind, Request};

/// The limits of one request head. Each is an option of the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Longest request line, CRLF included (-> 414).
    pub max_request_line: usize,
    /// Longest header line, CRLF included (-> 431).
    pub max_header_line: usize,
    /// All header lines together (-> 431).
    pub max_headers_size: usize,
    /// Number of header lines (-> 431).
    pub max_headers: usize,
}

impl Default for HeadLimits {
    /// nginx's defaults: `large_client_header_buffers 4 8k` for the lines;
    /// 32 KiB and 100 headers for the whole head.
    fn default() -> Self {
        HeadLimits {
            max_request_line: 8 * 1024,
            max_header_line: 8 * 1024,
            max_headers_size: 32 * 1024,
            max_headers: 100,
        }
    }
}

/// Where the scan of an incomplete head stopped; kept between reads so a
/// head arriving byte by byte is scanned once, not once per byte.
#[derive(Debug, Default, Clone)]
pub struct HeadScan {
    /// Start of the first line not yet scanned, from the head's start.
    pos: usize,
    /// Lines scanned (the request line is line 0).
    lines: usize,
    /// Bytes of header lines scanned.
    header_bytes: usize,
}

impl HeadScan {
    /// Forget a finished head.
    pub fn reset(&mut self) {
        *self = HeadScan::default();
    }

    /// Has any line of this head been scanned?
    pub fn started(&self) -> bool {
        self.pos > 0
    }

    /// Scan `buf` (the head from its first byte, as much as has arrived).
    /// `Ok(Some(len))` when the head is complete and `len` bytes long,
    /// `Ok(None)` when more bytes are needed.
    pub fn scan(&mut self, buf: &[u8], limits: &HeadLimits) -> Result<Option<usize>, HttpError> {
        loop {
            let rest = &buf[self.pos..];
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                // An incomplete line: refuse it as soon as it is too long.
                return self.check_partial(rest, limits).map(|()| None);
            };
            let line_len = lf + 1;
            // Sizes first, in the order check_partial uses, so a head gets
            // the same verdict however it is cut into reads.
            let ends_head = self.lines > 0 && (lf == 0 || (lf == 1 && rest[0] == b'\r'));
            if self.lines == 0 {
                if line_len > limits.max_request_line {
                    return Err(HttpError::UriTooLong);
                }
            } else if !ends_head {
                self.check_sizes(
                    line_len > limits.max_header_line,
                    self.header_bytes + line_len > limits.max_headers_size,
                    limits,
                )?;
                if self.lines > limits.max_headers {
                    return Err(HttpError::HeaderTooLarge("too many header lines"));
                }
            }
            if lf == 0 || rest[lf - 1] != b'\r' {
                return Err(HttpError::BadRequest("bare LF: lines must end with CRLF"));
            }
            let content = &rest[..lf - 1];
            if ends_head {
                self.pos += line_len;
                return Ok(Some(self.pos));
            }
            if self.lines > 0 {
                if content[0] == b' ' || content[0] == b'\t' {
                    return Err(HttpError::BadRequest("obs-fold (header line folding)"));
                }
                self.header_bytes += line_len;
            }
            if memchr::memchr2(b'\0', b'\r', content).is_some() {
                return Err(HttpError::BadRequest("NUL or bare CR in the request head"));
            }
            self.lines += 1;
            self.pos += line_len;
        }
    }

    fn check_partial(&self, partial: &[u8], limits: &HeadLimits) -> Result<(), HttpError> {
        let len = partial.len();
        if self.lines == 0 {
            if len >= limits.max_request_line {
                return Err(HttpError::UriTooLong);
            }
        } else if partial == b"\r" {
            // Perhaps the empty line ending the head.
        } else {
            self.check_sizes(
                len >= limits.max_header_line,
                self.header_bytes + len > limits.max_headers_size,
                limits,
            )?;
        }
        Ok(())
    }

    /// The verdict on a header line that passed its own limit
    /// (`too_long`) or took all headers over theirs (`too_large`), seen
    /// whole or cut short: the limit passed first as its bytes arrive,
    /// the line's own on a tie. A line is known too long from its
    /// `max_header_line`-th octet, too large from its
    /// `max_headers_size - header_bytes + 1`-th, so the verdict does not
    /// depend on where the reads cut it.
    fn check_sizes(
        &self,
        too_long: bool,
        too_large: bool,
        limits: &HeadLimits,
    ) -> Result<(), HttpError> {
        let large_first = self.header_bytes + limits.max_header_line > limits.max_headers_size + 1;
        if too_long && !(too_large && large_first) {
            return Err(HttpError::HeaderTooLarge("a header line is too long"));
        }
        if too_large {
            return Err(HttpError::HeaderTooLarge("the headers are too large"));
        }
        Ok(())
    }
}

/// The most header lines `max_headers` may allow (httparse's scratch space
/// is an array of this size on the stack, left uninitialized).
pub const MAX_HEADERS_LIMIT: usize = 1024;

/// Parse a complete head (as found by [`HeadScan::scan`]) into `req`,
/// reusing its buffers.
pub fn parse(head: &[u8], req: &mut Request) -> Result<(), HttpError> {
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_LIMIT];
    let mut parsed = httparse::Request::new(&mut []);
    match parsed.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HttpError::BadRequest("incomplete request head"));
        }
        Err(httparse::Error::Version) => return Err(HttpError::VersionNotSupported),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::HeaderTooLarge("too many header lines"));
        }
        Err(e) => return Err(HttpError::BadRequest(parse_error_text(e))),
    }
    let base = head.as_ptr() as usize;
    let range_of = |s: &[u8]| -> Range<usize> {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    req.clear();
    req.head.extend_from_slice(head);
    // httparse returned Complete: method, path and version are all set.
    let (Some(method), Some(path), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HttpError::BadRequest("incomplete request line"));
    };
    req.set_line(method, path);
    req.minor = minor;

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut codings = 0usize;
    let mut host = 0usize;
    let mut close_token = false;
    let mut keep_alive_token = false;
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        req.headers.push((range_of(name), range_of(h.value)));
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(h.value)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HttpError::BadRequest("two different Content-Length values"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            // Only `chunked`, and only as the last coding, frames a body.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = trim(last).eq_ignore_ascii_case(b"chunked");
            if !chunked {
                return Err(HttpError::NotImplemented(
                    "transfer coding other than chunked",
                ));
            }
            codings += h.value.split(|&b| b == b',').count();
            if codings > 1 {
                return Err(HttpError::NotImplemented(
                    "transfer codings other than chunked",
                ));
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            host += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = trim(token);
                if token.eq_ignore_ascii_case(b"close") {
                    close_token = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") && minor >= 1 {
            // HTTP/1.0 has no 1xx: its Expect is ignored (RFC 9110 10.1.1).
            if trim(h.value).eq_ignore_ascii_case(b"100-continue") {
                req.expect_continue = true;
            } else {
                return Err(HttpError::ExpectationFailed);
            }
        }
    }
    if transfer_encoding && content_length.is_some() {
        return Err(HttpError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if minor == 1 && host != 1 {
        return Err(HttpError::BadRequest(if host == 0 {
            "HTTP/1.1 request without Host"
        } else {
            "more than one Host header"
        }));
    }
    // HTTP/1.0 closes unless asked to keep alive; `close` always wins. A
    // 1.0 request framed by Transfer-Encoding is suspect: answer, then close
    // (RFC 9112 6.1).
    req.keep_alive = !close_token && (minor == 1 || (keep_alive_token && !transfer_encoding));
    req.body_kind = if chunked {
        BodyKind::Chunked
    } else {
        match content_length {
            Some(0) | None => BodyKind::None,
            Some(n) => BodyKind::Length(n),
        }
    };
    Ok(())
}

fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let v = trim(value);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadRequest("Content-Length is not a number"));
    }
    v.iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(HttpError::BadRequest("Content-Length is too large"))
}

pub(crate) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_error_text(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Token => "invalid method or request target",
        _ => "malformed request head",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan_all(buf: &[u8]) -> Result<Option<usize>, HttpError> {
        HeadScan::default().scan(buf, &HeadLimits::default())
    }

    fn parse_all(buf: &[u8]) -> Result<Request, HttpError> {
        let len = scan_all(buf)?.expect("complete head");
        let mut req = Request::default();
        parse(&buf[..len], &mut req)?;
        Ok(req)
    }

    #[test]
    fn finds_the_end_of_a_head_and_parses_it() {
        let req = parse_all(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Y: z\r\n\r\nrest").unwrap();
        assert_eq!(req.method(), "GET");
        assert_eq!(req.path(), "/a");
        assert_eq!(req.query(), Some("b=c"));
        assert_eq!(req.header("x-y"), Some(&b"z"[..]));
        assert!(req.keep_alive);
        assert_eq!(req.body_kind, BodyKind::None);
    }

    #[test]
    fn a_head_arriving_byte_by_byte_is_found_once_complete() {
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n";
        let mut scan = HeadScan::default();
        for n in 1..head.len() {
            assert_eq!(
                scan.scan(&head[..n], &HeadLimits::default()),
                Ok(None),
                "{n}"
            );
        }
        assert_eq!(
            scan.scan(head, &HeadLimits::default()),
            Ok(Some(head.len()))
        );
    }

    #[test]
    fn limits_are_enforced_before_the_line_ends() {
        let limits = HeadLimits::default();
        let long = vec![b'a'; limits.max_request_line];
        let mut req = b"GET /".to_vec();
        req.extend_from_slice(&long);
        assert_eq!(scan_all(&req), Err(HttpError::UriTooLong));

        let mut h = b"GET / HTTP/1.1\r\nX: ".to_vec();
        h.extend_from_slice(&vec![b'a'; limits.max_header_line]);
        assert!(matches!(scan_all(&h), Err(HttpError::HeaderTooLarge(_))));
    }

    #[test]
    fn exact_line_limits() {
        let limits = HeadLimits::default();
        // A request line of exactly the limit (CRLF included) passes.
        let mut line = b"GET /".to_vec();
        line.resize(limits.max_request_line - b" HTTP/1.1\r\n".len(), b'a');
        line.extend_from_slice(b" HTTP/1.1\r\n");
        assert_eq!(line.len(), limits.max_request_line);
        let mut ok = line.clone();
        ok.extend_from_slice(b"Host: x\r\n\r\n");
        assert!(scan_all(&ok).unwrap().is_some());
        let mut over = b"GET /a".to_vec();
        over.extend_from_slice(&line[5..]);
        over.extend_from_slice(b"Host: x\r\n\r\n");
        assert_eq!(scan_all(&over), Err(HttpError::UriTooLong));
    }

    #[test]
    fn too_many_or_too_large_headers_are_431() {
        let mut h = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..101 {
            h.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        h.extend_from_slice(b"\r\n");
        assert!(matches!(scan_all(&h), Err(HttpError::HeaderTooLarge(_))));

        let mut h = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..5 {
            h.extend_from_slice(format!("X-{i}: ").as_bytes());
            h.extend_from_slice(&[b'v'; 7000]);
            h.extend_from_slice(b"\r\n");
        }
        h.extend_from_slice(b"\r\n");
        assert!(matches!(scan_all(&h), Err(HttpError::HeaderTooLarge(_))));
    }

    #[test]
    fn malformed_heads_are_400() {
        for bad in [
            &b"GET / HTTP/1.1\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\0y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\ry\r\n\r\n",
        ] {
            assert!(
                matches!(scan_all(bad), Err(HttpError::BadRequest(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\nHost: a\r\n\r\n",
        ] {
            assert!(
                matches!(parse_all(bad), Err(HttpError::BadRequest(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_all(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n").err(),
            Some(HttpError::VersionNotSupported)
        );
        assert!(matches!(
            parse_all(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(HttpError::NotImplemented(_))
        ));
    }

    #[test]
    fn transfer_encoding_rules() {
        assert!(matches!(
            parse_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::NotImplemented(_))
        ));
        let r = parse_all(
            b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
        assert!(!r.keep_alive);
        let r = parse_all(b"POST / HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        assert!(!r.expect_continue);
        let r = parse_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
        assert!(r.expect_continue);
    }

    /// Found by the `http_conn` fuzz target: a line over max_header_line
    /// that also takes the headers over max_headers_size got "a header
    /// line is too long" when it arrived whole, and "the headers are too
    /// large" (passed first) when it arrived a byte at a time; cut in
    /// pieces of 13, "too long" again (check_partial, seeing both passed,
    /// named the line's). The 431's text depended on the reads.
    #[test]
    fn the_limit_passed_first_is_reported_however_the_head_is_cut() {
        let limits = HeadLimits {
            max_request_line: 64,
            max_header_line: 48,
            max_headers_size: 160,
            max_headers: 6,
        };
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..4 {
            // 30 octets each: 120 of the 160.
            head.extend_from_slice(format!("X-{i}: {}\r\n", "a".repeat(23)).as_bytes());
        }
        head.extend_from_slice(format!("Y: {}\r\n\r\n", "b".repeat(60)).as_bytes());
        let want = Err(HttpError::HeaderTooLarge("the headers are too large"));
        assert_eq!(HeadScan::default().scan(&head, &limits), want);
        for piece in 1..=70 {
            let mut scan = HeadScan::default();
            let verdict = (piece..head.len() + piece)
                .step_by(piece)
                .map(|n| scan.scan(&head[..n.min(head.len())], &limits))
                .find(|r| *r != Ok(None));
            assert_eq!(verdict, Some(want), "in pieces of {piece}");
        }
    }

    #[test]
    fn same_content_length_twice_is_accepted() {
        let req = parse_all(
            b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
        )
        .unwrap();
        assert_eq!(req.body_kind, BodyKind::Length(2));
    }

    #[test]
    fn connection_semantics() {
        assert!(!parse_all(b"GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            parse_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            !parse_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            parse_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, Upgrade\r\n\r\n")
                .unwrap()
                .keep_alive
        );
    }

    proptest! {
        #[test]
        fn scanning_never_panics_and_agrees_with_itself(bytes in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..600) {
            let limits = HeadLimits { max_request_line: 64, max_header_line: 64, max_headers_size: 256, max_headers: 8 };
            let whole = HeadScan::default().scan(&bytes, &limits);
            // Scanning in two steps gives the same verdict as in one.
            let cut = cut.min(bytes.len());
            let mut scan = HeadScan::default();
            let first = scan.scan(&bytes[..cut], &limits);
            match first {
                Err(e) => prop_assert_eq!(whole, Err(e)),
                Ok(Some(n)) => prop_assert_eq!(whole, Ok(Some(n))),
                Ok(None) => prop_assert_eq!(scan.scan(&bytes, &limits), whole),
            }
            if let Ok(Some(n)) = whole {
                let mut req = Request::default();
                let _ = parse(&bytes[..n], &mut req);
            }
        }
    }
}
