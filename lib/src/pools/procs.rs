//! Worker processes: `-X procpool` keeps `-n` of them, `-X proc` starts
//! one per request. A worker is the server's own binary re-executed with
//! `--pool-worker` and the same command line and environment, so it reads
//! the same conf and builds the same handlers from the same registry
//! (custom handler crates included). It talks to the server over a unix
//! socketpair on its stdin/stdout, in [`super::wire`] frames.
//!
//! Nothing is forked from the threaded server: the worker is a fresh
//! `exec` of the binary. A worker that dies (abort, segfault, `kill -9`)
//! fails the request it was running with the service's error reply; the
//! pool starts a new one (at most one start per 200 ms per slot, logged).

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::wire::{self, Kind};
use crate::poll::Waker;

use super::{spawn_with_job, Admission, ExecMode, Job, JobQueue, Pool};
use crate::service::{self, Keep, Service, ServiceError};

/// The flag that starts the binary as a pool worker.
pub const WORKER_FLAG: &str = "--pool-worker";

/// Least time between two starts of the worker in one pool slot.
const RESPAWN_GAP: Duration = Duration::from_millis(200);

/// How to start a worker: the server's binary and its arguments.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The executable (the running binary).
    pub exe: PathBuf,
    /// The server's arguments (without the program name); the worker flag
    /// is added.
    pub args: Vec<String>,
}

impl WorkerCommand {
    /// The running binary with these arguments.
    pub fn current(args: &[String]) -> io::Result<WorkerCommand> {
        Ok(WorkerCommand {
            exe: std::env::current_exe()?,
            args: args.to_vec(),
        })
    }
}

/// One worker process and the server's end of its socketpair.
struct Worker {
    child: Child,
    sock: UnixStream,
    buf: Vec<u8>,
}

impl Worker {
    fn start(cmd: &WorkerCommand) -> io::Result<Worker> {
        let (ours, theirs) = UnixStream::pair()?;
        let theirs: OwnedFd = theirs.into();
        let theirs_out = theirs.try_clone()?;
        let child = Command::new(&cmd.exe)
            .args(&cmd.args)
            .arg(WORKER_FLAG)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::from(theirs_out))
            .stderr(Stdio::inherit())
            .spawn()?;
        debug!(pid = child.id(), "worker process started");
        Ok(Worker {
            child,
            sock: ours,
            buf: Vec::new(),
        })
    }

    /// Send one request, wait for its response.
    fn call(&mut self, listener: u32, request: &[u8]) -> io::Result<(Kind, Vec<u8>)> {
        let mut frame = Vec::with_capacity(request.len() + 8);
        wire::encode_request(listener, request, &mut frame);
        self.sock.write_all(&frame)?;
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match wire::decode_response(&self.buf) {
                Ok(Some((kind, body, _))) => return Ok((kind, self.buf[body].to_vec())),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
            let n = self.sock.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Close its socket, then reap it (it exits on end of input; one that
    /// does not within a second is killed).
    fn stop(mut self) -> Option<std::process::ExitStatus> {
        drop(self.sock);
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = self.child.kill();
                    return self.child.wait().ok();
                }
            }
        }
    }
}

/// Run `job` in `worker`; on a worker failure the job gets the error reply
/// and the worker is gone (returns false).
fn run_in(worker: &mut Worker, job: Job) -> bool {
    match worker.call(job.listener, &job.request) {
        Ok((kind, body)) => {
            let outcome = match kind {
                Kind::Alive => Ok(Keep::Alive),
                Kind::Close => Ok(Keep::Close),
                // The body is the error reply the worker rendered.
                Kind::Error => {
                    job.finish_raw(body, Err(ServiceError::Internal("in worker".into())));
                    return true;
                }
            };
            job.finish_raw(body, outcome);
            true
        }
        Err(e) => {
            warn!(
                pid = worker.child.id(),
                "worker process failed during a request: {e}"
            );
            job.finish(
                Vec::new(),
                Err(ServiceError::Internal("worker process died".into())),
            );
            false
        }
    }
}

/// `-n` long-lived worker processes behind one bounded queue; each has a
/// thread in the server that feeds it one request at a time.
pub struct ProcPool {
    queue: JobQueue,
}

impl ProcPool {
    /// Start `size` workers with `cmd`; `queue` jobs wait at most.
    pub fn new(size: usize, queue: usize, cmd: WorkerCommand) -> io::Result<ProcPool> {
        let (queue, taker) = JobQueue::new(queue);
        for i in 0..size {
            let taker = taker.clone();
            let cmd = cmd.clone();
            // Start the first worker here, so a binary that cannot run as a
            // worker fails the server's start instead of every request.
            let first = Worker::start(&cmd)?;
            thread::Builder::new()
                .name(format!("gaidaros-procpool-{i}"))
                .spawn(move || {
                    let mut worker = Some(first);
                    let mut started = Instant::now();
                    // No polling before sleeping: the worker process's
                    // wake-up dominates the round trip (measured).
                    while let Some(job) = taker.next(Duration::ZERO) {
                        // A worker that died while idle (killed, say) is
                        // replaced before it is given a request to fail.
                        if let Some(status) = worker
                            .as_mut()
                            .and_then(|w| w.child.try_wait().ok().flatten())
                        {
                            warn!(slot = i, %status, "idle worker process died; starting another");
                            worker = None;
                        }
                        let w = match worker.as_mut() {
                            Some(w) => w,
                            None => {
                                let since = started.elapsed();
                                if since < RESPAWN_GAP {
                                    thread::sleep(RESPAWN_GAP - since);
                                }
                                started = Instant::now();
                                match Worker::start(&cmd) {
                                    Ok(w) => {
                                        info!(
                                            slot = i,
                                            pid = w.child.id(),
                                            "worker process respawned"
                                        );
                                        worker.insert(w)
                                    }
                                    Err(e) => {
                                        error!(slot = i, "cannot start a worker process: {e}");
                                        job.finish(
                                            Vec::new(),
                                            Err(ServiceError::Internal("no worker process".into())),
                                        );
                                        continue;
                                    }
                                }
                            }
                        };
                        if !run_in(w, job) {
                            if let Some(dead) = worker.take() {
                                let status = dead.stop();
                                warn!(slot = i, ?status, "worker process died; starting another");
                            }
                        }
                    }
                    if let Some(w) = worker {
                        w.stop();
                    }
                })?;
        }
        Ok(ProcPool { queue })
    }
}

impl Pool for ProcPool {
    fn submit(&self, job: Job) -> Result<(), Job> {
        self.queue.submit(job)
    }

    fn notify_room(&self, waker: &Arc<Waker>) {
        self.queue.notify_room(waker);
    }

    fn kind(&self) -> ExecMode {
        ExecMode::ProcPool
    }
}

/// A new worker process for every request (like inetd), at most `limit`
/// at once; a thread in the server waits for each.
pub struct ProcPerRequest {
    admission: Admission,
    cmd: WorkerCommand,
}

impl ProcPerRequest {
    /// At most `limit` request processes at once, started with `cmd`.
    pub fn new(limit: usize, cmd: WorkerCommand) -> ProcPerRequest {
        ProcPerRequest {
            admission: Admission::new(limit),
            cmd,
        }
    }
}

impl Pool for ProcPerRequest {
    fn submit(&self, job: Job) -> Result<(), Job> {
        // Held until the process has exited: -n bounds processes, not
        // requests. Its release wakes the loops waiting for room.
        let Some(running) = self.admission.admit() else {
            return Err(job);
        };
        let cmd = self.cmd.clone();
        spawn_with_job("gaidaros-proc", job, move |job| {
            let _running = running;
            match Worker::start(&cmd) {
                Ok(mut w) => {
                    run_in(&mut w, job);
                    w.stop();
                }
                Err(e) => {
                    error!("cannot start a request process: {e}");
                    job.finish(
                        Vec::new(),
                        Err(ServiceError::Internal("no worker process".into())),
                    );
                }
            }
        })
    }

    fn notify_room(&self, waker: &Arc<Waker>) {
        self.admission.notify_room(waker);
    }

    fn kind(&self) -> ExecMode {
        ExecMode::Proc
    }
}

/// The worker's side: answer request frames on stdin with response frames
/// on stdout, with `services[listener]` (None for a listener whose handler
/// is a protocol), until stdin ends. Returns the process's exit code.
pub fn serve_worker(services: &[Option<Arc<dyn Service>>]) -> ExitCode {
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut response = Vec::new();
    let mut frame = Vec::new();
    loop {
        let (listener, body, used) = match wire::decode_request(&buf) {
            Ok(Some(f)) => f,
            Ok(None) => match input.read(&mut chunk) {
                Ok(0) => return ExitCode::SUCCESS,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("gaidaros worker: reading requests: {e}");
                    return ExitCode::FAILURE;
                }
            },
            Err(e) => {
                eprintln!("gaidaros worker: bad request frame: {e}");
                return ExitCode::FAILURE;
            }
        };
        response.clear();
        let outcome = match services.get(listener as usize) {
            Some(Some(s)) => {
                let outcome = service::respond(&**s, &buf[body], &mut response);
                if let Err(e) = &outcome {
                    response.clear();
                    service::reply_error(&**s, e, &mut response);
                }
                outcome
            }
            _ => {
                response.extend_from_slice(b"ERR internal error: no service for this listener\n");
                Err(ServiceError::Internal("no service".into()))
            }
        };
        buf.drain(..used);
        frame.clear();
        wire::encode_response(wire::kind_of(&outcome), &response, &mut frame);
        if let Err(e) = output.write_all(&frame).and_then(|()| output.flush()) {
            eprintln!("gaidaros worker: writing a response: {e}");
            return ExitCode::FAILURE;
        }
    }
}
