//! The thin adapter between the loop and [`HttpConn`]: bytes from
//! `on_data` go to the state machine, each request it yields is answered
//! (route, file or error) into one output buffer per read, file bodies go
//! out with [`Ctx::send_file`], and the machine's deadline is the
//! session's [`Protocol::poll_timeout`].
//!
//! A file the open-file cache (`cache.rs`) does not hold is opened on the
//! offload pool ([`Ctx::offload`]): the session stops reading and taking
//! requests until [`Protocol::on_done`] brings it back, answers, and goes
//! on with the requests pipelined behind it. A full pool answers 503.
//!
//! Backpressure: once a connection's pending output reaches its cap,
//! reading stops and the requests already received wait in `inbuf` (at
//! most one read's worth) until the output drains.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use gaidaros::{
    CloseReason, ConnId, Ctx, JobId, Message, Protocol, ProtocolFactory, Queued, Unconsumed,
};
use tracing::{debug, error, info, warn};

use crate::cache::{self, Key};
use crate::conn::{ConnLimits, Expired, HttpConn, Step};
use crate::date::DateCache;
use crate::error::HttpError;
use crate::files::{Found, StaticFiles};
use crate::request::Request;
use crate::response::{write_head, Body, Connection, Part, Response};
use crate::routes::Router;
use crate::status::Status;

/// Output gathered for one connection before it is handed to the loop.
const GATHER: usize = 64 * 1024;

thread_local! {
    /// One Date cache per loop thread.
    static DATE: RefCell<DateCache> = RefCell::new(DateCache::default());
}

/// Everything an HTTP listener serves.
#[derive(Debug)]
pub struct HttpConfig {
    /// Limits of each connection.
    pub limits: ConnLimits,
    /// Routes, looked up before files.
    pub router: Router,
    /// Files, when a root directory is served.
    pub files: Option<StaticFiles>,
}

/// How a request is answered.
enum Answer {
    /// Now, with this.
    Now(Response),
    /// From the file this names, looked up in the open-file cache or
    /// opened off the loop.
    File(Key),
}

/// What an offloaded open brings back: the key, what it found and when.
type Opened = (Key, Found, Instant);

impl HttpConfig {
    fn answer(&self, req: &Request) -> Answer {
        let path = match crate::files::route_path(req.path()) {
            Ok(path) => path,
            Err(why) => return Answer::Now(Response::text(Status::BAD_REQUEST, why).closing()),
        };
        if let Some(route) = self.router.find(&path) {
            return Answer::Now(match panic::catch_unwind(AssertUnwindSafe(|| route(req))) {
                Ok(resp) => resp,
                Err(_) => {
                    error!(path = %path, "route panicked: answered 500");
                    Response::text(Status::INTERNAL_SERVER_ERROR, "internal error\n").closing()
                }
            });
        }
        match &self.files {
            Some(files) => match files.lookup(req) {
                Ok(key) => Answer::File(key),
                Err(resp) => Answer::Now(resp),
            },
            None => Answer::Now(Response::text(Status::NOT_FOUND, "not found\n")),
        }
    }
}

/// The HTTP protocol factory: one session per connection.
#[derive(Debug, Clone)]
pub struct Http {
    config: Arc<HttpConfig>,
}

impl Http {
    /// Serve `config`.
    pub fn new(config: HttpConfig) -> Self {
        Http {
            config: Arc::new(config),
        }
    }
}

impl ProtocolFactory for Http {
    fn open(&self) -> Box<dyn Protocol> {
        Box::new(Session {
            config: self.config.clone(),
            conn: None,
            machine: None,
            req: Request::default(),
            inbuf: Unconsumed::default(),
            out: Vec::new(),
            opening: None,
            blocked: false,
            eof: false,
            done: false,
        })
    }
}

/// One connection.
struct Session {
    config: Arc<HttpConfig>,
    conn: Option<ConnId>,
    machine: Option<HttpConn>,
    req: Request,
    /// Received bytes not yet consumed by the machine: an incomplete head,
    /// or requests waiting while output is at its cap.
    inbuf: Unconsumed,
    /// Responses gathered during this read, written in one go.
    out: Vec<u8>,
    /// The open of the current request's file, out on the offload pool:
    /// reading is paused and no request is taken until it is back.
    opening: Option<JobId>,
    /// Output is at its cap: reading is paused.
    blocked: bool,
    /// The peer sent FIN.
    eof: bool,
    /// The connection is closing: ignore further input.
    done: bool,
}

impl Session {
    /// Run the machine over `input`; returns the bytes consumed.
    fn process(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, input: &[u8]) -> usize {
        let Some(mut machine) = self.machine.take() else {
            return input.len();
        };
        let now = ctx.now();
        let mut pos = 0;
        while !self.blocked && !self.done && self.opening.is_none() {
            let (n, step) = machine.handle_input(&input[pos..], now, &mut self.req);
            pos += n;
            match step {
                Step::NeedMore => break,
                Step::Continue => self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n"),
                Step::Request => match self.config.answer(&self.req) {
                    Answer::Now(resp) => self.answer_now(ctx, conn, resp),
                    Answer::File(key) => self.answer_file(ctx, conn, key),
                },
                Step::Error(e) => {
                    let wall = ctx.wall_now();
                    self.refuse(ctx, conn, e, wall);
                }
            }
        }
        self.machine = Some(machine);
        self.flush(ctx, conn);
        pos
    }

    fn answer_now(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, resp: Response) {
        let head_only = self.req.method() == "HEAD";
        let wall = ctx.wall_now();
        self.respond(ctx, conn, resp, head_only, wall);
    }

    /// The request names a file: answer from the open-file cache, or open
    /// it off the loop and wait.
    fn answer_file(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, key: Key) {
        let Some(files) = self.config.files.as_ref() else {
            return self.answer_now(ctx, conn, Response::text(Status::NOT_FOUND, "not found\n"));
        };
        if let Some(found) = cache::get(files.id(), &key, ctx.now()) {
            let resp = files.answer(&self.req, &found);
            return self.answer_now(ctx, conn, resp);
        }
        let config = self.config.clone();
        let job = ctx.offload(move || -> Message {
            let found = match config.files.as_ref() {
                Some(files) => files.find(&key),
                None => Found::Forbidden("forbidden\n"),
            };
            let opened: Opened = (key, found, Instant::now());
            Box::new(opened)
        });
        match job {
            Ok(job) => {
                self.opening = Some(job);
                ctx.pause_read(conn);
            }
            Err(_) => {
                warn!("the offload pool is full: a file request answered 503");
                let resp = Response::text(Status::SERVICE_UNAVAILABLE, "server busy\n")
                    .header("Retry-After", "1");
                self.answer_now(ctx, conn, resp);
            }
        }
    }

    /// Take the requests that wait in `inbuf` (after output drained or a
    /// file was opened).
    fn go_on(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        let mut inbuf = std::mem::take(&mut self.inbuf);
        inbuf.feed(&[], |bytes| self.process(ctx, conn, bytes));
        self.inbuf = inbuf;
        self.finish_after_eof(ctx, conn);
    }

    fn refuse(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, e: HttpError, wall: SystemTime) {
        info!(peer = ?ctx.peer_addr(conn), status = e.status().0, "refused: {e}");
        let resp = Response::text(e.status(), format!("{e}\n")).closing();
        self.respond(ctx, conn, resp, false, wall);
    }

    /// Write `resp` for the current request; close after it when asked.
    fn respond(
        &mut self,
        ctx: &mut Ctx<'_>,
        conn: ConnId,
        resp: Response,
        head_only: bool,
        wall: SystemTime,
    ) {
        let close = resp.close || !self.req.keep_alive || self.eof;
        let connection = if close {
            Connection::Close
        } else if self.req.minor == 0 {
            Connection::KeepAlive
        } else {
            Connection::Default
        };
        let len = resp.body.len();
        DATE.with(|d| {
            write_head(
                &mut self.out,
                &resp,
                d.borrow_mut().at(wall),
                len,
                connection,
            )
        });
        if !head_only && resp.status.allows_body() {
            match resp.body {
                Body::Empty => {}
                Body::Static(b) if b.len() >= GATHER => self.write_large(ctx, conn, b),
                Body::Owned(b) if b.len() >= GATHER => self.write_large(ctx, conn, &b),
                Body::Static(b) => self.out.extend_from_slice(b),
                Body::Owned(b) => self.out.extend_from_slice(&b),
                Body::File { file, parts } => {
                    for part in parts {
                        match part {
                            Part::Bytes(b) => self.out.extend_from_slice(&b),
                            Part::File { offset, len } => {
                                self.flush(ctx, conn);
                                let queued = ctx.send_file(conn, file.clone(), offset, len);
                                if queued == Ok(Queued::OverCap) {
                                    self.block(ctx, conn);
                                }
                            }
                        }
                    }
                }
            }
        }
        if close {
            self.flush(ctx, conn);
            ctx.close(conn);
            self.done = true;
        } else if self.out.len() >= GATHER {
            self.flush(ctx, conn);
        }
    }

    fn flush(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        if !self.out.is_empty() {
            if ctx.write(conn, &self.out) == Ok(Queued::OverCap) {
                self.block(ctx, conn);
            }
            self.out.clear();
        }
        if self.out.capacity() > 2 * GATHER {
            // One large response must not pin its size for the connection's life.
            self.out = Vec::new();
        }
    }

    /// A large body goes to the loop in one copy, not through `out`.
    fn write_large(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, body: &[u8]) {
        self.flush(ctx, conn);
        if ctx.write(conn, body) == Ok(Queued::OverCap) {
            self.block(ctx, conn);
        }
    }

    fn block(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        if !self.blocked {
            self.blocked = true;
            ctx.pause_read(conn);
        }
    }

    /// Give back the memory of a burst of pipelined requests once handled.
    /// Input and output are done with after FIN: close once answered.
    fn finish_after_eof(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        if self.eof && !self.blocked && !self.done && self.opening.is_none() {
            if self.machine.as_ref().is_some_and(HttpConn::in_request) {
                debug!(%conn, "client closed in the middle of a request");
            }
            self.done = true;
            ctx.close(conn);
        }
    }
}

impl Protocol for Session {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        self.conn = Some(conn);
        self.req.peer = ctx.peer_addr(conn);
        self.machine = Some(HttpConn::new(self.config.limits, ctx.now()));
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, data: &[u8]) -> usize {
        if self.done {
            return data.len();
        }
        let mut inbuf = std::mem::take(&mut self.inbuf);
        inbuf.feed(data, |bytes| self.process(ctx, conn, bytes));
        self.inbuf = inbuf;
        data.len()
    }

    fn on_writable(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        if !self.blocked || self.done {
            return;
        }
        self.blocked = false;
        if self.opening.is_none() {
            ctx.resume_read(conn);
        }
        self.go_on(ctx, conn);
    }

    fn on_done(&mut self, ctx: &mut Ctx<'_>, job: JobId, result: Result<Message, String>) {
        if self.opening != Some(job) {
            return;
        }
        self.opening = None;
        let Some(conn) = self.conn else {
            return;
        };
        if self.done {
            return;
        }
        let opened = match result {
            Ok(msg) => msg.downcast::<Opened>().map(|b| *b).ok(),
            Err(panic) => {
                error!("opening a file panicked: {panic}");
                None
            }
        };
        let resp = match (opened, self.config.files.as_ref()) {
            (Some((key, found, at)), Some(files)) => {
                let resp = files.answer(&self.req, &found);
                cache::put(files.id(), files.cache_limits(), key, &found, at);
                resp
            }
            _ => Response::text(Status::INTERNAL_SERVER_ERROR, "internal error\n").closing(),
        };
        self.answer_now(ctx, conn, resp);
        self.flush(ctx, conn);
        if !self.blocked && !self.done {
            ctx.resume_read(conn);
        }
        self.go_on(ctx, conn);
    }

    fn on_read_closed(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        self.eof = true;
        self.finish_after_eof(ctx, conn);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        self.machine.as_ref().and_then(HttpConn::poll_timeout)
    }

    fn on_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let (Some(conn), Some(machine)) = (self.conn, self.machine.as_mut()) else {
            return;
        };
        match machine.handle_timeout(ctx.now()) {
            None => {}
            Some(Expired::Quiet) => {
                debug!(%conn, "no request within head_timeout: closed");
                self.done = true;
                ctx.close(conn);
            }
            Some(Expired::Error(e)) => {
                let wall = ctx.wall_now();
                self.refuse(ctx, conn, e, wall);
                self.flush(ctx, conn);
            }
        }
    }

    fn on_close(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, reason: CloseReason) {
        debug!(%conn, %reason, "http connection closed");
    }
}
