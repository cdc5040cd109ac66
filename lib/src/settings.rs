//! The resolved settings a server is built from: plain data, made by
//! [`crate::config`] from its layers (defaults, conf file, environment,
//! flags) and read by the server types ([`crate::server`], the procpool
//! master) and the loops. A leaf: it names the types of the layers below
//! it and imports nothing that imports it back.

use std::fmt;
use std::time::Duration;

use crate::event_loop::Limits;
use crate::handler::Options;
use crate::net::IpVersion;
pub use crate::poll::PollType;
pub use crate::pools::ExecMode;

/// The server type (`-S`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerType {
    /// One loop on the main thread.
    Blocking,
    /// `-N` loop threads.
    Thread,
    /// A master and `-N` worker processes, each with one loop on the shared
    /// listening sockets; the master restarts workers that die and reloads on SIGHUP.
    ProcPool,
    /// A worker process per accepted connection.
    Proc,
}

impl fmt::Display for ServerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerType::Blocking => "blocking",
            ServerType::Thread => "thread",
            ServerType::ProcPool => "procpool",
            ServerType::Proc => "proc",
        })
    }
}

/// Process-wide settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `-S`.
    pub server_type: ServerType,
    /// `-N`, resolved (never 0).
    pub loops: usize,
    /// `-T`.
    pub poll: PollType,
    /// What `-T completion` falls back to when io_uring is refused.
    pub poll_fallback: Option<PollType>,
    /// One SO_REUSEPORT socket per loop.
    pub reuseport: bool,
    /// Drain bound on shutdown.
    pub drain_timeout: Duration,
    /// The loop threads' timer slack.
    pub timer_slack: Duration,
    /// Log level after `-v`.
    pub log_level: tracing::Level,
    /// `-X`.
    pub handler_type: ExecMode,
    /// `-n`.
    pub pool_size: usize,
    /// Jobs waiting for a worker.
    pub pool_queue: usize,
    /// Threads of the offload pool (blocking work of protocol sessions).
    pub offload_threads: usize,
    /// Offloaded jobs waiting for one of its threads.
    pub offload_queue: usize,
}

/// What a listener binds (`-P`, `[listener.NAME] protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// A TCP listening socket: connections.
    #[default]
    Tcp,
    /// A UDP socket: datagrams.
    Udp,
}

impl Transport {
    /// The names `-P` takes.
    pub const NAMES: &'static str = "tcp or udp";
}

impl std::str::FromStr for Transport {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "tcp" => Ok(Transport::Tcp),
            "udp" => Ok(Transport::Udp),
            _ => Err(()),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        })
    }
}

/// One listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// The section name (`[listener.NAME]`), `main` when implicit.
    pub name: String,
    /// `-P`: TCP or UDP.
    pub transport: Transport,
    /// Handler name.
    pub handler: String,
    /// Bind host.
    pub host: String,
    /// Bind port.
    pub port: u16,
    /// Address family.
    pub ip_version: IpVersion,
    /// listen(2) backlog.
    pub backlog: i32,
    /// TCP_CORK.
    pub cork: bool,
    /// TCP_NODELAY.
    pub nodelay: bool,
    /// Write coalescing.
    pub coalesce: bool,
    /// Limits.
    pub limits: Limits,
    /// Options for the handler.
    pub options: Options,
}

/// Everything needed to start the server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Process-wide settings.
    pub server: ServerSettings,
    /// The listeners.
    pub listeners: Vec<ListenerSettings>,
    /// Settings that are valid but have no effect, to be logged at start.
    pub warnings: Vec<String>,
}
