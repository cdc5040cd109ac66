//! `-S procpool`: a master process and `-N` worker processes; and `-S
//! proc`, a worker process per connection ([`run_per_connection`]).
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

use crate::net::{self, BindSpec};
use crate::settings::Settings;
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
        let ready = sys::send_fds(&ours, b'L', &fds).and_then(|()| {
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
    let Some((mut signals, listeners, exe)) =
        prepare(settings, &[SIGINT, SIGTERM, SIGHUP, SIGCHLD])
    else {
        return ExitCode::FAILURE;
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
        let sigs: Vec<i32> = if slots.iter().any(Option::is_none) {
            // A slot whose worker could not be restarted: try again each
            // second until it can, still answering signals.
            std::thread::sleep(RESTART_GAP);
            signals.pending().collect()
        } else {
            signals.wait().collect()
        };
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
                match spawner.start() {
                    Ok(w) => {
                        info!(slot = i, "worker restarted");
                        *slot = Some(w);
                    }
                    Err(e) => error!(slot = i, "cannot restart the worker: {e}"),
                }
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

/// What both masters need before their first worker: the signals caught
/// (before anything can fail in a way that must be signalled), every
/// listener bound, the binary to re-execute. `None` after saying why.
fn prepare(
    settings: &Settings,
    caught: &[i32],
) -> Option<(Signals, Vec<std::net::TcpListener>, std::path::PathBuf)> {
    let signals = match Signals::new(caught) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gaidaros: cannot install signal handlers: {e}");
            return None;
        }
    };
    Some((signals, bind_all(settings)?, own_binary()?))
}

/// Bind every listener once (one socket each, shared by the workers).
fn bind_all(settings: &Settings) -> Option<Vec<std::net::TcpListener>> {
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
                return None;
            }
        }
    }
    Some(listeners)
}

fn own_binary() -> Option<std::path::PathBuf> {
    match std::env::current_exe() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("gaidaros: cannot find the running binary to start workers: {e}");
            None
        }
    }
}

/// The flag that starts the binary as a `-S proc` connection worker.
pub const CONN_WORKER_FLAG: &str = "--conn-worker";

/// A connection worker, the master's end of its control socket, and the
/// index of the listener that accepted its connection.
struct ConnWorker {
    listener: usize,
    worker: Worker,
}

/// `-S proc`: accept on every listener (a thread each) and start a worker
/// process per connection, handing it the connection (SCM_RIGHTS) tagged
/// with its listener's index: one crash takes one connection with it. At
/// most `max_connections` workers per listener at once (accepting waits).
/// SIGINT/SIGTERM: stop accepting, SIGTERM to every worker, wait for them
/// to drain, exit 0.
pub fn run_per_connection(settings: &Settings, args: &[String]) -> ExitCode {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let Some((mut signals, listeners, exe)) = prepare(settings, &[SIGINT, SIGTERM, SIGCHLD]) else {
        return ExitCode::FAILURE;
    };
    let live: Arc<Mutex<Vec<ConnWorker>>> = Arc::new(Mutex::new(Vec::new()));
    let reap = |live: &Mutex<Vec<ConnWorker>>| {
        let mut l = live.lock().unwrap_or_else(|p| p.into_inner());
        l.retain_mut(|w| !matches!(w.worker.child.try_wait(), Ok(Some(_))));
    };
    let stopping = Arc::new(AtomicBool::new(false));
    if u8::try_from(listeners.len()).is_err() {
        eprintln!("gaidaros: -S proc serves at most 255 listeners");
        return ExitCode::FAILURE;
    }
    for (li, listener) in listeners.into_iter().enumerate() {
        let (live, stopping) = (Arc::clone(&live), Arc::clone(&stopping));
        let (exe, args) = (exe.clone(), args.to_vec());
        let limit = settings.listeners[li].limits.max_connections;
        let name = settings.listeners[li].name.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("gaidaros-accept-{li}"))
            .spawn(move || loop {
                reap(&live);
                let busy = live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .filter(|w| w.listener == li)
                    .count();
                if busy >= limit {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                let stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) => {
                        warn!(listener = %name, "accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if stopping.load(Ordering::SeqCst) {
                    continue;
                }
                let started = UnixStream::pair().and_then(|(ours, theirs)| {
                    let theirs: std::os::fd::OwnedFd = theirs.into();
                    let child = Command::new(&exe)
                        .args(&args)
                        .arg(CONN_WORKER_FLAG)
                        .stdin(Stdio::from(theirs))
                        .stdout(Stdio::null())
                        .stderr(Stdio::inherit())
                        .spawn()?;
                    let worker = Worker {
                        child,
                        started: Instant::now(),
                        _ctl: ours,
                    };
                    sys::send_fds(&worker._ctl, li as u8, &[stream.as_fd()])?;
                    Ok(worker)
                });
                match started {
                    Ok(worker) => live
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(ConnWorker {
                            listener: li,
                            worker,
                        }),
                    Err(e) => error!(listener = %name, "cannot start a connection worker: {e}"),
                }
            });
        if let Err(e) = spawned {
            eprintln!("gaidaros: cannot start the accept thread: {e}");
            return ExitCode::FAILURE;
        }
    }
    info!(server = "proc", "serving");
    loop {
        let sigs: Vec<i32> = signals.wait().collect();
        if sigs.iter().any(|s| *s == SIGINT || *s == SIGTERM) {
            info!("shutting down: connection workers drain");
            stopping.store(true, Ordering::SeqCst);
            let workers: Vec<Worker> = live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
                .map(|w| w.worker)
                .collect();
            stop_all(&mut [], workers, settings.server.drain_timeout);
            info!("stopped");
            return ExitCode::SUCCESS;
        }
        // SIGCHLD: reap.
        reap(&live);
    }
}

/// A `-S proc` worker's connection and its listener's index, from the
/// master over stdin.
pub fn worker_connection() -> std::io::Result<(UnixStream, usize, std::net::TcpStream)> {
    let ctl = sys::stdin_socket()?;
    let (tag, mut fds) = sys::recv_fds(&ctl, 1)?;
    let fd = fds.pop().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "no connection passed")
    })?;
    Ok((ctl, tag as usize, std::net::TcpStream::from(fd)))
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
    let (_, fds) = sys::recv_fds(&ctl, count)?;
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
