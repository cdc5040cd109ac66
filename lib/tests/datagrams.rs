//! Datagram sockets of protocol sessions on a real loop (under the backend
//! `GAIDAROS_TEST_POLL` names): a spawned session binds a socket and
//! echoes, over IPv4 and IPv6; a sender faster than its queue is refused
//! at the cap and resumes on writability, and everything accepted
//! arrives; a datagram over `max_datagram` is dropped, never handed over
//! cut short; an empty datagram is one.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gaidaros::net::ConnOptions;
use gaidaros::{
    ConnId, Ctx, Handler, Limits, Protocol, ProtocolFactory, SendToError, Spawner, UdpId,
};

const WAIT: Duration = Duration::from_secs(10);

struct Factory(Arc<Mutex<Option<Spawner>>>);

impl ProtocolFactory for Factory {
    fn open(&self) -> Box<dyn Protocol> {
        panic!("no connection is accepted in this test")
    }
    fn on_loop_start(&self, spawner: Spawner) {
        *self.0.lock().unwrap() = Some(spawner);
    }
}

fn start(limits: Limits) -> (Spawner, common::Running) {
    let slot = Arc::new(Mutex::new(None));
    let server = common::serve(
        Handler::Protocol(Arc::new(Factory(slot.clone()))),
        limits,
        ConnOptions::default(),
        common::loop_settings(),
    );
    let spawner = slot.lock().unwrap().take().expect("on_loop_start ran");
    (spawner, server)
}

/// Binds `at`, reports its address, echoes every datagram and reports
/// each one's length.
struct Echo {
    at: SocketAddr,
    report: mpsc::Sender<Result<SocketAddr, String>>,
    lens: mpsc::Sender<usize>,
}

impl Protocol for Echo {
    fn on_data(&mut self, _: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
        data.len()
    }
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        let r = ctx
            .bind_udp(self.at)
            .map_err(|e| e.to_string())
            .and_then(|sock| ctx.udp_local_addr(sock).ok_or("no local address".into()));
        let _ = self.report.send(r);
    }
    fn on_datagram(&mut self, ctx: &mut Ctx<'_>, sock: UdpId, from: SocketAddr, data: &[u8]) {
        let _ = self.lens.send(data.len());
        if let Err(e) = ctx.send_to(sock, from, data) {
            panic!("echo refused: {e}");
        }
    }
}

fn spawn_echo(spawner: &Spawner, at: &str) -> (SocketAddr, mpsc::Receiver<usize>) {
    let (report, addr) = mpsc::channel();
    let (lens, lens_rx) = mpsc::channel();
    spawner
        .spawn(Box::new(Echo {
            at: at.parse().unwrap(),
            report,
            lens,
        }))
        .expect("spawned");
    let addr = addr.recv_timeout(WAIT).unwrap().expect("bound");
    (addr, lens_rx)
}

fn echo_round_trips(server: SocketAddr, client_at: &str) {
    let s = UdpSocket::bind(client_at).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..200u32 {
        let msg = format!("datagram {i}");
        let deadline = Instant::now() + WAIT;
        loop {
            s.send_to(msg.as_bytes(), server).unwrap();
            match s.recv_from(&mut buf) {
                Ok((n, from)) if &buf[..n] == msg.as_bytes() => {
                    assert_eq!(from, server);
                    break;
                }
                // A late answer to an earlier resend.
                Ok(_) => {}
                Err(e) => assert!(Instant::now() < deadline, "no echo of {msg}: {e}"),
            }
        }
    }
}

#[test]
fn a_spawned_session_binds_a_socket_and_echoes_datagrams() {
    let (spawner, _server) = start(Limits::default());
    let (addr, _) = spawn_echo(&spawner, "127.0.0.1:0");
    echo_round_trips(addr, "127.0.0.1:0");
}

#[test]
fn a_session_echoes_over_ipv6() {
    let (spawner, _server) = start(Limits::default());
    let (addr, _) = spawn_echo(&spawner, "[::1]:0");
    assert!(addr.is_ipv6());
    echo_round_trips(addr, "[::1]:0");
}

#[test]
fn a_datagram_over_max_datagram_is_dropped_and_an_empty_one_arrives() {
    let (spawner, _server) = start(Limits {
        max_datagram: 512,
        ..Limits::default()
    });
    let (addr, lens) = spawn_echo(&spawner, "127.0.0.1:0");
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(&[1u8; 1000], addr).unwrap();
    s.send_to(&[], addr).unwrap();
    s.send_to(&[2u8; 512], addr).unwrap();
    assert_eq!(
        lens.recv_timeout(WAIT),
        Ok(0),
        "the long one is not handed over"
    );
    assert_eq!(lens.recv_timeout(WAIT), Ok(512));
    assert!(lens.recv_timeout(Duration::from_millis(100)).is_err());
}

/// Sends `total` numbered datagrams to `to` as fast as its queue takes
/// them: each refusal is counted, and sending resumes on writability.
struct Flood {
    to: SocketAddr,
    total: u32,
    next: u32,
    blocked: u32,
    sock: Option<UdpId>,
    report: mpsc::Sender<(u32, u32)>,
}

impl Flood {
    fn pump(&mut self, ctx: &mut Ctx<'_>) {
        let Some(sock) = self.sock else { return };
        while self.next < self.total {
            match ctx.send_to(sock, self.to, &self.next.to_be_bytes()) {
                Ok(()) => self.next += 1,
                Err(SendToError::Blocked) => {
                    self.blocked += 1;
                    return;
                }
                Err(e) => panic!("send_to: {e}"),
            }
        }
        let _ = self.report.send((self.next, self.blocked));
    }
}

impl Protocol for Flood {
    fn on_data(&mut self, _: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
        data.len()
    }
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        self.sock = Some(ctx.bind_udp("127.0.0.1:0".parse().unwrap()).expect("bind"));
        self.pump(ctx);
    }
    fn on_udp_writable(&mut self, ctx: &mut Ctx<'_>, _: UdpId) {
        self.pump(ctx);
    }
}

#[test]
fn a_sender_faster_than_its_queue_is_refused_at_the_cap_and_loses_nothing_accepted() {
    const TOTAL: u32 = 3000;
    let (spawner, _server) = start(Limits {
        udp_queue: 64,
        ..Limits::default()
    });
    let rx = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    // Room for every datagram in the receiver, so that what the kernel
    // drops there (not the loop) cannot make the count short.
    rx.set_recv_buffer_size(4 << 20).unwrap();
    rx.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let rx: UdpSocket = rx.into();
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let to = rx.local_addr().unwrap();
    let (report, done) = mpsc::channel();
    spawner
        .spawn(Box::new(Flood {
            to,
            total: TOTAL,
            next: 0,
            blocked: 0,
            sock: None,
            report,
        }))
        .expect("spawned");
    let mut seen = vec![false; TOTAL as usize];
    let mut got = 0;
    let mut buf = [0u8; 64];
    while got < TOTAL {
        match rx.recv_from(&mut buf) {
            Ok((4, _)) => {
                let i = u32::from_be_bytes(buf[..4].try_into().unwrap());
                assert!(!seen[i as usize], "datagram {i} twice");
                seen[i as usize] = true;
                got += 1;
            }
            Ok((n, _)) => panic!("a datagram of {n} bytes"),
            Err(e) => panic!("{got} of {TOTAL} datagrams arrived: {e}"),
        }
    }
    let (accepted, blocked) = done.recv_timeout(WAIT).unwrap();
    assert_eq!(accepted, TOTAL);
    assert!(blocked > 0, "the queue never filled");
}
