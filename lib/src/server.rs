//! Layer 4: how loops are laid out over the OS (`-S`).
//!
//! - `blocking`: one loop on the main thread;
//! - `thread`: `-N` loops, one thread each. With `reuseport = true` (the
//!   default, see docs/ARCHITECTURE.md for the measurement) every loop binds
//!   its own SO_REUSEPORT socket and the kernel spreads connections over
//!   them; with `false` all loops poll one shared listening socket.
//!
//! SIGINT and SIGTERM stop every loop: listeners close at once, responses
//! already queued are written (bounded by `drain_timeout`), then the process
//! exits 0. A second signal exits at once with status 1.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use crate::event_loop::{Bound, ListenerSetup, Loop, LoopHandle, LoopSettings};
use crate::handler::{Handler, Registry};
use crate::net::{self, BindSpec, ConnOptions};
use crate::poll::{self, PollType};
use crate::pools;
pub use crate::settings::ServerType;
use crate::settings::{ListenerSettings, Settings, Transport};

/// The process's offload pool (its threads start with the first job).
fn offload_pool(settings: &Settings) -> Arc<pools::OffloadPool> {
    Arc::new(pools::OffloadPool::new(
        settings.server.offload_threads,
        settings.server.offload_queue,
    ))
}

/// Each listener's handler and setup, with the process's handler pool (one,
/// shared by every service listener).
fn setups(
    settings: &Settings,
    registry: &Registry,
    worker: Option<&pools::WorkerCommand>,
) -> Result<Vec<Arc<ListenerSetup>>, ServeError> {
    let pool = pools::build_with(
        settings.server.handler_type,
        settings.server.pool_size,
        settings.server.pool_queue,
        worker,
    )
    .map_err(|e| ServeError::Io("cannot start the handler pool".into(), e))?;
    if let Some(p) = &pool {
        info!(
            handler_type = %p.kind(),
            size = settings.server.pool_size,
            "handler pool"
        );
    }
    settings
        .listeners
        .iter()
        .map(|l| {
            let handler =
                registry
                    .build(&l.handler, &l.options)
                    .map_err(|e| ServeError::Handler {
                        listener: l.name.clone(),
                        message: e.to_string(),
                    })?;
            if l.transport == Transport::Udp {
                udp_fits(l, &handler)?;
            }
            Ok(Arc::new(
                ListenerSetup::new(
                    l.name.clone(),
                    handler,
                    ConnOptions {
                        nodelay: l.nodelay,
                        cork: l.cork,
                    },
                    l.coalesce,
                    l.limits.clone(),
                )
                .with_pool(pool.clone()),
            ))
        })
        .collect()
}

/// Can `handler` serve `-P udp` listener `l`? A service can; a protocol
/// only if its factory says so. (The server and handler types were
/// checked with the conf.)
fn udp_fits(l: &ListenerSettings, handler: &Handler) -> Result<(), ServeError> {
    match handler {
        Handler::Protocol(f) if !f.datagrams() => Err(ServeError::Handler {
            listener: l.name.clone(),
            message: format!(
                "{} is a stream protocol: it cannot serve protocol = udp (-P udp)",
                l.handler
            ),
        }),
        _ => Ok(()),
    }
}

/// Why the server could not start or failed while running.
#[derive(Debug)]
pub enum ServeError {
    /// A handler rejected its options.
    Handler {
        /// The listener.
        listener: String,
        /// Why.
        message: String,
    },
    /// A listener's host does not resolve to an address of its ip_version.
    Address {
        /// The listener.
        listener: String,
        /// Why.
        source: io::Error,
    },
    /// A listener could not be bound.
    Bind {
        /// The listener.
        listener: String,
        /// The address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// Any other OS failure (poll creation, signal setup, thread spawn).
    Io(String, io::Error),
    /// `-T completion` where the kernel refuses io_uring, with no
    /// `poll_fallback`.
    Uring(io::Error),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Handler { listener, message } => {
                write!(f, "listener {listener}: handler: {message}")
            }
            ServeError::Bind {
                listener,
                addr,
                source,
            } => write!(f, "listener {listener}: cannot listen on {addr}: {source}"),
            ServeError::Address { listener, source } => {
                write!(f, "listener {listener}: {source}")
            }
            ServeError::Io(what, e) => write!(f, "{what}: {e}"),
            ServeError::Uring(e) => write!(
                f,
                "-T completion: {}; set [server] poll_fallback = edge or level to run on epoll instead",
                poll::uring_refusal(e)
            ),
        }
    }
}

impl std::error::Error for ServeError {}

/// The backend the loops use: `-T completion` only where the kernel lets
/// this process set up an io_uring; otherwise `poll_fallback` (with a
/// warning) or an error naming the reason.
fn resolve_poll(settings: &Settings) -> Result<PollType, ServeError> {
    let wanted = settings.server.poll;
    if wanted != PollType::Completion {
        return Ok(wanted);
    }
    let Err(e) = poll::probe_uring() else {
        return Ok(wanted);
    };
    match settings.server.poll_fallback {
        Some(fallback) => {
            warn!(
                "{}; using -T {fallback} instead (poll_fallback)",
                poll::uring_refusal(&e)
            );
            Ok(fallback)
        }
        None => Err(ServeError::Uring(e)),
    }
}

/// A bound, ready-to-run server: call [`Server::run`].
pub struct Server {
    loops: Vec<Loop>,
    handles: Vec<LoopHandle>,
    addrs: Vec<(String, SocketAddr)>,
    server_type: ServerType,
}

impl Server {
    /// Build handlers, bind every listener and create the loops.
    pub fn bind(settings: &Settings, registry: &Registry) -> Result<Server, ServeError> {
        Server::bind_with(settings, registry, None)
    }

    /// [`Server::bind`], with how to start the binary as a worker process
    /// (needed by `-X proc` and `-X procpool`).
    pub fn bind_with(
        settings: &Settings,
        registry: &Registry,
        worker: Option<&pools::WorkerCommand>,
    ) -> Result<Server, ServeError> {
        Server::bind_sockets(settings, registry, worker, None)
    }

    /// [`Server::bind_with`] on listening sockets bound elsewhere (a
    /// `-S procpool` master's), one per listener in settings order.
    pub fn bind_sockets(
        settings: &Settings,
        registry: &Registry,
        worker: Option<&pools::WorkerCommand>,
        mut given: Option<Vec<std::net::TcpListener>>,
    ) -> Result<Server, ServeError> {
        let n_loops = match settings.server.server_type {
            ServerType::Blocking | ServerType::ProcPool | ServerType::Proc => 1,
            ServerType::Thread => settings.server.loops.max(1),
        };
        let mut per_loop: Vec<Vec<(Bound, Arc<ListenerSetup>)>> =
            (0..n_loops).map(|_| Vec::new()).collect();
        let setups = setups(settings, registry, worker)?;
        let mut addrs = Vec::new();
        for (l, setup) in settings.listeners.iter().zip(setups) {
            let bind_err = |addr: String, source: io::Error| ServeError::Bind {
                listener: l.name.clone(),
                addr,
                source,
            };
            let addr = net::resolve(&l.host, l.port, l.ip_version).map_err(|source| {
                ServeError::Address {
                    listener: l.name.clone(),
                    source,
                }
            })?;
            let reuseport = settings.server.reuseport && n_loops > 1 && given.is_none();
            let mut spec = BindSpec {
                addr,
                version: l.ip_version,
                backlog: l.backlog,
                reuseport,
            };
            if l.transport == Transport::Udp {
                let bind = |at: SocketAddr| net::bind_udp_spec(at, reuseport, l.ip_version);
                let first = bind(addr).map_err(|e| bind_err(addr.to_string(), e))?;
                let local = first
                    .local_addr()
                    .map_err(|e| bind_err(addr.to_string(), e))?;
                let mut sockets = vec![first];
                for _ in 1..n_loops {
                    let sock = if reuseport {
                        bind(local)
                    } else {
                        sockets[0].try_clone()
                    }
                    .map_err(|e| bind_err(local.to_string(), e))?;
                    sockets.push(sock);
                }
                for (lp, sock) in per_loop.iter_mut().zip(sockets) {
                    lp.push((Bound::Udp(sock), setup.clone()));
                }
                info!(listener = %l.name, addr = %local, handler = %l.handler, protocol = %l.transport, "listening");
                addrs.push((l.name.clone(), local));
                continue;
            }
            let first = match given.as_mut() {
                Some(socks) if !socks.is_empty() => socks.remove(0),
                Some(_) => {
                    return Err(bind_err(
                        addr.to_string(),
                        io::Error::new(
                            io::ErrorKind::NotFound,
                            "no listening socket passed for it",
                        ),
                    ))
                }
                None => net::bind(&spec).map_err(|e| bind_err(addr.to_string(), e))?,
            };
            let local = first
                .local_addr()
                .map_err(|e| bind_err(addr.to_string(), e))?;
            // Port 0: every further socket binds the port the first one got.
            spec.addr = local;
            let mut sockets = vec![first];
            for _ in 1..n_loops {
                let sock = if reuseport {
                    net::bind(&spec)
                } else {
                    sockets[0].try_clone()
                }
                .map_err(|e| bind_err(local.to_string(), e))?;
                sockets.push(sock);
            }
            for (lp, sock) in per_loop.iter_mut().zip(sockets) {
                lp.push((Bound::Tcp(sock), setup.clone()));
            }
            if given.is_none() {
                info!(
                    listener = %l.name,
                    addr = %local,
                    handler = %l.handler,
                    "listening"
                );
            }
            addrs.push((l.name.clone(), local));
        }
        let loop_settings = LoopSettings {
            drain_timeout: settings.server.drain_timeout,
            exit_when_idle: false,
            poll: resolve_poll(settings)?,
            // Sockets handed over by a procpool master are shared with the
            // other workers.
            shared_listeners: given.is_some(),
            offload: offload_pool(settings),
            timer_slack: settings.server.timer_slack,
        };
        let mut loops = Vec::new();
        let mut handles = Vec::new();
        for listeners in per_loop {
            let (lp, handle) = Loop::new(listeners, loop_settings.clone())
                .map_err(|e| ServeError::Io("cannot create event loop".into(), e))?;
            loops.push(lp);
            handles.push(handle);
        }
        Ok(Server {
            loops,
            handles,
            addrs,
            server_type: settings.server.server_type,
        })
    }

    /// A server of one loop that serves `stream`, accepted by a `-S proc`
    /// master on listener `listener`, and returns when it closes.
    pub fn for_connection(
        settings: &Settings,
        registry: &Registry,
        worker: Option<&pools::WorkerCommand>,
        listener: usize,
        stream: std::net::TcpStream,
    ) -> Result<Server, ServeError> {
        let setups = setups(settings, registry, worker)?;
        let (lp, handle) = Loop::for_connection(
            setups,
            listener,
            stream,
            LoopSettings {
                drain_timeout: settings.server.drain_timeout,
                exit_when_idle: true,
                poll: resolve_poll(settings)?,
                shared_listeners: false,
                offload: offload_pool(settings),
                timer_slack: settings.server.timer_slack,
            },
        )
        .map_err(|e| ServeError::Io("cannot serve the connection".into(), e))?;
        Ok(Server {
            loops: vec![lp],
            handles: vec![handle],
            addrs: Vec::new(),
            server_type: ServerType::Blocking,
        })
    }

    /// The bound address of each listener, by name.
    pub fn local_addrs(&self) -> &[(String, SocketAddr)] {
        &self.addrs
    }

    /// Handles that stop the loops (the same as a SIGTERM).
    pub fn handles(&self) -> Vec<LoopHandle> {
        self.handles.clone()
    }

    /// Run until every loop has stopped. With `signals` (see
    /// [`SignalWatch::install`]), SIGINT and SIGTERM stop the loops
    /// gracefully.
    pub fn run(self, signals: Option<SignalWatch>) -> Result<(), ServeError> {
        if let Some(watch) = signals {
            watch.spawn(self.handles.clone())?;
        }
        info!(
            server = %self.server_type,
            loops = self.loops.len(),
            "serving"
        );
        let mut loops = self.loops;
        let mut result = Ok(());
        match self.server_type {
            ServerType::Blocking | ServerType::ProcPool | ServerType::Proc => {
                for lp in loops.drain(..) {
                    if let Err(e) = lp.run() {
                        result = Err(ServeError::Io("event loop".into(), e));
                    }
                }
            }
            ServerType::Thread => {
                let mut threads = Vec::new();
                for (i, lp) in loops.drain(..).enumerate() {
                    let t = thread::Builder::new()
                        .name(format!("gaidaros-loop-{i}"))
                        .spawn(move || lp.run())
                        .map_err(|e| ServeError::Io("cannot spawn loop thread".into(), e))?;
                    threads.push(t);
                }
                for t in threads {
                    match t.join() {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            error!("event loop failed: {e}");
                            result = Err(ServeError::Io("event loop".into(), e));
                        }
                        Err(_) => {
                            error!("event loop thread panicked");
                            result = Err(ServeError::Io(
                                "event loop".into(),
                                io::Error::other("loop thread panicked"),
                            ));
                        }
                    }
                }
            }
        }
        info!("stopped");
        result
    }
}

/// SIGINT/SIGTERM handling, installed before the listeners are bound so a
/// signal that arrives during start-up is never lost.
pub struct SignalWatch {
    signals: Signals,
}

impl SignalWatch {
    /// Catch SIGINT and SIGTERM from now on (they queue until
    /// [`Server::run`]).
    pub fn install() -> Result<SignalWatch, ServeError> {
        let signals = Signals::new([SIGINT, SIGTERM])
            .map_err(|e| ServeError::Io("cannot install signal handlers".into(), e))?;
        Ok(SignalWatch { signals })
    }

    /// A thread that turns the first signal into a graceful stop of
    /// `handles` and a second one into an immediate exit.
    fn spawn(self, handles: Vec<LoopHandle>) -> Result<(), ServeError> {
        let mut signals = self.signals;
        thread::Builder::new()
            .name("gaidaros-signals".into())
            .spawn(move || {
                let mut seen = 0;
                for sig in signals.forever() {
                    seen += 1;
                    if seen == 1 {
                        info!(signal = sig, "shutting down: draining pending responses");
                        for h in &handles {
                            h.stop();
                        }
                    } else {
                        warn!(signal = sig, "second signal: exiting without draining");
                        std::process::exit(1);
                    }
                }
            })
            .map_err(|e| ServeError::Io("cannot spawn signal thread".into(), e))?;
        Ok(())
    }
}
