//! hyper-hello: the hyper peer for HTTP runs. An HTTP/1.1 server on hyper 1
//! and the tokio multi-thread runtime, written the way a careful hyper user
//! would: one task per accepted connection runs `serve_connection`, every
//! request gets `200 OK` with the body `Hello, World!` (text/plain), and
//! connections are kept alive (hyper's default).
//!
//! hyper's defaults are kept otherwise: responses to pipelined requests are
//! flushed one by one (no `pipeline_flush`), the 30 s header read timeout is
//! in effect (a tokio timer is given), TCP_NODELAY is off unless
//! `--nodelay`, as in tokio-echo and gaidaros.
//!
//! SIGTERM or SIGINT stops accepting and exits 0 within about a second,
//! open connections or not, so a profiler wrapping it can write its output.
//!
//! Exit status: 0 after a signal, 1 when it cannot serve, 2 on bad
//! arguments.

use std::convert::Infallible;
use std::io;
use std::process::ExitCode;

use argh::FromArgs;
use bytes::Bytes;
use gaidaros_benches::peer::{accept_until_stopped, parse_args, run_on_runtime};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

#[derive(FromArgs)]
/// HTTP/1.1 hello server on hyper and the tokio multi-thread runtime.
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
    /// set TCP_NODELAY on connections
    #[argh(switch)]
    nodelay: bool,
}

/// The body of every response.
const BODY: &[u8] = b"Hello, World!";

fn main() -> ExitCode {
    let args = match parse_args::<Args>("hyper-hello") {
        Ok(args) => args,
        Err(code) => return code,
    };
    run_on_runtime("hyper-hello", args.workers, serve(args))
}

/// Accept and serve connections until SIGTERM or SIGINT.
async fn serve(args: Args) -> io::Result<()> {
    accept_until_stopped(
        &args.host,
        args.port,
        args.workers,
        args.nodelay,
        |stream| {
            tokio::spawn(async move {
                // A peer that resets or sends garbage is not the server's
                // error; hyper has already answered what it could.
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service_fn(hello))
                    .await;
            });
        },
    )
    .await
}

/// The one response, whatever was asked.
async fn hello(_request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}
