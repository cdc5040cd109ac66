//! Per-listener limits as a client meets them: a request over
//! `max_request` gets the error line and then a clean EOF (not a reset that
//! destroys the error), and `idle_timeout` closes silent connections but
//! not busy ones.

#[macro_use]
mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use util::{connect, expect_echo, gaidaros, read_to_eof, End, Mode, Server};

const TOO_LARGE: &str = "ERR request too large (limit 1024 bytes)\n";

fn server_with_max_request_1024(mode: Mode) -> Server {
    gaidaros()
        .mode(mode)
        .env("GAIDAROS_LISTENER_MAIN__MAX_REQUEST", "1024")
        .start()
}

/// Read to EOF and expect exactly `want`, ended by a clean EOF.
fn expect_then_eof(s: &mut std::net::TcpStream, want: &str, what: &str) {
    let (got, end) = read_to_eof(s, Duration::from_secs(10));
    assert_eq!(String::from_utf8_lossy(&got), want, "{what}");
    assert!(
        matches!(end, End::Eof),
        "{what}: the answer should end with a clean EOF, got {end:?}"
    );
}

fn request_over_max_request_gets_error_line_then_eof(mode: Mode) {
    let server = server_with_max_request_1024(mode);
    // No newline at all.
    let mut s = connect(server.addr());
    s.write_all(&[b'x'; 4096]).expect("write");
    expect_then_eof(&mut s, TOO_LARGE, "4096 bytes without a newline");
    // A good line first, then the oversized one: the good answer survives.
    let mut s = connect(server.addr());
    s.write_all(format!("fine\n{}\n", "y".repeat(3000)).as_bytes())
        .expect("write");
    expect_then_eof(
        &mut s,
        &format!("fine\n{TOO_LARGE}"),
        "a good line, then a 3001-byte line",
    );
    // The listener still serves new connections.
    util::check_echo(server.addr(), "after the refusals");
    server.stop();
}

fn max_request_counts_the_newline_and_is_inclusive(mode: Mode) {
    let server = server_with_max_request_1024(mode);
    let mut s = connect(server.addr());
    let exactly = format!("{}\n", "a".repeat(1023));
    expect_echo(&mut s, &exactly);
    expect_echo(&mut s, &exactly);
    s.write_all(format!("{}\n", "b".repeat(1024)).as_bytes())
        .expect("write");
    expect_then_eof(&mut s, TOO_LARGE, "a 1025-byte line");
    server.stop();
}

fn error_reply_survives_a_client_that_keeps_sending(mode: Mode) {
    // The client sends 4 MiB without a newline and only then looks for an
    // answer: the server must discard the rest (lingering) instead of
    // closing over unread input, which would reset the connection and
    // destroy the error line.
    let server = server_with_max_request_1024(mode);
    let mut s = connect(server.addr());
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let chunk = vec![b'z'; 64 * 1024];
        for _ in 0..64 {
            w.write_all(&chunk)?;
        }
        w.shutdown(Shutdown::Write)
    });
    let written = writer.join().expect("writer thread");
    written.expect("the server keeps reading (and discarding) until the client is done");
    expect_then_eof(&mut s, TOO_LARGE, "4 MiB without a newline");
    server.stop();
}

fn idle_timeout_closes_silent_connections_only(mode: Mode) {
    let server = gaidaros()
        .mode(mode)
        .env("GAIDAROS_LISTENER_MAIN__IDLE_TIMEOUT", "1s")
        .start();
    let started = Instant::now();
    // Never says anything.
    let mut silent = connect(server.addr());
    // Talks once, then falls silent.
    let mut quiet = connect(server.addr());
    expect_echo(&mut quiet, "one line, then silence\n");
    // Keeps talking every 200 ms for 2.5 s.
    let addr = server.addr();
    let busy = std::thread::spawn(move || {
        let mut s = connect(addr);
        for i in 0..12 {
            expect_echo(&mut s, &format!("still here {i}\n"));
            std::thread::sleep(Duration::from_millis(200));
        }
        expect_echo(&mut s, "outlived the idle timeout\n");
    });
    for (name, s) in [("silent", &mut silent), ("quiet", &mut quiet)] {
        let (got, end) = read_to_eof(s, Duration::from_secs(10));
        assert!(got.is_empty(), "{name}: unexpected bytes {got:?}");
        assert!(
            matches!(end, End::Eof),
            "{name}: an idle connection should be closed (EOF) within 10 s, got {end:?}"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the 1 s idle timeout",
        started.elapsed()
    );
    busy.join().expect("a busy connection is never idle");
    server.stop();
}

fn idle_timeout_zero_never_closes(mode: Mode) {
    let server = gaidaros()
        .mode(mode)
        .env("GAIDAROS_LISTENER_MAIN__IDLE_TIMEOUT", "0")
        .start();
    let mut s = connect(server.addr());
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("idle_timeout = 0 means never, but the read gave {other:?}"),
    }
    s.set_read_timeout(Some(util::IO_TIMEOUT)).expect("timeout");
    expect_echo(&mut s, "still open\n");
    server.stop();
}

fn max_connections_pauses_accepting_until_a_connection_closes(mode: Mode) {
    let server = gaidaros()
        .mode(mode)
        .env("GAIDAROS_LISTENER_MAIN__MAX_CONNECTIONS", "4")
        .start();
    let mut held: Vec<_> = (0..4).map(|_| connect(server.addr())).collect();
    for (i, s) in held.iter_mut().enumerate() {
        expect_echo(s, &format!("held {i}\n"));
    }
    // The kernel completes the handshake, but the server must not take a
    // fifth connection while four are open (across all its loops).
    let mut waiting = connect(server.addr());
    waiting.write_all(b"waiting\n").expect("write");
    waiting
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    let mut buf = [0u8; 8];
    match waiting.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a fifth connection was served over max_connections = 4: {other:?}"),
    }
    // One closes: the waiting one is served.
    drop(held.pop());
    waiting
        .set_read_timeout(Some(util::IO_TIMEOUT))
        .expect("timeout");
    let got = util::read_exactly(&mut waiting, 8).expect("served once a slot is free");
    assert_eq!(&got, b"waiting\n");
    for (i, s) in held.iter_mut().enumerate() {
        expect_echo(s, &format!("still held {i}\n"));
    }
    assert!(
        server.logged(&["max_connections"]),
        "the pause is logged; log:\n{}",
        server.log()
    );
    server.stop();
}

per_server_type!(
    max_connections_pauses_accepting_until_a_connection_closes,
    request_over_max_request_gets_error_line_then_eof,
    max_request_counts_the_newline_and_is_inclusive,
    error_reply_survives_a_client_that_keeps_sending,
    idle_timeout_closes_silent_connections_only,
    idle_timeout_zero_never_closes,
);
