//! Responses: what routes and the file server return, and how a head is
//! written.

use std::borrow::Cow;
use std::fs::File;
use std::sync::Arc;

use crate::status::Status;

/// A piece of a file body: bytes of our own (multipart boundaries) or a
/// range of the file, sent with sendfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Bytes written as they are.
    Bytes(Vec<u8>),
    /// `len` bytes of the file from `offset`.
    File {
        /// First byte.
        offset: u64,
        /// Bytes.
        len: u64,
    },
}

/// A response body.
#[derive(Debug, Clone, Default)]
pub enum Body {
    /// No body (`Content-Length: 0` where a body is allowed).
    #[default]
    Empty,
    /// Bytes with a static lifetime (no copy until the socket buffer).
    Static(&'static [u8]),
    /// Bytes of its own.
    Owned(Vec<u8>),
    /// Parts of an open file, zero-copy (sendfile through the loop).
    File {
        /// The file.
        file: Arc<File>,
        /// What to send, in order.
        parts: Vec<Part>,
    },
}

impl Body {
    /// The body's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Static(b) => b.len() as u64,
            Body::Owned(b) => b.len() as u64,
            Body::File { parts, .. } => parts
                .iter()
                .map(|p| match p {
                    Part::Bytes(b) => b.len() as u64,
                    Part::File { len, .. } => *len,
                })
                .sum(),
        }
    }

    /// Is it empty?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::Static(s.as_bytes())
    }
}

impl From<&'static [u8]> for Body {
    fn from(s: &'static [u8]) -> Self {
        Body::Static(s)
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::Owned(s.into_bytes())
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Body::Owned(v)
    }
}

/// A response: status, headers, body. `Date`, `Server`, `Content-Length`
/// and `Connection` are added when it is written.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status.
    pub status: Status,
    content_type: Option<Cow<'static, str>>,
    headers: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    /// The body.
    pub body: Body,
    /// Close the connection after this response.
    pub close: bool,
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: Status) -> Self {
        Response {
            status,
            content_type: None,
            headers: Vec::new(),
            body: Body::Empty,
            close: false,
        }
    }

    /// A `text/plain` response.
    pub fn text(status: Status, body: impl Into<Body>) -> Self {
        Response::new(status)
            .content_type("text/plain; charset=utf-8")
            .body(body)
    }

    /// The `Content-Type` (cleaned like [`Response::header`]).
    pub fn content_type(mut self, media_type: impl Into<Cow<'static, str>>) -> Self {
        self.content_type = Some(clean(media_type.into()));
        self
    }

    /// The body.
    pub fn body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    /// Add a header. CR, LF and NUL in an owned name or value are replaced
    /// by spaces, so a value built from a request cannot split the
    /// response (static strings are the program's own and kept as they
    /// are). The framing headers the server writes itself
    /// (`Content-Length`, `Transfer-Encoding`, `Connection`, `Date`,
    /// `Server`) are ignored: set the body and [`Response::closing`]
    /// instead.
    pub fn header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Self {
        let name = name.into();
        const OURS: [&str; 5] = [
            "content-length",
            "transfer-encoding",
            "connection",
            "date",
            "server",
        ];
        if OURS.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            tracing::debug!(%name, "header set by the server: ignored");
            return self;
        }
        self.headers.push((clean(name), clean(value.into())));
        self
    }

    /// The headers added so far.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (&**n, &**v))
    }

    /// Close the connection once this response is sent.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

fn clean(s: Cow<'static, str>) -> Cow<'static, str> {
    match s {
        Cow::Owned(o) if o.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'\0')) => {
            Cow::Owned(o.replace(['\r', '\n', '\0'], " "))
        }
        s => s,
    }
}

/// How the `Connection` header is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// HTTP/1.1 keep-alive: no header.
    Default,
    /// HTTP/1.0 keep-alive: `Connection: keep-alive`.
    KeepAlive,
    /// `Connection: close`.
    Close,
}

/// Write the head of `resp` into `out`. `content_length` is the body's
/// length (sent as Content-Length where the status allows a body).
pub fn write_head(
    out: &mut Vec<u8>,
    resp: &Response,
    date: &str,
    content_length: u64,
    connection: Connection,
) {
    let mut num = itoa_buf();
    match resp.status.0 {
        200 => out.extend_from_slice(b"HTTP/1.1 200 OK\r\nServer: gaidaros\r\nDate: "),
        code => {
            out.extend_from_slice(b"HTTP/1.1 ");
            out.extend_from_slice(fmt_u64(&mut num, u64::from(code)));
            out.push(b' ');
            out.extend_from_slice(resp.status.reason().as_bytes());
            out.extend_from_slice(b"\r\nServer: gaidaros\r\nDate: ");
        }
    }
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(ct) = &resp.content_type {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(ct.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &resp.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if resp.status.allows_body() {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(fmt_u64(&mut num, content_length));
        out.extend_from_slice(b"\r\n");
    }
    match connection {
        Connection::Default => {}
        Connection::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        Connection::Close => out.extend_from_slice(b"Connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

/// Decimal digits of `n` without going through `fmt` (the head is written
/// once per response; `write!` costs several times more).
fn fmt_u64(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_has_the_framing_headers() {
        let mut out = Vec::new();
        let resp = Response::text(Status::OK, "hi").header("X-A", String::from("b\r\nInjected: 1"));
        write_head(&mut out, &resp, "D", 2, Connection::Close);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nServer: gaidaros\r\nDate: D\r\nContent-Type: text/plain; charset=utf-8\r\n\
X-A: b  Injected: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn no_content_length_where_no_body_is_allowed() {
        let mut out = Vec::new();
        write_head(
            &mut out,
            &Response::new(Status::NOT_MODIFIED),
            "D",
            0,
            Connection::Default,
        );
        assert!(!String::from_utf8(out).unwrap().contains("Content-Length"));
    }

    #[test]
    fn framing_headers_cannot_be_set_twice() {
        let mut out = Vec::new();
        let resp = Response::text(Status::OK, "hi")
            .header("content-length", "99")
            .header("Connection", "keep-alive");
        write_head(&mut out, &resp, "D", 2, Connection::Default);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("Content-Length").count(), 1);
        assert!(!text.contains("99") && !text.contains("Connection"));
    }

    #[test]
    fn numbers() {
        let mut b = itoa_buf();
        assert_eq!(fmt_u64(&mut b, 0), b"0");
        assert_eq!(fmt_u64(&mut b, u64::MAX), u64::MAX.to_string().as_bytes());
    }
}
