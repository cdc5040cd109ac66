//! OS-thread pools: `-X thread` (a thread per request) and `-X threadpool`
//! (long-lived workers behind a bounded crossbeam queue).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};
use tracing::warn;

use mio::Waker;

use super::{HandlerType, Job, Pool, RoomWaiters, Running};

/// `-n` worker threads taking jobs from one bounded queue.
pub struct ThreadPool {
    tx: Sender<Job>,
    room: Arc<RoomWaiters>,
}

impl ThreadPool {
    /// Start `size` workers; at most `queue` jobs wait for one.
    pub fn new(size: usize, queue: usize) -> io::Result<ThreadPool> {
        let (tx, rx) = bounded::<Job>(queue.max(1));
        let room = Arc::new(RoomWaiters::default());
        for i in 0..size {
            let rx = rx.clone();
            let room = Arc::clone(&room);
            thread::Builder::new()
                .name(format!("gaidaros-worker-{i}"))
                // Ends when the pool (the only sender) is dropped.
                .spawn(move || {
                    while let Some(job) = next_job(&rx) {
                        // Taking a job freed a place in the queue.
                        room.wake_all();
                        job.run();
                    }
                })?;
        }
        Ok(ThreadPool { tx, room })
    }
}

/// How long an idle worker polls the queue before it sleeps: a request
/// that follows within this time is taken without a wake-up (tens of
/// microseconds on a virtual machine).
const SPIN: Duration = Duration::from_micros(50);

/// The next job: polled for [`SPIN`], then waited for. `None` once the pool
/// is gone.
fn next_job(rx: &Receiver<Job>) -> Option<Job> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if start.elapsed() < SPIN => std::hint::spin_loop(),
            Err(TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

impl Pool for ThreadPool {
    fn submit(&self, job: Job) -> Result<(), Job> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => Err(job),
        }
    }

    fn notify_room(&self, waker: &Arc<Waker>) {
        self.room.add(waker);
    }

    fn kind(&self) -> HandlerType {
        HandlerType::ThreadPool
    }
}

/// A new OS thread for every request, at most `limit` running at once.
pub struct ThreadPerRequest {
    running: Arc<AtomicUsize>,
    room: Arc<RoomWaiters>,
    limit: usize,
}

impl ThreadPerRequest {
    /// At most `limit` request threads at once.
    pub fn new(limit: usize) -> ThreadPerRequest {
        ThreadPerRequest {
            running: Arc::new(AtomicUsize::new(0)),
            room: Arc::new(RoomWaiters::default()),
            limit,
        }
    }
}

impl Pool for ThreadPerRequest {
    fn submit(&self, mut job: Job) -> Result<(), Job> {
        if self.running.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return Err(job);
        }
        job.running = Some(Running {
            count: Arc::clone(&self.running),
            room: Arc::clone(&self.room),
        });
        // The thread takes the job from this slot; if it cannot be started,
        // the job is still there to give back.
        let slot = Arc::new(Mutex::new(Some(job)));
        let theirs = Arc::clone(&slot);
        let spawned = thread::Builder::new()
            .name("gaidaros-request".into())
            .spawn(move || {
                let job = theirs.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(job) = job {
                    job.run();
                }
            });
        match spawned {
            Ok(_) => Ok(()),
            Err(e) => {
                warn!("cannot start a request thread: {e}");
                // The closure was dropped unrun: the job is still in the slot.
                let job = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                job.map_or(Ok(()), |mut job| {
                    // Its place in the count goes with it.
                    drop(job.running.take());
                    Err(job)
                })
            }
        }
    }

    fn notify_room(&self, waker: &Arc<Waker>) {
        self.room.add(waker);
    }

    fn kind(&self) -> HandlerType {
        HandlerType::Thread
    }
}
