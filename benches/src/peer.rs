//! What the peer and helper binaries share: command-line parsing with the
//! project's exit codes, the tokio runtime the peer servers (tokio-echo,
//! tokio-forward, hyper-hello) run on, and their accept loop that stops
//! cleanly on SIGTERM/SIGINT.

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The command line of binary `name`, or the exit code when there is
/// nothing to run: 0 after `--help`, 2 on bad arguments (`argh::from_env`
/// would exit 1).
pub fn parse_args<T: FromArgs>(name: &str) -> Result<T, ExitCode> {
    let argv: Vec<String> = std::env::args_os()
        .skip(1)
        .map(OsString::into_string)
        .collect::<Result<_, _>>()
        .map_err(|arg| {
            eprintln!("{name}: not UTF-8: {}", arg.to_string_lossy());
            ExitCode::from(2)
        })?;
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    T::from_args(&[name], &argv).map_err(|exit| match exit.status {
        Ok(()) => {
            println!("{}", exit.output);
            ExitCode::SUCCESS
        }
        Err(()) => {
            eprintln!("{}\nRun {name} --help for more information.", exit.output);
            ExitCode::from(2)
        }
    })
}

/// How long connection tasks still running when a peer server stops may
/// take to finish; idle ones are dropped rather than waited for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Run `serve` on a tokio multi-thread runtime of `workers` threads (I/O
/// and timers on), then give the tasks still running [`SHUTDOWN_GRACE`].
/// The exit code of peer server `name`: 0 once `serve` returns `Ok`, 1 when
/// the runtime cannot start or `serve` fails (said on stderr), 2 for zero
/// workers.
pub fn run_on_runtime(
    name: &str,
    workers: usize,
    serve: impl Future<Output = io::Result<()>>,
) -> ExitCode {
    if workers == 0 {
        eprintln!("{name}: --workers must be at least 1");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(serve);
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT, the signals that stop a peer server.
struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    fn install() -> io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Wait for either signal.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Wait for SIGTERM or SIGINT (installed when this is called, so a signal
/// after it returns its future is not missed once awaited).
pub fn stop_signal() -> io::Result<impl Future<Output = ()>> {
    let mut stop = StopSignals::install()?;
    Ok(async move { stop.recv().await })
}

/// Bind `host:port`, announce `listening addr=HOST:PORT workers=N` on
/// stderr (what `ServerProcess` waits for), and hand every accepted
/// connection to `serve` (which spawns its task) until SIGTERM or SIGINT.
/// Accept errors (out of descriptors and the like) back off 10 ms.
pub async fn accept_until_stopped(
    host: &str,
    port: u16,
    workers: usize,
    nodelay: bool,
    mut serve: impl FnMut(TcpStream),
) -> io::Result<()> {
    let listener = TcpListener::bind((host, port)).await?;
    let addr: SocketAddr = listener.local_addr()?;
    // Installed before the announcement: a signal right after it still
    // means a clean exit.
    let mut stop = StopSignals::install()?;
    eprintln!("listening addr={addr} workers={workers}");
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.recv() => return Ok(()),
        };
        let (stream, _) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if nodelay {
            let _ = stream.set_nodelay(true);
        }
        serve(stream);
    }
}
