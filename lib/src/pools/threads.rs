//! OS-thread pools: `-X thread` (a thread per request) and `-X threadpool`
//! (long-lived workers behind a bounded crossbeam queue).

use std::io;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::poll::Waker;

use super::{spawn_with_job, Admission, ExecMode, Job, JobQueue, Pool};

/// How long an idle worker polls the queue before it sleeps: a request
/// that follows within this time is taken without a wake-up (tens of
/// microseconds on a virtual machine).
const SPIN: Duration = Duration::from_micros(50);

/// `-n` worker threads taking jobs from one bounded queue.
pub struct ThreadPool {
    queue: JobQueue,
}

impl ThreadPool {
    /// Start `size` workers; at most `queue` jobs wait for one.
    pub fn new(size: usize, queue: usize) -> io::Result<ThreadPool> {
        let (queue, taker) = JobQueue::new(queue);
        for i in 0..size {
            let taker = taker.clone();
            thread::Builder::new()
                .name(format!("gaidaros-worker-{i}"))
                // Ends when the pool (the only sender) is dropped.
                .spawn(move || {
                    while let Some(job) = taker.next(SPIN) {
                        job.run();
                    }
                })?;
        }
        Ok(ThreadPool { queue })
    }
}

impl Pool for ThreadPool {
    fn submit(&self, job: Job) -> Result<(), Job> {
        self.queue.submit(job)
    }

    fn notify_room(&self, waker: &Arc<Waker>) {
        self.queue.notify_room(waker);
    }

    fn kind(&self) -> ExecMode {
        ExecMode::ThreadPool
    }
}

/// A new OS thread for every request, at most `limit` running at once.
pub struct ThreadPerRequest {
    admission: Admission,
}

impl ThreadPerRequest {
    /// At most `limit` request threads at once.
    pub fn new(limit: usize) -> ThreadPerRequest {
        ThreadPerRequest {
            admission: Admission::new(limit),
        }
    }
}

impl Pool for ThreadPerRequest {
    fn submit(&self, mut job: Job) -> Result<(), Job> {
        let Some(running) = self.admission.admit() else {
            return Err(job);
        };
        // Released when the job answers (see Job::finish_raw).
        job.running = Some(running);
        spawn_with_job("gaidaros-request", job, Job::run)
    }

    fn notify_room(&self, waker: &Arc<Waker>) {
        self.admission.notify_room(waker);
    }

    fn kind(&self) -> ExecMode {
        ExecMode::Thread
    }
}
