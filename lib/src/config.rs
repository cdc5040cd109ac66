//! Layer 7 (part one): settings from defaults, the conf file, the
//! environment and the command line.
//!
//! Precedence, lowest first: built-in defaults < conf file (INI, read with
//! the `config` crate) < `GAIDAROS_*` environment < command-line flags.
//! Every layer is a map of `section -> key -> value` remembering where each
//! value came from, so an error names the file and section, the environment
//! variable, or the flag.
//!
//! Sections: `[server]` (process-wide) and `[listener.NAME]` (one per
//! listening socket, with the listener keys and the options of its handler).
//! Environment variables name a section and a key separated by a double
//! underscore: `GAIDAROS_SERVER__LOOPS=2`, `GAIDAROS_LISTENER_MAIN__PORT=9000`.

// Conf errors are built once, on the cold start-up path; their size is no
// cost worth boxing for.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::event_loop::Limits;
use crate::handler::{Options, Registry};
use crate::net::IpVersion;
use crate::settings::ExecMode;
use crate::settings::ServerType;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The conf file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Cli(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("built-in default"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Cli(flag) => write!(f, "command line {flag}"),
        }
    }
}

/// A conf error: always names where, which key, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfError {
    /// The conf file cannot be read or is not INI.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A section that does not exist.
    UnknownSection {
        /// Where it was written.
        origin: Origin,
        /// The section.
        section: String,
    },
    /// A key the section does not have.
    UnknownKey {
        /// Where it was written.
        origin: Origin,
        /// The section.
        section: String,
        /// The key.
        key: String,
        /// The keys the section has.
        known: String,
    },
    /// A value that does not parse.
    BadValue {
        /// Where it was written.
        origin: Origin,
        /// The section.
        section: String,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What would be accepted.
        expected: String,
    },
    /// Settings that contradict each other.
    Conflict(String),
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfError::Read { path, message } => {
                write!(f, "cannot read conf file {}: {message}", path.display())
            }
            ConfError::UnknownSection { origin, section } => write!(
                f,
                "{origin}: unknown section [{section}] (sections are [server] and [listener.NAME])"
            ),
            ConfError::UnknownKey {
                origin,
                section,
                key,
                known,
            } => write!(
                f,
                "{origin}: [{section}]: unknown key '{key}' (known keys: {known})"
            ),
            ConfError::BadValue {
                origin,
                section,
                key,
                value,
                expected,
            } => write!(
                f,
                "{origin}: [{section}] {key} = {value:?}: expected {expected}"
            ),
            ConfError::Conflict(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for ConfError {}

/// One documented key: name, default, meaning.
pub struct KeySpec {
    /// The key.
    pub name: &'static str,
    /// Its default, as written in the conf.
    pub default: &'static str,
    /// What it means and accepts.
    pub help: &'static str,
}

macro_rules! keys {
    ($($name:literal = $default:literal : $help:literal;)*) => {
        &[$(KeySpec { name: $name, default: $default, help: $help }),*]
    };
}

/// The keys of `[server]`.
pub const SERVER_KEYS: &[KeySpec] = keys! {
    "type" = "thread" : "server type: blocking (one loop in the main thread) | thread (loops threads) | procpool (a master and loops worker processes) | proc (a worker process per connection)";
    "loops" = "0" : "loop threads for type = thread, worker processes for procpool; 0 = one per core";
    "poll" = "edge" : "poll backend: edge (epoll edge-triggered, through mio) | level (epoll level-triggered) | completion (io_uring)";
    "poll_fallback" = "none" : "when io_uring is refused (old kernel, seccomp, sysctl) for poll = completion: none (fail at start) | edge | level (warn and use it)";
    "handler_type" = "blocking" : "where service requests run: blocking (inline on the loop) | thread | threadpool | gthread | gthreadpool";
    "pool_size" = "30" : "threads of threadpool, requests in flight of thread and gthreadpool";
    "pool_queue" = "1024" : "requests waiting for a threadpool worker (and in flight under gthread); reading pauses when full";
    "offload_threads" = "4" : "threads running the blocking work of protocol sessions (file I/O, hashing) off the loops";
    "offload_queue" = "1024" : "offloaded jobs waiting for a thread; a job beyond it is refused to the session";
    "reuseport" = "true" : "one SO_REUSEPORT listening socket per loop (true) or one shared socket (false)";
    "drain_timeout" = "10s" : "on SIGINT/SIGTERM, how long pending responses may take to drain";
    "timer_slack" = "1us" : "how late the kernel may end a loop's timed waits (PR_SET_TIMERSLACK): the precision of protocol timers; 1us-100ms, the kernel's own default is 50us";
    "log_level" = "info" : "error | warn | info | debug | trace (each -v raises it one step)";
};

/// The framework keys of `[listener.NAME]` (handler options come on top).
pub const LISTENER_KEYS: &[KeySpec] = keys! {
    "handler" = "echo" : "the handler serving this listener (see --list-handlers)";
    "protocol" = "tcp" : "tcp (stream connections) | udp (each datagram one request, answered to its sender; a datagram protocol handler gets the socket)";
    "host" = "127.0.0.1" : "address to bind; default ::1 for ip_version 6 and :: for 0";
    "port" = "8080" : "TCP or UDP port (0 = any free port)";
    "ip_version" = "4" : "4, 6, or 0 for dual stack (an IPv6 socket that accepts IPv4 too); an IPv6 host implies 6";
    "backlog" = "1024" : "listen(2) backlog";
    "recv_size" = "64KiB" : "bytes asked for per read(2)";
    "cork" = "false" : "TCP_CORK on connections; partial frames are pushed when output drains";
    "nodelay" = "false" : "TCP_NODELAY on connections (disable Nagle)";
    "coalesce" = "true" : "gather pipelined responses into one write (false = write each at once)";
    "max_request" = "64KiB" : "largest request; a larger one gets the handler's error reply and a close";
    "output_cap" = "1MiB" : "pending output per connection above which reading from it pauses";
    "idle_timeout" = "60s" : "close connections without read or write progress for this long (0 = never)";
    "max_connections" = "10000" : "open connections of this listener; accepting pauses at the limit";
    "connect_timeout" = "10s" : "deadline for outbound connections opened by handlers";
    "linger_timeout" = "2s" : "after a final reply, how long to wait for the peer's FIN before closing";
    "max_pipelined" = "64" : "requests of one connection running in a handler pool (-X) at once; reading pauses at the limit";
    "mailbox" = "1024" : "messages sent to one protocol session and not yet delivered; a send beyond it is refused";
    "max_sessions" = "10000" : "protocol sessions started by a handler (not by an accept) alive at once; a start beyond it is refused";
    "udp_queue" = "1024" : "datagrams queued on one UDP socket and not yet sent; a send beyond it is refused to the handler";
    "max_datagram" = "65535" : "longest datagram received (512-65535 bytes); a longer one is dropped and counted";
};

pub use crate::poll::PollType;
pub use crate::settings::{ListenerSettings, ServerSettings, Settings, Transport};

/// A layered map of `section -> key -> (value, origin)`.
#[derive(Debug, Default, Clone)]
pub struct Layers {
    sections: BTreeMap<String, BTreeMap<String, (String, Origin)>>,
}

impl Layers {
    /// Set `section.key` (a later call overrides an earlier one).
    pub fn set(&mut self, section: &str, key: &str, value: &str, origin: Origin) {
        self.sections
            .entry(section.to_string())
            .or_default()
            .insert(key.to_string(), (value.to_string(), origin));
    }

    fn ensure_section(&mut self, section: &str) {
        self.sections.entry(section.to_string()).or_default();
    }

    /// Names of the `[listener.NAME]` sections.
    pub fn listener_names(&self) -> Vec<String> {
        self.sections
            .keys()
            .filter_map(|s| s.strip_prefix("listener.").map(str::to_string))
            .collect()
    }

    /// Add the conf file at `path`.
    pub fn load_file(&mut self, path: &Path) -> Result<(), ConfError> {
        let read_err = |message: String| ConfError::Read {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(read_err("no such file".into()));
        }
        // The `config` crate reads the INI; dotted section names arrive as
        // nested tables ([listener.echo] -> listener -> echo).
        let built = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Ini))
            .build()
            .map_err(|e| read_err(e.to_string()))?;
        let top: BTreeMap<String, config::Value> = built
            .try_deserialize()
            .map_err(|e| read_err(e.to_string()))?;
        let origin = Origin::File(path.to_path_buf());
        for (name, value) in top {
            let table = match value.clone().into_table() {
                Ok(t) => t,
                Err(_) => {
                    return Err(ConfError::Conflict(format!(
                        "{origin}: key '{name}' is outside any section (put it under [server] or [listener.NAME])"
                    )))
                }
            };
            if name == "listener" {
                for (lname, lvalue) in table {
                    let section = format!("listener.{lname}");
                    let ltable = lvalue.into_table().map_err(|_| ConfError::UnknownKey {
                        origin: origin.clone(),
                        section: "listener".into(),
                        key: lname.clone(),
                        known: "none: use [listener.NAME] sections".into(),
                    })?;
                    self.ensure_section(&section);
                    self.add_table(&section, ltable, &origin)?;
                }
            } else if name == "server" {
                self.ensure_section(&name);
                self.add_table(&name, table, &origin)?;
            } else {
                // [listner.main] arrives as listner -> main: name the section
                // as written.
                let shown = match table.keys().next() {
                    Some(sub) if table.values().all(|v| v.clone().into_table().is_ok()) => {
                        format!("{name}.{sub}")
                    }
                    _ => name.clone(),
                };
                return Err(ConfError::UnknownSection {
                    origin,
                    section: shown,
                });
            }
        }
        Ok(())
    }

    fn add_table(
        &mut self,
        section: &str,
        table: config::Map<String, config::Value>,
        origin: &Origin,
    ) -> Result<(), ConfError> {
        for (key, value) in table {
            let text = value.into_string().map_err(|_| ConfError::BadValue {
                origin: origin.clone(),
                section: section.into(),
                key: key.clone(),
                value: "(a nested table)".into(),
                expected: "a plain value".into(),
            })?;
            self.set(section, &key, text.trim(), origin.clone());
        }
        Ok(())
    }

    /// Add `GAIDAROS_<SECTION>__<KEY>` variables from `vars`.
    pub fn load_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfError> {
        for (var, value) in vars {
            let Some(rest) = var.strip_prefix("GAIDAROS_") else {
                continue;
            };
            let origin = Origin::Env(var.clone());
            let Some((section, key)) = rest.split_once("__") else {
                return Err(ConfError::Conflict(format!(
                    "{origin}: expected GAIDAROS_<SECTION>__<KEY>, e.g. GAIDAROS_SERVER__LOOPS or GAIDAROS_LISTENER_MAIN__PORT"
                )));
            };
            let section = section.to_ascii_lowercase();
            let section = match section.strip_prefix("listener_") {
                Some(name) if !name.is_empty() => format!("listener.{name}"),
                _ => section,
            };
            self.set(&section, &key.to_ascii_lowercase(), &value, origin);
        }
        Ok(())
    }
}

/// Parse a size: bytes, or with a suffix K/KiB, M/MiB, G/GiB (powers of 1024).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parse a duration: seconds (decimals allowed), or with a suffix us, ms,
/// s, m, h.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Reads typed values from one section of the layers, falling back to the
/// documented defaults.
struct Section<'a> {
    name: &'a str,
    values: BTreeMap<String, (String, Origin)>,
    specs: &'a [KeySpec],
}

impl Section<'_> {
    fn raw(&self, key: &str) -> (String, Origin) {
        match self.values.get(key) {
            Some(v) => v.clone(),
            None => {
                let default = self
                    .specs
                    .iter()
                    .find(|k| k.name == key)
                    .map_or("", |k| k.default);
                (default.to_string(), Origin::Default)
            }
        }
    }

    fn given(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    fn get<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfError> {
        let (value, origin) = self.raw(key);
        parse(&value).ok_or_else(|| ConfError::BadValue {
            origin,
            section: self.name.to_string(),
            key: key.to_string(),
            value,
            expected: expected.to_string(),
        })
    }
}

fn known_keys(specs: &[KeySpec], extra: &[&str]) -> String {
    let mut names: Vec<&str> = specs.iter().map(|k| k.name).collect();
    names.extend_from_slice(extra);
    names.join(", ")
}

impl Settings {
    /// Validate the layers into settings, checking every section and key.
    pub fn from_layers(layers: &Layers, registry: &Registry) -> Result<Settings, ConfError> {
        for (section, keys) in &layers.sections {
            if section == "server" {
                for (key, (_, origin)) in keys {
                    if !SERVER_KEYS.iter().any(|k| k.name == key) {
                        return Err(ConfError::UnknownKey {
                            origin: origin.clone(),
                            section: section.clone(),
                            key: key.clone(),
                            known: known_keys(SERVER_KEYS, &[]),
                        });
                    }
                }
            } else if !section.starts_with("listener.") {
                let origin = keys
                    .values()
                    .next()
                    .map_or(Origin::Default, |(_, o)| o.clone());
                return Err(ConfError::UnknownSection {
                    origin,
                    section: section.clone(),
                });
            }
        }
        let server = Section {
            name: "server",
            values: layers.sections.get("server").cloned().unwrap_or_default(),
            specs: SERVER_KEYS,
        };
        let server_type =
            server.get("type", "blocking, thread, procpool or proc", |s| match s {
                "blocking" => Some(ServerType::Blocking),
                "thread" => Some(ServerType::Thread),
                "procpool" => Some(ServerType::ProcPool),
                "proc" => Some(ServerType::Proc),
                _ => None,
            })?;
        let loops = server.get(
            "loops",
            "a whole number of loop threads (0 = one per core)",
            |s| s.parse::<usize>().ok().filter(|n| *n <= 1024),
        )?;
        let mut warnings = Vec::new();
        if server_type == ServerType::Blocking && server.given("loops") && loops > 1 {
            let (_, origin) = server.raw("loops");
            warnings.push(format!(
                "{origin}: loops = {loops} has no effect with server type blocking (one loop); use -S thread"
            ));
        }
        let loops = match (server_type, loops) {
            (ServerType::Blocking, _) => 1,
            (ServerType::Thread, 0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
            (ServerType::Thread, n) => n,
            (ServerType::ProcPool, 0) => {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            }
            (ServerType::ProcPool, n) => n,
            (ServerType::Proc, _) => 1,
        };
        let poll = server.get("poll", "edge, level or completion", |s| s.parse().ok())?;
        let poll_fallback = server.get("poll_fallback", "none, edge or level", |s| match s {
            "none" => Some(None),
            "edge" => Some(Some(PollType::Edge)),
            "level" => Some(Some(PollType::Level)),
            _ => None,
        })?;
        let reuseport = server.get("reuseport", "true or false", parse_bool)?;
        let drain_timeout = server.get(
            "drain_timeout",
            "a duration such as 10s or 500ms",
            parse_duration,
        )?;
        let timer_slack = server.get("timer_slack", "a duration from 1us to 100ms", |s| {
            parse_duration(s)
                .filter(|d| (Duration::from_micros(1)..=Duration::from_millis(100)).contains(d))
        })?;
        let log_level = server.get("log_level", "error, warn, info, debug or trace", |s| {
            s.parse::<tracing::Level>().ok()
        })?;
        let handler_type = server.get("handler_type", ExecMode::NAMES, |s| s.parse().ok())?;
        let pool_size = server.get("pool_size", "a whole number 1-10000", |s| {
            s.parse::<usize>().ok().filter(|n| (1..=10_000).contains(n))
        })?;
        let pool_queue = server.get("pool_queue", "a whole number 1-1000000", |s| {
            s.parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
        })?;
        let offload_threads = server.get("offload_threads", "a whole number 1-1024", |s| {
            s.parse::<usize>().ok().filter(|n| (1..=1024).contains(n))
        })?;
        let offload_queue = server.get("offload_queue", "a whole number 1-1000000", |s| {
            s.parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
        })?;

        let mut names = layers.listener_names();
        if names.is_empty() {
            names.push("main".into());
        }
        let mut listeners = Vec::new();
        for name in names {
            let section_name = format!("listener.{name}");
            let sec = Section {
                name: &section_name,
                values: layers
                    .sections
                    .get(&section_name)
                    .cloned()
                    .unwrap_or_default(),
                specs: LISTENER_KEYS,
            };
            listeners.push(listener_settings(&name, &sec, registry)?);
        }
        if let Some(l) = listeners.iter().find(|l| l.transport == Transport::Udp) {
            let refuse = |why: String| {
                Err(ConfError::Conflict(format!(
                    "listener {}: protocol = udp (-P udp): {why}",
                    l.name
                )))
            };
            if matches!(server_type, ServerType::ProcPool | ServerType::Proc) {
                return refuse(format!(
                    "runs under server type blocking or thread; {server_type} (-S) is not supported there yet"
                ));
            }
            if handler_type != ExecMode::Blocking {
                return refuse(format!(
                    "a service answers datagrams on its loop; handler_type {handler_type} (-X) is not supported there yet"
                ));
            }
        }
        Ok(Settings {
            server: ServerSettings {
                server_type,
                loops,
                poll,
                poll_fallback,
                reuseport,
                drain_timeout,
                timer_slack,
                log_level,
                handler_type,
                pool_size,
                pool_queue,
                offload_threads,
                offload_queue,
            },
            listeners,
            warnings,
        })
    }
}

fn listener_settings(
    name: &str,
    sec: &Section<'_>,
    registry: &Registry,
) -> Result<ListenerSettings, ConfError> {
    let handler = sec.get("handler", &format!("one of: {}", registry.names()), |s| {
        registry.find(s).map(|spec| spec.name.to_string())
    })?;
    let spec = registry
        .find(&handler)
        .ok_or_else(|| ConfError::Conflict(format!("handler {handler} vanished")))?;
    let mut options = Options::new();
    for (key, (value, origin)) in &sec.values {
        if LISTENER_KEYS.iter().any(|k| k.name == key) {
            continue;
        }
        if spec.options.iter().any(|o| o.name == key) {
            options.set(key.clone(), value.clone());
        } else {
            let extra: Vec<&str> = spec.options.iter().map(|o| o.name).collect();
            return Err(ConfError::UnknownKey {
                origin: origin.clone(),
                section: sec.name.to_string(),
                key: key.clone(),
                known: known_keys(LISTENER_KEYS, &extra),
            });
        }
    }
    let mut ip_version = sec.get("ip_version", "4, 6 or 0 (dual stack)", |s| {
        s.parse::<u8>().ok().and_then(IpVersion::from_number)
    })?;
    // An IPv6 literal host without an explicit ip_version means IPv6.
    if sec.given("host") && !sec.given("ip_version") {
        let host = sec.raw("host").0;
        if host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::Ipv6Addr>()
            .is_ok()
        {
            ip_version = IpVersion::V6;
        }
    }
    let host = if sec.given("host") {
        sec.raw("host").0
    } else {
        match ip_version {
            IpVersion::V4 => "127.0.0.1".to_string(),
            IpVersion::V6 => "::1".to_string(),
            IpVersion::Dual => "::".to_string(),
        }
    };
    let size = "a size in bytes, optionally with K, KiB, M, MiB, G or GiB";
    let positive_size = |s: &str| parse_size(s).filter(|n| *n > 0);
    let transport = sec.get("protocol", Transport::NAMES, |s| s.parse().ok())?;
    let duration = "a duration such as 60s, 1.5s or 500ms";
    let limits = Limits {
        max_request: sec.get("max_request", size, positive_size)?,
        output_cap: sec.get("output_cap", size, positive_size)?,
        idle_timeout: {
            let d = sec.get(
                "idle_timeout",
                &format!("{duration} (0 = never)"),
                parse_duration,
            )?;
            (!d.is_zero()).then_some(d)
        },
        max_connections: sec.get("max_connections", "a whole number > 0", |s| {
            s.parse::<usize>().ok().filter(|n| *n > 0)
        })?,
        connect_timeout: sec.get("connect_timeout", duration, |s| {
            parse_duration(s).filter(|d| !d.is_zero())
        })?,
        linger_timeout: sec.get("linger_timeout", duration, parse_duration)?,
        recv_size: sec.get("recv_size", size, |s| {
            parse_size(s).filter(|n| (512..=16 << 20).contains(n))
        })?,
        max_pipelined: sec.get("max_pipelined", "a whole number 1-65536", |s| {
            s.parse::<usize>().ok().filter(|n| (1..=65536).contains(n))
        })?,
        mailbox: sec.get("mailbox", "a whole number 1-1048576", |s| {
            s.parse::<usize>()
                .ok()
                .filter(|n| (1..=1 << 20).contains(n))
        })?,
        max_sessions: sec.get("max_sessions", "a whole number > 0", |s| {
            s.parse::<usize>().ok().filter(|n| *n > 0)
        })?,
        udp_queue: sec.get("udp_queue", "a whole number 1-1048576", |s| {
            s.parse::<usize>()
                .ok()
                .filter(|n| (1..=1 << 20).contains(n))
        })?,
        max_datagram: sec.get("max_datagram", "a size from 512 to 65535 bytes", |s| {
            parse_size(s).filter(|n| (512..=65_535).contains(n))
        })?,
    };
    Ok(ListenerSettings {
        name: name.to_string(),
        transport,
        handler,
        host,
        port: sec.get("port", "a port number 0-65535", |s| s.parse().ok())?,
        ip_version,
        backlog: sec.get("backlog", "a whole number 1-65535", |s| {
            s.parse::<i32>().ok().filter(|n| (1..=65535).contains(n))
        })?,
        cork: sec.get("cork", "true or false", parse_bool)?,
        nodelay: sec.get("nodelay", "true or false", parse_bool)?,
        coalesce: sec.get("coalesce", "true or false", parse_bool)?,
        limits,
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_with_units() {
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("1T"), None);
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("20us"), Some(Duration::from_micros(20)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("soon"), None);
    }

    proptest::proptest! {
        /// Conf values are operator input: parsing never panics.
        #[test]
        fn value_parsers_never_panic(s in "\\PC{0,30}") {
            let _ = parse_size(&s);
            let _ = parse_duration(&s);
            let _ = parse_bool(&s);
        }

        #[test]
        fn sizes_round_trip_with_units(n in 0usize..1_000_000, unit in 0usize..4) {
            let (suffix, mult) = [("", 1), ("K", 1024), ("MiB", 1 << 20), ("g", 1 << 30)][unit];
            proptest::prop_assert_eq!(parse_size(&format!("{n}{suffix}")), n.checked_mul(mult));
        }
    }

    #[test]
    fn env_names_a_section_and_a_key() {
        let mut l = Layers::default();
        l.load_env(vec![
            ("GAIDAROS_SERVER__LOOPS".to_string(), "3".to_string()),
            (
                "GAIDAROS_LISTENER_MY_ECHO__PORT".to_string(),
                "9".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
        ])
        .unwrap();
        assert_eq!(l.sections["server"]["loops"].0, "3");
        assert_eq!(l.sections["listener.my_echo"]["port"].0, "9");
        let err = l
            .load_env(vec![("GAIDAROS_LOOPS".to_string(), "1".to_string())])
            .unwrap_err();
        assert!(err.to_string().contains("GAIDAROS_LOOPS"), "{err}");
    }
}
