//! Static files from a root directory.
//!
//! A request path is percent-decoded and split into segments; `..`, NUL
//! and undecodable escapes are refused with 400 before anything is opened.
//! The file is then opened beneath the root by the kernel
//! ([`gaidaros::fs::open_beneath`]: openat2 with RESOLVE_BENEATH), so a
//! symlink that leads out of the root is not followed (403) while one that
//! stays inside is. Conditional requests (If-Match, If-Unmodified-Since,
//! If-None-Match, If-Modified-Since, If-Range) and ranges are answered by [`file_response`], which routes of
//! other crates can use for their own files.
//!
//! A request is answered in three steps, so that the one that touches the
//! disk can run off the loop: [`StaticFiles::lookup`] checks the path (no
//! syscall), [`StaticFiles::find`] opens what it names (openat2, fstat, and
//! the bytes of a small file: blocking, run on the offload pool by the
//! session, or skipped on a hit of the open-file cache, `cache.rs`), and
//! [`StaticFiles::answer`] makes the response from what was found.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cache::{CacheLimits, Key};
use crate::range::{self, Ranges};
use crate::request::Request;
use crate::response::{Body, Part, Response};
use crate::status::Status;

/// The files under one root directory.
#[derive(Debug)]
pub struct StaticFiles {
    root: File,
    root_path: PathBuf,
    index: String,
    max_ranges: usize,
    dotfiles: bool,
    /// Tells this root's open-file cache from another's on a thread.
    id: u64,
    cache: CacheLimits,
}

/// An open file as [`StaticFiles::find`] left it: what a response needs.
#[derive(Debug)]
pub(crate) struct OpenFile {
    file: Arc<File>,
    meta: Metadata,
    content_type: &'static str,
    /// The whole file, when it is smaller than [`SMALL_BODY`]: read with the
    /// open, off the loop, so answering it reads nothing.
    small: Option<Arc<[u8]>>,
}

/// What a path below the root resolved to.
#[derive(Debug, Clone)]
pub(crate) enum Found {
    /// A regular file (a directory's index among them).
    File(Arc<OpenFile>),
    /// A directory, asked for without a trailing `/`: redirected.
    Dir,
    /// Answered 403 with this text.
    Forbidden(&'static str),
    /// Not opened (404, 403, or 500 for an unexpected error).
    Error(Arc<io::Error>),
}

impl Found {
    /// Worth keeping in the open-file cache: what was there, not why
    /// nothing was.
    pub(crate) fn cacheable(&self) -> bool {
        matches!(self, Found::File(_) | Found::Dir)
    }
}

/// File bodies smaller than this are read into memory and the file closed
/// at once: cheaper than sendfile for small files, and it bounds the files
/// one connection can hold open (every queued file range then counts at
/// least this much towards its output cap).
pub const SMALL_BODY: u64 = 16 * 1024;

impl StaticFiles {
    /// Serve `root`; a directory request gets its `index` file; names
    /// starting with `.` are served only with `dotfiles`.
    pub fn open(root: &Path, index: &str, max_ranges: usize, dotfiles: bool) -> io::Result<Self> {
        let dir = File::open(root)?;
        if !dir.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a directory",
            ));
        }
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(StaticFiles {
            root: dir,
            root_path: root.canonicalize()?,
            index: index.to_string(),
            max_ranges,
            dotfiles,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            cache: CacheLimits::default(),
        })
    }

    /// Size the open-file cache (the default: [`CacheLimits::default`]).
    pub fn with_cache(mut self, cache: CacheLimits) -> Self {
        self.cache = cache;
        self
    }

    /// How the open-file cache is sized.
    pub fn cache_limits(&self) -> CacheLimits {
        self.cache
    }

    /// Answer a request for a file, all three steps here (the open
    /// blocks; the HTTP session runs it off the loop instead).
    pub fn serve(&self, req: &Request) -> Response {
        match self.lookup(req) {
            Ok(key) => self.answer(req, &self.find(&key)),
            Err(resp) => resp,
        }
    }

    /// Step 1, no syscall: what the request asks the disk for, or the
    /// answer when the request alone decides it (a method other than GET
    /// and HEAD, a bad path, a dotfile).
    pub(crate) fn lookup(&self, req: &Request) -> Result<Key, Response> {
        let method = req.method();
        if method != "GET" && method != "HEAD" {
            return Err(
                Response::text(Status::METHOD_NOT_ALLOWED, "method not allowed\n")
                    .header("Allow", "GET, HEAD"),
            );
        }
        let rel = match relative_path(req.path()) {
            Ok(rel) => rel,
            Err(why) => return Err(Response::text(Status::BAD_REQUEST, why).closing()),
        };
        if !self.dotfiles
            && rel
                .components()
                .any(|c| c.as_os_str().as_bytes().first() == Some(&b'.') && c.as_os_str() != ".")
        {
            return Err(Response::text(Status::FORBIDDEN, "forbidden\n"));
        }
        Ok((rel, req.path().ends_with('/')))
    }

    /// Step 2, blocking: open what `key` names (a directory's index when
    /// its request path ended in `/`), with its metadata and, when small,
    /// its bytes.
    pub(crate) fn find(&self, key: &Key) -> Found {
        let (rel, index_wanted) = key;
        let (file, meta) = match self.open_file(rel) {
            Ok(found) => found,
            Err(e) => return Found::Error(Arc::new(e)),
        };
        let (file, meta, name) = if meta.is_dir() {
            if !index_wanted {
                return Found::Dir;
            }
            let index = rel.join(&self.index);
            match self.open_file(&index) {
                Ok((f, m)) if m.is_file() => (f, m, index),
                Ok(_) => return Found::Forbidden("forbidden\n"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Found::Forbidden("directory listing is off\n")
                }
                Err(e) => return Found::Error(Arc::new(e)),
            }
        } else {
            (file, meta, rel.clone())
        };
        if !meta.is_file() {
            return Found::Forbidden("not a regular file\n");
        }
        let small = if meta.len() < SMALL_BODY {
            let mut bytes = vec![0u8; meta.len() as usize];
            if let Err(e) = file.read_exact_at(&mut bytes, 0) {
                return Found::Error(Arc::new(e));
            }
            Some(Arc::from(bytes))
        } else {
            None
        };
        Found::File(Arc::new(OpenFile {
            file: Arc::new(file),
            meta,
            content_type: content_type(&name),
            small,
        }))
    }

    /// Step 3, no syscall for a small file or a directory: the response
    /// to `req` from what step 2 found.
    pub(crate) fn answer(&self, req: &Request, found: &Found) -> Response {
        match found {
            Found::File(f) => build_file_response(
                req,
                f.file.clone(),
                &f.meta,
                f.content_type,
                self.max_ranges,
                f.small.as_deref(),
            ),
            Found::Dir => {
                // From the path as sent (valid URI characters), with one
                // leading slash: `//dir` must not become a host name.
                let mut location = format!("/{}/", req.path().trim_start_matches('/'));
                if let Some(q) = req.query() {
                    location.push('?');
                    location.push_str(q);
                }
                Response::text(Status::MOVED_PERMANENTLY, "moved\n").header("Location", location)
            }
            Found::Forbidden(text) => Response::text(Status::FORBIDDEN, *text),
            Found::Error(e) => error_response(e),
        }
    }

    /// Which root this is, to key the open-file cache.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    fn open_file(&self, rel: &Path) -> io::Result<(File, Metadata)> {
        let file = gaidaros::fs::open_beneath(&self.root, &self.root_path, rel)?;
        let meta = file.metadata()?;
        Ok((file, meta))
    }
}

fn error_response(e: &io::Error) -> Response {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::InvalidFilename => {
            Response::text(Status::NOT_FOUND, "not found\n")
        }
        io::ErrorKind::PermissionDenied => Response::text(Status::FORBIDDEN, "forbidden\n"),
        _ if e.raw_os_error() == Some(libc_eloop()) => {
            Response::text(Status::FORBIDDEN, "forbidden\n")
        }
        _ => {
            tracing::warn!("static file: {e}");
            Response::text(Status::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

/// ELOOP on Linux (too many symlinks), without a libc dependency here.
fn libc_eloop() -> i32 {
    40
}

/// The request path as a relative path below the root: percent-decoded,
/// empty and `.` segments dropped; `..`, NUL, a bad escape or a target
/// that is not a path refused (with the text answered).
pub fn relative_path(path: &str) -> Result<PathBuf, &'static str> {
    if !path.starts_with('/') {
        return Err("the request target must be a path\n");
    }
    let decoded = percent_decode(path.as_bytes()).ok_or("bad percent-encoding in the path\n")?;
    if decoded.contains(&0) {
        return Err("NUL in the path\n");
    }
    let mut rel = PathBuf::new();
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => return Err("'..' in the path\n"),
            s => rel.push(OsStr::from_bytes(s)),
        }
    }
    if rel.as_os_str().is_empty() {
        rel.push(".");
    }
    Ok(rel)
}

fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let v = (hex_digit(hex[0])? << 4) | hex_digit(hex[1])?;
            out.push(v);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// A file's strong validator: modification time (seconds and
/// nanoseconds) and size in hex, so a rewrite within the same second
/// that keeps the size still changes it.
pub fn etag(mtime: u64, mtime_nsec: u32, size: u64) -> String {
    format!("\"{mtime:x}.{mtime_nsec:x}-{size:x}\"")
}

/// Answer `req` with `file`: 412 when If-Match or If-Unmodified-Since
/// fails, 304 when a validator matches, 206 for
/// satisfiable ranges (one, or several as multipart/byteranges), 416 for
/// unsatisfiable ones, 200 otherwise. HEAD gets the same head.
pub fn file_response(
    req: &Request,
    file: Arc<File>,
    meta: &Metadata,
    content_type: &'static str,
    max_ranges: usize,
) -> Response {
    build_file_response(req, file, meta, content_type, max_ranges, None)
}

/// [`file_response`], with the whole file's bytes when they were read
/// already (`small`).
fn build_file_response(
    req: &Request,
    file: Arc<File>,
    meta: &Metadata,
    content_type: &'static str,
    max_ranges: usize,
    small: Option<&[u8]>,
) -> Response {
    let size = meta.len();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let tag = etag(mtime, meta.mtime_nsec().clamp(0, 999_999_999) as u32, size);
    let last_modified = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(mtime));
    let validators = |r: Response| {
        r.header("Last-Modified", last_modified.clone())
            .header("ETag", tag.clone())
    };

    // RFC 9110 13.2.2: If-Match, else If-Unmodified-Since (412); then
    // If-None-Match, else If-Modified-Since (304); then If-Range.
    let precondition_failed = match req.header("if-match") {
        Some(im) => !etag_list_matches_strong(im, &tag),
        None => req
            .header("if-unmodified-since")
            .and_then(http_date)
            .is_some_and(|since| mtime > since),
    };
    if precondition_failed {
        return validators(Response::text(
            Status::PRECONDITION_FAILED,
            "precondition failed\n",
        ));
    }
    let not_modified = match req.header("if-none-match") {
        Some(inm) => etag_list_matches(inm, &tag),
        None => req
            .header("if-modified-since")
            .and_then(http_date)
            .is_some_and(|since| mtime <= since),
    };
    if not_modified {
        return validators(Response::new(Status::NOT_MODIFIED));
    }

    // Range is defined for GET only (RFC 9110 14.2): HEAD gets the 200 head.
    let ranges = match req.header("range") {
        Some(value) if req.method() == "GET" && if_range_holds(req, &tag, mtime) => {
            range::parse(value, size, max_ranges)
        }
        _ => Ranges::Whole,
    };
    let base = validators(Response::new(Status::OK)).header("Accept-Ranges", "bytes");
    let resp = match ranges {
        Ranges::Whole => base.content_type(content_type).body(Body::File {
            file,
            parts: vec![Part::File {
                offset: 0,
                len: size,
            }],
        }),
        Ranges::Unsatisfiable => {
            let mut r = base
                .header("Content-Range", format!("bytes */{size}"))
                .content_type("text/plain; charset=utf-8")
                .body("range not satisfiable\n");
            r.status = Status::RANGE_NOT_SATISFIABLE;
            r
        }
        Ranges::Parts(parts) if parts.len() == 1 => {
            let (a, b) = parts[0];
            let mut r = base
                .content_type(content_type)
                .header("Content-Range", format!("bytes {a}-{b}/{size}"))
                .body(Body::File {
                    file,
                    parts: vec![Part::File {
                        offset: a,
                        len: b - a + 1,
                    }],
                });
            r.status = Status::PARTIAL_CONTENT;
            r
        }
        Ranges::Parts(parts) => {
            let boundary = boundary(mtime, size);
            let mut body = Vec::with_capacity(parts.len() * 2 + 1);
            for (a, b) in parts {
                body.push(Part::Bytes(
                    format!(
                        "\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes {a}-{b}/{size}\r\n\r\n"
                    )
                    .into_bytes(),
                ));
                body.push(Part::File {
                    offset: a,
                    len: b - a + 1,
                });
            }
            body.push(Part::Bytes(format!("\r\n--{boundary}--\r\n").into_bytes()));
            let mut r = base
                .content_type(format!("multipart/byteranges; boundary={boundary}"))
                .body(Body::File { file, parts: body });
            r.status = Status::PARTIAL_CONTENT;
            r
        }
    };
    if req.method() == "HEAD" {
        resp
    } else {
        small_in_memory(resp, small)
    }
}

/// A file body whose file ranges add up to less than [`SMALL_BODY`] is
/// copied from the file's bytes (`small`, when read already) or read now,
/// and the file closed. A read error answers 500.
fn small_in_memory(mut resp: Response, small: Option<&[u8]>) -> Response {
    let Body::File { file, parts } = &resp.body else {
        return resp;
    };
    let file_bytes: u64 = parts
        .iter()
        .map(|p| match p {
            Part::File { len, .. } => *len,
            Part::Bytes(_) => 0,
        })
        .sum();
    if file_bytes >= SMALL_BODY {
        return resp;
    }
    let mut out = Vec::with_capacity(resp.body.len() as usize);
    for part in parts {
        match part {
            Part::Bytes(b) => out.extend_from_slice(b),
            Part::File { offset, len } => {
                let range = usize::try_from(*offset).ok().and_then(|a| {
                    let b = a.checked_add(usize::try_from(*len).ok()?)?;
                    small?.get(a..b)
                });
                if let Some(bytes) = range {
                    out.extend_from_slice(bytes);
                    continue;
                }
                let start = out.len();
                out.resize(start + *len as usize, 0);
                if let Err(e) = file.read_exact_at(&mut out[start..], *offset) {
                    tracing::warn!("static file: read: {e}");
                    return Response::text(Status::INTERNAL_SERVER_ERROR, "internal error\n")
                        .closing();
                }
            }
        }
    }
    resp.body = Body::Owned(out);
    resp
}

/// The path routes are matched against: the request's path itself when it
/// is already canonical (no escapes, no empty, `.` or `..` segments: the
/// common case, borrowed), else its decoded and normalized form, so a
/// route cannot be bypassed with `/%61dmin` or `//admin`. What
/// [`relative_path`] refuses is refused here too.
pub fn route_path(path: &str) -> Result<Cow<'_, str>, &'static str> {
    let canonical = path.starts_with('/')
        && !path.contains('%')
        && !path.contains("//")
        && !path.contains("/./")
        && !path.contains("/../")
        && !path.ends_with("/.")
        && !path.ends_with("/..");
    if canonical {
        return Ok(Cow::Borrowed(path));
    }
    let rel = relative_path(path)?;
    let mut out = String::with_capacity(path.len());
    for c in rel.components() {
        let c = c.as_os_str();
        if c != "." {
            out.push('/');
            out.push_str(&String::from_utf8_lossy(c.as_bytes()));
        }
    }
    if out.is_empty() || path.ends_with('/') {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// A multipart boundary unlikely to occur in the file: 20 hex digits from a
/// per-process random key, the file's validator and a counter.
fn boundary(mtime: u64, size: u64) -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static KEY: OnceLock<RandomState> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let mut h = KEY.get_or_init(RandomState::new).build_hasher();
    h.write_u64(mtime);
    h.write_u64(size);
    h.write_u64(COUNT.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}{:04x}", h.finish(), size & 0xffff)
}

/// If-Range (RFC 9110 13.1.5): the range applies only when the validator
/// sent is the current one (a strong ETag, or exactly the modification
/// date). Without If-Range it always applies.
fn if_range_holds(req: &Request, tag: &str, mtime: u64) -> bool {
    match req.header("if-range") {
        None => true,
        Some(v) => {
            let v = crate::head::trim(v);
            if v.starts_with(b"\"") {
                v == tag.as_bytes()
            } else if v.starts_with(b"W/") {
                false
            } else {
                http_date(v) == Some(mtime)
            }
        }
    }
}

/// Does an If-Match list name `tag` (strong comparison: a weak tag never
/// matches), or is it `*`?
fn etag_list_matches_strong(list: &[u8], tag: &str) -> bool {
    list.split(|&b| b == b',').any(|t| {
        let t = crate::head::trim(t);
        t == b"*" || t == tag.as_bytes()
    })
}

/// Does an If-None-Match list name `tag` (weak comparison), or is it `*`?
fn etag_list_matches(list: &[u8], tag: &str) -> bool {
    let tag = tag.as_bytes();
    list.split(|&b| b == b',').any(|t| {
        let t = crate::head::trim(t);
        t == b"*" || t.strip_prefix(b"W/").unwrap_or(t) == tag
    })
}

fn http_date(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    let t: SystemTime = httpdate::parse_http_date(s.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// The media type of a file, from its extension.
pub fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(OsStr::to_str)
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("txt" | "log" | "md") => "text/plain; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("pdf") => "application/pdf",
        Some("wasm") => "application/wasm",
        Some("woff2") => "font/woff2",
        Some("mp4") => "video/mp4",
        Some("gz") => "application/gzip",
        Some("zip") => "application/zip",
        Some("tar") => "application/x-tar",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused_in_every_spelling() {
        for bad in [
            "/../etc/passwd",
            "/a/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2Fetc%2Fpasswd",
            "/a/%2e%2e%2f%2e%2e/x",
            "/x%00.txt",
            "/bad%zz",
            "/trunc%2",
            "etc/passwd",
            "*",
        ] {
            assert!(relative_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_see_one_spelling_of_a_path() {
        assert!(matches!(route_path("/hello"), Ok(Cow::Borrowed("/hello"))));
        for same in ["/%61dmin", "//admin", "/./admin", "/x/../admin"] {
            let got = route_path(same);
            if same.contains("..") {
                assert!(got.is_err(), "{same}");
            } else {
                assert_eq!(got.unwrap(), "/admin", "{same}");
            }
        }
        assert_eq!(route_path("//dir/").unwrap(), "/dir/");
        assert_eq!(route_path("/%2e").unwrap(), "/");
    }

    #[test]
    fn ordinary_paths_stay_relative() {
        assert_eq!(relative_path("/").unwrap(), PathBuf::from("."));
        assert_eq!(
            relative_path("//a/./b%20c/").unwrap(),
            PathBuf::from("a/b c")
        );
        assert_eq!(
            relative_path("/%2fetc%2fpasswd").unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert!(relative_path("/a..b/c").is_ok());
    }

    #[test]
    fn strong_lists_refuse_weak_tags() {
        assert!(etag_list_matches_strong(b"\"a\", \"b\"", "\"b\""));
        assert!(!etag_list_matches_strong(b"W/\"b\"", "\"b\""));
        assert!(etag_list_matches_strong(b"*", "\"b\""));
    }

    #[test]
    fn etag_lists() {
        assert!(etag_list_matches(b"\"a\", W/\"b\"", "\"b\""));
        assert!(etag_list_matches(b"*", "\"b\""));
        assert!(!etag_list_matches(b"\"a\"", "\"b\""));
    }
}
