//! 1000 concurrent connections, 100 requests each: every answer reaches the
//! connection that asked, intact. Each request is unique to its connection
//! and round, so an answer sent to the wrong connection or mixed up with
//! another is caught.

#[macro_use]
mod util;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::{gaidaros, read_exactly, Mode};

/// How many client threads, connections per thread and rounds.
#[derive(Clone, Copy)]
struct Load {
    threads: usize,
    conns_per_thread: usize,
    requests: usize,
}

/// Request `round` of connection `conn`, 24 to ~90 bytes.
fn request(conn: usize, round: usize) -> Vec<u8> {
    let filler = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let len = (conn * 7 + round * 13) % filler.len();
    format!("conn {conn:04} round {round:03} {}\n", &filler[..len]).into_bytes()
}

/// One client thread: open its connections, wait for every thread to have
/// done so (all connections open at once), then run the rounds.
fn client(
    addr: std::net::SocketAddr,
    load: Load,
    t: usize,
    connected: Arc<AtomicUsize>,
    failed: Arc<AtomicBool>,
) -> Result<(), String> {
    let result = (|| {
        let mut conns = Vec::with_capacity(load.conns_per_thread);
        for _ in 0..load.conns_per_thread {
            let s = TcpStream::connect_timeout(&addr, util::IO_TIMEOUT)
                .map_err(|e| format!("thread {t}: connect: {e}"))?;
            s.set_read_timeout(Some(util::IO_TIMEOUT))
                .and_then(|()| s.set_write_timeout(Some(util::IO_TIMEOUT)))
                .map_err(|e| e.to_string())?;
            conns.push(s);
        }
        connected.fetch_add(1, Ordering::SeqCst);
        let ready = util::wait_for(Duration::from_secs(60), || {
            connected.load(Ordering::SeqCst) == load.threads || failed.load(Ordering::SeqCst)
        });
        if !ready || failed.load(Ordering::SeqCst) {
            return Err(format!("thread {t}: the other threads never connected"));
        }
        for round in 0..load.requests {
            if failed.load(Ordering::SeqCst) {
                return Err(format!("thread {t}: stopped, another thread failed"));
            }
            for (i, s) in conns.iter_mut().enumerate() {
                let conn = t * load.conns_per_thread + i;
                s.write_all(&request(conn, round))
                    .map_err(|e| format!("conn {conn} round {round}: write: {e}"))?;
            }
            for (i, s) in conns.iter_mut().enumerate() {
                let conn = t * load.conns_per_thread + i;
                let want = request(conn, round);
                let got = read_exactly(s, want.len())
                    .map_err(|e| format!("conn {conn} round {round}: {e}"))?;
                if got != want {
                    return Err(format!(
                        "conn {conn} round {round}: got {:?}, want {:?}",
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&want)
                    ));
                }
            }
        }
        Ok(())
    })();
    if result.is_err() {
        failed.store(true, Ordering::SeqCst);
    }
    result
}

/// Run `load` against `server`; panics with the first errors and the log.
fn run_load(server: &util::Server, load: Load) {
    let addr = server.addr();
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..load.threads)
        .map(|t| {
            let connected = connected.clone();
            let failed = failed.clone();
            std::thread::spawn(move || client(addr, load, t, connected, failed))
        })
        .collect();
    let errors: Vec<String> = threads
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("client thread panicked".into()))
        })
        .filter_map(Result::err)
        .collect();
    assert!(
        errors.is_empty(),
        "{} of {} client threads failed after {:?}; first errors:\n{}\nlog:\n{}",
        errors.len(),
        load.threads,
        started.elapsed(),
        errors
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        server.log()
    );
}

fn thousand_connections_hundred_requests_each_all_answered_correctly(mode: Mode) {
    // 1000 client sockets here (twice when both server types run at once),
    // 1000 in the server (which raises its own limit).
    util::raise_nofile_limit(2500);
    let server = gaidaros().mode(mode).start();
    run_load(
        &server,
        Load {
            threads: 50,
            conns_per_thread: 20,
            requests: 100,
        },
    );
    server.stop();
}

fn one_shared_listening_socket_serves_every_connection(mode: Mode) {
    // reuseport = false: all loops poll one listening socket.
    let server = gaidaros()
        .mode(mode)
        .env("GAIDAROS_SERVER__REUSEPORT", "false")
        .start();
    run_load(
        &server,
        Load {
            threads: 10,
            conns_per_thread: 20,
            requests: 20,
        },
    );
    server.stop();
}

per_server_type!(
    thousand_connections_hundred_requests_each_all_answered_correctly,
    one_shared_listening_socket_serves_every_connection,
);
