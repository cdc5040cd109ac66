//! Services: the request/response kind of handler.
//!
//! A service is a pure function of bytes and shared state. The loop reads
//! into its own buffers and asks the service two framing questions (is a
//! complete request at the front of the buffer, and how long is it), then
//! hands each complete request to [`Service::handle`], which appends the
//! response to an output buffer the loop owns. Pipelined requests are handled
//! in order and their responses leave in that order.
//!
//! ```text
//!   socket ──read──► loop buffer ──end_request──► frame ──split_request──►
//!   decode ──► handle ──► encode ──► output queue ──write──► socket
//! ```
//!
//! Because a service owns no socket and no per-connection state, every
//! execution mode (`-X`) can run it: inline on the loop, on another thread or in
//! another process.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;

/// The future [`Service::handle_async`] returns.
pub type HandleFuture<'a> = Pin<Box<dyn Future<Output = Result<Keep, ServiceError>> + Send + 'a>>;

/// What a service wants done with the connection after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Keep the connection open for further requests.
    Alive,
    /// Close the connection once the response has been written.
    Close,
}

/// Why a request could not be answered normally.
///
/// Each variant reaches the peer through [`Service::error_reply`], after which
/// the loop closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceError {
    /// The request grew beyond the listener's `max_request` without being
    /// complete (detected by the loop, not the service).
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The peer sent bytes that are not a request of this service.
    Malformed(String),
    /// The service failed on a well-formed request.
    Internal(String),
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::TooLarge { limit } => {
                write!(f, "request too large (limit {limit} bytes)")
            }
            ServiceError::Malformed(why) => write!(f, "malformed request: {why}"),
            ServiceError::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

impl std::error::Error for ServiceError {}

/// The request/response handler API.
///
/// Only [`Service::handle`] is required; the default framing is one
/// LF-terminated line, and decode/encode default to the identity.
pub trait Service: Send + Sync + 'static {
    /// Framing, step one: is there a complete request at the front of `buf`?
    /// Returns its length in bytes (the whole frame, terminator included),
    /// `Ok(None)` when more bytes are needed, or an error when the bytes can
    /// never become a request. A returned length of 0 is treated as malformed.
    fn end_request(&self, buf: &[u8]) -> Result<Option<usize>, ServiceError> {
        Ok(line_end(buf))
    }

    /// Framing, step two: the request inside a complete frame (for example
    /// without its terminator). The default keeps the whole frame.
    fn split_request<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        frame
    }

    /// Optional transformation of the request before `handle` (for example
    /// decompression). The default borrows the bytes unchanged.
    fn decode<'a>(&self, request: &'a [u8]) -> Result<Cow<'a, [u8]>, ServiceError> {
        Ok(Cow::Borrowed(request))
    }

    /// Handle one request: append the response to `response` and say whether
    /// the connection stays open. On `Err`, whatever was appended is
    /// discarded and the error reply is sent instead, then the connection is
    /// closed.
    fn handle(&self, request: &[u8], response: &mut Vec<u8>) -> Result<Keep, ServiceError>;

    /// The asynchronous form of [`Service::handle`], used by the green
    /// thread handler types (`-X gthread`, `-X gthreadpool`): a service that
    /// waits (on a timer, on another server) overrides it so that waiting
    /// holds a task, not a thread. The default runs `handle`.
    fn handle_async<'a>(
        &'a self,
        request: &'a [u8],
        response: &'a mut Vec<u8>,
    ) -> HandleFuture<'a> {
        Box::pin(std::future::ready(self.handle(request, response)))
    }

    /// Optional transformation of the response bytes `response[start..]`
    /// after `handle` (for example compression). The default leaves them.
    fn encode(&self, response: &mut Vec<u8>, start: usize) {
        let _ = (response, start);
    }

    /// The bytes sent to the peer for an error, before the connection is
    /// closed. The default is one line: `ERR <error>\n`.
    fn error_reply(&self, error: &ServiceError, response: &mut Vec<u8>) {
        response.extend_from_slice(format!("ERR {error}\n").as_bytes());
    }
}

/// Length of the first LF-terminated line in `buf`, LF included.
pub fn line_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', buf).map(|i| i + 1)
}

/// How [`serve_batch`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchEnd {
    /// No complete request is left; the unconsumed bytes are the start of
    /// the next one.
    NeedMore,
    /// The `stop` callback asked to pause after a response.
    Stopped,
    /// The service answered [`Keep::Close`]: nothing after that request is
    /// read.
    Close,
    /// A request failed: send the error reply and close. Every byte counts
    /// as consumed.
    Error(ServiceError),
}

/// The result of [`serve_batch`].
#[derive(Debug, PartialEq, Eq)]
pub struct Batch {
    /// Bytes of the buffer used up by the requests served.
    pub consumed: usize,
    /// Why the batch ended.
    pub end: BatchEnd,
}

/// Run the complete requests at the front of `buf` through `service`,
/// appending their responses to `out` in order: the loop's whole service
/// path for the bytes of one read.
///
/// Framing follows [`next_frame`], handling [`respond`]. After each
/// response `stop(out)` may end the batch (the loop uses it for the output
/// cap and for `-K`, which writes every response on its own). One panic
/// guard covers the batch: a panic fails the request that raised it, the
/// responses before it stay, its partial response is removed.
pub fn serve_batch(
    service: &dyn Service,
    buf: &[u8],
    max_request: usize,
    out: &mut Vec<u8>,
    mut stop: impl FnMut(&mut Vec<u8>) -> bool,
) -> Batch {
    // Where the current request's response starts.
    let mut mark = out.len();
    let run = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut pos = 0;
        while pos < buf.len() {
            mark = out.len();
            let rest = &buf[pos..];
            let len = match frame_len(service.end_request(rest), rest.len(), max_request) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    return Batch {
                        consumed: buf.len(),
                        end: BatchEnd::Error(e),
                    }
                }
            };
            pos += len;
            match respond_one(service, &rest[..len], out, mark) {
                Ok(Keep::Alive) => {}
                Ok(Keep::Close) => {
                    return Batch {
                        consumed: pos,
                        end: BatchEnd::Close,
                    }
                }
                Err(e) => {
                    out.truncate(mark);
                    return Batch {
                        consumed: buf.len(),
                        end: BatchEnd::Error(e),
                    };
                }
            }
            if stop(out) {
                return Batch {
                    consumed: pos,
                    end: BatchEnd::Stopped,
                };
            }
        }
        Batch {
            consumed: pos,
            end: BatchEnd::NeedMore,
        }
    }));
    run.unwrap_or_else(|_| {
        out.truncate(mark);
        Batch {
            consumed: buf.len(),
            end: BatchEnd::Error(panicked()),
        }
    })
}

/// Framing as the loop runs it: the length of the complete request at the
/// front of `buf`, `Ok(None)` when more bytes are needed, or an error when
/// the bytes can never become a request of at most `max_request` bytes (a
/// zero-length frame is malformed). Panics in [`Service::end_request`] are
/// contained and become [`ServiceError::Internal`].
pub fn next_frame(
    service: &dyn Service,
    buf: &[u8],
    max_request: usize,
) -> Result<Option<usize>, ServiceError> {
    guard(|| frame_len(service.end_request(buf), buf.len(), max_request))
}

/// The framing rules around [`Service::end_request`]'s answer.
fn frame_len(
    framed: Result<Option<usize>, ServiceError>,
    available: usize,
    max_request: usize,
) -> Result<Option<usize>, ServiceError> {
    match framed {
        Ok(Some(0)) => Err(ServiceError::Malformed("empty frame".into())),
        Ok(Some(len)) if len > max_request => Err(ServiceError::TooLarge { limit: max_request }),
        Ok(Some(len)) => Ok(Some(len.min(available))),
        Ok(None) if available >= max_request => Err(ServiceError::TooLarge { limit: max_request }),
        other => other,
    }
}

/// One complete frame through split_request, decode, handle and encode, as
/// the loop hands it on: the response is appended to `out`. On error
/// (a panic included) `out` is left as it was and the caller sends
/// [`reply_error`] instead.
pub fn respond(
    service: &dyn Service,
    frame: &[u8],
    out: &mut Vec<u8>,
) -> Result<Keep, ServiceError> {
    let start = out.len();
    let result = guard(|| respond_one(service, frame, out, start));
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// split_request, decode, handle, encode; the response starts at `start`.
#[inline]
fn respond_one(
    service: &dyn Service,
    frame: &[u8],
    out: &mut Vec<u8>,
    start: usize,
) -> Result<Keep, ServiceError> {
    let request = service.split_request(frame);
    let keep = service
        .decode(request)
        .and_then(|req| service.handle(&req, out))?;
    service.encode(out, start);
    Ok(keep)
}

fn panicked() -> ServiceError {
    ServiceError::Internal("handler panicked".into())
}

/// Append the service's error reply for `error` to `out`; a panicking
/// error reply appends nothing and returns false.
pub fn reply_error(service: &dyn Service, error: &ServiceError, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let ok = guard(|| {
        service.error_reply(error, out);
        Ok(())
    })
    .is_ok();
    if !ok {
        out.truncate(start);
    }
    ok
}

/// Run service code; a panic becomes an internal error for this request
/// (the panic message goes to stderr through the panic hook), so one bad
/// request cannot take the loop and its other connections down.
fn guard<T>(f: impl FnOnce() -> Result<T, ServiceError>) -> Result<T, ServiceError> {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err(panicked()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Service for Echo {
        fn handle(&self, request: &[u8], response: &mut Vec<u8>) -> Result<Keep, ServiceError> {
            response.extend_from_slice(request);
            Ok(Keep::Alive)
        }
    }

    /// Echoes lines; `close` ends the connection, `boom` panics, `bad`
    /// fails.
    struct Picky;
    impl Service for Picky {
        fn handle(&self, request: &[u8], response: &mut Vec<u8>) -> Result<Keep, ServiceError> {
            response.extend_from_slice(request);
            match request {
                b"close\n" => Ok(Keep::Close),
                b"boom\n" => panic!("boom"),
                b"bad\n" => Err(ServiceError::Malformed("bad".into())),
                _ => Ok(Keep::Alive),
            }
        }
    }

    fn batch(buf: &[u8], stop_after: usize) -> (Batch, Vec<u8>) {
        let mut out = b"old|".to_vec();
        let mut n = 0;
        let b = serve_batch(&Picky, buf, 16, &mut out, |_| {
            n += 1;
            n >= stop_after
        });
        (b, out)
    }

    #[test]
    fn a_batch_serves_every_complete_request_in_order() {
        let (b, out) = batch(b"a\nbb\ncc", usize::MAX);
        assert_eq!(
            b,
            Batch {
                consumed: 5,
                end: BatchEnd::NeedMore
            }
        );
        assert_eq!(out, b"old|a\nbb\n");
    }

    #[test]
    fn a_batch_stops_when_asked_and_at_close() {
        let (b, out) = batch(b"a\nb\nc\n", 2);
        assert_eq!(
            b,
            Batch {
                consumed: 4,
                end: BatchEnd::Stopped
            }
        );
        assert_eq!(out, b"old|a\nb\n");
        let (b, out) = batch(b"a\nclose\nc\n", usize::MAX);
        assert_eq!(
            b,
            Batch {
                consumed: 8,
                end: BatchEnd::Close
            }
        );
        assert_eq!(out, b"old|a\nclose\n");
    }

    #[test]
    fn a_panic_fails_its_request_and_keeps_the_earlier_responses() {
        let (b, out) = batch(b"a\nboom\nc\n", usize::MAX);
        assert_eq!(b.consumed, 9);
        assert!(matches!(b.end, BatchEnd::Error(ServiceError::Internal(_))));
        assert_eq!(out, b"old|a\n");
    }

    #[test]
    fn errors_and_oversized_requests_end_the_batch() {
        let (b, out) = batch(b"a\nbad\nc\n", usize::MAX);
        assert!(matches!(b.end, BatchEnd::Error(ServiceError::Malformed(_))));
        assert_eq!(out, b"old|a\n");
        let (b, out) = batch(b"a\n0123456789abcdefXYZ", usize::MAX);
        assert_eq!(b.end, BatchEnd::Error(ServiceError::TooLarge { limit: 16 }));
        assert_eq!(out, b"old|a\n");
    }

    #[test]
    fn default_framing_is_one_lf_terminated_line() {
        assert_eq!(Echo.end_request(b"ab"), Ok(None));
        assert_eq!(Echo.end_request(b"ab\ncd\n"), Ok(Some(3)));
        assert_eq!(Echo.end_request(b"\n"), Ok(Some(1)));
    }

    #[test]
    fn default_error_reply_names_the_error() {
        let mut out = Vec::new();
        Echo.error_reply(&ServiceError::TooLarge { limit: 10 }, &mut out);
        assert_eq!(out, b"ERR request too large (limit 10 bytes)\n");
    }
}
