//! A parsed request, as routes see it.
//!
//! The head's bytes are kept in one buffer and every field is a range into
//! it, so a connection reuses the same allocations request after request.

use std::net::SocketAddr;
use std::ops::Range;

/// How the body of a request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyKind {
    /// No body.
    #[default]
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// One request: its head and its whole body (at most `max_body` bytes).
#[derive(Debug, Default, Clone)]
pub struct Request {
    pub(crate) head: Vec<u8>,
    pub(crate) method: Range<usize>,
    pub(crate) target: Range<usize>,
    pub(crate) minor: u8,
    pub(crate) headers: Vec<(Range<usize>, Range<usize>)>,
    pub(crate) body: Vec<u8>,
    pub(crate) body_kind: BodyKind,
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
    pub(crate) peer: Option<SocketAddr>,
}

impl Request {
    pub(crate) fn clear(&mut self) {
        self.head.clear();
        self.headers.clear();
        self.body.clear();
        self.body_kind = BodyKind::None;
        self.keep_alive = false;
        self.expect_continue = false;
    }

    fn text(&self, r: &Range<usize>) -> &str {
        // Method and target were checked to be UTF-8 when parsed.
        std::str::from_utf8(&self.head[r.clone()]).unwrap_or("")
    }

    /// The method (`GET`, `POST`, ...), case-sensitive as sent.
    pub fn method(&self) -> &str {
        self.text(&self.method)
    }

    /// The request target as sent (path and query, still percent-encoded).
    pub fn target(&self) -> &str {
        self.text(&self.target)
    }

    /// The path of the target, without the query (still percent-encoded).
    /// An absolute-form target (`http://host/path`) gives its path.
    pub fn path(&self) -> &str {
        let target = self.target();
        let target = strip_authority(target);
        target.split_once('?').map_or(target, |(p, _)| p)
    }

    /// The query of the target (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, q)| q)
    }

    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub fn minor_version(&self) -> u8 {
        self.minor
    }

    /// The first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every header, in the order received.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (self.text(n), &self.head[v.clone()]))
    }

    /// The body (decoded from chunked when it was sent so).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Will the connection stay open after this request's response?
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// The client's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }
}

/// `http://host:port/p?q` -> `/p?q`; origin-form targets are unchanged.
fn strip_authority(target: &str) -> &str {
    for scheme in ["http://", "https://"] {
        if target.len() > scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &target[scheme.len()..];
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    target
}
