//! The instrument checked against real sockets: loadgen against tokio-echo,
//! against a server that corrupts or drops, and tokio-echo's line limit.
//! Nothing here asserts speed; runs are a fraction of a second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::Duration;

use gaidaros_benches::{Mode, Report, ServerProcess};

fn tokio_echo(extra: &[&str]) -> ServerProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokio-echo"));
    cmd.args(["--workers", "1", "--port", "0"]).args(extra);
    ServerProcess::spawn(cmd, Duration::from_secs(10)).expect("tokio-echo starts")
}

/// Run loadgen with `args` against `addr`; its report and whether it exited 0.
fn loadgen(addr: SocketAddr, args: &[&str]) -> (Report, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("--addr")
        .arg(addr.to_string())
        .args(["--json", "--warmup", "0.1", "--timeout", "5"])
        .args(args)
        .output()
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = Report::from_json(&stdout).unwrap_or_else(|e| {
        panic!(
            "loadgen printed no report ({e}): {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out.status.success())
}

/// A server on a free port running `serve` on each connection, in threads.
fn fake_server(serve: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            thread::spawn(move || serve(s));
        }
    });
    addr
}

#[test]
fn pipelined_pingpong_against_tokio_echo_is_clean() {
    let server = tokio_echo(&[]);
    let (r, ok) = loadgen(
        server.addr(),
        &["-c", "4", "-m", "100", "-d", "3", "--duration", "0.4"],
    );
    assert!(ok, "{r}");
    assert_eq!(r.mode, Mode::Pingpong);
    assert_eq!((r.established, r.errors), (4, 0), "{r}");
    assert!(r.requests > 0 && r.requests_per_s > 0.0, "{r}");
    assert!(
        r.p50_us > 0.0 && r.p50_us <= r.p99_us && r.p99_us <= r.max_us,
        "{r}"
    );
}

#[test]
fn two_threads_share_the_connections() {
    let server = tokio_echo(&[]);
    let (r, ok) = loadgen(
        server.addr(),
        &["-c", "5", "-m", "1", "--threads", "2", "--duration", "0.3"],
    );
    assert!(ok, "{r}");
    assert_eq!((r.established, r.threads, r.errors), (5, 2, 0), "{r}");
    assert!(r.requests > 0, "{r}");
}

#[test]
fn a_corrupted_echo_counts_as_mismatches() {
    // Echoes everything, but turns each 'q' into 'Q'.
    let addr = fake_server(|mut s| {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            for b in &mut buf[..n] {
                if *b == b'q' {
                    *b = b'Q';
                }
            }
            if s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let (r, ok) = loadgen(addr, &["-c", "2", "-m", "64", "--duration", "0.3"]);
    assert!(!ok, "a run with errors exits non-zero");
    assert!(r.mismatches > 0 && r.errors >= r.mismatches, "{r}");
    assert_eq!(r.requests, 0, "no corrupted echo counts as a request: {r}");
}

#[test]
fn an_echo_of_unasked_bytes_counts_as_a_mismatch() {
    // Answers every line twice.
    let addr = fake_server(|mut s| {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            let twice = [&buf[..n], &buf[..n]].concat();
            if s.write_all(&twice).is_err() {
                break;
            }
        }
    });
    let (r, ok) = loadgen(addr, &["-c", "1", "-m", "10", "--duration", "0.2"]);
    assert!(!ok);
    assert!(r.mismatches > 0, "{r}");
}

#[test]
fn hold_keeps_idle_connections_that_still_answer() {
    let server = tokio_echo(&[]);
    let (r, ok) = loadgen(
        server.addr(),
        &["--mode", "hold", "-c", "50", "--duration", "0.3"],
    );
    assert!(ok, "{r}");
    assert_eq!(r.mode, Mode::Hold);
    assert_eq!((r.established, r.alive, r.errors), (50, Some(50), 0), "{r}");
}

#[test]
fn hold_counts_connections_the_server_closes() {
    let addr = fake_server(drop);
    let (r, ok) = loadgen(addr, &["--mode", "hold", "-c", "3", "--duration", "0.3"]);
    assert!(!ok);
    assert_eq!(r.established, 3, "{r}");
    assert_eq!((r.disconnects, r.alive), (3, Some(0)), "{r}");
}

#[test]
fn nothing_listening_is_a_connect_failure() {
    // Bind then drop: the port is free and (almost surely) stays unused.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (r, ok) = loadgen(addr, &["-c", "2", "--duration", "0.1"]);
    assert!(!ok);
    assert_eq!((r.established, r.connect_failures), (0, 2), "{r}");
}

#[test]
fn tokio_echo_refuses_a_line_over_its_limit() {
    let server = tokio_echo(&["--max-line", "100"]);
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[b'x'; 99]).unwrap();
    s.write_all(b"\n").unwrap();
    let mut line = vec![0u8; 100];
    s.read_exact(&mut line).unwrap();
    assert_eq!(line, [[b'x'; 99].as_slice(), b"\n"].concat());
    s.write_all(&[b'y'; 300]).unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "ERR request too large (limit 100 bytes)\n");
}

#[test]
fn a_server_that_never_listens_is_reported_with_its_log() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokio-echo"));
    cmd.args(["--workers", "0"]);
    let err = ServerProcess::spawn(cmd, Duration::from_secs(10)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("exited") && msg.contains("--workers"), "{msg}");
}
