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
pub(crate) mod offload;
mod procs;
mod threads;
pub mod wire;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::poll::Waker;
use crossbeam_channel::Sender;

use crate::protocol::ConnId;
use crate::service::{self, Keep, Service, ServiceError};

pub use green::GreenPool;
pub use offload::OffloadPool;
pub use procs::{serve_worker, ProcPerRequest, ProcPool, WorkerCommand, WORKER_FLAG};
pub use threads::{ThreadPerRequest, ThreadPool};

/// Where requests run (`-X`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecMode {
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
    /// A new worker process per request (at most `-n` at once).
    Proc,
    /// `-n` long-lived worker processes, respawned when they die.
    ProcPool,
}

impl ExecMode {
    /// Every accepted spelling, for messages.
    pub const NAMES: &'static str =
        "blocking, thread, threadpool, gthread, gthreadpool, proc or procpool";
}

impl FromStr for ExecMode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "blocking" => ExecMode::Blocking,
            "thread" => ExecMode::Thread,
            "threadpool" => ExecMode::ThreadPool,
            "gthread" => ExecMode::Gthread,
            "gthreadpool" => ExecMode::GthreadPool,
            "proc" => ExecMode::Proc,
            "procpool" => ExecMode::ProcPool,
            _ => return Err(()),
        })
    }
}

impl fmt::Display for ExecMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExecMode::Blocking => "blocking",
            ExecMode::Thread => "thread",
            ExecMode::ThreadPool => "threadpool",
            ExecMode::Gthread => "gthread",
            ExecMode::GthreadPool => "gthreadpool",
            ExecMode::Proc => "proc",
            ExecMode::ProcPool => "procpool",
        })
    }
}

/// Build the pool for `kind` with `size` workers (or in-flight requests),
/// `queue` jobs waiting at most. `None` for [`ExecMode::Blocking`]; an
/// error for the process types, which need [`build_with`].
pub fn build(kind: ExecMode, size: usize, queue: usize) -> std::io::Result<Option<Arc<dyn Pool>>> {
    build_with(kind, size, queue, None)
}

/// [`build`], with `worker`: how to start the binary as a worker process
/// (`-X proc`, `-X procpool`).
pub fn build_with(
    kind: ExecMode,
    size: usize,
    queue: usize,
    worker: Option<&WorkerCommand>,
) -> std::io::Result<Option<Arc<dyn Pool>>> {
    let size = size.max(1);
    let need_worker = || {
        worker.cloned().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("-X {kind} re-executes the binary: start the server through gaidaros::run"),
            )
        })
    };
    Ok(match kind {
        ExecMode::Proc => Some(Arc::new(ProcPerRequest::new(size, need_worker()?))),
        ExecMode::ProcPool => Some(Arc::new(ProcPool::new(size, queue, need_worker()?)?)),
        ExecMode::Blocking => None,
        ExecMode::Thread => Some(Arc::new(ThreadPerRequest::new(size))),
        ExecMode::ThreadPool => Some(Arc::new(ThreadPool::new(size, queue)?)),
        ExecMode::Gthread => Some(Arc::new(GreenPool::new(None, queue)?)),
        ExecMode::GthreadPool => Some(Arc::new(GreenPool::new(Some(size), queue)?)),
    })
}

/// Runs jobs somewhere other than the loop thread.
pub trait Pool: Send + Sync {
    /// Take `job`, or give it back when the pool is full. A loop that gets
    /// its job back calls [`Pool::notify_room`], then retries once.
    fn submit(&self, job: Job) -> Result<(), Job>;

    /// Wake `waker` the next time the pool has room for a job. (Several
    /// loops share one pool: each must hear of room freed by any job.)
    fn notify_room(&self, waker: &Arc<Waker>);

    /// Its handler type, for logs.
    fn kind(&self) -> ExecMode;
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

/// The loops waiting for room in a pool, woken when a job leaves it.
#[derive(Default)]
pub(crate) struct RoomWaiters {
    any: AtomicBool,
    wakers: Mutex<Vec<Arc<Waker>>>,
}

impl RoomWaiters {
    pub(crate) fn add(&self, waker: &Arc<Waker>) {
        let mut w = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if !w.iter().any(|x| Arc::ptr_eq(x, waker)) {
            w.push(Arc::clone(waker));
        }
        self.any.store(true, Ordering::Release);
    }

    /// Room was made: wake every waiting loop (cheap when none waits).
    pub(crate) fn wake_all(&self) {
        if !self.any.swap(false, Ordering::AcqRel) {
            return;
        }
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in wakers {
            if let Err(e) = w.wake() {
                tracing::warn!("cannot wake a loop waiting for the pool: {e}");
            }
        }
    }
}

/// Counts one running request down when it ends, panicking or not, and
/// tells the waiting loops.
pub(crate) struct Running {
    pub(crate) count: Arc<AtomicUsize>,
    pub(crate) room: Arc<RoomWaiters>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.room.wake_all();
    }
}

/// A bounded queue of jobs, and the loops waiting for room in it: the
/// front of the pools with long-lived workers (threadpool, procpool).
pub(crate) struct JobQueue {
    tx: crossbeam_channel::Sender<Job>,
    room: Arc<RoomWaiters>,
}

impl JobQueue {
    /// A queue holding at most `capacity` jobs, and the end workers take
    /// them from (each take wakes the waiting loops).
    pub(crate) fn new(capacity: usize) -> (JobQueue, Taker) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let room = Arc::new(RoomWaiters::default());
        (
            JobQueue {
                tx,
                room: Arc::clone(&room),
            },
            Taker { rx, room },
        )
    }

    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        self.tx.try_send(job).map_err(|e| e.into_inner())
    }

    pub(crate) fn notify_room(&self, waker: &Arc<Waker>) {
        self.room.add(waker);
    }
}

/// The workers' end of a [`JobQueue`].
#[derive(Clone)]
pub(crate) struct Taker {
    rx: crossbeam_channel::Receiver<Job>,
    room: Arc<RoomWaiters>,
}

impl Taker {
    /// The next job, polled for `spin` before sleeping (zero: sleep at
    /// once); `None` once the queue is gone. Taking it frees a place, so the
    /// loops waiting for room are woken.
    pub(crate) fn next(&self, spin: std::time::Duration) -> Option<Job> {
        use crossbeam_channel::TryRecvError;
        let start = std::time::Instant::now();
        let job = loop {
            match self.rx.try_recv() {
                Ok(job) => break Some(job),
                Err(TryRecvError::Disconnected) => break None,
                Err(TryRecvError::Empty) if start.elapsed() < spin => std::hint::spin_loop(),
                Err(TryRecvError::Empty) => break self.rx.recv().ok(),
            }
        };
        if job.is_some() {
            self.room.wake_all();
        }
        job
    }
}

/// At most `limit` requests running at once, and the loops waiting for one
/// to end: the admission of the pools that start something per request
/// (thread, proc) or run tasks (gthread, gthreadpool).
pub(crate) struct Admission {
    count: Arc<AtomicUsize>,
    room: Arc<RoomWaiters>,
    limit: usize,
}

impl Admission {
    pub(crate) fn new(limit: usize) -> Admission {
        Admission {
            count: Arc::new(AtomicUsize::new(0)),
            room: Arc::new(RoomWaiters::default()),
            limit: limit.max(1),
        }
    }

    /// A place for one more request, or `None` at the limit. Dropping the
    /// [`Running`] frees it and wakes the waiting loops.
    pub(crate) fn admit(&self) -> Option<Running> {
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Running {
            count: Arc::clone(&self.count),
            room: Arc::clone(&self.room),
        })
    }

    pub(crate) fn notify_room(&self, waker: &Arc<Waker>) {
        self.room.add(waker);
    }
}

/// Run `body(job)` on a new thread named `name`. If the thread cannot be
/// started the job comes back (with any count it held released), for the
/// loop to retry.
pub(crate) fn spawn_with_job(
    name: &str,
    job: Job,
    body: impl FnOnce(Job) + Send + 'static,
) -> Result<(), Job> {
    // The thread takes the job from this slot; if it cannot be started,
    // the job is still there to give back.
    let slot = Arc::new(Mutex::new(Some(job)));
    let theirs = Arc::clone(&slot);
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let job = theirs.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(job) = job {
                body(job);
            }
        });
    match spawned {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!("cannot start a {name} thread: {e}");
            // The closure was dropped unrun: the job is still in the slot.
            let job = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            job.map_or(Ok(()), |mut job| {
                drop(job.running.take());
                Err(job)
            })
        }
    }
}

/// One request on its way to a pool.
pub struct Job {
    pub(crate) service: Arc<dyn Service>,
    /// The listener's index, which names the service in worker processes.
    pub(crate) listener: u32,
    pub(crate) request: Vec<u8>,
    pub(crate) conn: ConnId,
    pub(crate) seq: u64,
    pub(crate) reply: ReplyTo,
    /// The pool's count of this running request: released before the
    /// result goes back, so the loop that gets it finds the room it freed.
    pub(crate) running: Option<Running>,
}

impl Job {
    /// Run the service on the calling thread and send the result back.
    pub fn run(self) {
        let mut response = Vec::new();
        let outcome = service::respond(&*self.service, &self.request, &mut response);
        self.finish(response, outcome);
    }

    /// Send the result back; for an error, the response is replaced by the
    /// service's error reply.
    pub(crate) fn finish(self, mut response: Vec<u8>, outcome: Result<Keep, ServiceError>) {
        if let Err(e) = &outcome {
            response.clear();
            service::reply_error(&*self.service, e, &mut response);
        }
        self.finish_raw(response, outcome);
    }

    /// Send the result back as it is (a worker process rendered it).
    pub(crate) fn finish_raw(mut self, response: Vec<u8>, outcome: Result<Keep, ServiceError>) {
        drop(self.running.take());
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
        for name in [
            "blocking",
            "thread",
            "threadpool",
            "gthread",
            "gthreadpool",
            "proc",
            "procpool",
        ] {
            let t: ExecMode = name.parse().unwrap();
            assert_eq!(t.to_string(), name);
        }
        assert!("process".parse::<ExecMode>().is_err());
    }
}
