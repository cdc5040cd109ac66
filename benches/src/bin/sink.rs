//! sink: the receiving end of throughput runs (see `blast`). Plain blocking
//! std::net, one OS thread per accepted connection: read until EOF counting
//! bytes, `--buf` bytes per read, then write the count in decimal and an LF,
//! and close. A baseline for what a kernel and a simple reader can move.
//!
//! SIGTERM and SIGINT are blocked in every thread and taken by the main
//! thread with sigwait(2); it then returns from `main`, which ends the
//! process, connection threads included, with status 0.
//!
//! Exit status: 0 after a signal, 1 when it cannot serve, 2 on bad
//! arguments.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use argh::FromArgs;
use gaidaros_benches::peer::parse_args;
use nix::sys::signal::{SigSet, Signal};

#[derive(FromArgs)]
/// TCP sink: counts the bytes of each connection and answers the count.
struct Args {
    /// TCP port; 0 (the default) picks a free one
    #[argh(option, default = "0")]
    port: u16,
    /// address to bind (default 127.0.0.1)
    #[argh(option, default = "String::from(\"127.0.0.1\")")]
    host: String,
    /// bytes per read (default 262144, at most 67108864)
    #[argh(option, default = "256 * 1024")]
    buf: usize,
}

/// The largest `--buf`: one such buffer is allocated per connection.
const MAX_BUF: usize = 64 * 1024 * 1024;

fn main() -> ExitCode {
    let args = match parse_args::<Args>("sink") {
        Ok(args) => args,
        Err(code) => return code,
    };
    if args.buf == 0 || args.buf > MAX_BUF {
        eprintln!("sink: --buf must be between 1 and {MAX_BUF}");
        return ExitCode::from(2);
    }
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    // Before any thread is spawned, so that all of them inherit the mask and
    // the signals stay pending for the sigwait below.
    if let Err(e) = stop.thread_block() {
        eprintln!("sink: cannot block SIGTERM and SIGINT: {e}");
        return ExitCode::FAILURE;
    }
    let listener = match TcpListener::bind((args.host.as_str(), args.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sink: cannot listen on {}:{}: {e}", args.host, args.port);
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sink: {e}");
            return ExitCode::FAILURE;
        }
    };
    let buf = args.buf;
    if let Err(e) = thread::Builder::new()
        .name("accept".into())
        .spawn(move || accept_loop(listener, buf))
    {
        eprintln!("sink: cannot start the accept thread: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("listening addr={addr} buf={buf}");
    match stop.wait() {
        // Returning from main exits the process, every thread with it.
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sink: sigwait: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Accept forever, one thread per connection.
fn accept_loop(listener: TcpListener, buf: usize) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                eprintln!("accept: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let spawned = thread::Builder::new().name("conn".into()).spawn(move || {
            // A peer that resets is not the server's error.
            let _ = count(stream, buf);
        });
        if let Err(e) = spawned {
            // The stream went with the closure: the connection is closed.
            eprintln!("cannot start a connection thread: {e}");
        }
    }
}

/// Read until EOF, then answer the number of bytes read.
fn count(mut stream: TcpStream, buf: usize) -> io::Result<()> {
    let mut buf = vec![0u8; buf];
    let mut total: u64 = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    stream.write_all(format!("{total}\n").as_bytes())
}
