//! Handler pools: where a service's requests run (`-X`, pool size `-n`).
//!
//! With `-X blocking` (the default) the loop runs the service inline, in
//! [`crate::service::serve_batch`]. Every other handler type hands each
//! complete request to a [`Pool`] as a [`Job`]; the job runs elsewhere and
//! its [`Done`] comes back to the loop that owns the connection through a
//! channel and that loop's waker:
//!
//! ```text
//!  loop ──frame──► Job{request bytes, conn, seq} ──submit──► pool (bounded)
//!   ▲                                                    │ runs service::respond
//!   └── waker ◄── Done{conn, seq, response, outcome} ◄───┘
//!  loop: responses re-ordered by seq, appended to the connection's output
//! ```
//!
//! A full pool refuses the job; the loop keeps the request, stops reading
//! that connection and retries when a job finishes (backpressure, never an
//! unbounded queue). Each connection has at most `max_pipelined` requests in
//! flight. Responses leave in request order whatever order jobs finish in.
//! Panics in the service become its error reply (see
//! [`crate::service::respond`]); the worker goes on.

mod green;
mod threads;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crossbeam_channel::Sender;
use mio::Waker;

use crate::protocol::ConnId;
use crate::service::{self, Keep, Service, ServiceError};

pub use green::GreenPool;
pub use threads::{ThreadPerRequest, ThreadPool};

/// Where requests run (`-X`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerType {
    /// Inline on the loop thread.
    Blocking,
    /// A new OS thread per request (at most `-n` at once).
    Thread,
    /// `-n` long-lived threads fed through a bounded queue.
    ThreadPool,
    /// A task per request on an async runtime (green threads).
    Gthread,
    /// The same, with at most `-n` requests in flight.
    GthreadPool,
}

impl HandlerType {
    /// Every accepted spelling, for messages.
    pub const NAMES: &'static str = "blocking, thread, threadpool, gthread or gthreadpool";
}

impl FromStr for HandlerType {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "blocking" => HandlerType::Blocking,
            "thread" => HandlerType::Thread,
            "threadpool" => HandlerType::ThreadPool,
            "gthread" => HandlerType::Gthread,
            "gthreadpool" => HandlerType::GthreadPool,
            _ => return Err(()),
        })
    }
}

impl fmt::Display for HandlerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandlerType::Blocking => "blocking",
            HandlerType::Thread => "thread",
            HandlerType::ThreadPool => "threadpool",
            HandlerType::Gthread => "gthread",
            HandlerType::GthreadPool => "gthreadpool",
        })
    }
}

/// Build the pool for `kind` with `size` workers (or in-flight requests),
/// `queue` jobs waiting at most. `None` for [`HandlerType::Blocking`].
pub fn build(
    kind: HandlerType,
    size: usize,
    queue: usize,
) -> std::io::Result<Option<Arc<dyn Pool>>> {
    let size = size.max(1);
    Ok(match kind {
        HandlerType::Blocking => None,
        HandlerType::Thread => Some(Arc::new(ThreadPerRequest::new(size))),
        HandlerType::ThreadPool => Some(Arc::new(ThreadPool::new(size, queue)?)),
        HandlerType::Gthread => Some(Arc::new(GreenPool::new(None, queue)?)),
        HandlerType::GthreadPool => Some(Arc::new(GreenPool::new(Some(size), queue)?)),
    })
}

/// Runs jobs somewhere other than the loop thread.
pub trait Pool: Send + Sync {
    /// Take `job`, or give it back when the pool is full (the loop retries
    /// after some job has finished).
    fn submit(&self, job: Job) -> Result<(), Job>;

    /// Its handler type, for logs.
    fn kind(&self) -> HandlerType;
}

/// Where a finished job goes: the owning loop's completion queue, and the
/// waker that gets that loop out of its poll.
#[derive(Clone)]
pub struct ReplyTo {
    pub(crate) tx: Sender<Done>,
    pub(crate) waker: Arc<Waker>,
}

impl ReplyTo {
    fn send(&self, done: Done) {
        // A loop that has exited no longer wants it.
        if self.tx.send(done).is_ok() {
            if let Err(e) = self.waker.wake() {
                tracing::warn!("cannot wake the loop for a finished request: {e}");
            }
        }
    }
}

/// Counts one running request down when it ends, panicking or not.
pub(crate) struct Running(pub(crate) Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// One request on its way to a pool.
pub struct Job {
    pub(crate) service: Arc<dyn Service>,
    pub(crate) request: Vec<u8>,
    pub(crate) conn: ConnId,
    pub(crate) seq: u64,
    pub(crate) reply: ReplyTo,
}

impl Job {
    /// Run the service on the calling thread and send the result back.
    pub fn run(self) {
        let mut response = Vec::new();
        let outcome = service::respond(&*self.service, &self.request, &mut response);
        self.finish(response, outcome);
    }

    fn finish(self, mut response: Vec<u8>, outcome: Result<Keep, ServiceError>) {
        if let Err(e) = &outcome {
            response.clear();
            service::reply_error(&*self.service, e, &mut response);
        }
        self.reply.send(Done {
            conn: self.conn,
            seq: self.seq,
            response,
            outcome,
        });
    }
}

/// A finished request: its response bytes (the error reply when `outcome`
/// is an error) and what becomes of the connection.
pub struct Done {
    pub(crate) conn: ConnId,
    pub(crate) seq: u64,
    pub(crate) response: Vec<u8>,
    pub(crate) outcome: Result<Keep, ServiceError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_types_round_trip() {
        for name in ["blocking", "thread", "threadpool", "gthread", "gthreadpool"] {
            let t: HandlerType = name.parse().unwrap();
            assert_eq!(t.to_string(), name);
        }
        assert!("proc".parse::<HandlerType>().is_err());
    }
}
