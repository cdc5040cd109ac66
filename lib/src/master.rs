//! `-S procpool`: a master process and `-N` worker processes.
//!
//! The master binds every listener once, then starts each worker by
//! re-executing its own binary with `--server-worker` and the same command
//! line (nothing is forked from a process that runs threads). A worker gets
//! a unix socketpair as its stdin; the master sends the listening sockets
//! over it (SCM_RIGHTS); the worker builds one loop on them, answers one
//! byte when it is serving, and runs until SIGTERM, draining like any
//! gaidaros server. All workers accept from the same sockets, which the
//! master keeps open, so connections queue in the kernel while workers come
//! and go.
//!
//! ```text
//!  master ── bind ── spawn worker ──fds──► worker: Loop on the fds ── "R"
//!    │ SIGCHLD: an unexpected exit is logged and the slot restarted
//!    │          (at most once a second per slot)
//!    │ SIGHUP:  the conf is checked; then per slot: start a new worker,
//!    │          wait for its "R", SIGTERM the old one (it drains)
//!    └ SIGINT/SIGTERM: SIGTERM to every worker, wait, exit 0
//! ```
//!
//! A reload re-reads everything the workers read (handlers, limits, pools);
//! the listening addresses stay those bound at start.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::net::{self, BindSpec};
use crate::sys;

/// The flag that starts the binary as a `-S procpool` worker.
pub const SERVER_WORKER_FLAG: &str = "--server-worker";

/// How long a new worker may take to report it is serving.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Least time between two restarts of a crashed worker in one slot.
const RESTART_GAP: Duration = Duration::from_secs(1);

struct Worker {
    child: Child,
    started: Instant,
    /// The master's end of the control socket: while it is open the worker
    /// knows the master is alive.
    _ctl: UnixStream,
}

/// Everything the master needs to start a worker.
struct Spawner {
    exe: std::path::PathBuf,
    args: Vec<String>,
    listeners: Vec<std::net::TcpListener>,
}

impl Spawner {
    /// Start a worker, hand it the listening sockets, wait until it serves.
    fn start(&self) -> std::io::Result<Worker> {
        let (ours, theirs) = UnixStream::pair()?;
        let theirs: std::os::fd::OwnedFd = theirs.into();
        let mut child = Command::new(&self.exe)
            .args(&self.args)
            .arg(SERVER_WORKER_FLAG)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let started = Instant::now();
        let fds: Vec<_> = self.listeners.iter().map(|l| l.as_fd()).collect();
        let ready = sys::send_fds(&ours, &fds).and_then(|()| {
            ours.set_read_timeout(Some(READY_TIMEOUT))?;
            let mut byte = [0u8; 1];
            loop {
                // SIGCHLD from another worker interrupts the wait.
                match (&ours).read(&mut byte) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Ok(1) if byte[0] == b'R' => return Ok(()),
                    Ok(_) => return Err(std::io::Error::other("the worker exited before serving")),
                    Err(e) => return Err(e),
                }
            }
        });
        if let Err(e) = ready {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        info!(pid = child.id(), "worker serving");
        Ok(Worker {
            child,
            started,
            _ctl: ours,
        })
    }
}

fn term(w: &Worker) {
    let _ = kill(Pid::from_raw(w.child.id() as i32), Signal::SIGTERM);
}

/// Run the master: bind, start `settings.server.loops` workers, supervise.
/// `args` is the command line without the program name; `reload` reads
/// the settings again (for SIGHUP) so a broken conf is refused before any
/// worker is replaced.
pub fn run(
    settings: &Settings,
    args: &[String],
    reload: impl Fn() -> Result<Settings, String>,
) -> ExitCode {
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP, SIGCHLD]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gaidaros: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut listeners = Vec::new();
    for l in &settings.listeners {
        let bound = net::resolve(&l.host, l.port, l.ip_version).and_then(|addr| {
            net::bind(&BindSpec {
                addr,
                version: l.ip_version,
                backlog: l.backlog,
                reuseport: false,
            })
        });
        match bound.and_then(|s| s.local_addr().map(|a| (s, a))) {
            Ok((sock, addr)) => {
                info!(listener = %l.name, %addr, handler = %l.handler, "listening");
                listeners.push(sock);
            }
            Err(e) => {
                eprintln!("gaidaros: listener {}: cannot bind: {e}", l.name);
                return ExitCode::FAILURE;
            }
        }
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("gaidaros: cannot find the running binary to start workers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let spawner = Spawner {
        exe,
        args: args.to_vec(),
        listeners,
    };
    let n = settings.server.loops.max(1);
    let mut slots: Vec<Option<Worker>> = Vec::new();
    for i in 0..n {
        match spawner.start() {
            Ok(w) => slots.push(Some(w)),
            Err(e) => {
                eprintln!("gaidaros: cannot start worker {i}: {e}");
                stop_all(&mut slots, Vec::new(), settings.server.drain_timeout);
                return ExitCode::FAILURE;
            }
        }
    }
    info!(server = "procpool", workers = n, "serving");
    // Old workers draining after a reload: reaped, never restarted.
    let mut retiring: Vec<Worker> = Vec::new();
    let mut drain = settings.server.drain_timeout;
    let mut pending_hup = false;
    loop {
        let sigs: Vec<i32> = signals.wait().collect();
        for sig in sigs {
            match sig {
                SIGCHLD => {}
                SIGHUP => pending_hup = true,
                _ => {
                    info!(signal = sig, "shutting down: workers drain");
                    stop_all(&mut slots, retiring, drain);
                    info!("stopped");
                    return ExitCode::SUCCESS;
                }
            }
        }
        // Reap: retiring workers go; a serving worker that exits is restarted.
        retiring.retain_mut(|w| !matches!(w.child.try_wait(), Ok(Some(_))));
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(w) = slot.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = w.child.try_wait() {
                warn!(slot = i, pid = w.child.id(), %status, "worker exited; starting another");
                let gap = w.started.elapsed();
                if gap < RESTART_GAP {
                    std::thread::sleep(RESTART_GAP - gap);
                }
                *slot = match spawner.start() {
                    Ok(w) => Some(w),
                    Err(e) => {
                        error!(slot = i, "cannot restart the worker: {e}");
                        None
                    }
                };
            }
        }
        if pending_hup {
            pending_hup = false;
            match reload() {
                Err(e) => error!("reload refused, workers unchanged: {e}"),
                Ok(new) => {
                    drain = new.server.drain_timeout;
                    info!("reloading: replacing workers one by one");
                    for (i, slot) in slots.iter_mut().enumerate() {
                        match spawner.start() {
                            Ok(fresh) => {
                                if let Some(old) = slot.replace(fresh) {
                                    term(&old);
                                    retiring.push(old);
                                }
                            }
                            Err(e) => {
                                error!(
                                    slot = i,
                                    "reload: cannot start a new worker, keeping the old one: {e}"
                                );
                            }
                        }
                    }
                    info!("reload done");
                }
            }
        }
    }
}

/// SIGTERM every worker, wait for them to drain (the drain timeout and a
/// second more), then SIGKILL what is left.
fn stop_all(slots: &mut [Option<Worker>], mut retiring: Vec<Worker>, drain: Duration) {
    retiring.extend(slots.iter_mut().filter_map(Option::take));
    for w in &retiring {
        term(w);
    }
    let deadline = Instant::now() + drain + Duration::from_secs(1);
    while Instant::now() < deadline {
        retiring.retain_mut(|w| !matches!(w.child.try_wait(), Ok(Some(_))));
        if retiring.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for w in &mut retiring {
        warn!(pid = w.child.id(), "worker did not drain in time: killed");
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
}

/// The worker's side: take the listening sockets from the master over
/// stdin, and tell it when the loop is ready (`serve` builds the server and
/// calls `ready` once it is bound, before running).
pub fn worker_sockets(count: usize) -> std::io::Result<(UnixStream, Vec<std::net::TcpListener>)> {
    let ctl = sys::stdin_socket()?;
    let fds = sys::recv_fds(&ctl, count)?;
    if fds.len() != count {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("got {} listening sockets, expected {count}", fds.len()),
        ));
    }
    Ok((
        ctl,
        fds.into_iter().map(std::net::TcpListener::from).collect(),
    ))
}

/// Tell the master this worker is serving.
pub fn report_ready(mut ctl: &UnixStream) -> std::io::Result<()> {
    ctl.write_all(b"R")
}

/// A worker whose master is gone (killed, crashed) stops like on SIGTERM:
/// a thread waits for the end of the control socket.
pub fn stop_with_master(ctl: UnixStream, handles: Vec<crate::event_loop::LoopHandle>) {
    let spawned = std::thread::Builder::new()
        .name("gaidaros-master-watch".into())
        .spawn(move || {
            let mut buf = [0u8; 16];
            loop {
                match (&ctl).read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            warn!("the master is gone: stopping");
            for h in &handles {
                h.stop();
            }
        });
    if let Err(e) = spawned {
        warn!("cannot watch the master: {e}");
    }
}
