//! tokio-forward: the tokio peer of gaidaros's `forward` handler. A TCP
//! forwarder on the tokio multi-thread runtime, written the way a tokio
//! user would: one task per connection connects to `--upstream` and runs
//! `tokio::io::copy_bidirectional`, which copies through user space and
//! passes a half-close on to the other side.
//!
//! SIGTERM or SIGINT stops accepting and exits 0 within about a second.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;

use argh::FromArgs;
use gaidaros_benches::peer::{accept_until_stopped, parse_args, run_on_runtime};
use tokio::net::TcpStream;

#[derive(FromArgs)]
/// TCP forwarder on the tokio multi-thread runtime.
struct Args {
    /// where every connection is forwarded (HOST:PORT)
    #[argh(option)]
    upstream: SocketAddr,
    /// runtime worker threads (default 2)
    #[argh(option, default = "2")]
    workers: usize,
    /// TCP port; 0 (the default) picks a free one
    #[argh(option, default = "0")]
    port: u16,
    /// address to bind (default 127.0.0.1)
    #[argh(option, default = "String::from(\"127.0.0.1\")")]
    host: String,
}

fn main() -> ExitCode {
    let args: Args = match parse_args("tokio-forward") {
        Ok(a) => a,
        Err(code) => return code,
    };
    run_on_runtime("tokio-forward", args.workers, serve(args))
}

/// Accept and forward connections until SIGTERM or SIGINT.
async fn serve(args: Args) -> io::Result<()> {
    let upstream = args.upstream;
    accept_until_stopped(&args.host, args.port, args.workers, false, |client| {
        tokio::spawn(async move {
            if let Err(e) = forward(client, upstream).await {
                eprintln!("forward to {upstream}: {e}");
            }
        });
    })
    .await
}

/// Copy both ways until both sides have closed.
async fn forward(mut client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let mut server = TcpStream::connect(upstream).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}
