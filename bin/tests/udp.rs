//! `-P udp`: services over datagrams, with the real binary (under the
//! backend `GAIDAROS_TEST_POLL` names): every datagram one request,
//! answered to its sender; many clients at once, IPv6, `nc -u`, a datagram
//! over `max_request`, and the handlers and server types refused over UDP.

mod util;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::gaidaros;

const WAIT: Duration = Duration::from_secs(10);

fn client(server: SocketAddr) -> UdpSocket {
    let bind = if server.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let s = UdpSocket::bind(bind).expect("bind a client socket");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("read timeout");
    s
}

/// Send `request` until an answer comes (a datagram may be lost), at most
/// for WAIT; the answer.
fn ask(s: &UdpSocket, server: SocketAddr, request: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; 70_000];
    loop {
        s.send_to(request, server).expect("send");
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert_eq!(from, server, "the answer comes from the server's address");
                return buf[..n].to_vec();
            }
            Err(_) if Instant::now() < deadline => {}
            Err(e) => panic!("no answer from {server}: {e}"),
        }
    }
}

#[test]
fn echo_over_udp_answers_each_datagram_to_its_sender() {
    let server = gaidaros().args(&["--handler", "echo", "-P", "udp"]).start();
    let addr = server.addr();
    let s = client(addr);
    assert_eq!(ask(&s, addr, b"hi\n"), b"hi\n");
    // Every datagram is a whole request: echo answers it as it came.
    assert_eq!(ask(&s, addr, b"no newline"), b"no newline");
    server.stop();
}

/// Four clients, a thousand datagrams each, at most 32 unanswered at a
/// time: every answer reaches the client that asked, with its own bytes.
#[test]
fn four_clients_a_thousand_datagrams_each_every_answer_to_its_own_client() {
    let server = gaidaros()
        .args(&["--handler", "echo", "-P", "udp", "-S", "thread", "-N", "2"])
        .start();
    let addr = server.addr();
    let threads: Vec<_> = (0..4u32)
        .map(|c| {
            std::thread::spawn(move || {
                let s = client(addr);
                let mut buf = [0u8; 256];
                let mut answered = vec![false; 1000];
                let mut next = 0u32;
                let mut got = 0;
                let deadline = Instant::now() + Duration::from_secs(60);
                while got < 1000 {
                    assert!(
                        Instant::now() < deadline,
                        "client {c}: {got} of 1000 answered"
                    );
                    // Keep up to 32 in flight; resend what is missing when
                    // the answers stop (UDP may drop under load).
                    while next < 1000 && (next as usize) < got + 32 {
                        s.send_to(format!("c{c} n{next}\n").as_bytes(), addr)
                            .unwrap();
                        next += 1;
                    }
                    match s.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            assert_eq!(from, addr);
                            let text = std::str::from_utf8(&buf[..n]).unwrap();
                            let (who, num) = text.trim_end().split_once(' ').unwrap();
                            assert_eq!(who, format!("c{c}"), "an answer for another client");
                            let i: usize = num[1..].parse().unwrap();
                            if !answered[i] {
                                answered[i] = true;
                                got += 1;
                            }
                        }
                        Err(_) => {
                            for (i, _) in answered.iter().enumerate().filter(|(_, a)| !**a).take(32)
                            {
                                if (i as u32) < next {
                                    s.send_to(format!("c{c} n{i}\n").as_bytes(), addr).unwrap();
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client failed");
    }
    server.stop();
}

#[test]
fn echo_over_udp_on_ipv6() {
    let server = gaidaros()
        .args(&["--handler", "echo", "-P", "udp", "--host", "::1"])
        .start();
    let addr = server.addr();
    assert!(addr.is_ipv6(), "{addr}");
    let s = client(addr);
    assert_eq!(ask(&s, addr, b"over six\n"), b"over six\n");
    server.stop();
}

#[test]
fn nc_u_gets_its_line_back() {
    let server = gaidaros().args(&["--handler", "echo", "-P", "udp"]).start();
    let addr = server.addr();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'hi\\n' | nc -u -w1 {} {}",
            addr.ip(),
            addr.port()
        ))
        .stdin(Stdio::null())
        .output()
        .expect("run nc (package netcat-openbsd)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\n",
        "nc said {:?}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    server.stop();
}

#[test]
fn a_datagram_over_max_request_gets_the_error_reply_and_the_next_is_served() {
    let dir = util::TempDir::new("udp-limit");
    let conf = dir.write(
        "gaidaros.conf",
        "[listener.main]\nhandler = echo\nprotocol = udp\nport = 0\nmax_request = 100\n",
    );
    let server = gaidaros_conf(&conf);
    let addr = server.addr();
    let s = client(addr);
    let answer = ask(&s, addr, &[b'x'; 500]);
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "ERR request too large (limit 100 bytes)\n"
    );
    assert_eq!(ask(&s, addr, b"small\n"), b"small\n");
    server.stop();
}

fn gaidaros_conf(conf: &std::path::Path) -> util::Server {
    util::gaidaros_bare()
        .args(&["-c", conf.to_str().expect("a UTF-8 path")])
        .start()
}

#[test]
fn stream_protocols_and_unsupported_types_are_refused_over_udp() {
    for (args, says) in [
        (
            &["--handler", "http", "-P", "udp"][..],
            "http is a stream protocol: it cannot serve protocol = udp",
        ),
        (
            &["--handler", "echo", "-P", "udp", "-X", "threadpool"][..],
            "handler_type threadpool (-X) is not supported there yet",
        ),
        (
            &["--handler", "echo", "-P", "udp", "-S", "procpool"][..],
            "procpool (-S) is not supported there yet",
        ),
        (&["--handler", "echo", "-P", "sctp"][..], "tcp or udp"),
    ] {
        let done = gaidaros().args(args).run_to_exit(WAIT);
        assert_eq!(done.code(), 2, "{args:?}: {}", done.stderr);
        assert!(done.stderr.contains(says), "{args:?}: {}", done.stderr);
    }
}
