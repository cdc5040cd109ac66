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
//! dispatch mode can run it: inline on the loop, on another thread or in
//! another process.

use std::borrow::Cow;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};

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
    match guard(|| service.end_request(buf)) {
        Ok(Some(0)) => Err(ServiceError::Malformed("empty frame".into())),
        Ok(Some(len)) if len > max_request => Err(ServiceError::TooLarge { limit: max_request }),
        Ok(Some(len)) => Ok(Some(len.min(buf.len()))),
        Ok(None) if buf.len() >= max_request => Err(ServiceError::TooLarge { limit: max_request }),
        other => other,
    }
}

/// One complete frame through split_request, decode, handle and encode, as
/// the loop dispatches it: the response is appended to `out`. On error
/// (a panic included) `out` is left as it was and the caller sends
/// [`reply_error`] instead.
pub fn respond(
    service: &dyn Service,
    frame: &[u8],
    out: &mut Vec<u8>,
) -> Result<Keep, ServiceError> {
    let start = out.len();
    let result = guard(|| {
        let request = service.split_request(frame);
        let keep = service
            .decode(request)
            .and_then(|req| service.handle(&req, out))?;
        service.encode(out, start);
        Ok(keep)
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
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
    panic::catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(ServiceError::Internal("handler panicked".into())))
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
