//! Layer 7 (part two): the command line, and the entry point every binary
//! built on gaidaros shares.
//!
//! [`run`] parses the flags (argh), layers them over the conf file and the
//! environment, starts the server and maps failures to exit codes:
//! 0 after a clean shutdown, 2 for a usage or conf error (including a
//! handler option the handler rejects and an address that does not fit the
//! ip_version), 1 when the server cannot start (a port in use) or fails.

// Conf errors are built once, on the cold start-up path; their size is no
// cost worth boxing for.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use tracing::Level;

use crate::config::{ConfError, Layers, Origin, Settings, LISTENER_KEYS, SERVER_KEYS};
use crate::handler::{Handler, Registry};
use crate::master;
use crate::pools;
use crate::server::{ServeError, Server, ServerType, SignalWatch};
use crate::sys;

/// The command-line flags of `gaidaros` (and of every binary built on
/// [`run`]).
#[derive(FromArgs, Debug, Default)]
#[argh(
    description = "gaidaros: an async socket server. Without -c, the flags describe one listener; with -c, the conf file's [listener.NAME] sections do. Values are taken, lowest first, from built-in defaults, the conf file, GAIDAROS_<SECTION>__<KEY> environment variables, then these flags."
)]
pub struct Args {
    /// conf file (INI); see etc/gaidaros.conf for every key (default: none)
    #[argh(option, short = 'c')]
    pub conf: Option<PathBuf>,

    /// handler serving the listener (default: echo); see --list-handlers
    #[argh(option)]
    pub handler: Option<String>,

    /// address to bind (default: 127.0.0.1; ::1 with ip_version 6)
    #[argh(option)]
    pub host: Option<String>,

    /// port, 0 = any free port (default: 8080)
    #[argh(option)]
    pub port: Option<u16>,

    /// transport of the listener: tcp (connections) or udp (each datagram
    /// one request of the handler, answered to its sender) (default: tcp)
    #[argh(option, short = 'P')]
    pub protocol: Option<String>,

    /// server type: blocking (one loop in the main thread), thread (-N
    /// loop threads), procpool (a master and -N worker processes, each
    /// with one loop; SIGHUP replaces them one by one) or proc (a worker
    /// process per connection) (default: thread)
    #[argh(option, short = 'S')]
    pub server_type: Option<String>,

    /// loop threads for -S thread, worker processes for -S procpool; 0 =
    /// one per core (default: 0)
    #[argh(option, short = 'N')]
    pub loops: Option<usize>,

    /// poll backend: edge (epoll edge-triggered), level (epoll
    /// level-triggered), completion (io_uring) (default: edge)
    #[argh(option, short = 'T')]
    pub poll: Option<String>,

    /// where service requests run: blocking (inline on the loop), thread
    /// (a thread per request), threadpool (-n threads), gthread (a tokio
    /// task per request), gthreadpool (at most -n tasks) (default:
    /// blocking)
    #[argh(option, short = 'X')]
    pub handler_type: Option<String>,

    /// handler pool size: threadpool threads, or requests in flight for
    /// thread and gthreadpool (default: 30)
    #[argh(option, short = 'n')]
    pub pool_size: Option<usize>,

    /// set TCP_CORK on connections; partial frames are pushed when the
    /// output queue drains (default: off)
    #[argh(switch, short = 'k')]
    pub cork: bool,

    /// no write coalescing: write each response as soon as it exists
    /// (default: pipelined responses gathered into one write)
    #[argh(switch, short = 'K')]
    pub no_coalesce: bool,

    /// disable Nagle's algorithm: set TCP_NODELAY (default: Nagle on)
    #[argh(switch, short = 'A')]
    pub nodelay: bool,

    /// more log output: -v debug, -vv trace (default: level info)
    #[argh(switch, short = 'v')]
    pub verbose: u8,

    /// set an option of the handler as KEY=VALUE, e.g. -o
    /// upstream=127.0.0.1:9000; repeatable (default: none)
    #[argh(option, short = 'o')]
    pub option: Vec<String>,

    /// list the handlers and their options, then exit
    #[argh(switch)]
    pub list_handlers: bool,

    /// print the version and exit
    #[argh(switch)]
    pub version: bool,

    /// internal: run as a worker process of -X proc/procpool (the server
    /// starts these itself)
    #[argh(switch, hidden_help)]
    pub pool_worker: bool,

    /// internal: run as a worker process of -S procpool (the master starts
    /// these itself)
    #[argh(switch, hidden_help)]
    pub server_worker: bool,

    /// internal: run as a connection worker of -S proc (the master starts
    /// these itself)
    #[argh(switch, hidden_help)]
    pub conn_worker: bool,
}

impl Args {
    /// Layer these flags over `layers`.
    pub fn apply(&self, layers: &mut Layers) -> Result<(), ConfError> {
        let cli = |flag: &str| Origin::Cli(flag.to_string());
        if let Some(t) = &self.server_type {
            layers.set("server", "type", t, cli("-S"));
        }
        if let Some(n) = self.loops {
            layers.set("server", "loops", &n.to_string(), cli("-N"));
        }
        if let Some(p) = &self.poll {
            layers.set("server", "poll", p, cli("-T"));
        }
        if let Some(x) = &self.handler_type {
            layers.set("server", "handler_type", x, cli("-X"));
        }
        if let Some(n) = self.pool_size {
            layers.set("server", "pool_size", &n.to_string(), cli("-n"));
        }
        let mut names = layers.listener_names();
        if names.is_empty() {
            names.push("main".to_string());
        }
        let single = [
            (self.handler.is_some(), "--handler"),
            (self.host.is_some(), "--host"),
            (self.port.is_some(), "--port"),
            (self.protocol.is_some(), "-P"),
            (!self.option.is_empty(), "-o"),
        ];
        if names.len() > 1 {
            if let Some((_, flag)) = single.iter().find(|(given, _)| *given) {
                return Err(ConfError::Conflict(format!(
                    "{flag} describes a single listener, but the conf defines {} ({}): set it in a [listener.NAME] section instead",
                    names.len(),
                    names.join(", ")
                )));
            }
        }
        for name in &names {
            let section = format!("listener.{name}");
            if let Some(h) = &self.handler {
                layers.set(&section, "handler", h, cli("--handler"));
            }
            if let Some(h) = &self.host {
                layers.set(&section, "host", h, cli("--host"));
            }
            if let Some(p) = self.port {
                layers.set(&section, "port", &p.to_string(), cli("--port"));
            }
            if let Some(p) = &self.protocol {
                layers.set(&section, "protocol", p, cli("-P"));
            }
            if self.cork {
                layers.set(&section, "cork", "true", cli("-k"));
            }
            if self.nodelay {
                layers.set(&section, "nodelay", "true", cli("-A"));
            }
            if self.no_coalesce {
                layers.set(&section, "coalesce", "false", cli("-K"));
            }
            for kv in &self.option {
                let Some((k, v)) = kv.split_once('=') else {
                    return Err(ConfError::BadValue {
                        origin: cli("-o"),
                        section,
                        key: kv.clone(),
                        value: kv.clone(),
                        expected: "KEY=VALUE".into(),
                    });
                };
                let key = k.trim();
                if LISTENER_KEYS.iter().any(|s| s.name == key) {
                    return Err(ConfError::Conflict(format!(
                        "command line -o {kv}: '{key}' is a listener key, not a handler option; set it in the conf or GAIDAROS_LISTENER_{}__{}",
                        name.to_ascii_uppercase(),
                        key.to_ascii_uppercase()
                    )));
                }
                layers.set(&section, key, v.trim(), cli("-o"));
            }
        }
        Ok(())
    }
}

/// Settings from the conf file named by `args`, the environment `env` and
/// the flags themselves.
pub fn settings(
    args: &Args,
    env: impl IntoIterator<Item = (String, String)>,
    registry: &Registry,
) -> Result<Settings, ConfError> {
    let mut layers = Layers::default();
    if let Some(path) = &args.conf {
        layers.load_file(path)?;
    }
    layers.load_env(env)?;
    args.apply(&mut layers)?;
    Settings::from_layers(&layers, registry)
}

fn list_handlers(registry: &Registry) -> String {
    let mut out = String::from("handlers (--handler NAME, options with -o KEY=VALUE):\n");
    for spec in registry.specs() {
        out.push_str(&format!("  {:<12} {}\n", spec.name, spec.about));
        for o in spec.options {
            let default = o
                .default
                .map_or("required".to_string(), |d| format!("default: {d}"));
            out.push_str(&format!("      {:<16} {} ({default})\n", o.name, o.help));
        }
    }
    out
}

fn raise(level: Level, steps: u8) -> Level {
    let order = [
        Level::ERROR,
        Level::WARN,
        Level::INFO,
        Level::DEBUG,
        Level::TRACE,
    ];
    let at = order.iter().position(|l| *l == level).unwrap_or(2);
    order[(at + steps as usize).min(order.len() - 1)]
}

/// The entry point of the `gaidaros` binary, for any registry of handlers:
/// parses `std::env::args`, reads the conf, serves until SIGINT/SIGTERM.
pub fn run(registry: Registry) -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    run_with_args(registry, &args)
}

/// [`run`] with explicit arguments (the first is the program name).
pub fn run_with_args(registry: Registry, argv: &[String]) -> ExitCode {
    let program = argv.first().map_or("gaidaros", String::as_str);
    // argh takes one short flag per argument: spell -vv as -v -v.
    let rest: Vec<&str> = argv
        .iter()
        .skip(1)
        .flat_map(|a| {
            let vs = a.len() > 2 && a.starts_with('-') && a[1..].bytes().all(|b| b == b'v');
            let n = if vs { a.len() - 1 } else { 1 };
            std::iter::repeat_n(if vs { "-v" } else { a.as_str() }, n)
        })
        .collect();
    let args = match Args::from_args(&[program], &rest) {
        Ok(a) => a,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    println!("{}", early.output);
                    ExitCode::SUCCESS
                }
                Err(()) => {
                    eprintln!(
                        "{}\nRun {program} --help for usage.",
                        early.output.trim_end()
                    );
                    ExitCode::from(2)
                }
            };
        }
    };
    if args.version {
        println!("gaidaros {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if args.list_handlers {
        print!("{}", list_handlers(&registry));
        return ExitCode::SUCCESS;
    }
    let settings = match settings(&args, std::env::vars(), &registry) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gaidaros: conf error: {e}");
            return ExitCode::from(2);
        }
    };
    // Every process role: a file-size limit fails a write (EFBIG, answered
    // by the handler), it does not kill the process.
    if let Err(e) = sys::ignore_file_size_signal() {
        eprintln!("gaidaros: cannot ignore SIGXFSZ: {e}");
        return ExitCode::FAILURE;
    }
    if args.pool_worker {
        let level = raise(settings.server.log_level, args.verbose);
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(level)
            .with_target(false)
            .try_init();
        let mut services = Vec::new();
        for l in &settings.listeners {
            match registry.build(&l.handler, &l.options) {
                Ok(Handler::Service(s)) => services.push(Some(s)),
                Ok(Handler::Protocol(_)) => services.push(None),
                Err(e) => {
                    eprintln!("gaidaros worker: listener {}: {e}", l.name);
                    return ExitCode::from(2);
                }
            }
        }
        return pools::serve_worker(&services);
    }
    let level = raise(settings.server.log_level, args.verbose);
    // A second init (a test calling run twice) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    match sys::raise_nofile_limit() {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!("cannot raise the open files limit: {e}"),
    }
    if settings.server.server_type == ServerType::Proc && !args.conn_worker {
        return master::run_per_connection(&settings, &argv[1.min(argv.len())..]);
    }
    if settings.server.server_type == ServerType::ProcPool && !args.server_worker {
        let reload =
            || self::settings(&args, std::env::vars(), &registry).map_err(|e| e.to_string());
        return master::run(&settings, &argv[1.min(argv.len())..], reload);
    }
    let signals = match SignalWatch::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gaidaros: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Handler worker processes get the command line without the -S procpool
    // worker flag: they are not server workers.
    let own: Vec<String> = argv
        .iter()
        .skip(1)
        .filter(|a| *a != master::SERVER_WORKER_FLAG && *a != master::CONN_WORKER_FLAG)
        .cloned()
        .collect();
    let worker = match pools::WorkerCommand::current(&own) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("cannot find the running binary (-X proc and procpool need it): {e}");
            None
        }
    };
    let bound = if args.conn_worker {
        match master::worker_connection() {
            Ok((ctl, li, stream)) => {
                Server::for_connection(&settings, &registry, worker.as_ref(), li, stream).inspect(
                    |s| {
                        master::stop_with_master(ctl, s.handles());
                    },
                )
            }
            Err(e) => Err(ServeError::Io(
                "cannot take the connection from the master".into(),
                e,
            )),
        }
    } else if args.server_worker {
        // A -S procpool worker: one loop on the master's sockets.
        let mut mine = settings.clone();
        mine.server.server_type = ServerType::Blocking;
        mine.server.loops = 1;
        match master::worker_sockets(settings.listeners.len()) {
            Ok((ctl, socks)) => {
                Server::bind_sockets(&mine, &registry, worker.as_ref(), Some(socks)).and_then(|s| {
                    master::report_ready(&ctl)
                        .map_err(|e| ServeError::Io("cannot report to the master".into(), e))?;
                    master::stop_with_master(ctl, s.handles());
                    Ok(s)
                })
            }
            Err(e) => Err(ServeError::Io("cannot take the master's sockets".into(), e)),
        }
    } else {
        Server::bind_with(&settings, &registry, worker.as_ref())
    };
    let server = match bound {
        Ok(s) => s,
        // A handler option or an address that cannot work is a conf error.
        Err(e @ (ServeError::Handler { .. } | ServeError::Address { .. })) => {
            eprintln!("gaidaros: conf error: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("gaidaros: {e}");
            return ExitCode::FAILURE;
        }
    };
    match server.run(Some(signals)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gaidaros: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `[server]` and `[listener.NAME]` keys with their defaults, as the
/// shipped conf documents them.
pub fn documented_keys() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    let mut out = Vec::new();
    for k in SERVER_KEYS {
        out.push(("server", k.name, k.default, k.help));
    }
    for k in LISTENER_KEYS {
        out.push(("listener.NAME", k.name, k.default, k.help));
    }
    out
}
