//! Conf file, environment and flags: mistakes are refused at start-up with
//! an error naming where (file, section, variable or flag), which key, and
//! what was expected; exit status 2. Values layer as defaults < conf < env
//! < flags.

#[macro_use]
mod util;

use std::io::{Read, Write};
use std::time::Duration;

use util::{connect, expect_echo, gaidaros, gaidaros_bare, read_to_eof, End, Mode, TempDir};

/// Start-up errors come at once; a server that starts instead is killed
/// after this.
const EXIT_LIMIT: Duration = Duration::from_secs(10);

/// Run the binary with a conf holding `text` (plus `args`); expect exit 2
/// and a stderr containing every one of `wanted`, where `FILE` stands for
/// the conf's path. Returns stderr.
fn refused(text: &str, args: &[&str], wanted: &[&str]) -> String {
    let dir = TempDir::new("conf");
    let path = dir.write("bad.conf", text);
    let path = path.to_str().expect("utf-8 temp path");
    let run = gaidaros_bare()
        .args(&["-c", path])
        .args(args)
        .run_to_exit(EXIT_LIMIT);
    assert_eq!(
        run.code(),
        2,
        "a conf mistake should exit 2; stderr:\n{}",
        run.stderr
    );
    let err = run.stderr.replace(path, "FILE");
    for w in wanted {
        assert!(
            err.contains(w),
            "the error should contain {w:?} (FILE = {path}); stderr:\n{}",
            run.stderr
        );
    }
    err
}

#[test]
fn unknown_key_names_file_section_and_key() {
    let err = refused(
        "[listener.main]\nport = 0\nprot = 8080\n",
        &[],
        &[
            "conf error:",
            "FILE",
            "[listener.main]",
            "unknown key",
            "'prot'",
        ],
    );
    // The list of known keys helps find the typo.
    assert!(err.contains("port"), "known keys listed: {err}");
}

#[test]
fn unknown_server_key_names_the_server_section() {
    refused(
        "[server]\nlooops = 2\n[listener.main]\nport = 0\n",
        &[],
        &["conf error:", "FILE", "[server]", "unknown key", "'looops'"],
    );
}

#[test]
fn bad_value_names_key_value_and_what_was_expected() {
    refused(
        "[listener.main]\nport = eighty\n",
        &[],
        &[
            "conf error:",
            "FILE",
            "[listener.main]",
            "port",
            "\"eighty\"",
            "expected a port number",
        ],
    );
    refused(
        "[listener.main]\nport = 0\nmax_request = lots\n",
        &[],
        &[
            "FILE",
            "[listener.main]",
            "max_request",
            "\"lots\"",
            "expected a size",
        ],
    );
    refused(
        "[listener.main]\nport = 0\nidle_timeout = soon\n",
        &[],
        &[
            "FILE",
            "[listener.main]",
            "idle_timeout",
            "\"soon\"",
            "expected a duration",
        ],
    );
}

#[test]
fn trailing_comment_on_a_value_line_is_a_bad_value() {
    // Comments go on their own lines; a trailing one is part of the value
    // and must be reported, not silently half-parsed.
    refused(
        "[server]\nloops = 2 ; two loops\n[listener.main]\nport = 0\n",
        &[],
        &["FILE", "[server]", "loops", "\"2 ; two loops\"", "expected"],
    );
}

#[test]
fn unknown_section_is_refused() {
    refused(
        "[srever]\nloops = 2\n[listener.main]\nport = 0\n",
        &[],
        &["conf error:", "FILE", "unknown section", "[srever]"],
    );
}

#[test]
fn misspelled_listener_section_is_refused_as_unknown_section() {
    // `[listner.main]` is the typo a user makes; the error must say the
    // section is unknown rather than talk about nested tables.
    refused(
        "[listner.main]\nport = 0\n",
        &[],
        &["conf error:", "FILE", "unknown section", "[listner.main]"],
    );
}

#[test]
fn key_outside_any_section_is_refused() {
    refused(
        "port = 0\n[listener.main]\nport = 0\n",
        &[],
        &["conf error:", "FILE", "'port'", "outside any section"],
    );
}

#[test]
fn port_flag_with_two_conf_listeners_is_a_conflict() {
    refused(
        "[listener.one]\nport = 0\n[listener.two]\nport = 0\n",
        &["--port", "0"],
        &["conf error:", "--port", "one", "two"],
    );
}

#[test]
fn missing_conf_file_is_a_conf_error() {
    let dir = TempDir::new("conf");
    let path = dir.path().join("absent.conf");
    let path = path.to_str().expect("utf-8 temp path");
    let run = gaidaros_bare().args(&["-c", path]).run_to_exit(EXIT_LIMIT);
    assert_eq!(run.code(), 2, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains(path), "names the file: {}", run.stderr);
}

#[test]
fn bad_environment_value_names_the_variable() {
    let run = gaidaros()
        .env("GAIDAROS_LISTENER_MAIN__MAX_REQUEST", "lots")
        .run_to_exit(EXIT_LIMIT);
    assert_eq!(run.code(), 2, "stderr:\n{}", run.stderr);
    for w in [
        "GAIDAROS_LISTENER_MAIN__MAX_REQUEST",
        "max_request",
        "\"lots\"",
        "expected a size",
    ] {
        assert!(
            run.stderr.contains(w),
            "stderr should contain {w:?}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn unknown_environment_key_names_the_variable() {
    let run = gaidaros()
        .env("GAIDAROS_SERVER__LOOOPS", "2")
        .run_to_exit(EXIT_LIMIT);
    assert_eq!(run.code(), 2, "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("GAIDAROS_SERVER__LOOOPS") && run.stderr.contains("'looops'"),
        "stderr:\n{}",
        run.stderr
    );
}

#[test]
fn bad_flag_value_names_the_flag() {
    let run = gaidaros().args(&["-S", "forking"]).run_to_exit(EXIT_LIMIT);
    assert_eq!(run.code(), 2, "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("-S") && run.stderr.contains("\"forking\""),
        "stderr:\n{}",
        run.stderr
    );
    let run = gaidaros().args(&["--bogus"]).run_to_exit(EXIT_LIMIT);
    assert_eq!(run.code(), 2, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("--bogus"), "stderr:\n{}", run.stderr);
}

#[test]
fn forward_without_upstream_is_a_conf_error_naming_the_option() {
    let run = gaidaros()
        .args(&["--handler", "forward"])
        .run_to_exit(EXIT_LIMIT);
    for w in ["main", "upstream", "required"] {
        assert!(
            run.stderr.contains(w),
            "the error should contain {w:?}; stderr:\n{}",
            run.stderr
        );
    }
    // cli.rs: "2 for a usage or conf error, 1 when the server cannot start".
    assert_eq!(
        run.code(),
        2,
        "a missing required handler option is a conf error; stderr:\n{}",
        run.stderr
    );
}

#[test]
fn server_layout_from_the_environment() {
    let server = gaidaros()
        .env("GAIDAROS_SERVER__TYPE", "thread")
        .env("GAIDAROS_SERVER__LOOPS", "3")
        .start();
    assert!(
        util::wait_for(Duration::from_secs(5), || server
            .log()
            .contains("server=thread loops=3")),
        "log should say server=thread loops=3:\n{}",
        server.log()
    );
    util::check_echo(server.addr(), "three loops");
    server.stop();
}

/// Precedence, per server type: conf < env < flags.
fn settings_layer_conf_then_env_then_flags(mode: Mode) {
    let dir = TempDir::new("precedence");
    // The conf asks for hello with max_request 100; the environment raises
    // max_request to 200 and asks for multiline; the flag asks for echo.
    let conf = dir.write(
        "layers.conf",
        "[listener.main]\nhandler = hello\nport = 0\nmax_request = 100\n",
    );
    let conf = conf.to_str().expect("utf-8 temp path");
    let server = gaidaros()
        .args(&["-c", conf, "--handler", "echo"])
        .mode(mode)
        .env("GAIDAROS_LISTENER_MAIN__MAX_REQUEST", "200")
        .env("GAIDAROS_LISTENER_MAIN__HANDLER", "multiline")
        .start();
    assert!(
        server.logged(&["handler=echo"]),
        "--handler beats env and conf; log:\n{}",
        server.log()
    );
    let mut s = connect(server.addr());
    expect_echo(&mut s, "the flag chose echo\n");
    // A 150-byte line passes the env limit (200) although the conf said 100.
    let line = format!("{}\n", "m".repeat(149));
    expect_echo(&mut s, &line);
    s.write_all("x".repeat(300).as_bytes()).expect("write");
    let (got, end) = read_to_eof(&mut s, Duration::from_secs(10));
    assert!(matches!(end, End::Eof), "EOF after the error, got {end:?}");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "ERR request too large (limit 200 bytes)\n",
        "the environment's max_request applies"
    );
    drop(s);
    server.stop();
}

/// Flags win over the conf for server keys too (`-S`, `-N`).
fn server_type_flag_overrides_conf(mode: Mode) {
    let dir = TempDir::new("server-type");
    let conf = dir.write(
        "server.conf",
        "[server]\ntype = thread\nloops = 3\n[listener.main]\nport = 0\n",
    );
    let conf = conf.to_str().expect("utf-8 temp path");
    let server = gaidaros_bare().args(&["-c", conf]).mode(mode).start();
    let want = match mode {
        Mode::Blocking => "server=blocking loops=1",
        Mode::Thread => "server=thread loops=2",
    };
    assert!(
        server.logged(&[want]),
        "log should say {want:?}:\n{}",
        server.log()
    );
    let mut s = connect(server.addr());
    expect_echo(&mut s, "layout from flags\n");
    let mut rest = Vec::new();
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    s.read_to_end(&mut rest).expect("read to EOF");
    assert!(rest.is_empty(), "nothing after the echo: {rest:?}");
    server.stop();
}

per_server_type!(
    settings_layer_conf_then_env_then_flags,
    server_type_flag_overrides_conf
);
