//! What the peer and helper binaries share: command-line parsing with the
//! project's exit codes, and the tokio accept loop of the peer servers
//! (tokio-echo, hyper-hello) that stops cleanly on SIGTERM/SIGINT.

use std::ffi::OsString;
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
