//! One HTTP/1.x connection as a state machine, without I/O and without a
//! clock: bytes and the current time go in, steps come out.
//!
//! ```text
//!            bytes, now                     Step
//!  driver ───────────────▶ handle_input ──────────────▶ NeedMore | Continue
//!                          │ Idle → Head → Body → Idle   | Request | Error
//!  driver ◀── poll_timeout (deadline to wake at)
//!  driver ───▶ handle_timeout(now) ──▶ Expired::Quiet | Expired::Error(408)
//! ```
//!
//! Requests come out one at a time, in order; the driver answers each one
//! before it asks for the next, which is what makes pipelining correct.

use std::time::{Duration, Instant};

use crate::body::BodyDecoder;
use crate::error::HttpError;
use crate::head::{self, HeadLimits, HeadScan};
use crate::request::{BodyKind, Request};

/// Empty lines tolerated before a request line (RFC 9112 2.2 asks servers
/// to ignore at least one).
const MAX_LEADING_EMPTY_LINES: usize = 4;

/// The limits of a connection, each an option of the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Request head limits.
    pub head: HeadLimits,
    /// Largest request body, decided from Content-Length before reading it.
    pub max_body: usize,
    /// The whole request head must arrive within this, from its first byte
    /// (and, on a new connection, from the accept).
    pub head_timeout: Duration,
}

impl Default for ConnLimits {
    /// 1 MiB bodies (nginx's `client_max_body_size`); 30 s for a head.
    fn default() -> Self {
        ConnLimits {
            head: HeadLimits::default(),
            max_body: 1024 * 1024,
            head_timeout: Duration::from_secs(30),
        }
    }
}

/// What [`HttpConn::handle_input`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Everything given was consumed or is part of an incomplete head
    /// (present it again with more bytes behind it).
    NeedMore,
    /// The client waits for `100 Continue` before it sends the body.
    Continue,
    /// A whole request is in the [`Request`] passed in.
    Request,
    /// The request is refused: answer `error.status()` and close.
    Error(HttpError),
}

/// A deadline passed, as reported by [`HttpConn::handle_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A new connection sent nothing: close it without a word.
    Quiet,
    /// A head was arriving too slowly: answer it and close.
    Error(HttpError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Between requests (`fresh`: nothing received yet on this connection;
    /// `empty_lines`: those skipped so far before the next request line,
    /// kept across reads so the limit does not depend on them).
    Idle { fresh: bool, empty_lines: usize },
    /// A head is arriving, its first byte at `started`.
    Head { started: Instant },
    /// The body of the request in the [`Request`] is arriving.
    Body(BodyDecoder),
    /// An error was reported; nothing more is read.
    Failed,
}

/// The server side of one HTTP/1.x connection.
#[derive(Debug, Clone)]
pub struct HttpConn {
    limits: ConnLimits,
    state: State,
    scan: HeadScan,
    opened: Instant,
}

impl HttpConn {
    /// A connection accepted at `now`.
    pub fn new(limits: ConnLimits, now: Instant) -> Self {
        HttpConn {
            limits,
            state: State::Idle {
                fresh: true,
                empty_lines: 0,
            },
            scan: HeadScan::default(),
            opened: now,
        }
    }

    /// Is a request partly received?
    pub fn in_request(&self) -> bool {
        matches!(self.state, State::Head { .. } | State::Body(_))
    }

    /// Feed `input` (what follows everything consumed so far). Returns the
    /// bytes consumed and the step. On [`Step::Request`] the request is in
    /// `req`; call again with the rest of the input for the next one.
    pub fn handle_input(&mut self, input: &[u8], now: Instant, req: &mut Request) -> (usize, Step) {
        let mut used = 0;
        loop {
            match &mut self.state {
                State::Failed => return (input.len(), Step::NeedMore),
                State::Idle { empty_lines, .. } => {
                    while input[used..].starts_with(b"\r\n")
                        && *empty_lines < MAX_LEADING_EMPTY_LINES
                    {
                        used += 2;
                        *empty_lines += 1;
                    }
                    if used == input.len() || input[used..] == *b"\r" {
                        return (used, Step::NeedMore);
                    }
                    self.state = State::Head { started: now };
                }
                State::Head { .. } => {
                    let found = self.scan.scan(&input[used..], &self.limits.head);
                    let len = match found {
                        Ok(Some(len)) => len,
                        Ok(None) => return (used, Step::NeedMore),
                        Err(e) => return self.fail(input.len(), e),
                    };
                    self.scan.reset();
                    if let Err(e) = head::parse(&input[used..used + len], req) {
                        return self.fail(input.len(), e);
                    }
                    used += len;
                    let decoder = match req.body_kind {
                        BodyKind::None => {
                            self.state = State::Idle {
                                fresh: false,
                                empty_lines: 0,
                            };
                            return (used, Step::Request);
                        }
                        BodyKind::Length(n) if n > self.limits.max_body as u64 => {
                            return self.fail(input.len(), HttpError::BodyTooLarge);
                        }
                        BodyKind::Length(n) => BodyDecoder::Length(n),
                        BodyKind::Chunked => BodyDecoder::chunked(),
                    };
                    self.state = State::Body(decoder);
                    if req.expect_continue {
                        return (used, Step::Continue);
                    }
                }
                State::Body(decoder) => {
                    match decoder.decode(&input[used..], &mut req.body, self.limits.max_body) {
                        Ok((n, done)) => {
                            used += n;
                            if done {
                                self.state = State::Idle {
                                    fresh: false,
                                    empty_lines: 0,
                                };
                                return (used, Step::Request);
                            }
                            return (used, Step::NeedMore);
                        }
                        Err(e) => return self.fail(input.len(), e),
                    }
                }
            }
        }
    }

    fn fail(&mut self, len: usize, e: HttpError) -> (usize, Step) {
        self.state = State::Failed;
        (len, Step::Error(e))
    }

    /// When [`HttpConn::handle_timeout`] must next be called, if ever.
    /// Idle keep-alive connections and slow bodies are left to the
    /// listener's `idle_timeout`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Idle { fresh: true, .. } => Some(self.opened + self.limits.head_timeout),
            State::Head { started } => Some(started + self.limits.head_timeout),
            _ => None,
        }
    }

    /// The clock reached `now`: has a deadline passed?
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Expired> {
        let deadline = self.poll_timeout()?;
        if now < deadline {
            return None;
        }
        let fresh = matches!(self.state, State::Idle { fresh: true, .. });
        self.state = State::Failed;
        Some(if fresh {
            Expired::Quiet
        } else {
            Expired::Error(HttpError::Timeout)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        conn: &mut HttpConn,
        input: &[u8],
        now: Instant,
    ) -> Vec<Result<(String, Vec<u8>), HttpError>> {
        let mut req = Request::default();
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let (n, step) = conn.handle_input(&input[pos..], now, &mut req);
            pos += n;
            match step {
                Step::Request => out.push(Ok((req.target().to_string(), req.body().to_vec()))),
                Step::Error(e) => {
                    out.push(Err(e));
                    return out;
                }
                Step::Continue => {}
                Step::NeedMore => return out,
            }
        }
    }

    #[test]
    fn pipelined_requests_come_out_in_order_with_their_bodies() {
        let now = Instant::now();
        let mut c = HttpConn::new(ConnLimits::default(), now);
        let input = b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n\
POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
POST /3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n\
\r\nGET /4 HTTP/1.1\r\nHost: x\r\n\r\n";
        let got = run(&mut c, input, now);
        let want: Vec<Result<(String, Vec<u8>), HttpError>> = vec![
            Ok(("/1".into(), vec![])),
            Ok(("/2".into(), b"abc".to_vec())),
            Ok(("/3".into(), b"de".to_vec())),
            Ok(("/4".into(), vec![])),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn body_over_the_limit_is_refused_from_content_length() {
        let now = Instant::now();
        let mut c = HttpConn::new(ConnLimits::default(), now);
        let got = run(
            &mut c,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n",
            now,
        );
        assert_eq!(got, vec![Err(HttpError::BodyTooLarge)]);
    }

    #[test]
    fn a_slow_head_times_out_with_408_and_a_silent_connection_quietly() {
        let t0 = Instant::now();
        let limits = ConnLimits::default();
        let mut silent = HttpConn::new(limits, t0);
        assert_eq!(silent.poll_timeout(), Some(t0 + limits.head_timeout));
        assert_eq!(silent.handle_timeout(t0 + Duration::from_secs(29)), None);
        assert_eq!(
            silent.handle_timeout(t0 + limits.head_timeout),
            Some(Expired::Quiet)
        );

        let mut slow = HttpConn::new(limits, t0);
        let t1 = t0 + Duration::from_secs(10);
        let mut req = Request::default();
        assert_eq!(
            slow.handle_input(b"GET / HTTP/1.1\r\n", t1, &mut req),
            (0, Step::NeedMore)
        );
        assert_eq!(slow.poll_timeout(), Some(t1 + limits.head_timeout));
        assert_eq!(slow.handle_timeout(t1 + Duration::from_secs(29)), None);
        assert_eq!(
            slow.handle_timeout(t1 + limits.head_timeout),
            Some(Expired::Error(HttpError::Timeout))
        );
    }

    #[test]
    fn keep_alive_idle_has_no_deadline_of_its_own() {
        let t0 = Instant::now();
        let mut c = HttpConn::new(ConnLimits::default(), t0);
        let got = run(&mut c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", t0);
        assert_eq!(got.len(), 1);
        assert_eq!(c.poll_timeout(), None);
    }

    /// Found by the `http_conn` fuzz target: the empty lines skipped
    /// before a request line were counted per call, so six of them sent
    /// in one read made a 400 (the fifth is taken for the request line)
    /// and sent a few per read were all skipped.
    #[test]
    fn empty_lines_before_a_request_count_across_reads() {
        let now = Instant::now();
        let input = b"\r\n\r\n\r\n\r\n\r\n\r\n/";
        let mut whole = HttpConn::new(ConnLimits::default(), now);
        let want = run(&mut whole, input, now);
        assert!(
            matches!(want[..], [Err(HttpError::BadRequest(_))]),
            "{want:?}"
        );
        let mut split = HttpConn::new(ConnLimits::default(), now);
        let mut req = Request::default();
        let mut got = Vec::new();
        let mut inbuf = Vec::new();
        for &b in input {
            inbuf.push(b);
            let (n, step) = split.handle_input(&inbuf, now, &mut req);
            inbuf.drain(..n);
            if let Step::Error(e) = step {
                got.push(Err(e));
            }
        }
        assert_eq!(got, want);
        // Four are skipped, wherever the reads end.
        let mut c = HttpConn::new(ConnLimits::default(), now);
        for _ in 0..4 {
            assert_eq!(c.handle_input(b"\r\n", now, &mut req), (2, Step::NeedMore));
        }
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            c.handle_input(get, now, &mut req),
            (get.len(), Step::Request)
        );
    }

    #[test]
    fn nothing_is_read_after_an_error() {
        let now = Instant::now();
        let mut c = HttpConn::new(ConnLimits::default(), now);
        let got = run(
            &mut c,
            b"GET / HTTP/1.1\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            now,
        );
        assert!(matches!(got[..], [Err(HttpError::BadRequest(_))]));
        assert_eq!(
            run(&mut c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", now),
            vec![]
        );
    }
}
