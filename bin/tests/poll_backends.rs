//! The poll backend (`-T`, `[server] poll`) and what `-T completion` does
//! when the kernel refuses io_uring (`[server] poll_fallback`).
//!
//! - A backend the server does not know is refused at start, naming the
//!   flag, the key and the accepted values.
//! - Each backend serves, and is the one really in use: what the kernel
//!   shows of the server's descriptors (/proc) tells an io_uring instance
//!   from an epoll one, and an edge-triggered registration (EPOLLET) of the
//!   listening socket from a level-triggered one.
//! - With io_uring refused (a seccomp filter makes io_uring_setup(2) fail
//!   with EPERM, as a container's profile or `kernel.io_uring_disabled`
//!   does), `poll_fallback = none` fails at start naming io_uring and the
//!   reason, and `poll_fallback = edge` (or `level`) warns and serves on
//!   epoll.
//! - The servers of every other test file run the backend that
//!   `GAIDAROS_TEST_POLL` names (tests/util), which `scripts/test` sets.

#[macro_use]
mod util;

use std::collections::HashSet;
use std::io;
use std::time::Duration;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

use util::{check_echo, gaidaros, gaidaros_bare, Mode, Server, ServerCmd, TempDir};

/// Start-up errors come at once; a server that starts instead is killed
/// after this.
const EXIT_LIMIT: Duration = Duration::from_secs(10);
/// How long after its listening lines the server may take to have its
/// listening sockets in its poll instance.
const SETTLE: Duration = Duration::from_secs(5);
/// epoll(7)'s edge-triggered flag, as /proc/PID/fdinfo shows it.
const EPOLLET: u32 = 1 << 31;

/// `cmd` with a seccomp filter that makes io_uring_setup(2) fail with EPERM
/// in the server and every process it starts; all else is allowed.
fn without_io_uring(cmd: ServerCmd) -> ServerCmd {
    let arch = std::env::consts::ARCH
        .try_into()
        .expect("seccompiler supports this architecture");
    let filter: BpfProgram = SeccompFilter::new(
        [(libc::SYS_io_uring_setup, Vec::new())]
            .into_iter()
            .collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .and_then(TryInto::try_into)
    .expect("compile the seccomp filter");
    // SAFETY: the program is compiled above, before the fork; the hook only
    // makes two system calls (prctl(PR_SET_NO_NEW_PRIVS), seccomp(2)) and,
    // on failure, builds an io::Error from an OS error code: no allocation,
    // no lock.
    unsafe {
        cmd.pre_exec(move || {
            seccompiler::apply_filter(&filter).map_err(|e| match e {
                seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
                _ => io::Error::from_raw_os_error(libc::EINVAL),
            })
        })
    }
}

/// The backend the server `pid`, listening on `port`, really uses:
/// `completion` if it holds an io_uring instance, else `edge` or `level`
/// if its listening sockets are all registered in its epoll instances with
/// or without EPOLLET; `None` when /proc shows neither (yet).
fn backend_in_use(pid: i32, port: u16) -> Option<&'static str> {
    let listening = listening_inodes(port);
    let mut listener_fds = HashSet::new();
    let mut epoll_fds = Vec::new();
    let mut io_uring = false;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let fd = entry.file_name().to_string_lossy().into_owned();
        if target == "anon_inode:[io_uring]" {
            io_uring = true;
        } else if target == "anon_inode:[eventpoll]" {
            epoll_fds.push(fd);
        } else if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            if listening.contains(inode) {
                listener_fds.insert(fd);
            }
        }
    }
    if io_uring {
        return Some("completion");
    }
    // fdinfo of an epoll instance: one "tfd: FD events: HEX data: ..." line
    // per registered descriptor.
    let mut edge = Vec::new();
    for epfd in epoll_fds {
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epfd}")).unwrap_or_default();
        for line in info.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["tfd:", tfd, "events:", events, ..] = words[..] {
                if listener_fds.contains(tfd) {
                    let events = u32::from_str_radix(events, 16).ok()?;
                    edge.push(events & EPOLLET != 0);
                }
            }
        }
    }
    match edge.len() {
        0 => None,
        _ if edge.iter().all(|e| *e) => Some("edge"),
        _ if edge.iter().all(|e| !*e) => Some("level"),
        _ => None,
    }
}

/// The socket inodes of the TCP sockets listening on `port` (IPv4 and
/// IPv6), from /proc/net.
fn listening_inodes(port: u16) -> HashSet<String> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (field 9); state
            // 0A is LISTEN.
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if f.len() > 9 && local_port == Some(port) && f[3] == "0A" {
                inodes.insert(f[9].to_string());
            }
        }
    }
    inodes
}

/// Wait until `server` is seen using backend `want` (panics with what was
/// seen and the log).
fn assert_backend(server: &Server, want: &str) {
    let port = server.addr().port();
    let mut seen = None;
    let settled = util::wait_for(SETTLE, || {
        seen = backend_in_use(server.pid(), port);
        seen == Some(want)
    });
    assert!(
        settled,
        "the server should be using the {want} backend; /proc shows {}; log:\n{}",
        seen.unwrap_or("no io_uring instance and no consistent epoll registration of the listener"),
        server.log()
    );
}

#[test]
fn unknown_backend_is_refused_naming_the_flag_and_the_backends() {
    let run = gaidaros().args(&["-T", "bogus"]).run_to_exit(EXIT_LIMIT);
    assert_eq!(
        run.code(),
        2,
        "an unknown backend is a usage error; stderr:\n{}",
        run.stderr
    );
    for w in [
        "conf error:",
        "-T",
        "poll",
        "\"bogus\"",
        "edge, level or completion",
    ] {
        assert!(
            run.stderr.contains(w),
            "the error should contain {w:?}; stderr:\n{}",
            run.stderr
        );
    }
}

#[test]
fn completion_is_no_fallback_for_itself() {
    let dir = TempDir::new("poll-fallback-bad");
    let conf = dir.write(
        "bad.conf",
        "[server]\npoll = completion\npoll_fallback = completion\n[listener.main]\nport = 0\n",
    );
    let conf = conf.to_str().expect("utf-8 temp path");
    let run = gaidaros_bare().args(&["-c", conf]).run_to_exit(EXIT_LIMIT);
    assert_eq!(run.code(), 2, "stderr:\n{}", run.stderr);
    for w in [
        "[server]",
        "poll_fallback",
        "\"completion\"",
        "none, edge or level",
    ] {
        assert!(
            run.stderr.contains(w),
            "the error should contain {w:?}; stderr:\n{}",
            run.stderr
        );
    }
}

/// The servers the other test files start get the backend under test
/// (`GAIDAROS_TEST_POLL`; edge when unset), and really use it.
#[test]
fn test_servers_run_the_backend_under_test() {
    let want = util::test_poll().unwrap_or_else(|| "edge".into());
    let server = gaidaros().args(Mode::Blocking.args()).start();
    check_echo(server.addr(), "backend under test");
    assert_backend(&server, &want);
    server.stop();
}

/// `-T edge`, `-T level` and `-T completion` each serve echo, on the
/// mechanism they name (this kernel allows io_uring).
fn each_backend_serves_on_its_own_mechanism(mode: Mode) {
    for poll in ["edge", "level", "completion"] {
        let server = gaidaros().args(&["-T", poll]).mode(mode).start();
        check_echo(server.addr(), &format!("-T {poll}"));
        assert_backend(&server, poll);
        server.stop();
    }
}

/// `-T completion` with io_uring refused and no fallback: a prompt exit,
/// not 0, with an error naming io_uring and the kernel's reason.
fn refused_io_uring_fails_at_start(layout: &[&str]) {
    let run = without_io_uring(gaidaros().args(&["-T", "completion"]).args(layout))
        .run_to_exit(EXIT_LIMIT);
    let code = run.code();
    assert_ne!(
        code, 0,
        "{layout:?}: -T completion without io_uring and poll_fallback = none must not start; stderr:\n{}",
        run.stderr
    );
    let err = run.stderr.to_lowercase();
    assert!(
        err.contains("io_uring"),
        "{layout:?}: the error should name io_uring; stderr:\n{}",
        run.stderr
    );
    assert!(
        err.contains("not permitted") || err.contains("eperm"),
        "{layout:?}: the error should give the kernel's reason (EPERM, \"Operation not permitted\"); stderr:\n{}",
        run.stderr
    );
}

fn completion_without_io_uring_and_no_fallback_fails_at_start(mode: Mode) {
    refused_io_uring_fails_at_start(mode.args());
}

#[test]
fn procpool_completion_without_io_uring_and_no_fallback_fails_at_start() {
    refused_io_uring_fails_at_start(&["-S", "procpool", "-N", "2"]);
}

/// `[server] poll = completion` with `poll_fallback = FALLBACK` and
/// io_uring refused: a warning naming io_uring and the fallback, then echo
/// served on epoll with that triggering.
fn completion_without_io_uring_falls_back_when_asked(mode: Mode) {
    for fallback in ["edge", "level"] {
        let dir = TempDir::new("poll-fallback");
        let conf = dir.write(
            "fallback.conf",
            &format!(
                "[server]\npoll = completion\npoll_fallback = {fallback}\n[listener.main]\nport = 0\n"
            ),
        );
        let conf = conf.to_str().expect("utf-8 temp path");
        let server = without_io_uring(gaidaros_bare().args(&["-c", conf]).mode(mode)).start();
        check_echo(server.addr(), &format!("fallback {fallback}"));
        let warned = |log: &str| {
            log.lines().any(|l| {
                let l = l.to_lowercase();
                l.contains("warn") && l.contains("io_uring") && l.contains(fallback)
            })
        };
        assert!(
            util::wait_for(SETTLE, || warned(&server.log())),
            "poll_fallback = {fallback}: a warning naming io_uring and {fallback} is expected; log:\n{}",
            server.log()
        );
        assert_backend(&server, fallback);
        server.stop();
    }
}

per_server_type!(
    each_backend_serves_on_its_own_mechanism,
    completion_without_io_uring_and_no_fallback_fails_at_start,
    completion_without_io_uring_falls_back_when_asked,
);

/// How long idle io_uring worker threads may take to exit (the kernel's
/// idle timeout is 5 s).
const WORKER_IDLE_WAIT: Duration = Duration::from_secs(12);

/// Kernel worker threads (io_uring's io-wq) of process `pid`.
fn uring_workers(pid: i32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("iou-wrk"))
        })
        .count()
}

/// Under `-T completion` io_uring runs every splice on a kernel worker
/// thread. The forwarder's splices wait for readiness first (a poll linked
/// to a non-blocking splice on a non-blocking socket), so clients that stop
/// reading do not each hold a thread in a blocked splice: once the idle
/// workers have exited, few are left.
#[test]
fn completion_forwarder_holds_no_kernel_thread_per_stalled_client() {
    use std::io::Write;
    const CLIENTS: usize = 16;
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let server = gaidaros()
        .args(&[
            "-T",
            "completion",
            "-S",
            "blocking",
            "--handler",
            "forward",
            "-o",
            &format!("upstream={}", upstream.local_addr().expect("upstream addr")),
        ])
        // The largest pipe an unprivileged process gets by default.
        .env("GAIDAROS_LISTENER_MAIN__OUTPUT_CAP", "1MiB")
        .start();
    let mut clients = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(util::connect(server.addr()));
        let (mut up, _) = upstream.accept().expect("upstream accept");
        up.set_write_timeout(Some(Duration::from_millis(500)))
            .expect("write timeout");
        // Write until the forwarder stops reading (its client reads
        // nothing), at most 64 MiB.
        writers.push(std::thread::spawn(move || {
            let chunk = vec![b'u'; 64 * 1024];
            let mut written = 0usize;
            while written < 64 << 20 {
                match up.write(&chunk) {
                    Ok(n) => written += n,
                    Err(_) => break,
                }
            }
            (up, written)
        }));
    }
    let ups: Vec<_> = writers
        .into_iter()
        .map(|w| w.join().expect("upstream writer"))
        .collect();
    for (_, written) in &ups {
        assert!(
            *written < 64 << 20,
            "the forwarder kept reading for a client that reads nothing"
        );
    }
    // io_uring may start a worker per splice queued at once; idle ones
    // exit after 5 s, blocked ones stay. Wait for them to go (at most
    // WORKER_IDLE_WAIT), then count.
    let deadline = std::time::Instant::now() + WORKER_IDLE_WAIT;
    let mut workers = uring_workers(server.pid());
    while workers > 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        workers = uring_workers(server.pid());
    }
    println!("{CLIENTS} stalled clients: {workers} io_uring worker threads");
    assert!(
        workers < CLIENTS / 2,
        "{workers} io_uring worker threads for {CLIENTS} stalled clients: a splice blocks per client"
    );
    drop(clients);
    drop(ups);
    server.stop();
}
