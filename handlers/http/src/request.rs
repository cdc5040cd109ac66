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
    /// Method and target, checked as UTF-8 once when parsed (the accessors
    /// slice it without validating again).
    pub(crate) line: String,
    pub(crate) method_len: usize,
    /// The path within `line` (after any authority, before any query).
    pub(crate) path: Range<usize>,
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
        self.line.clear();
        self.headers.clear();
        if self.body.capacity() > 64 * 1024 {
            // A large body must not pin its size for the connection's life.
            self.body = Vec::new();
        }
        self.body.clear();
        self.body_kind = BodyKind::None;
        self.keep_alive = false;
        self.expect_continue = false;
    }

    /// Set method and target (called by the parser).
    pub(crate) fn set_line(&mut self, method: &str, target: &str) {
        self.line.clear();
        self.line.push_str(method);
        self.line.push_str(target);
        self.method_len = method.len();
        let start = self.method_len + (target.len() - strip_authority(target).len());
        let end = self.line[start..]
            .find('?')
            .map_or(self.line.len(), |q| start + q);
        self.path = start..end;
    }

    /// The method (`GET`, `POST`, ...), case-sensitive as sent.
    pub fn method(&self) -> &str {
        &self.line[..self.method_len]
    }

    /// The request target as sent (path and query, still percent-encoded).
    pub fn target(&self) -> &str {
        &self.line[self.method_len..]
    }

    /// The path of the target, without the query (still percent-encoded).
    /// An absolute-form target (`http://host/path`) gives its path.
    pub fn path(&self) -> &str {
        let p = &self.line[self.path.clone()];
        if p.is_empty() {
            "/"
        } else {
            p
        }
    }

    /// The query of the target (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.line.get(self.path.end..)?.strip_prefix('?')
    }

    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub fn minor_version(&self) -> u8 {
        self.minor
    }

    /// The first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| self.head[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &self.head[v.clone()])
    }

    /// Every header, in the order received.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(n, v)| {
            // httparse accepts only token characters (ASCII) in names.
            let name = std::str::from_utf8(&self.head[n.clone()]).unwrap_or("");
            (name, &self.head[v.clone()])
        })
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

/// `http://host:port/p?q` -> `/p?q`, a suffix of `target` (`http://host`
/// gives ``, read as `/`); origin-form targets are unchanged.
fn strip_authority(target: &str) -> &str {
    if target.starts_with('/') {
        return target;
    }
    for scheme in ["http://", "https://"] {
        if target.len() > scheme.len()
            && target.is_char_boundary(scheme.len())
            && target[..scheme.len()].eq_ignore_ascii_case(scheme)
        {
            let rest = &target[scheme.len()..];
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            return &rest[end..];
        }
    }
    target
}
