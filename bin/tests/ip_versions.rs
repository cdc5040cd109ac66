//! Listeners on IPv4, IPv6 only, and dual stack (one IPv6 socket that also
//! takes IPv4 clients), chosen with `ip_version` in the conf or the
//! environment.

#[macro_use]
mod util;

use std::net::SocketAddr;

use util::{check_echo, gaidaros, gaidaros_bare, Mode, TempDir};

fn on_port(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip literal"), port)
}

fn ipv4_listener_from_the_environment(mode: Mode) {
    let server = gaidaros()
        .mode(mode)
        .env("GAIDAROS_LISTENER_MAIN__IP_VERSION", "4")
        .env("GAIDAROS_LISTENER_MAIN__HOST", "127.0.0.1")
        .start();
    let addr = server.addr();
    assert!(addr.is_ipv4(), "logged {addr}");
    check_echo(on_port("127.0.0.1", addr.port()), "ipv4");
    server.stop();
}

fn ipv6_only_listener_from_the_conf(mode: Mode) {
    let dir = TempDir::new("ipv6");
    let conf = dir.write(
        "v6.conf",
        "[listener.v6]\nip_version = 6\nhost = ::1\nport = 0\n",
    );
    let server = gaidaros_bare()
        .args(&["-c", conf.to_str().expect("utf-8 temp path")])
        .mode(mode)
        .start();
    let addr = server.addr_of("v6");
    assert_eq!(addr.ip().to_string(), "::1", "logged {addr}");
    check_echo(on_port("::1", addr.port()), "ipv6");
    server.stop();
}

fn dual_stack_listener_takes_ipv4_and_ipv6_clients(mode: Mode) {
    let dir = TempDir::new("dual");
    let conf = dir.write(
        "dual.conf",
        "[listener.dual]\nip_version = 0\nhost = ::\nport = 0\n",
    );
    let server = gaidaros_bare()
        .args(&["-c", conf.to_str().expect("utf-8 temp path")])
        .mode(mode)
        .start();
    let addr = server.addr_of("dual");
    assert!(
        addr.is_ipv6() && addr.ip().is_unspecified(),
        "logged {addr}"
    );
    // Several connections each, so both loops of -N 2 are likely involved.
    for i in 0..4 {
        check_echo(
            on_port("127.0.0.1", addr.port()),
            &format!("dual via ipv4 {i}"),
        );
        check_echo(on_port("::1", addr.port()), &format!("dual via ipv6 {i}"));
    }
    server.stop();
}

fn ipv6_host_flag_alone_means_ipv6(mode: Mode) {
    let server = gaidaros().args(&["--host", "::1"]).mode(mode).start();
    let addr = server.addr();
    assert_eq!(addr.ip().to_string(), "::1", "logged {addr}");
    check_echo(addr, "ipv6 from --host");
    server.stop();
}

#[test]
fn ipv4_host_with_ip_version_6_is_refused_clearly() {
    let run = gaidaros()
        .args(&["--host", "127.0.0.1"])
        .env("GAIDAROS_LISTENER_MAIN__IP_VERSION", "6")
        .run_to_exit(std::time::Duration::from_secs(10));
    assert_ne!(run.code(), 0, "stderr:\n{}", run.stderr);
    for w in ["main", "127.0.0.1", "ip_version 6"] {
        assert!(
            run.stderr.contains(w),
            "the error should contain {w:?}; stderr:\n{}",
            run.stderr
        );
    }
}

per_server_type!(
    ipv4_listener_from_the_environment,
    ipv6_host_flag_alone_means_ipv6,
    ipv6_only_listener_from_the_conf,
    dual_stack_listener_takes_ipv4_and_ipv6_clients,
);
