//! Running out of file descriptors (EMFILE on accept) does not make the
//! loop spin: accepting backs off, open connections keep being served, and
//! once descriptors are free again new connections are served.

#[macro_use]
mod util;

use std::net::TcpStream;
use std::time::Duration;

use util::{connect, expect_echo, gaidaros, Mode};

/// The server's RLIMIT_NOFILE (soft and hard).
const FD_LIMIT: u64 = 64;
/// Connections served before the limit is reached.
const EARLY: usize = 10;
/// Connections opened on top: more than the server can hold.
const EXTRA: usize = 120;
/// CPU the server may use in one second of a full backlog, clock ticks
/// (a spinning loop uses about 100 per thread).
const IDLE_TICKS: u64 = 30;

fn accept_at_fd_limit_does_not_spin_and_recovers(mode: Mode) {
    let server = gaidaros().mode(mode).nofile_limit(FD_LIMIT).start();
    let addr = server.addr();
    let mut early: Vec<TcpStream> = (0..EARLY).map(|_| connect(addr)).collect();
    for (i, s) in early.iter_mut().enumerate() {
        expect_echo(s, &format!("early {i}\n"));
    }
    // The kernel completes these handshakes (backlog 1024); the server can
    // accept only some before accept(2) fails with EMFILE.
    let extra: Vec<TcpStream> = (0..EXTRA).map(|_| connect(addr)).collect();
    assert!(
        util::wait_for(Duration::from_secs(10), || server
            .log()
            .contains("Too many open files")),
        "the server should hit EMFILE and say so; log:\n{}",
        server.log()
    );
    // Connections it holds are still served.
    for (i, s) in early.iter_mut().enumerate() {
        expect_echo(s, &format!("early {i} while the backlog is full\n"));
    }
    // And it does not spin on the listener meanwhile.
    let before = server.cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = server.cpu_ticks() - before;
    println!("{mode:?}: {used} clock ticks of CPU in 1 s with the backlog full");
    assert!(
        used < IDLE_TICKS,
        "the server used {used} clock ticks of CPU in 1 s with a full backlog (limit {IDLE_TICKS}): the accept loop spins"
    );
    // Free the descriptors: new connections are served again.
    drop(extra);
    let served = util::wait_for(Duration::from_secs(20), || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        use std::io::{Read, Write};
        let mut buf = [0u8; 10];
        s.write_all(b"recovered\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && &buf == b"recovered\n"
    });
    assert!(
        served,
        "after the extra connections closed, a new connection should be served within 20 s; log:\n{}",
        server.log()
    );
    for (i, s) in early.iter_mut().enumerate() {
        expect_echo(s, &format!("early {i} after recovery\n"));
    }
    server.stop();
}

per_server_type!(accept_at_fd_limit_does_not_spin_and_recovers);
