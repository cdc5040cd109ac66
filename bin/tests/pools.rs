//! Handler pools (`-X`, `-n`) in the real binary: every handler type answers
//! many concurrent pipelining clients completely and in order; a tiny pool
//! with a tiny queue and `max_pipelined` pauses reading instead of
//! deadlocking; bad values are refused at start-up; `--help` documents the
//! flags.

#[macro_use]
mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Mutex;

use std::time::Duration;

use util::{
    connect, expect_echo, first_difference, gaidaros, read_exactly, read_to_eof, End, Mode,
};

/// How long flags that exit at once may take.
const EXIT_LIMIT: Duration = Duration::from_secs(20);
/// Concurrent connections of the load tests, and lines each pipelines.
const CONNECTIONS: usize = 200;
const LINES_PER_CONNECTION: usize = 50;

/// The load tests each open 200 connections and start 200 client threads;
/// on a small machine they run one at a time so that their socket timeouts
/// measure the server, not the other tests.
static LOAD: Mutex<()> = Mutex::new(());

/// Line `line` of connection `conn`: unique across the whole test, so an
/// answer delivered to the wrong connection or out of order is caught.
fn request(conn: usize, line: usize) -> String {
    let filler = "abcdefghijklmnopqrstuvwxyz0123456789";
    let len = (conn * 11 + line * 7) % filler.len();
    format!("conn {conn:03} line {line:03} {}\n", &filler[..len])
}

/// One client: write all its lines in one go, then read every answer.
fn pipeline_lines(mut s: TcpStream, conn: usize, lines: usize) -> Result<(), String> {
    let mut want = String::new();
    for line in 0..lines {
        want.push_str(&request(conn, line));
    }
    s.write_all(want.as_bytes())
        .map_err(|e| format!("conn {conn}: write: {e}"))?;
    let got = read_exactly(&mut s, want.len()).map_err(|e| format!("conn {conn}: {e}"))?;
    if got != want.as_bytes() {
        return Err(format!(
            "conn {conn}: answers differ: {}",
            first_difference(&got, want.as_bytes())
        ));
    }
    // The connection is still served after the pipelined batch.
    let last = format!("conn {conn:03} last\n");
    s.write_all(last.as_bytes())
        .map_err(|e| format!("conn {conn}: write: {e}"))?;
    let got = read_exactly(&mut s, last.len()).map_err(|e| format!("conn {conn}: {e}"))?;
    if got != last.as_bytes() {
        return Err(format!(
            "conn {conn}: got {:?} for {last:?}",
            String::from_utf8_lossy(&got)
        ));
    }
    s.shutdown(Shutdown::Write).ok();
    Ok(())
}

/// `-S thread -N 2 -X kind -n 8`: 200 connections open at once, each
/// pipelining 50 distinct lines (5 under `-X proc`, a process per
/// request); every answer is right and in order.
fn echo_under_concurrent_pipelining_clients(kind: &str) {
    let lines = if kind == "proc" {
        5
    } else {
        LINES_PER_CONNECTION
    };
    let _one_at_a_time = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = gaidaros()
        .mode(Mode::Thread)
        .args(&["-X", kind, "-n", "8"])
        .start();
    let addr: SocketAddr = server.addr();
    // Every connection is open before any client writes.
    let conns: Vec<TcpStream> = (0..CONNECTIONS).map(|_| connect(addr)).collect();
    let clients: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(conn, s)| std::thread::spawn(move || pipeline_lines(s, conn, lines)))
        .collect();
    let failures: Vec<String> = clients
        .into_iter()
        .filter_map(|c| match c.join() {
            Ok(Ok(())) => None,
            Ok(Err(why)) => Some(why),
            Err(_) => Some("client thread panicked".into()),
        })
        .collect();
    server.assert_running();
    assert!(
        failures.is_empty(),
        "-X {kind}: {} of {CONNECTIONS} connections failed, first: {}\nlog:\n{}",
        failures.len(),
        failures[0],
        server.log()
    );
    server.stop();
}

#[test]
fn blocking_answers_200_pipelining_connections_in_order() {
    echo_under_concurrent_pipelining_clients("blocking");
}

#[test]
fn thread_answers_200_pipelining_connections_in_order() {
    echo_under_concurrent_pipelining_clients("thread");
}

#[test]
fn threadpool_answers_200_pipelining_connections_in_order() {
    echo_under_concurrent_pipelining_clients("threadpool");
}

#[test]
fn gthread_answers_200_pipelining_connections_in_order() {
    echo_under_concurrent_pipelining_clients("gthread");
}

#[test]
fn gthreadpool_answers_200_pipelining_connections_in_order() {
    echo_under_concurrent_pipelining_clients("gthreadpool");
}

#[test]
fn proc_answers_200_pipelining_connections_in_order() {
    echo_under_concurrent_pipelining_clients("proc");
}

#[test]
fn procpool_answers_200_pipelining_connections_in_order() {
    echo_under_concurrent_pipelining_clients("procpool");
}

/// `-X procpool -n 4` under 16 clients doing request/response in a loop:
/// one worker is killed with SIGKILL. At most the one request it was
/// running fails (its client gets the error reply and EOF); every other
/// client sees nothing; the pool has 4 workers again and serves new
/// connections.
#[test]
fn a_killed_pool_worker_fails_at_most_its_request_and_is_replaced() {
    let _one_at_a_time = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let server = gaidaros()
        .mode(Mode::Thread)
        .args(&["-X", "procpool", "-n", "4"])
        .start();
    let addr = server.addr();
    assert!(
        util::wait_for(Duration::from_secs(10), || util::children(server.pid())
            .len()
            == 4),
        "4 workers at start: {:?}",
        util::children(server.pid())
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<usize, String> {
                let mut s = connect(addr);
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let line = request(c, n % 1000);
                    s.write_all(line.as_bytes())
                        .map_err(|e| format!("write: {e}"))?;
                    let mut got = read_exactly(&mut s, line.len())?;
                    if got != line.as_bytes() {
                        // An error reply can be longer than the request
                        // (19 bytes at the shortest): take all of it.
                        let mut byte = [0u8; 1];
                        while !got.ends_with(b"\n") && matches!(s.read(&mut byte), Ok(1)) {
                            got.push(byte[0]);
                        }
                        return Err(String::from_utf8_lossy(&got).into_owned());
                    }
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let victim = util::children(server.pid())[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 a worker");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results: Vec<Result<usize, String>> = clients
        .into_iter()
        .map(|c| c.join().unwrap_or_else(|_| Err("client panicked".into())))
        .collect();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.len() <= 1,
        "{} clients saw an error after one worker was killed: {failed:?}\nlog:\n{}",
        failed.len(),
        server.log()
    );
    for f in &failed {
        assert!(
            f.contains("ERR internal error: worke"),
            "the request on the killed worker gets the error reply: {f:?}"
        );
    }
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .all(|n| *n > 0),
        "every other client was served: {results:?}"
    );
    assert!(
        util::wait_for(Duration::from_secs(10), || {
            let now = util::children(server.pid());
            now.len() == 4 && !now.contains(&victim)
        }),
        "the pool is whole again: {:?}",
        util::children(server.pid())
    );
    util::check_echo(addr, "after the respawn");
    server.stop();
}

/// `n` numbered lines.
fn numbered_lines(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("pipelined {i:05}\n").into_bytes())
        .collect()
}

/// One worker, one queued job and two requests in flight per connection:
/// 5000 pipelined lines pause and resume reading thousands of times and are
/// all answered, in order.
fn a_full_pool_pauses_reading_and_every_line_is_answered(mode: Mode) {
    let mut server = gaidaros()
        .mode(mode)
        .args(&["-X", "threadpool", "-n", "1"])
        .env("GAIDAROS_SERVER__POOL_QUEUE", "1")
        .env("GAIDAROS_LISTENER_MAIN__MAX_PIPELINED", "2")
        .start();
    let request = numbered_lines(5000);
    let want = request.clone();
    let mut s = connect(server.addr());
    let mut w = s.try_clone().expect("clone socket");
    let writer = std::thread::spawn(move || {
        w.write_all(&request)?;
        w.shutdown(Shutdown::Write)
    });
    let got = read_exactly(&mut s, want.len());
    let sent = writer.join().expect("writer thread");
    server.assert_running();
    let got = got.unwrap_or_else(|e| {
        panic!(
            "answers to 5000 pipelined lines: {e}\nlog:\n{}",
            server.log()
        )
    });
    sent.expect("write the pipelined lines");
    assert!(
        got == want,
        "answers differ from the requests: {}",
        first_difference(&got, &want)
    );
    let (extra, end) = read_to_eof(&mut s, Duration::from_secs(10));
    assert!(extra.is_empty(), "{} bytes beyond the answers", extra.len());
    assert!(matches!(end, End::Eof), "close after client EOF: {end:?}");
    // Other connections are still served.
    let mut other = connect(server.addr());
    expect_echo(&mut other, "still serving\n");
    server.stop();
}

per_server_type!(a_full_pool_pauses_reading_and_every_line_is_answered);

#[test]
fn an_unknown_handler_type_is_refused_with_the_accepted_values() {
    let run = gaidaros().args(&["-X", "nonsense"]).run_to_exit(EXIT_LIMIT);
    assert_eq!(run.code(), 2, "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("handler_type") && run.stderr.contains("nonsense"),
        "names the key and the value: {}",
        run.stderr
    );
    for accepted in [
        "blocking",
        "thread",
        "threadpool",
        "gthread",
        "gthreadpool",
        "proc",
        "procpool",
    ] {
        assert!(
            run.stderr
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|word| word == accepted),
            "lists {accepted}: {}",
            run.stderr
        );
    }
}

#[test]
fn a_pool_size_of_zero_is_refused() {
    let run = gaidaros().args(&["-n", "0"]).run_to_exit(EXIT_LIMIT);
    assert_eq!(run.code(), 2, "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("pool_size"),
        "names the key: {}",
        run.stderr
    );
}

#[test]
fn a_zero_pool_queue_or_max_pipelined_is_refused() {
    for (var, key) in [
        ("GAIDAROS_SERVER__POOL_QUEUE", "pool_queue"),
        ("GAIDAROS_LISTENER_MAIN__MAX_PIPELINED", "max_pipelined"),
    ] {
        let run = gaidaros().env(var, "0").run_to_exit(EXIT_LIMIT);
        assert_eq!(run.code(), 2, "{var}=0: stderr:\n{}", run.stderr);
        assert!(run.stderr.contains(key), "names {key}: {}", run.stderr);
    }
}

#[test]
fn a_zero_offload_or_session_limit_is_refused() {
    for (var, key) in [
        ("GAIDAROS_SERVER__OFFLOAD_THREADS", "offload_threads"),
        ("GAIDAROS_SERVER__OFFLOAD_QUEUE", "offload_queue"),
        ("GAIDAROS_LISTENER_MAIN__MAILBOX", "mailbox"),
        ("GAIDAROS_LISTENER_MAIN__MAX_SESSIONS", "max_sessions"),
    ] {
        let run = gaidaros().env(var, "0").run_to_exit(EXIT_LIMIT);
        assert_eq!(run.code(), 2, "{var}=0: stderr:\n{}", run.stderr);
        assert!(run.stderr.contains(key), "names {key}: {}", run.stderr);
    }
}

#[test]
fn help_documents_handler_type_and_pool_size() {
    let run = util::gaidaros_bare()
        .args(&["--help"])
        .run_to_exit(EXIT_LIMIT);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr);
    let option = |flag: &str| {
        run.stdout
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{flag},")))
    };
    assert!(option("-X"), "--help lists -X:\n{}", run.stdout);
    assert!(option("-n"), "--help lists -n:\n{}", run.stdout);
    for word in ["threadpool", "gthreadpool"] {
        assert!(
            run.stdout.contains(word),
            "--help names {word}:\n{}",
            run.stdout
        );
    }
}
