//! Peer faults and the reply each one puts on the wire.
//!
//! Every way a request can be refused before a route or a file sees it is
//! one variant here, and [`HttpError::status`] is the status it is
//! answered with. All of them close the connection after the reply: once
//! the framing of one request is in doubt, the next one cannot be trusted
//! (the request-smuggling rule).

use std::fmt;

use crate::status::Status;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed bytes or contradicting framing headers (400).
    BadRequest(&'static str),
    /// The request line is longer than `max_request_line` (414).
    UriTooLong,
    /// A header line, all headers or their count over the limit (431).
    HeaderTooLarge(&'static str),
    /// The body is larger than `max_body` (413).
    BodyTooLarge,
    /// The head did not arrive within `head_timeout` (408).
    Timeout,
    /// A transfer coding we do not decode (501).
    NotImplemented(&'static str),
    /// An HTTP version other than 1.0 and 1.1 (505).
    VersionNotSupported,
    /// An `Expect` other than `100-continue` (417).
    ExpectationFailed,
}

impl HttpError {
    /// The status answered.
    pub fn status(self) -> Status {
        match self {
            HttpError::BadRequest(_) => Status::BAD_REQUEST,
            HttpError::UriTooLong => Status::URI_TOO_LONG,
            HttpError::HeaderTooLarge(_) => Status::HEADER_FIELDS_TOO_LARGE,
            HttpError::BodyTooLarge => Status::PAYLOAD_TOO_LARGE,
            HttpError::Timeout => Status::REQUEST_TIMEOUT,
            HttpError::NotImplemented(_) => Status::NOT_IMPLEMENTED,
            HttpError::VersionNotSupported => Status::VERSION_NOT_SUPPORTED,
            HttpError::ExpectationFailed => Status::EXPECTATION_FAILED,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::BadRequest(why) => write!(f, "bad request: {why}"),
            HttpError::UriTooLong => f.write_str("request line too long"),
            HttpError::HeaderTooLarge(why) => f.write_str(why),
            HttpError::BodyTooLarge => f.write_str("request body too large"),
            HttpError::Timeout => f.write_str("request head not received in time"),
            HttpError::NotImplemented(why) => write!(f, "not implemented: {why}"),
            HttpError::VersionNotSupported => f.write_str("HTTP version not supported"),
            HttpError::ExpectationFailed => f.write_str("unsupported Expect"),
        }
    }
}
