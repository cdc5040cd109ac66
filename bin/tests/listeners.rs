//! Several listeners with different handlers in one process, the built-in
//! handlers through the binary, and what `--help` and `--list-handlers`
//! tell an operator.

#[macro_use]
mod util;

use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use util::{
    check_echo, connect, expect_echo, free_port, gaidaros, gaidaros_bare, read_exactly,
    read_to_eof, End, Mode, TempDir,
};

const EXIT_LIMIT: Duration = Duration::from_secs(10);

/// Send `request` and expect exactly `answer`, then the server's close.
fn expect_answer_then_close(addr: std::net::SocketAddr, request: &str, answer: &str) {
    let mut s = connect(addr);
    s.write_all(request.as_bytes()).expect("write request");
    let (got, end) = read_to_eof(&mut s, Duration::from_secs(10));
    assert_eq!(
        String::from_utf8_lossy(&got),
        answer,
        "answer to {request:?}"
    );
    assert!(
        matches!(end, End::Eof),
        "the server should close after {answer:?}, got {end:?}"
    );
}

/// Multiline blocks, some with CRLF line ends, echoed whole.
fn expect_multiline(addr: std::net::SocketAddr) {
    let mut s = connect(addr);
    for block in [
        "one line\n\n",
        "first\nsecond\nthird\n\n",
        "crlf one\r\ncrlf two\r\n\r\n",
        "\n",
    ] {
        s.write_all(block.as_bytes()).expect("write block");
        let got = read_exactly(&mut s, block.len()).unwrap_or_else(|e| panic!("{block:?}: {e}"));
        assert_eq!(String::from_utf8_lossy(&got), block);
    }
    // An unfinished block is not answered until its empty line arrives.
    s.write_all(b"pending\nstill pending\n").expect("write");
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut probe = [0u8; 1];
    let early = std::io::Read::read(&mut s, &mut probe);
    assert!(
        early.is_err(),
        "no answer before the block ends, got {early:?}"
    );
    s.set_read_timeout(Some(util::IO_TIMEOUT)).expect("timeout");
    s.write_all(b"\n").expect("write");
    let want = "pending\nstill pending\n\n";
    let got = read_exactly(&mut s, want.len()).expect("block answer");
    assert_eq!(String::from_utf8_lossy(&got), want);
}

fn several_listeners_serve_their_own_handlers_in_one_process(mode: Mode) {
    // The forwarder must name the echo's port in advance; another process
    // may grab a free port in between, so try a few.
    let mut last_failure = String::new();
    for _attempt in 0..3 {
        let echo_port = free_port();
        let dir = TempDir::new("listeners");
        let conf = dir.write(
            "several.conf",
            &format!(
                "; echo on a chosen port, the others anywhere\n\
                 [listener.echo]\nhandler = echo\nport = {echo_port}\n\
                 [listener.hello]\nhandler = hello\nport = 0\n\
                 [listener.hi]\nhandler = hello\nport = 0\ngreeting = Hi there\n\
                 [listener.blocks]\nhandler = multiline\nport = 0\n\
                 # comments on their own lines, either kind\n\
                 [listener.fwd]\nhandler = forward\nport = 0\nupstream = 127.0.0.1:{echo_port}\n"
            ),
        );
        let conf = conf.to_str().expect("utf-8 temp path");
        let started = gaidaros_bare()
            .args(&["-c", conf])
            .mode(mode)
            .listeners(5)
            .try_start();
        let server = match started {
            Ok(s) => s,
            Err(why) if why.contains("cannot listen") => {
                last_failure = why;
                continue;
            }
            Err(why) => panic!("server did not start: {why}"),
        };
        let echo = server.addr_of("echo");
        assert_eq!(echo.port(), echo_port);
        check_echo(echo, "echo listener");
        expect_answer_then_close(server.addr_of("hello"), "hi\n", "Hello, World!\n");
        expect_answer_then_close(server.addr_of("hi"), "hi\n", "Hi there\n");
        expect_multiline(server.addr_of("blocks"));
        check_echo(server.addr_of("fwd"), "through the forwarder");
        // The listeners are distinct sockets.
        let mut ports: Vec<u16> = server.addrs().iter().map(|(_, a)| a.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 5, "five ports: {:?}", server.addrs());
        server.stop();
        return;
    }
    panic!("could not bind a free port three times: {last_failure}");
}

fn hello_greets_and_closes(mode: Mode) {
    let server = gaidaros().args(&["--handler", "hello"]).mode(mode).start();
    expect_answer_then_close(server.addr(), "anything\n", "Hello, World!\n");
    // Pipelined lines: one greeting, then the close.
    expect_answer_then_close(server.addr(), "a\nb\nc\n", "Hello, World!\n");
    let server2 = gaidaros()
        .args(&["--handler", "hello", "-o", "greeting=Good day"])
        .mode(mode)
        .start();
    expect_answer_then_close(server2.addr(), "x\n", "Good day\n");
    server.stop();
    server2.stop();
}

fn multiline_echoes_whole_blocks(mode: Mode) {
    let server = gaidaros()
        .args(&["--handler", "multiline"])
        .mode(mode)
        .start();
    expect_multiline(server.addr());
    server.stop();
}

fn echo_answers_each_line_and_closes_after_client_eof(mode: Mode) {
    let server = gaidaros().mode(mode).start();
    let mut s = connect(server.addr());
    expect_echo(&mut s, "first\n");
    expect_echo(&mut s, "\n");
    expect_echo(&mut s, "crlf stays\r\n");
    expect_echo(&mut s, "bytes \u{e9}\u{1f980} \t and tabs\n");
    s.write_all(b"last one\n").expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    let (got, end) = read_to_eof(&mut s, Duration::from_secs(10));
    assert_eq!(String::from_utf8_lossy(&got), "last one\n");
    assert!(matches!(end, End::Eof), "close after client EOF: {end:?}");
    server.stop();
}

fn port_in_use_is_refused_clearly(mode: Mode) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let run = gaidaros_bare()
        .args(&["--port", &port])
        .mode(mode)
        .run_to_exit(EXIT_LIMIT);
    // cli.rs: 1 when the server cannot start.
    assert_eq!(run.code(), 1, "stderr:\n{}", run.stderr);
    for w in ["main", &format!("127.0.0.1:{port}"), "in use"] {
        assert!(
            run.stderr.contains(w),
            "the error should contain {w:?}; stderr:\n{}",
            run.stderr
        );
    }
}

per_server_type!(
    port_in_use_is_refused_clearly,
    several_listeners_serve_their_own_handlers_in_one_process,
    hello_greets_and_closes,
    multiline_echoes_whole_blocks,
    echo_answers_each_line_and_closes_after_client_eof,
);

/// `--help` entries: the flag line and its wrapped continuation, joined.
fn help_entries(help: &str) -> Vec<String> {
    let mut entries: Vec<String> = Vec::new();
    let mut in_options = false;
    for line in help.lines() {
        if line.trim_start() == "Options:" {
            in_options = true;
            continue;
        }
        if !in_options || line.trim().is_empty() {
            continue;
        }
        let starts_entry = line.starts_with("  -") || line.starts_with("  --");
        if starts_entry || entries.is_empty() {
            entries.push(line.trim().to_string());
        } else if let Some(last) = entries.last_mut() {
            last.push(' ');
            last.push_str(line.trim());
        }
    }
    entries
}

#[test]
fn help_lists_every_flag_with_its_default() {
    let run = gaidaros_bare().args(&["--help"]).run_to_exit(EXIT_LIMIT);
    assert_eq!(run.code(), 0, "--help exits 0; stderr:\n{}", run.stderr);
    let entries = help_entries(&run.stdout);
    let entry = |flag: &str| -> String {
        entries
            .iter()
            .find(|e| {
                e.split_whitespace()
                    .take_while(|w| w.starts_with('-'))
                    .any(|w| w.trim_end_matches(',') == flag)
            })
            .unwrap_or_else(|| panic!("--help does not list {flag}:\n{}", run.stdout))
            .clone()
    };
    // Every flag that sets something states its default, with the value
    // where there is one.
    for (flag, default) in [
        ("--conf", None),
        ("--handler", Some("echo")),
        ("--host", Some("127.0.0.1")),
        ("--port", Some("8080")),
        ("-S", Some("thread")),
        ("-N", Some("0")),
        ("-T", Some("edge")),
        ("-k", None),
        ("-K", None),
        ("-A", None),
        ("-v", None),
        ("-o", None),
    ] {
        let e = entry(flag);
        assert!(e.contains("(default"), "{flag} states no default: {e:?}");
        if let Some(d) = default {
            assert!(
                e.contains(&format!("(default: {d}")),
                "{flag} should state default {d}: {e:?}"
            );
        }
    }
    for flag in ["-c", "--list-handlers", "--version", "--help"] {
        entry(flag);
    }
}

#[test]
fn list_handlers_names_the_four_handlers() {
    let run = gaidaros_bare()
        .args(&["--list-handlers"])
        .run_to_exit(EXIT_LIMIT);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr);
    for name in ["echo", "hello", "multiline", "forward"] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name) && l.starts_with("  ")),
            "--list-handlers should list {name}:\n{}",
            run.stdout
        );
    }
    assert!(
        run.stdout.contains("upstream") && run.stdout.contains("required"),
        "forward's required option is listed:\n{}",
        run.stdout
    );
}

#[test]
fn version_prints_the_package_version() {
    let run = gaidaros_bare().args(&["--version"]).run_to_exit(EXIT_LIMIT);
    assert_eq!(run.code(), 0);
    assert_eq!(
        run.stdout.trim(),
        format!("gaidaros {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn stacked_v_flags_raise_the_log_level() {
    // -v -v and -vv both mean trace; debug lines appear either way.
    for flags in [&["-v", "-v"][..], &["-vv"][..]] {
        let mut args = vec!["--port", "0", "-S", "blocking"];
        args.extend_from_slice(flags);
        let server = gaidaros_bare().args(&args).start();
        util::check_echo(server.addr(), "verbose");
        let log = server.log();
        assert!(
            log.contains("DEBUG") && log.contains("open files limit"),
            "{flags:?}: expected debug output, got:\n{log}"
        );
        server.stop();
    }
}
