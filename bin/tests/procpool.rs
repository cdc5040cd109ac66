//! `-S procpool`: a master and worker processes on shared listening
//! sockets. Workers serve and stop with the master; a killed worker is
//! replaced; SIGHUP replaces every worker while a client connects
//! continuously, with no connection refused and every request answered; a
//! reload with a broken conf keeps the running workers.

#[macro_use]
mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use util::{check_echo, children, connect, expect_echo, gaidaros, wait_for, TempDir};

const WORKERS: usize = 2;

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| !s.contains("State:\tZ"))
        .unwrap_or(false)
}

fn wait_workers(master: i32, n: usize) -> Vec<i32> {
    assert!(
        wait_for(Duration::from_secs(15), || children(master).len() == n),
        "{n} workers expected, found {:?}",
        children(master)
    );
    children(master)
}

/// A client that connects, sends one line, checks the echo and closes, in
/// a loop until told to stop. Returns (requests answered, failures).
fn connect_loop(addr: SocketAddr, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let mut ok = 0;
    let mut failures = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let line = format!("reload probe {i}\n");
        let attempt = (|| -> Result<(), String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
            s.write_all(line.as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            let mut got = vec![0; line.len()];
            s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
            if got != line.as_bytes() {
                return Err(format!("wrong echo {:?}", String::from_utf8_lossy(&got)));
            }
            Ok(())
        })();
        match attempt {
            Ok(()) => ok += 1,
            Err(e) => failures.push(format!("request {i}: {e}")),
        }
    }
    (ok, failures)
}

#[test]
fn workers_serve_and_stop_with_the_master() {
    let server = gaidaros()
        .args(&["-S", "procpool", "-N", &WORKERS.to_string()])
        .start();
    let workers = wait_workers(server.pid(), WORKERS);
    let addr = server.addr();
    let clients: Vec<_> = (0..40)
        .map(|i| std::thread::spawn(move || check_echo(addr, &format!("client {i}"))))
        .collect();
    for c in clients {
        c.join().expect("client served");
    }
    server.stop();
    assert!(
        wait_for(Duration::from_secs(10), || workers
            .iter()
            .all(|w| !alive(*w))),
        "workers exit with the master: {workers:?}"
    );
}

#[test]
fn a_killed_worker_is_replaced_and_the_others_serve_on() {
    let server = gaidaros()
        .args(&["-S", "procpool", "-N", &WORKERS.to_string()])
        .start();
    let addr = server.addr();
    let before = wait_workers(server.pid(), WORKERS);
    kill(Pid::from_raw(before[0]), Signal::SIGKILL).expect("kill -9 a worker");
    // New connections are served at once by the surviving worker.
    for i in 0..5 {
        check_echo(addr, &format!("during the restart {i}"));
    }
    assert!(
        wait_for(Duration::from_secs(15), || {
            let now = children(server.pid());
            now.len() == WORKERS && !now.contains(&before[0])
        }),
        "the killed worker was replaced: {:?}\nlog:\n{}",
        children(server.pid()),
        server.log()
    );
    assert!(
        server.logged(&["worker exited; starting another"]),
        "the restart is logged; log:\n{}",
        server.log()
    );
    check_echo(addr, "after the restart");
    server.stop();
}

#[test]
fn sighup_replaces_every_worker_without_refusing_a_connection() {
    let server = gaidaros()
        .args(&["-S", "procpool", "-N", &WORKERS.to_string()])
        .start();
    let addr = server.addr();
    let original = wait_workers(server.pid(), WORKERS);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || connect_loop(addr, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut generations = vec![original.clone()];
    for _ in 0..2 {
        let previous = generations.last().cloned().unwrap_or_default();
        server.signal(Signal::SIGHUP);
        assert!(
            wait_for(Duration::from_secs(20), || {
                let now = children(server.pid());
                // Old workers drain and exit; the new set is all new.
                now.len() == WORKERS && now.iter().all(|p| !previous.contains(p))
            }),
            "SIGHUP replaced the workers: before {previous:?}, now {:?}\nlog:\n{}",
            children(server.pid()),
            server.log()
        );
        generations.push(children(server.pid()));
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    let mut failures = Vec::new();
    for c in clients {
        let (ok, failed) = c.join().expect("client thread");
        answered += ok;
        failures.extend(failed);
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across two reloads, first: {}",
        failures.len(),
        answered + failures.len(),
        failures[0]
    );
    assert!(answered > 20, "the client kept connecting: {answered}");
    assert_eq!(server.log().matches("reload done").count(), 2);
    server.stop();
}

#[test]
fn a_reload_with_a_broken_conf_keeps_the_running_workers() {
    let dir = TempDir::new("procpool");
    let good =
        format!("[server]\ntype = procpool\nloops = {WORKERS}\n\n[listener.main]\nport = 0\n");
    let conf = dir.write("gaidaros.conf", &good);
    let conf_arg = conf.to_string_lossy().into_owned();
    let server = gaidaros().args(&["-c", &conf_arg]).start();
    let addr = server.addr();
    let before = wait_workers(server.pid(), WORKERS);
    // Every worker has read the conf and serves (a worker counted as a
    // child may still be starting, and would read the broken one).
    assert!(
        server.logged(&[&format!("workers={WORKERS}")]),
        "the master says all its workers serve:\n{}",
        server.log()
    );
    let mut held = connect(addr);
    expect_echo(&mut held, "before the reload\n");
    dir.write("gaidaros.conf", &format!("{good}no_such_key = 1\n"));
    server.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log().contains("reload refused") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = server.log();
    assert!(
        log.contains("reload refused") && log.contains("no_such_key"),
        "the broken conf is refused and named:\n{log}"
    );
    assert_eq!(children(server.pid()), before, "workers unchanged");
    expect_echo(&mut held, "after the refused reload\n");
    check_echo(addr, "new connection");
    server.stop();
}

#[test]
fn proc_serves_each_connection_in_its_own_process_and_a_crash_takes_only_it() {
    let server = gaidaros().args(&["-S", "proc"]).start();
    let addr = server.addr();
    let mut conns: Vec<TcpStream> = (0..5).map(|_| connect(addr)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        expect_echo(c, &format!("conn {i} first\n"));
    }
    let workers = wait_workers(server.pid(), 5);
    kill(Pid::from_raw(workers[0]), Signal::SIGKILL).expect("kill -9 one connection's worker");
    std::thread::sleep(Duration::from_millis(300));
    let mut served = 0;
    for (i, c) in conns.iter_mut().enumerate() {
        let line = format!("conn {i} second\n");
        let ok = c.write_all(line.as_bytes()).is_ok() && {
            let mut got = vec![0; line.len()];
            c.read_exact(&mut got).is_ok() && got == line.as_bytes()
        };
        served += usize::from(ok);
    }
    assert_eq!(served, 4, "the crash took exactly its own connection");
    check_echo(addr, "new connection after the crash");
    drop(conns);
    let left = children(server.pid());
    server.stop();
    assert!(
        wait_for(Duration::from_secs(10), || left.iter().all(|w| !alive(*w))),
        "connection workers exit with the master: {left:?}"
    );
}
