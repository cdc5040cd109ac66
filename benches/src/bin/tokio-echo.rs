//! tokio-echo: the tokio peer gaidaros's echo is compared with. A line echo
//! server on the tokio multi-thread runtime, written the way a careful
//! tokio user would: one task per connection reads into a buffer and
//! writes back every complete line in one `write_all`, so pipelined
//! requests cost one read and one write per batch, like gaidaros's
//! coalescing loop.
//!
//! Limits match gaidaros's defaults: a line longer than `--max-line`
//! (64 KiB) gets `ERR request too large (limit N bytes)` and a close.
//! TCP_NODELAY is off unless `--nodelay`, as in gaidaros (`nodelay = false`).
//!
//! SIGTERM or SIGINT stops accepting and exits 0 within about a second,
//! open connections or not, so a profiler wrapping it can write its output.

use std::io;
use std::process::ExitCode;

use argh::FromArgs;
use gaidaros_benches::peer::{accept_until_stopped, run_on_runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(FromArgs)]
/// Line echo server on the tokio multi-thread runtime.
struct Args {
    /// runtime worker threads (default 2)
    #[argh(option, default = "2")]
    workers: usize,
    /// TCP port; 0 (the default) picks a free one
    #[argh(option, default = "0")]
    port: u16,
    /// address to bind (default 127.0.0.1)
    #[argh(option, default = "String::from(\"127.0.0.1\")")]
    host: String,
    /// longest line in bytes, LF included (default 65536)
    #[argh(option, default = "65536")]
    max_line: usize,
    /// set TCP_NODELAY on connections
    #[argh(switch)]
    nodelay: bool,
}

/// First read buffer per connection; it grows up to `max_line` for long lines.
const INITIAL_BUF: usize = 16 * 1024;

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    if args.max_line == 0 {
        eprintln!("tokio-echo: --max-line must be at least 1");
        return ExitCode::from(2);
    }
    run_on_runtime("tokio-echo", args.workers, serve(args))
}

/// Accept and serve connections until SIGTERM or SIGINT.
async fn serve(args: Args) -> io::Result<()> {
    let max_line = args.max_line;
    accept_until_stopped(
        &args.host,
        args.port,
        args.workers,
        args.nodelay,
        |stream| {
            tokio::spawn(async move {
                // A peer that resets is not the server's error.
                let _ = echo(stream, max_line).await;
            });
        },
    )
    .await
}

/// Echo complete lines until the peer closes.
async fn echo(mut stream: TcpStream, max_line: usize) -> io::Result<()> {
    let mut buf = vec![0u8; INITIAL_BUF.min(max_line + 1)];
    // Bytes of buf holding a partial line.
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            // A partial line fills the buffer: grow it, up to the limit.
            if filled > max_line {
                let msg = format!("ERR request too large (limit {max_line} bytes)\n");
                stream.write_all(msg.as_bytes()).await?;
                return stream.shutdown().await;
            }
            buf.resize((buf.len() * 2).min(max_line + 1), 0);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        let before = filled;
        filled += n;
        // Only the new bytes can hold the last LF.
        if let Some(last) = memchr::memrchr(b'\n', &buf[before..filled]) {
            let end = before + last + 1;
            stream.write_all(&buf[..end]).await?;
            buf.copy_within(end..filled, 0);
            filled -= end;
        }
    }
}
