//! tokio-udp-echo: the tokio peer of the UDP scenario. A datagram echo
//! server on the tokio multi-thread runtime, written as a tokio user
//! would: `--workers` tasks share one `UdpSocket`, each looping
//! `recv_from` then `send_to` of the same bytes.
//!
//! `tokio-udp-echo [--workers 2] [--host 127.0.0.1] [--port 0]`; announces
//! `listening addr=HOST:PORT workers=N` on stderr and exits 0 on SIGTERM or
//! SIGINT.

use std::io;
use std::process::ExitCode;
use std::sync::Arc;

use argh::FromArgs;
use gaidaros_benches::peer::{run_on_runtime, stop_signal};
use tokio::net::UdpSocket;

#[derive(FromArgs)]
/// Datagram echo server on the tokio multi-thread runtime.
struct Args {
    /// runtime worker threads, and tasks on the socket (default 2)
    #[argh(option, default = "2")]
    workers: usize,
    /// UDP port; 0 (the default) picks a free one
    #[argh(option, default = "0")]
    port: u16,
    /// address to bind (default 127.0.0.1)
    #[argh(option, default = "String::from(\"127.0.0.1\")")]
    host: String,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    run_on_runtime("tokio-udp-echo", args.workers, serve(args))
}

async fn serve(args: Args) -> io::Result<()> {
    let sock = Arc::new(UdpSocket::bind((args.host.as_str(), args.port)).await?);
    let stop = stop_signal()?;
    eprintln!(
        "listening addr={} workers={}",
        sock.local_addr()?,
        args.workers
    );
    for _ in 0..args.workers {
        let sock = sock.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                // A peer that went away is not the server's error.
                let _ = sock.send_to(&buf[..n], from).await;
            }
        });
    }
    stop.await;
    Ok(())
}
