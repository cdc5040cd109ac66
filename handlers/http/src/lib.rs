//! `http`: an HTTP/1.1 and 1.0 server handler — static files (zero-copy,
//! ranges, conditional requests), a route table other crates fill, and a
//! `/hello` route for benchmarks.
//!
//! ```text
//!  socket ─▶ loop ─▶ Session (session.rs, the only part that sees Ctx)
//!                     │ bytes, now                  ▲ head bytes, file ranges
//!                     ▼                             │ (Ctx::write / send_file)
//!                 HttpConn (conn.rs) ── Request ─▶ Router (routes.rs)
//!                  ├ HeadScan + httparse (head.rs)   └▶ StaticFiles (files.rs)
//!                  └ BodyDecoder (body.rs)                 ├ range.rs
//!                                                          └ open_beneath (gaidaros::fs)
//! ```
//!
//! [`HttpConn`] is sans-I/O: it takes bytes and the time and yields
//! requests or errors ([`HttpError`], each mapped to its status), so its
//! tests need no sockets and no clock. Every request refused for its
//! framing is answered and the connection closed. Routes run on the loop
//! thread and must not block.
//!
//! Another crate serves its own endpoints with [`Router`] and [`Http`]
//! (the example of docs/handlers.md):
//!
//! ```
//! use std::sync::Arc;
//! use gaidaros::{Handler, HandlerSpec, OptionError, Options};
//! use gaidaros_http::{ConnLimits, Http, HttpConfig, Response, Router, Status};
//!
//! fn build(_options: &Options) -> Result<Handler, OptionError> {
//!     let router = Router::new()
//!         .route("/status", |_req| Response::text(Status::OK, "up\n"))
//!         .prefix("/echo/", |req| {
//!             Response::new(Status::OK)
//!                 .content_type("application/octet-stream")
//!                 .body(req.body().to_vec())
//!         });
//!     let http = Http::new(HttpConfig { limits: ConnLimits::default(), router, files: None });
//!     Ok(Handler::Protocol(Arc::new(http)))
//! }
//!
//! let spec = HandlerSpec { name: "status", about: "a status endpoint", options: &[], build };
//! assert!(build(&Options::new()).is_ok());
//! # let _ = spec;
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod body;
mod cache;
mod conn;
mod date;
mod error;
mod files;
mod head;
mod range;
mod request;
mod response;
mod routes;
mod session;
mod status;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gaidaros::config::{parse_duration, parse_size};
use gaidaros::{Handler, HandlerSpec, OptionError, OptionSpec, Options};

pub use body::BodyDecoder;
pub use cache::CacheLimits;
pub use conn::{ConnLimits, Expired, HttpConn, Step};
pub use date::DateCache;
pub use error::HttpError;
pub use files::{
    content_type, etag, file_response, relative_path, route_path, StaticFiles, SMALL_BODY,
};
pub use head::{HeadLimits, HeadScan, MAX_HEADERS_LIMIT};
pub use range::Ranges;
pub use request::{BodyKind, Request};
pub use response::{Body, Part, Response};
pub use routes::{RouteFn, Router};
pub use session::{Http, HttpConfig};
pub use status::Status;

/// The greeting of the `/hello` route.
pub const HELLO: &str = "Hello, World!";

/// Ranges in one request above which the Range header is ignored.
const DEFAULT_MAX_RANGES: usize = 16;

/// The routes every `http` listener has: `/hello`.
pub fn default_router() -> Router {
    Router::new().route("/hello", |_| Response::text(Status::OK, HELLO))
}

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "root",
        default: Some("unset"),
        help: "directory whose files are served; unset, only the routes answer (404 elsewhere)",
    },
    OptionSpec {
        name: "index",
        default: Some("index.html"),
        help: "file answered for a directory path ending in /",
    },
    OptionSpec {
        name: "dotfiles",
        default: Some("false"),
        help: "serve files and directories whose name starts with . (false: 403)",
    },
    OptionSpec {
        name: "file_cache",
        default: Some("1000"),
        help: "open files (and the bytes of those under 16 KiB) kept per loop; a miss is opened off the loop; 0 keeps none",
    },
    OptionSpec {
        name: "file_cache_valid",
        default: Some("1s"),
        help: "how long a cached file is served before its path is opened again (a file changed sooner is served as it was); 0 keeps none",
    },
    OptionSpec {
        name: "max_request_line",
        default: Some("8KiB"),
        help: "longest request line, CRLF included (larger: 414)",
    },
    OptionSpec {
        name: "max_header_line",
        default: Some("8KiB"),
        help: "longest header line (larger: 431)",
    },
    OptionSpec {
        name: "max_headers_size",
        default: Some("32KiB"),
        help: "all header lines together (larger: 431)",
    },
    OptionSpec {
        name: "max_headers",
        default: Some("100"),
        help: "most header lines (more: 431); at most 1024",
    },
    OptionSpec {
        name: "max_body",
        default: Some("1MiB"),
        help: "largest request body, decided from Content-Length (larger: 413)",
    },
    OptionSpec {
        name: "head_timeout",
        default: Some("30s"),
        help: "the request head must arrive within this (else 408)",
    },
    OptionSpec {
        name: "max_ranges",
        default: Some("16"),
        help: "ranges per request; a Range header with more is ignored (200)",
    },
];

fn size_option(options: &Options, key: &str, default: usize) -> Result<usize, OptionError> {
    match options.get(key) {
        None => Ok(default),
        Some(v) => parse_size(v).filter(|&n| n > 0).ok_or_else(|| OptionError {
            key: key.into(),
            value: v.into(),
            expected: "a size above 0 such as 8KiB".into(),
        }),
    }
}

fn build(options: &Options) -> Result<Handler, OptionError> {
    let defaults = ConnLimits::default();
    let max_headers = options.parse_or("max_headers", defaults.head.max_headers, "a count")?;
    if max_headers == 0 || max_headers > MAX_HEADERS_LIMIT {
        return Err(OptionError {
            key: "max_headers".into(),
            value: max_headers.to_string(),
            expected: format!("a count from 1 to {MAX_HEADERS_LIMIT}"),
        });
    }
    let head_timeout = match options.get("head_timeout") {
        None => defaults.head_timeout,
        Some(v) => parse_duration(v)
            .filter(|d| *d > Duration::ZERO)
            .ok_or_else(|| OptionError {
                key: "head_timeout".into(),
                value: v.into(),
                expected: "a duration above 0 such as 30s".into(),
            })?,
    };
    let limits = ConnLimits {
        head: HeadLimits {
            max_request_line: size_option(
                options,
                "max_request_line",
                defaults.head.max_request_line,
            )?,
            max_header_line: size_option(
                options,
                "max_header_line",
                defaults.head.max_header_line,
            )?,
            max_headers_size: size_option(
                options,
                "max_headers_size",
                defaults.head.max_headers_size,
            )?,
            max_headers,
        },
        max_body: size_option(options, "max_body", defaults.max_body)?,
        head_timeout,
    };
    let max_ranges = options.parse_or("max_ranges", DEFAULT_MAX_RANGES, "a count")?;
    let index = options.get("index").unwrap_or("index.html");
    if index.is_empty() || index.contains('/') {
        return Err(OptionError {
            key: "index".into(),
            value: index.into(),
            expected: "a file name without /".into(),
        });
    }
    let dotfiles = options.parse_or("dotfiles", false, "true or false")?;
    let cache_defaults = CacheLimits::default();
    let file_cache = options.parse_or("file_cache", cache_defaults.entries, "a count")?;
    let file_cache_valid = match options.get("file_cache_valid") {
        None => cache_defaults.valid,
        Some(v) => parse_duration(v).ok_or_else(|| OptionError {
            key: "file_cache_valid".into(),
            value: v.into(),
            expected: "a duration such as 1s or 500ms (0: keep nothing)".into(),
        })?,
    };
    let files = match options.get("root") {
        None => None,
        Some(root) => Some(
            StaticFiles::open(Path::new(root), index, max_ranges, dotfiles)
                .map_err(|e| OptionError {
                    key: "root".into(),
                    value: root.into(),
                    expected: format!("a readable directory ({e})"),
                })?
                .with_cache(CacheLimits {
                    entries: file_cache,
                    valid: file_cache_valid,
                }),
        ),
    };
    let http = Http::new(HttpConfig {
        limits,
        router: default_router(),
        files,
    });
    Ok(Handler::Protocol(Arc::new(http)))
}

/// Registry entry.
pub fn spec() -> HandlerSpec {
    HandlerSpec {
        name: "http",
        about: "HTTP/1.1 server: static files from root (sendfile, ranges, 304), /hello",
        options: OPTIONS,
        build,
    }
}
