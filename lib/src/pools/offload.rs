//! The offload pool: blocking work of protocol sessions ([`crate::Ctx::offload`])
//! run off the loop threads.
//!
//! File operations (open, pread, pwrite, fsync, rename), hashing, crypto and
//! database writes would stall every connection of a loop if a session ran
//! them in a callback. It hands them here instead: a fixed set of threads
//! fed through a bounded queue. A full queue refuses the job at once (the
//! session gets it back); each finished job calls its reply, which posts the
//! result to the session's loop. A job that panics replies with the panic's
//! message; the thread goes on.
//!
//! The threads start with the first job, so a process that never offloads
//! (or a `-S procpool` master, whose workers fork after the pool is made)
//! has none; each worker process starts its own. They stop when the last
//! handle to the pool is dropped.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;
use std::thread;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tracing::warn;

use crate::Message;

/// A job and where its result goes.
pub(crate) struct Task {
    pub(crate) job: Box<dyn FnOnce() -> Message + Send>,
    pub(crate) reply: Box<dyn FnOnce(Result<Message, String>) + Send>,
}

/// Threads for blocking work, shared by every loop of a process.
pub struct OffloadPool {
    threads: usize,
    queue: usize,
    /// The queue's sending side, made with the threads at the first job.
    tx: Mutex<Option<Sender<Task>>>,
}

impl std::fmt::Debug for OffloadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffloadPool")
            .field("threads", &self.threads)
            .field("queue", &self.queue)
            .finish()
    }
}

impl Default for OffloadPool {
    /// 4 threads, 1024 jobs waiting (the conf's defaults).
    fn default() -> Self {
        OffloadPool::new(4, 1024)
    }
}

impl OffloadPool {
    /// A pool of `threads` threads with room for `queue` waiting jobs
    /// (each at least 1). No thread starts before the first job.
    pub fn new(threads: usize, queue: usize) -> Self {
        OffloadPool {
            threads: threads.max(1),
            queue: queue.max(1),
            tx: Mutex::new(None),
        }
    }

    /// Queue `task`; handed back when the queue is full (or no thread could
    /// be started).
    pub(crate) fn submit(&self, task: Task) -> Result<(), Task> {
        let tx = {
            let mut slot = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            match &*slot {
                Some(tx) => tx.clone(),
                None => match self.start() {
                    Some(tx) => slot.insert(tx).clone(),
                    None => return Err(task),
                },
            }
        };
        tx.try_send(task).map_err(|e| match e {
            TrySendError::Full(t) | TrySendError::Disconnected(t) => t,
        })
    }

    fn start(&self) -> Option<Sender<Task>> {
        let (tx, rx) = crossbeam_channel::bounded::<Task>(self.queue);
        let mut started = 0;
        for i in 0..self.threads {
            let rx = rx.clone();
            let spawned = thread::Builder::new()
                .name(format!("gaidaros-offload-{i}"))
                .spawn(move || work(rx));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => warn!("cannot start an offload thread: {e}"),
            }
        }
        (started > 0).then_some(tx)
    }
}

fn work(rx: Receiver<Task>) {
    // Ends when every sender is gone: the pool was dropped.
    for task in rx {
        let outcome = panic::catch_unwind(AssertUnwindSafe(task.job)).map_err(|payload| {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a job panicked".into());
            warn!("an offloaded job panicked: {msg}");
            msg
        });
        (task.reply)(outcome);
    }
}
