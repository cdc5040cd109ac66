//! A client that sends without ever reading cannot grow the server's
//! memory: once its pending output passes `output_cap` the server stops
//! reading from it, the kernel buffers fill and the client's writes block.
//! Other clients are still served, and nothing the slow client sent is
//! lost once it starts reading.

#[macro_use]
mod util;

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use util::{connect, expect_echo, gaidaros, write_until_blocked, Blocked, Mode};

/// Every line is this long, newline included.
const LINE: usize = 1024;
/// The server's growth allowed over its baseline while the hog is blocked.
const RSS_BOUND_KIB: u64 = 64 * 1024;
/// If the server is still reading after this much, it is not enforcing
/// the cap (its kernel buffers alone hold far less).
const GIVE_UP_BYTES: u64 = 512 << 20;

/// Line `n` of the hog's stream.
fn line(n: u64) -> Vec<u8> {
    let mut l = format!("hog line {n:010} ").into_bytes();
    l.resize(LINE - 1, b'a' + (n % 26) as u8);
    l.push(b'\n');
    l
}

/// The bytes of the hog's stream from `offset`, `len` long.
fn stream(offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + LINE);
    let mut n = offset / LINE as u64;
    let skip = (offset % LINE as u64) as usize;
    while out.len() < len + skip {
        out.extend_from_slice(&line(n));
        n += 1;
    }
    out.drain(..skip);
    out.truncate(len);
    out
}

fn client_that_never_reads_cannot_grow_server_memory(mode: Mode) {
    let server = gaidaros()
        .mode(mode)
        .env("GAIDAROS_LISTENER_MAIN__OUTPUT_CAP", "256KiB")
        .start();
    let addr = server.addr();
    let mut other = connect(addr);
    expect_echo(&mut other, "warm up\n");
    let baseline = server.rss_kib();

    // Write 64 KiB at a time until a write makes no progress for 1 s.
    let mut hog = connect(addr);
    hog.set_write_timeout(Some(Duration::from_secs(1)))
        .expect("write timeout");
    let written = match write_until_blocked(
        &mut hog,
        |at| stream(at, 64 * 1024),
        GIVE_UP_BYTES,
        Duration::from_secs(60),
    ) {
        Blocked::After(n) => n,
        Blocked::NeverWithin(n) => panic!(
            "the server read {n} bytes from a client that reads nothing: output_cap is not enforced (RSS {} KiB, baseline {baseline} KiB)",
            server.rss_kib()
        ),
    };
    let grown = server.rss_kib().saturating_sub(baseline);
    println!("{mode:?}: writes blocked after {written} bytes; server RSS grew {grown} KiB over {baseline} KiB");
    assert!(
        grown < RSS_BOUND_KIB,
        "server RSS grew by {grown} KiB (baseline {baseline} KiB) while a client that never reads sent {written} bytes"
    );
    // The loop is not stuck behind the hog.
    for i in 0..20 {
        expect_echo(&mut other, &format!("still served {i}\n"));
    }
    let fresh = std::thread::spawn(move || util::check_echo(addr, "new client meanwhile"));
    fresh
        .join()
        .expect("a new client is served while the hog is blocked");

    // Now the hog reads: every line it sent comes back, in order.
    let mut reader = hog.try_clone().expect("clone");
    let check = std::thread::spawn(move || -> Result<u64, String> {
        reader
            .set_read_timeout(Some(util::IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut got: u64 = 0;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => {
                    if buf[..n] != stream(got, n)[..] {
                        return Err(format!(
                            "echo differs in the {n} bytes from offset {got}: {}",
                            util::first_difference(&buf[..n], &stream(got, n))
                        ));
                    }
                    got += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read after {got} bytes: {e}")),
            }
        }
    });
    // Finish the last partial line, then say goodbye.
    let total = written.div_ceil(LINE as u64) * LINE as u64;
    hog.set_write_timeout(Some(util::IO_TIMEOUT))
        .expect("write timeout");
    hog.write_all(&stream(written, (total - written) as usize))
        .expect("finish the last line");
    hog.shutdown(Shutdown::Write).expect("shutdown");
    let echoed = check.join().expect("reader thread");
    let echoed = echoed.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        echoed, total,
        "every byte the hog sent comes back once it reads"
    );
    server.stop();
}

fn forward_to_a_client_that_never_reads_cannot_grow_server_memory(mode: Mode) {
    // The upstream sends as fast as it can; the client never reads. The
    // forwarder must stop reading the upstream once the client's output
    // is at its cap, so the upstream's writes block.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let server = gaidaros()
        .args(&[
            "--handler",
            "forward",
            "-o",
            &format!("upstream={}", upstream.local_addr().expect("upstream addr")),
        ])
        .mode(mode)
        .env("GAIDAROS_LISTENER_MAIN__OUTPUT_CAP", "256KiB")
        .start();
    let baseline = server.rss_kib();
    let client = connect(server.addr());
    upstream
        .set_nonblocking(false)
        .expect("blocking upstream listener");
    let (mut up, _) = upstream.accept().expect("upstream accept");
    up.set_write_timeout(Some(Duration::from_secs(1)))
        .expect("write timeout");
    let chunk = vec![b'u'; 64 * 1024];
    let written = match write_until_blocked(
        &mut up,
        |_| chunk.clone(),
        GIVE_UP_BYTES,
        Duration::from_secs(60),
    ) {
        Blocked::After(n) => n,
        Blocked::NeverWithin(n) => panic!(
            "the forwarder read {n} bytes for a client that reads nothing: no backpressure (RSS {} KiB, baseline {baseline} KiB)",
            server.rss_kib()
        ),
    };
    let grown = server.rss_kib().saturating_sub(baseline);
    println!("{mode:?}: upstream blocked after {written} bytes; server RSS grew {grown} KiB over {baseline} KiB");
    assert!(
        grown < RSS_BOUND_KIB,
        "server RSS grew by {grown} KiB (baseline {baseline} KiB) while forwarding {written} bytes to a client that never reads"
    );
    drop(client);
    drop(up);
    server.stop();
}

per_server_type!(
    client_that_never_reads_cannot_grow_server_memory,
    forward_to_a_client_that_never_reads_cannot_grow_server_memory,
);
