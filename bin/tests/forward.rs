//! The `forward` handler moves bytes both ways intact, with backpressure
//! towards a slow upstream, passes a half-close (FIN) through in either
//! direction, and closes a client whose upstream cannot be reached.

#[macro_use]
mod util;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use util::{connect, free_port, gaidaros, read_exactly, read_to_eof, End, Mode, Pattern, Server};

const MIB: usize = 1 << 20;
/// Bytes sent each way.
const VOLUME: usize = 64 * MIB;
/// Socket timeouts in this file: generous, the upstream is slow on purpose.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What one side sent or received: length and SHA-256.
#[derive(Debug, PartialEq, Eq)]
struct Tally {
    bytes: usize,
    sha256: String,
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Send the next `len` bytes of `pattern`, hashing them.
fn send_pattern(
    s: &mut TcpStream,
    pattern: &mut Pattern,
    len: usize,
    hash: &mut Sha256,
) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        pattern.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        s.write_all(&buf[..n])?;
        left -= n;
    }
    Ok(())
}

/// Read to EOF, hashing; `slow` reads in 16 KiB pieces with a pause every
/// fourth read.
fn receive(s: &mut TcpStream, slow: bool) -> io::Result<Tally> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; if slow { 16 * 1024 } else { 256 * 1024 }];
    let mut bytes = 0;
    let mut reads = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                bytes += n;
                reads += 1;
                if slow && reads == 4 {
                    reads = 0;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("after {bytes} bytes: {e}"),
                ))
            }
        }
    }
    Ok(Tally {
        bytes,
        sha256: hex(&hash.finalize()),
    })
}

/// Accept one connection on `listener` within `TIMEOUT`.
fn accept_one(listener: &TcpListener) -> io::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(TIMEOUT))?;
                s.set_write_timeout(Some(TIMEOUT))?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e),
        }
    }
}

/// The forwarder as shipped: bytes spliced in the kernel.
fn forwarder(mode: Mode, upstream: SocketAddr) -> Server {
    forwarder_with(mode, upstream, true)
}

/// `splice = false`: bytes go through the handler's on_data and are copied.
fn forwarder_with(mode: Mode, upstream: SocketAddr, splice: bool) -> Server {
    gaidaros()
        .args(&[
            "--handler",
            "forward",
            "-o",
            &format!("upstream={upstream}"),
            "-o",
            &format!("splice={splice}"),
        ])
        .mode(mode)
        .start()
}

/// What the upstream saw.
struct UpstreamReport {
    received: Tally,
    sent: Tally,
}

fn forward_moves_64_mib_each_way_intact_to_a_slow_upstream(mode: Mode) {
    moves_64_mib_each_way(mode, true);
}

#[test]
fn copying_forward_moves_64_mib_each_way_intact_to_a_slow_upstream() {
    moves_64_mib_each_way(Mode::Thread, false);
}

#[test]
fn copying_forward_delivers_bytes_and_fin_sent_before_upstream_accepts() {
    early_bytes_and_fin(Mode::Thread, false);
}

fn moves_64_mib_each_way(mode: Mode, splice: bool) {
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let server = forwarder_with(mode, upstream.local_addr().expect("upstream addr"), splice);

    // The upstream: reads slowly, and concurrently sends its own 64 MiB,
    // the last MiB only after it has seen the client's EOF.
    let up = std::thread::spawn(move || -> Result<UpstreamReport, String> {
        let mut s = accept_one(&upstream).map_err(|e| format!("upstream accept: {e}"))?;
        let mut r = s.try_clone().map_err(|e| e.to_string())?;
        let saw_eof = Arc::new(AtomicBool::new(false));
        let eof = saw_eof.clone();
        let reader = std::thread::spawn(move || {
            let got = receive(&mut r, true);
            eof.store(true, Ordering::SeqCst);
            got
        });
        let mut hash = Sha256::new();
        let mut pattern = Pattern(0xB0B);
        let mut sent = send_pattern(&mut s, &mut pattern, VOLUME - MIB, &mut hash)
            .map_err(|e| format!("upstream send: {e}"));
        if sent.is_ok() {
            // The client's half-close must arrive while this direction is
            // still open; the last MiB goes out after it.
            if !util::wait_for(Duration::from_secs(60), || saw_eof.load(Ordering::SeqCst)) {
                return Err("upstream never saw the client's EOF".into());
            }
            sent = send_pattern(&mut s, &mut pattern, MIB, &mut hash)
                .and_then(|()| s.shutdown(Shutdown::Write))
                .map_err(|e| format!("upstream send after EOF: {e}"));
        }
        let received = reader
            .join()
            .map_err(|_| "upstream reader panicked".to_string())?
            .map_err(|e| format!("upstream receive: {e}"))?;
        sent?;
        Ok(UpstreamReport {
            received,
            sent: Tally {
                bytes: VOLUME,
                sha256: hex(&hash.finalize()),
            },
        })
    });

    // The client: sends 64 MiB then its FIN, and reads everything.
    let mut c = connect(server.addr());
    c.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    c.set_write_timeout(Some(TIMEOUT)).expect("timeout");
    let mut w = c.try_clone().expect("clone");
    let client_writer = std::thread::spawn(move || -> Result<Tally, String> {
        let mut hash = Sha256::new();
        send_pattern(&mut w, &mut Pattern(0xA11CE), VOLUME, &mut hash)
            .and_then(|()| w.shutdown(Shutdown::Write))
            .map_err(|e| format!("client send: {e}"))?;
        Ok(Tally {
            bytes: VOLUME,
            sha256: hex(&hash.finalize()),
        })
    });
    let client_received = receive(&mut c, false);
    let client_sent = client_writer.join().expect("client writer thread");
    let upstream = up.join().expect("upstream thread");

    let client_sent = client_sent.unwrap_or_else(|e| panic!("{e}\nlog:\n{}", server.log()));
    let upstream = upstream.unwrap_or_else(|e| panic!("{e}\nlog:\n{}", server.log()));
    let client_received =
        client_received.unwrap_or_else(|e| panic!("client receive: {e}\nlog:\n{}", server.log()));
    assert_eq!(
        upstream.received, client_sent,
        "client -> upstream: what arrived differs from what was sent"
    );
    assert_eq!(
        client_received, upstream.sent,
        "upstream -> client: what arrived differs from what was sent"
    );
    server.stop();
}

fn forward_passes_upstream_half_close_to_the_client(mode: Mode) {
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let server = forwarder(mode, upstream.local_addr().expect("upstream addr"));
    let mut c = connect(server.addr());
    c.write_all(b"hello upstream\n").expect("client write");
    let mut u = accept_one(&upstream).expect("upstream accept");
    let got = read_exactly(&mut u, 15).expect("upstream reads the client's line");
    assert_eq!(got, b"hello upstream\n");
    // The upstream says its last word and half-closes.
    u.write_all(b"bye\n").expect("upstream write");
    u.shutdown(Shutdown::Write).expect("upstream shutdown");
    let (got, end) = read_to_eof(&mut c, Duration::from_secs(10));
    assert_eq!(got, b"bye\n");
    assert!(
        matches!(end, End::Eof),
        "the client sees the upstream's FIN: {end:?}"
    );
    // The other direction stays open.
    c.write_all(b"after your FIN\n")
        .expect("client write after EOF");
    c.shutdown(Shutdown::Write).expect("client shutdown");
    let (got, end) = read_to_eof(&mut u, Duration::from_secs(10));
    assert_eq!(String::from_utf8_lossy(&got), "after your FIN\n");
    assert!(matches!(end, End::Eof), "then the client's FIN: {end:?}");
    server.stop();
}

fn forward_closes_the_client_when_upstream_is_unreachable(mode: Mode) {
    // Nothing listens there (a port that was free a moment ago).
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server = forwarder(mode, dead);
    let mut c = connect(server.addr());
    let _ = c.write_all(b"anyone?\n");
    let (got, end) = read_to_eof(&mut c, Duration::from_secs(15));
    assert!(got.is_empty(), "no bytes from nowhere: {got:?}");
    assert!(
        matches!(end, End::Eof | End::Error(_)),
        "the client is closed when the upstream refuses, got {end:?}"
    );
    // The listener keeps working.
    let mut again = connect(server.addr());
    let (_, end) = read_to_eof(&mut again, Duration::from_secs(15));
    assert!(!matches!(end, End::Deadline), "second client closed too");
    server.stop();
}

fn forward_delivers_bytes_and_fin_sent_before_upstream_accepts(mode: Mode) {
    early_bytes_and_fin(mode, true);
}

fn early_bytes_and_fin(mode: Mode, splice: bool) {
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let server = forwarder_with(mode, upstream.local_addr().expect("upstream addr"), splice);
    // The client says everything and half-closes at once, before the
    // upstream has even accepted.
    let mut c = connect(server.addr());
    c.write_all(b"early words\n").expect("client write");
    c.shutdown(Shutdown::Write).expect("client shutdown");
    std::thread::sleep(Duration::from_millis(200));
    let mut u = accept_one(&upstream).expect("upstream accept");
    let (got, end) = read_to_eof(&mut u, Duration::from_secs(10));
    assert_eq!(String::from_utf8_lossy(&got), "early words\n");
    assert!(matches!(end, End::Eof), "then the client's FIN: {end:?}");
    // The way back still works.
    u.write_all(b"late reply\n").expect("upstream write");
    u.shutdown(Shutdown::Write).expect("upstream shutdown");
    let (got, end) = read_to_eof(&mut c, Duration::from_secs(10));
    assert_eq!(String::from_utf8_lossy(&got), "late reply\n");
    assert!(matches!(end, End::Eof), "then the upstream's FIN: {end:?}");
    server.stop();
}

per_server_type!(
    forward_delivers_bytes_and_fin_sent_before_upstream_accepts,
    forward_moves_64_mib_each_way_intact_to_a_slow_upstream,
    forward_passes_upstream_half_close_to_the_client,
    forward_closes_the_client_when_upstream_is_unreachable,
);
