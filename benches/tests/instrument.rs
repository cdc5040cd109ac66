//! The instrument checked against real sockets: loadgen against tokio-echo,
//! against a server that corrupts or drops, and tokio-echo's line limit;
//! hyper-hello with a raw HTTP/1.1 client; blast into sink, through
//! tokio-forward, and into servers that close early or miscount; the
//! servers' clean exit on SIGTERM.
//! Nothing here asserts speed; runs are a fraction of a second.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

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

fn hyper_hello() -> ServerProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hyper-hello"));
    cmd.args(["--workers", "1", "--port", "0"]);
    ServerProcess::spawn(cmd, Duration::from_secs(10)).expect("hyper-hello starts")
}

fn sink() -> ServerProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sink"));
    cmd.args(["--port", "0"]);
    ServerProcess::spawn(cmd, Duration::from_secs(10)).expect("sink starts")
}

/// A connection with reads and writes bounded in time.
fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// One HTTP/1.1 response: its status line, its headers (names lowercased)
/// and its body, which must have a Content-Length.
fn read_response(r: &mut impl BufRead) -> (String, Vec<(String, String)>, String) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.trim_end().to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').expect("a header line");
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).unwrap();
    (status, headers, String::from_utf8(body).unwrap())
}

fn assert_hello(response: (String, Vec<(String, String)>, String)) {
    let (status, headers, body) = response;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains(&("content-type".into(), "text/plain".into())),
        "{headers:?}"
    );
    // HTTP/1.1 keeps the connection unless told otherwise.
    let closes = |(n, v): &(String, String)| n == "connection" && v.eq_ignore_ascii_case("close");
    assert!(!headers.iter().any(closes), "{headers:?}");
    assert_eq!(body, "Hello, World!");
}

#[test]
fn hyper_hello_answers_twice_on_one_keep_alive_connection() {
    let server = hyper_hello();
    let s = connect(server.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    w.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    assert_hello(read_response(&mut r));
    w.write_all(b"GET /again?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    assert_hello(read_response(&mut r));
}

#[test]
fn hyper_hello_answers_pipelined_requests_each() {
    let server = hyper_hello();
    let s = connect(server.addr());
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let request = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    w.write_all(request.repeat(3).as_bytes()).unwrap();
    for _ in 0..3 {
        assert_hello(read_response(&mut r));
    }
}

/// Run blast with `args` against `addr`: its stdout, stderr and exit code.
fn blast(addr: SocketAddr, args: &[&str]) -> (String, String, Option<i32>) {
    let out = Command::new(env!("CARGO_BIN_EXE_blast"))
        .arg("--addr")
        .arg(addr.to_string())
        .args(["--timeout", "10"])
        .args(args)
        .output()
        .expect("blast runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

#[test]
fn blast_into_sink_is_counted_in_full() {
    let server = sink();
    let (stdout, stderr, code) = blast(server.addr(), &["--bytes", "64M", "--json"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["bytes"], 67108864, "{report}");
    for field in ["seconds", "mib_per_s", "gbit_per_s"] {
        let v = report[field].as_f64().expect(field);
        assert!(v > 0.0 && v.is_finite(), "{report}");
    }
}

#[test]
fn blast_through_tokio_forward_reaches_sink_and_its_count_comes_back() {
    // The half-close must cross the forwarder, and sink's answer come back.
    let sink = sink();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokio-forward"));
    cmd.args(["--workers", "1", "--port", "0", "--upstream"])
        .arg(sink.addr().to_string());
    let forward = ServerProcess::spawn(cmd, Duration::from_secs(10)).expect("tokio-forward starts");
    let (stdout, stderr, code) = blast(forward.addr(), &["--bytes", "8388609", "--chunk", "1000"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("8388609 bytes in "), "{stdout}");
    let status = forward.stop(Duration::from_secs(3)).unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn blast_with_an_odd_chunk_sends_the_exact_count() {
    // 1 MiB + 1 byte in 1000-byte writes: the last write is partial.
    let server = sink();
    let (stdout, stderr, code) = blast(server.addr(), &["--bytes", "1048577", "--chunk", "1000"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("1048577 bytes in "), "{stdout}");
}

#[test]
fn blast_fails_when_the_server_closes_without_answering() {
    let addr = fake_server(drop);
    let (stdout, stderr, code) = blast(addr, &["--bytes", "1M", "--json"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(stdout, "", "no result for a failed transfer");
}

#[test]
fn blast_fails_when_the_server_miscounts() {
    // Reads to EOF, then claims one byte arrived.
    let addr = fake_server(|mut s| {
        let _ = io_sink(&mut s);
        let _ = s.write_all(b"1\n");
    });
    let (stdout, stderr, code) = blast(addr, &["--bytes", "64K"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("counted 1 bytes of 65536"), "{stderr}");
}

/// Read `s` to EOF.
fn io_sink(s: &mut TcpStream) -> std::io::Result<u64> {
    std::io::copy(s, &mut std::io::sink())
}

#[test]
fn blast_refuses_bad_arguments_with_status_2() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for args in [
        &["--bytes", "12X"][..],
        &["--bytes", "0"],
        &["--bytes", "1M", "--chunk", "0"],
        &["--bytes", "1M", "--nonsense"],
        &[],
    ] {
        let (_, stderr, code) = blast(addr, args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
    }
}

/// SIGTERM `server` while `conn` is open; it must exit 0 within 3 s.
fn assert_clean_exit_on_sigterm(server: ServerProcess, conn: TcpStream) {
    let start = Instant::now();
    let status = server.stop(Duration::from_secs(3)).unwrap();
    assert!(status.success(), "{status}");
    assert!(start.elapsed() < Duration::from_secs(3));
    drop(conn);
}

#[test]
fn tokio_echo_exits_0_on_sigterm_with_a_connection_open() {
    let server = tokio_echo(&[]);
    let mut s = connect(server.addr());
    s.write_all(b"ping\n").unwrap();
    let mut echo = [0u8; 5];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping\n");
    assert_clean_exit_on_sigterm(server, s);
}

#[test]
fn hyper_hello_exits_0_on_sigterm_with_a_keep_alive_connection_open() {
    let server = hyper_hello();
    let mut s = connect(server.addr());
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    assert_hello(read_response(&mut BufReader::new(s.try_clone().unwrap())));
    assert_clean_exit_on_sigterm(server, s);
}

#[test]
fn sink_exits_0_on_sigterm_in_the_middle_of_a_transfer() {
    let server = sink();
    let mut s = connect(server.addr());
    s.write_all(&[b'x'; 64 * 1024]).unwrap();
    assert_clean_exit_on_sigterm(server, s);
}
