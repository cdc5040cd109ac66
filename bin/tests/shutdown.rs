//! SIGTERM under load: the server stops accepting, writes the responses it
//! owes, and exits 0 within a bound. No client ever sees a truncated
//! response: what each received is a prefix of its expected echo stream
//! that ends on a line boundary, followed by a clean EOF (a reset would
//! discard responses still in flight).

#[macro_use]
mod util;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use util::{connect, gaidaros, Mode};

/// Clients that send a batch and read its answers, in turn.
const LOCKSTEP_CLIENTS: usize = 4;
/// Clients that send without pause from one thread and read slowly from
/// another, so the server owes them a lot when the signal comes.
const FLOODING_CLIENTS: usize = 4;
/// How long every client may run at most.
const CLIENT_LIMIT: Duration = Duration::from_secs(40);
/// How long the server may take to exit after SIGTERM (its drain timeout
/// is 10 s).
const EXIT_LIMIT: Duration = Duration::from_secs(20);

/// The `k`th line client `c` sends (between 20 and ~2 KiB).
fn line(c: usize, k: usize) -> Vec<u8> {
    let mut l = format!("client {c} line {k} ").into_bytes();
    let len = 20 + (k * 131 + c * 17) % 2000;
    l.resize(len, b'a' + (k % 26) as u8);
    l.push(b'\n');
    l
}

/// Client `c`'s stream of lines, at least `len` bytes of it.
fn expected_stream(c: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 4096);
    let mut k = 0;
    while out.len() < len {
        out.extend_from_slice(&line(c, k));
        k += 1;
    }
    out
}

/// How a client's reading ended.
enum Ended {
    /// A clean EOF: the server closed after writing everything.
    Eof,
    /// A read error, e.g. a reset that destroys data in flight.
    Error(io::Error),
    /// The client's own time limit.
    TimeLimit,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Eof => f.write_str("EOF"),
            Ended::Error(e) => write!(f, "read error: {e}"),
            Ended::TimeLimit => f.write_str("the client's time limit"),
        }
    }
}

/// What one client got back, and how its connection ended.
struct Outcome {
    client: usize,
    received: Vec<u8>,
    ended: Ended,
}

/// Read into `received` until EOF, an error or the deadline, pausing
/// `pause` after each read.
fn read_to_end(
    s: &mut TcpStream,
    received: &mut Vec<u8>,
    want: Option<usize>,
    pause: Duration,
    deadline: Instant,
) -> Option<Ended> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut left = want.unwrap_or(usize::MAX);
    while left > 0 {
        if Instant::now() >= deadline {
            return Some(Ended::TimeLimit);
        }
        match s.read(&mut buf[..left.min(16 * 1024)]) {
            Ok(0) => return Some(Ended::Eof),
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                left -= n;
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Ended::Error(e)),
        }
    }
    None
}

/// Sends a batch of 16 lines and reads their answers, in turn; after the
/// signal it sends nothing more and reads until the server closes.
fn lockstep_client(addr: SocketAddr, c: usize, signalled: Arc<AtomicBool>) -> Outcome {
    let mut s = connect(addr);
    let mut received = Vec::new();
    let mut k = 0;
    let deadline = Instant::now() + CLIENT_LIMIT;
    let ended = loop {
        if signalled.load(Ordering::SeqCst) {
            break read_to_end(&mut s, &mut received, None, Duration::ZERO, deadline)
                .unwrap_or(Ended::TimeLimit);
        }
        let batch: Vec<u8> = (k..k + 16).flat_map(|i| line(c, i)).collect();
        k += 16;
        if s.write_all(&batch).is_err() {
            // The server may close while we write: what was received is
            // checked all the same, after reading what is left.
            break read_to_end(&mut s, &mut received, None, Duration::ZERO, deadline)
                .unwrap_or(Ended::TimeLimit);
        }
        let answers = Some(batch.len());
        if let Some(end) = read_to_end(&mut s, &mut received, answers, Duration::ZERO, deadline) {
            break end;
        }
    };
    Outcome {
        client: c,
        received,
        ended,
    }
}

/// Sends without pause from one thread (until the signal) and reads slowly
/// from another, so the server owes it a lot, has stopped reading from it
/// (its output is over the cap) and holds unread input when the signal
/// comes.
fn flooding_client(addr: SocketAddr, c: usize, signalled: Arc<AtomicBool>) -> Outcome {
    let mut s = connect(addr);
    let mut w: TcpStream = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        // Short write timeouts so the writer notices the signal: it must not
        // sit in write(2) and take the error a reset leaves for the reader.
        let _ = w.set_write_timeout(Some(Duration::from_millis(50)));
        let deadline = Instant::now() + CLIENT_LIMIT;
        let mut k = 0;
        while Instant::now() < deadline && !signalled.load(Ordering::SeqCst) {
            let batch: Vec<u8> = (k..k + 64).flat_map(|i| line(c, i)).collect();
            k += 64;
            let mut at = 0;
            while at < batch.len() {
                if signalled.load(Ordering::SeqCst) || Instant::now() >= deadline {
                    return;
                }
                match w.write(&batch[at..]) {
                    Ok(n) => at += n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => return,
                }
            }
        }
    });
    let mut received = Vec::new();
    let deadline = Instant::now() + CLIENT_LIMIT;
    // A slow reader: the server's output to it backs up.
    let ended = read_to_end(
        &mut s,
        &mut received,
        None,
        Duration::from_millis(1),
        deadline,
    )
    .unwrap_or(Ended::TimeLimit);
    let _ = writer.join();
    Outcome {
        client: c,
        received,
        ended,
    }
}

fn sigterm_under_load_drains_responses_and_exits_zero(mode: Mode) {
    let mut server = gaidaros().mode(mode).start();
    let addr = server.addr();
    let signalled = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..LOCKSTEP_CLIENTS {
        let signalled = signalled.clone();
        clients.push(std::thread::spawn(move || {
            lockstep_client(addr, c, signalled)
        }));
    }
    for c in LOCKSTEP_CLIENTS..LOCKSTEP_CLIENTS + FLOODING_CLIENTS {
        let signalled = signalled.clone();
        clients.push(std::thread::spawn(move || {
            flooding_client(addr, c, signalled)
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    server.assert_running();
    server.signal(Signal::SIGTERM);
    signalled.store(true, Ordering::SeqCst);
    let status = server.wait_exit(EXIT_LIMIT);
    let log = server.log();
    let outcomes: Vec<Outcome> = clients
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    match status {
        Some(s) if s.success() => {}
        other => panic!(
            "after SIGTERM the server should exit 0 within {EXIT_LIMIT:?}, got {other:?}; log:\n{log}"
        ),
    }
    let mut problems = Vec::new();
    for o in &outcomes {
        let want = expected_stream(o.client, o.received.len());
        let got = &o.received;
        if got[..] != want[..got.len()] {
            problems.push(format!(
                "client {}: answers are not a prefix of its requests ({}), ended by {}",
                o.client,
                util::first_difference(got, &want[..got.len()]),
                o.ended
            ));
        } else if got.last().is_some_and(|b| *b != b'\n') {
            let line_start = got.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            problems.push(format!(
                "client {}: truncated response: {} bytes received, the last line cut after {} bytes ({:?}...), ended by {}",
                o.client,
                got.len(),
                got.len() - line_start,
                String::from_utf8_lossy(&got[line_start..(line_start + 30).min(got.len())]),
                o.ended
            ));
        } else if got.is_empty() {
            problems.push(format!(
                "client {}: no answer at all before the signal, ended by {}",
                o.client, o.ended
            ));
        }
        if !matches!(o.ended, Ended::Eof) {
            problems.push(format!(
                "client {}: the connection ended by {} instead of a clean EOF after {} bytes: a reset discards responses the server had already written",
                o.client,
                o.ended,
                got.len()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n(every client: {})\nlog:\n{log}",
        problems.join("\n"),
        outcomes
            .iter()
            .map(|o| format!("#{} got {} bytes, {}", o.client, o.received.len(), o.ended))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

fn sigterm_writes_every_owed_response_before_closing(mode: Mode) {
    // The server has read (and answered, into its output queue) 8 MiB of
    // requests from a client that has not read yet; then comes SIGTERM, and
    // after it a last line the closing server will never read. The client
    // must still receive every answer, then a clean EOF: closing the socket
    // over that unread line would make the kernel send a reset and throw
    // away the answers still in the socket's send buffer.
    let mut server = gaidaros()
        .mode(mode)
        .env("GAIDAROS_LISTENER_MAIN__OUTPUT_CAP", "64MiB")
        .start();
    let addr = server.addr();
    let mut c = connect(addr);
    let owed = expected_stream(99, 8 << 20);
    c.write_all(&owed).expect("send 8 MiB of requests");
    let client_port = c.local_addr().expect("local addr").port();
    let all_read = util::wait_for(Duration::from_secs(20), || {
        let server_unread = util::tcp_queues(addr.port(), client_port).map(|(_, rx)| rx);
        let client_unacked = util::tcp_queues(client_port, addr.port()).map(|(tx, _)| tx);
        server_unread == Some(0) && client_unacked == Some(0)
    });
    assert!(
        all_read,
        "the server should read all 8 MiB (its output cap is 64 MiB)"
    );
    server.signal(Signal::SIGTERM);
    // Once the listener is gone, every loop has stopped reading.
    let stopped = util::wait_for(Duration::from_secs(10), || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
    });
    assert!(stopped, "the listener should close after SIGTERM");
    c.write_all(b"sent after the signal, never read\n")
        .expect("write after the signal");
    let mut received = Vec::new();
    let ended = read_to_end(
        &mut c,
        &mut received,
        None,
        Duration::from_micros(500),
        Instant::now() + CLIENT_LIMIT,
    )
    .unwrap_or(Ended::TimeLimit);
    let status = server.wait_exit(EXIT_LIMIT);
    assert!(
        received == owed && matches!(ended, Ended::Eof),
        "the client should receive all {} owed bytes then EOF; got {} bytes then {ended} ({})",
        owed.len(),
        received.len(),
        util::first_difference(&received, &owed)
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}; log:\n{}",
        server.log()
    );
}

fn sigterm_with_a_client_that_never_reads_exits_at_the_drain_timeout(mode: Mode) {
    // The server owes a client that never reads: after SIGTERM it waits
    // at most drain_timeout (1 s here, 10 s by default), then exits 0.
    let mut server = gaidaros()
        .mode(mode)
        .env("GAIDAROS_SERVER__DRAIN_TIMEOUT", "1s")
        .start();
    let mut hog = connect(server.addr());
    // Writes stop when the server stops reading (its output to the hog is
    // at the cap); 2 s without progress is that, not a scheduling hiccup
    // on a loaded machine (with 500 ms the server sometimes owed nothing).
    hog.set_write_timeout(Some(Duration::from_secs(2)))
        .expect("write timeout");
    let chunk: Vec<u8> = (0..64).flat_map(|k| line(0, k)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match hog.write(&chunk) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => panic!("hog write: {e}"),
        }
    }
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(8));
    assert!(
        status.is_some_and(|s| s.success()),
        "with drain_timeout = 1s the server should exit 0 well within 8 s, got {status:?}; log:\n{}",
        server.log()
    );
    // Under load the hog's writes may stop on their timeout before the
    // server's output fills: then its half-read request meets the shutdown
    // grace instead of the drain timeout. Either forced close is logged.
    assert!(
        server.logged(&["drain timeout", "shutdown grace over"]),
        "the forced close is logged; log:\n{}",
        server.log()
    );
    drop(hog);
}

fn sigint_when_idle_exits_zero(mode: Mode) {
    let mut server = gaidaros().mode(mode).start();
    util::check_echo(server.addr(), "before SIGINT");
    let idle = connect(server.addr());
    server.signal(Signal::SIGINT);
    match server.wait_exit(util::STOP_TIMEOUT) {
        Some(s) if s.success() => {}
        other => panic!(
            "SIGINT should stop the server with status 0, got {other:?}; log:\n{}",
            server.log()
        ),
    }
    drop(idle);
    // The listener is gone.
    assert!(
        TcpStream::connect_timeout(&server.addr(), Duration::from_secs(2)).is_err(),
        "nobody listens after the server exited"
    );
}

fn a_request_arriving_just_after_sigterm_is_still_answered(mode: Mode) {
    // Connected before the stop, its request sent a moment after: it is
    // answered (the shutdown grace), then the connection closes.
    let mut server = gaidaros().mode(mode).start();
    let mut early = connect(server.addr());
    // Let the loop accept it before the signal.
    std::thread::sleep(Duration::from_millis(200));
    server.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    early
        .write_all(b"late words\n")
        .expect("write after SIGTERM");
    let mut got = Vec::new();
    early.read_to_end(&mut got).expect("read to EOF");
    assert_eq!(String::from_utf8_lossy(&got), "late words\n");
    let status = server.wait_exit(Duration::from_secs(8));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit 0, got {status:?}"
    );
}

per_server_type!(
    a_request_arriving_just_after_sigterm_is_still_answered,
    sigterm_under_load_drains_responses_and_exits_zero,
    sigterm_writes_every_owed_response_before_closing,
    sigterm_with_a_client_that_never_reads_exits_at_the_drain_timeout,
    sigint_when_idle_exits_zero,
);
