//! `HttpConn`, the HTTP/1.x connection machine, driven the way
//! `handlers/http/src/session.rs` drives it: bytes that were not consumed
//! are kept and presented again with the next read behind them, and each
//! request is answered (here by `file_response` over a fixed file, which
//! reads the Range and conditional headers) before the next is asked for.
//!
//! Input: `flags | n | n piece lengths | stream` (see `src/lib.rs`);
//! flags bit 0 picks small limits, so the limit checks are reached.
//!
//! Checks:
//! - nothing panics; `consumed <= input.len()`; a request or a 100 step
//!   consumes something, and `NeedMore` means no progress is possible
//!   without more bytes;
//! - a body is never over `max_body`, and a Content-Length body is exactly
//!   that long;
//! - the stream in one piece and the same stream in the pieces chosen give
//!   the same steps, the same requests and the same state at the end;
//! - the deadline of `poll_timeout` is the one `handle_timeout` keeps, and
//!   nothing is read after it expired;
//! - a response never sends file bytes outside the file, and a 206 of one
//!   range carries exactly the bytes its Content-Range names.
#![no_main]

use std::fs::{File, Metadata};
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use gaidaros_fuzz::Input;
use gaidaros_http::{
    file_response, route_path, Body, ConnLimits, HeadLimits, HttpConn, HttpError, Part, Request,
    Response, Step,
};
use libfuzzer_sys::fuzz_target;

/// What the driver saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Continue,
    Request(Seen),
    Error(HttpError),
}

/// A request as a route sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    target: String,
    path: String,
    query: Option<String>,
    minor: u8,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    keep_alive: bool,
}

/// The file the responses are made of: larger than `SMALL_BODY` (16 KiB),
/// so a whole-file answer stays a file range and small ranges are read.
struct Served {
    file: Arc<File>,
    meta: Metadata,
    data: Vec<u8>,
}

fn served() -> &'static Served {
    static SERVED: OnceLock<Served> = OnceLock::new();
    SERVED.get_or_init(|| {
        let data: Vec<u8> = (0..40_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let path = std::env::temp_dir().join(format!("gaidaros-fuzz-{}.bin", std::process::id()));
        let mut f = File::create(&path).expect("create the served file");
        f.write_all(&data).expect("write the served file");
        let file = File::open(&path).expect("open the served file");
        // Open from here on; nothing is left behind.
        let _ = std::fs::remove_file(&path);
        let meta = file.metadata().expect("stat the served file");
        Served {
            file: Arc::new(file),
            meta,
            data,
        }
    })
}

fn now() -> Instant {
    static NOW: OnceLock<Instant> = OnceLock::new();
    *NOW.get_or_init(Instant::now)
}

fn limits(flags: u8) -> ConnLimits {
    if flags & 1 == 0 {
        return ConnLimits::default();
    }
    ConnLimits {
        head: HeadLimits {
            max_request_line: 64,
            max_header_line: 48,
            max_headers_size: 160,
            max_headers: 6,
        },
        max_body: 96,
        head_timeout: Duration::from_secs(30),
    }
}

/// The session's part: buffer, machine, request.
struct Driver {
    limits: ConnLimits,
    conn: HttpConn,
    req: Request,
    inbuf: Vec<u8>,
    seen: Vec<Outcome>,
    failed: bool,
}

impl Driver {
    fn new(limits: ConnLimits) -> Driver {
        Driver {
            limits,
            conn: HttpConn::new(limits, now()),
            req: Request::default(),
            inbuf: Vec::new(),
            seen: Vec::new(),
            failed: false,
        }
    }

    /// One read: what is left of the previous ones, then `piece`.
    fn feed(&mut self, piece: &[u8], answer: bool) {
        if self.failed {
            // The session closes after an error reply.
            return;
        }
        self.inbuf.extend_from_slice(piece);
        let mut pos = 0;
        loop {
            let input = &self.inbuf[pos..];
            let (n, step) = self.conn.handle_input(input, now(), &mut self.req);
            assert!(n <= input.len(), "consumed {n} of {}", input.len());
            pos += n;
            match step {
                Step::NeedMore => {
                    // Presented again without new bytes, nothing moves.
                    let mut conn = self.conn.clone();
                    let mut req = self.req.clone();
                    let again = conn.handle_input(&self.inbuf[pos..], now(), &mut req);
                    assert_eq!(again, (0, Step::NeedMore), "progress without new bytes");
                    break;
                }
                Step::Continue => {
                    assert!(n > 0, "100 Continue without consuming the head");
                    self.seen.push(Outcome::Continue);
                }
                Step::Request => {
                    assert!(n > 0, "a request without consuming it");
                    let seen = self.check_request();
                    if answer {
                        answer_with_file(&self.req);
                    }
                    self.seen.push(Outcome::Request(seen));
                }
                Step::Error(e) => {
                    assert_eq!(n, input.len(), "an error consumes what is left");
                    let _ = e.status();
                    self.seen.push(Outcome::Error(e));
                    self.failed = true;
                    break;
                }
            }
        }
        self.inbuf.drain(..pos);
    }

    fn check_request(&self) -> Seen {
        let req = &self.req;
        assert!(
            req.body().len() <= self.limits.max_body,
            "a body of {} over max_body {}",
            req.body().len(),
            self.limits.max_body
        );
        if req.header("transfer-encoding").is_none() {
            if let Some(v) = req.header("content-length") {
                let v = std::str::from_utf8(v).expect("a Content-Length taken is ASCII");
                let n: usize = v
                    .trim()
                    .parse()
                    .expect("a Content-Length taken is a number");
                assert_eq!(req.body().len(), n, "a body as long as its Content-Length");
            }
        } else {
            assert!(
                req.header("content-length").is_none(),
                "both framings taken"
            );
        }
        assert!(!req.method().is_empty());
        assert!(req.minor_version() <= 1);
        Seen {
            method: req.method().to_string(),
            target: req.target().to_string(),
            path: req.path().to_string(),
            query: req.query().map(str::to_string),
            minor: req.minor_version(),
            headers: req
                .headers()
                .map(|(n, v)| {
                    assert!(!n.is_empty(), "a header without a name");
                    (n.to_string(), v.to_vec())
                })
                .collect(),
            body: req.body().to_vec(),
            keep_alive: req.keep_alive(),
        }
    }
}

/// Answer as the file server would, and check the response's ranges.
fn answer_with_file(req: &Request) {
    let _ = route_path(req.path());
    let s = served();
    let resp = file_response(req, s.file.clone(), &s.meta, "application/octet-stream", 4);
    let size = s.data.len() as u64;
    let _ = resp.body.len();
    match &resp.body {
        Body::File { parts, .. } => {
            for part in parts {
                if let Part::File { offset, len } = part {
                    assert!(*len > 0, "an empty file range");
                    let end = offset.checked_add(*len).expect("range end overflows");
                    assert!(end <= size, "bytes {offset}+{len} of a {size}-byte file");
                }
            }
        }
        Body::Owned(bytes) if resp.status.0 == 206 => {
            if let Some((a, b)) = single_content_range(&resp, size) {
                assert_eq!(
                    &bytes[..],
                    &s.data[a as usize..=b as usize],
                    "206 bytes {a}-{b}"
                );
            }
        }
        _ => {}
    }
    match resp.status.0 {
        206 => assert!(
            resp.headers().any(|(n, _)| n == "Content-Range") || multipart(&resp),
            "206 without Content-Range"
        ),
        416 => assert!(resp
            .headers()
            .any(|(n, v)| n == "Content-Range" && v == format!("bytes */{size}"))),
        _ => {}
    }
}

fn multipart(resp: &Response) -> bool {
    matches!(&resp.body, Body::File { parts, .. } if parts.len() > 1)
        || matches!(&resp.body, Body::Owned(b) if b.starts_with(b"\r\n--"))
}

/// `bytes a-b/size` of a one-range 206.
fn single_content_range(resp: &Response, size: u64) -> Option<(u64, u64)> {
    let (_, v) = resp.headers().find(|(n, _)| *n == "Content-Range")?;
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    assert_eq!(total, size.to_string());
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    assert!(a <= b && b < size, "Content-Range {v}");
    Some((a, b))
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data, 1) else {
        return;
    };
    let limits = limits(input.fixed[0]);

    let mut whole = Driver::new(limits);
    whole.feed(input.stream, true);

    let mut split = Driver::new(limits);
    for piece in input.pieces() {
        split.feed(piece, false);
    }
    assert_eq!(whole.seen, split.seen, "the same bytes in other reads");
    assert_eq!(whole.conn.in_request(), split.conn.in_request());
    assert_eq!(whole.conn.poll_timeout(), split.conn.poll_timeout());

    // The deadline is kept to the nanosecond, and ends the reading.
    let conn = &mut split.conn;
    match conn.poll_timeout() {
        Some(deadline) => {
            let before = deadline - Duration::from_nanos(1);
            assert_eq!(conn.handle_timeout(before), None, "expired early");
            assert!(conn.handle_timeout(deadline).is_some(), "not expired");
            assert_eq!(conn.poll_timeout(), None, "a deadline after expiring");
            let mut req = Request::default();
            let rest = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
            assert_eq!(
                conn.handle_input(rest, deadline, &mut req),
                (rest.len(), Step::NeedMore),
                "read after expiring"
            );
        }
        None => {
            let later = now() + Duration::from_secs(3600);
            assert_eq!(conn.handle_timeout(later), None);
        }
    }
});
