//! Sessions that no accept made, and messages into sessions, on a real loop
//! (under the backend `GAIDAROS_TEST_POLL` names): spawning from another
//! thread, dialing out, ending, the mailbox's order and bounds, and the
//! `max_sessions` limit.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self};
use std::time::{Duration, Instant};

use gaidaros::net::ConnOptions;
use gaidaros::{
    CloseReason, ConnId, ConnectError, ConnectOptions, Ctx, Handler, JobId, Limits, Message,
    Protocol, ProtocolFactory, SendError, SessionRef, SpawnRefused, Spawner, TimerId,
};

const WAIT: Duration = Duration::from_secs(10);

/// A loop in a thread whose listener's factory makes `accepted` sessions,
/// and the loop's spawner.
struct Running {
    spawner: Spawner,
    server: common::Running,
}

impl std::ops::Deref for Running {
    type Target = common::Running;
    fn deref(&self) -> &common::Running {
        &self.server
    }
}

type Make = Box<dyn Fn() -> Box<dyn Protocol> + Send + Sync>;

struct Factory {
    make: Make,
    spawner: Arc<Mutex<Option<Spawner>>>,
}

impl ProtocolFactory for Factory {
    fn open(&self) -> Box<dyn Protocol> {
        (self.make)()
    }
    fn on_loop_start(&self, spawner: Spawner) {
        *self.spawner.lock().unwrap() = Some(spawner);
    }
}

fn start(limits: Limits, make: Make) -> Running {
    let slot = Arc::new(Mutex::new(None));
    let factory = Factory {
        make,
        spawner: slot.clone(),
    };
    let handler = Handler::Protocol(Arc::new(factory));
    let server = common::serve(
        handler,
        limits,
        ConnOptions::default(),
        common::loop_settings(),
    );
    let spawner = slot.lock().unwrap().take().expect("on_loop_start ran");
    Running { spawner, server }
}

fn no_accepts() -> Make {
    Box::new(|| -> Box<dyn Protocol> { panic!("no connection is accepted in this test") })
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Dials `target`, sends `len` bytes, reads the count the peer answers
/// (8 bytes, big-endian), reports it and ends itself.
struct Dialer {
    target: Target,
    len: usize,
    sent: usize,
    answer: Vec<u8>,
    report: mpsc::Sender<String>,
    conn: Option<ConnId>,
}

impl Dialer {
    fn started(&mut self, ctx: &mut Ctx<'_>, conn: Result<ConnId, ConnectError>) {
        match conn {
            Ok(conn) => {
                self.conn = Some(conn);
                self.pump(ctx, conn);
            }
            Err(e) => {
                let _ = self.report.send(format!("connect failed: {e}"));
                ctx.end_session();
            }
        }
    }

    fn pump(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        let chunk = [0x5au8; 16 * 1024];
        while self.sent < self.len {
            let n = chunk.len().min(self.len - self.sent);
            self.sent += n;
            match ctx.write(conn, &chunk[..n]) {
                Ok(gaidaros::Queued::UnderCap) => {}
                Ok(gaidaros::Queued::OverCap) => return,
                Err(e) => {
                    let _ = self.report.send(format!("write failed: {e}"));
                    return;
                }
            }
        }
        ctx.shutdown_write(conn);
    }
}

/// Where a [`Dialer`] dials.
enum Target {
    Addr(SocketAddr),
    /// Through [`Ctx::connect_host_with`].
    Name(String, ConnectOptions),
}

impl Protocol for Dialer {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        let conn = match &self.target {
            Target::Addr(addr) => ctx.connect(*addr),
            Target::Name(name, how) => match ctx.connect_host_with(name, *how) {
                Ok(_) => return, // on_resolved goes on
                Err(e) => Err(e),
            },
        };
        self.started(ctx, conn);
    }
    fn on_resolved(&mut self, ctx: &mut Ctx<'_>, _: JobId, result: Result<ConnId, ConnectError>) {
        self.started(ctx, result);
    }
    fn on_writable(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        self.pump(ctx, conn);
    }
    fn on_data(&mut self, ctx: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
        self.answer.extend_from_slice(data);
        if self.answer.len() >= 8 {
            let n = u64::from_be_bytes(self.answer[..8].try_into().unwrap());
            let _ = self.report.send(format!("peer counted {n}"));
            ctx.end_session();
        }
        data.len()
    }
    fn on_close(&mut self, _: &mut Ctx<'_>, _: ConnId, reason: CloseReason) {
        let _ = self.report.send(format!("closed: {reason}"));
    }
}

#[test]
fn a_spawned_session_dials_out_exchanges_a_mebibyte_and_ends_itself() {
    let server = start(Limits::default(), no_accepts());
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = peer.local_addr().unwrap();
    let counter = thread::spawn(move || {
        let (mut s, _) = peer.accept().unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf).unwrap() {
                0 => break,
                n => {
                    assert!(buf[..n].iter().all(|&b| b == 0x5a));
                    total += n as u64;
                }
            }
        }
        s.write_all(&total.to_be_bytes()).unwrap();
        // The session closes once it has the count.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        total
    });
    let (tx, rx) = mpsc::channel();
    let session = server
        .spawner
        .spawn(Box::new(Dialer {
            target: Target::Addr(target),
            len: 1 << 20,
            sent: 0,
            answer: Vec::new(),
            report: tx,
            conn: None,
        }))
        .expect("spawned");
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        format!("peer counted {}", 1 << 20)
    );
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "closed: closed by handler");
    assert_eq!(counter.join().unwrap(), 1 << 20);
    until("the session to end", || session.is_ended());
    assert!(matches!(
        session.send(Box::new(1u32)),
        Err(SendError::Ended(_))
    ));
}

/// Records the `u64` messages it gets; a `mpsc::Sender<Vec<u64>>` gets the
/// record; a `&str` "end" ends it; a `mpsc::Receiver<()>` makes it wait
/// for a go (blocking its loop, so that the mailbox fills).
#[derive(Default)]
struct Recorder {
    got: Vec<u64>,
}

impl Protocol for Recorder {
    fn on_data(&mut self, _: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
        data.len()
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message) {
        let msg = match msg.downcast::<u64>() {
            Ok(n) => return self.got.push(*n),
            Err(other) => other,
        };
        let msg = match msg.downcast::<mpsc::Sender<Vec<u64>>>() {
            Ok(reply) => {
                let _ = reply.send(std::mem::take(&mut self.got));
                return;
            }
            Err(other) => other,
        };
        let msg = match msg.downcast::<mpsc::Receiver<()>>() {
            Ok(go) => {
                let _ = go.recv_timeout(WAIT);
                return;
            }
            Err(other) => other,
        };
        if msg.downcast::<&str>().is_ok_and(|s| *s == "end") {
            ctx.end_session();
        }
    }
}

fn spawn_recorder(server: &Running) -> SessionRef {
    server
        .spawner
        .spawn(Box::new(Recorder::default()))
        .expect("spawned")
}

/// Send `msg`, retrying while the mailbox is full; how many times it was.
fn send_retrying(to: &SessionRef, mut msg: Message) -> usize {
    let mut full = 0;
    loop {
        match to.send(msg) {
            Ok(()) => return full,
            Err(SendError::Full(m)) => {
                full += 1;
                msg = m;
                thread::yield_now();
            }
            Err(SendError::Ended(_)) => panic!("the session ended"),
        }
    }
}

fn record_of(to: &SessionRef) -> Vec<u64> {
    let (tx, rx) = mpsc::channel::<Vec<u64>>();
    send_retrying(to, Box::new(tx));
    rx.recv_timeout(WAIT).expect("the session answers")
}

#[test]
fn ten_thousand_messages_from_another_thread_arrive_in_order() {
    let server = start(
        Limits {
            mailbox: 64,
            ..Limits::default()
        },
        no_accepts(),
    );
    let session = spawn_recorder(&server);
    let to = session.clone();
    thread::spawn(move || {
        for i in 0..10_000u64 {
            send_retrying(&to, Box::new(i));
        }
    })
    .join()
    .unwrap();
    assert_eq!(record_of(&session), (0..10_000).collect::<Vec<u64>>());
    assert_eq!(session.queued(), 0);
}

#[test]
fn a_full_mailbox_refuses_and_hands_the_message_back() {
    let server = start(
        Limits {
            mailbox: 4,
            ..Limits::default()
        },
        no_accepts(),
    );
    let session = spawn_recorder(&server);
    // The first message holds the loop inside on_message until `go`.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    session.send(Box::new(go_rx)).unwrap();
    until("the loop to take the first message", || {
        session.queued() == 0
    });
    for i in 0..4u64 {
        session.send(Box::new(i)).expect("room for four");
    }
    match session.send(Box::new(99u64)) {
        Err(SendError::Full(m)) => assert_eq!(*m.downcast::<u64>().unwrap(), 99),
        other => panic!("expected Full, got {other:?}"),
    }
    go_tx.send(()).unwrap();
    assert_eq!(record_of(&session), vec![0, 1, 2, 3]);
}

#[test]
fn a_session_that_ended_refuses_messages() {
    let server = start(Limits::default(), no_accepts());
    let session = spawn_recorder(&server);
    session.send(Box::new(7u64)).unwrap();
    session.send(Box::new("end")).unwrap();
    until("the session to end", || session.is_ended());
    match session.send(Box::new(8u64)) {
        Err(SendError::Ended(m)) => assert_eq!(*m.downcast::<u64>().unwrap(), 8),
        other => panic!("expected Ended, got {other:?}"),
    }
}

#[test]
fn max_sessions_bounds_spawned_sessions_and_an_ended_one_frees_its_place() {
    let server = start(
        Limits {
            max_sessions: 2,
            ..Limits::default()
        },
        no_accepts(),
    );
    let a = spawn_recorder(&server);
    let _b = spawn_recorder(&server);
    let refused = server
        .spawner
        .spawn(Box::new(Recorder::default()))
        .expect_err("a third is over max_sessions");
    assert_eq!(refused.reason, SpawnRefused::TooMany);
    a.send(Box::new("end")).unwrap();
    until("the first session to end", || a.is_ended());
    // Its place is given back when the loop drops it, just after.
    let deadline = Instant::now() + WAIT;
    let c = loop {
        match server.spawner.spawn(Box::new(Recorder::default())) {
            Ok(c) => break c,
            Err(e) if e.reason == SpawnRefused::TooMany && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("spawn refused: {e}"),
        }
    };
    c.send(Box::new(5u64)).unwrap();
    assert_eq!(record_of(&c), vec![5]);
}

#[test]
fn a_loop_that_stopped_refuses_spawns() {
    let mut server = start(Limits::default(), no_accepts());
    server.server.handle.stop();
    if let Some(t) = server.server.thread.take() {
        t.join().unwrap().unwrap();
    }
    let refused = server
        .spawner
        .spawn(Box::new(Recorder::default()))
        .expect_err("stopped");
    assert_eq!(refused.reason, SpawnRefused::Stopped);
}

/// An accepted session that keeps itself past its connection: a timer
/// armed after the close still fires and reports through its address.
struct Keeper {
    report: mpsc::Sender<String>,
}

impl Protocol for Keeper {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        ctx.keep_session();
        let addr = ctx.session_ref();
        let _ = self.report.send(format!("open, ended={}", addr.is_ended()));
        ctx.write(conn, b"bye\n").unwrap();
        ctx.close(conn);
    }
    fn on_data(&mut self, _: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
        data.len()
    }
    fn on_close(&mut self, ctx: &mut Ctx<'_>, _: ConnId, _: CloseReason) {
        ctx.set_timer(Duration::from_millis(20));
        let _ = self.report.send("closed".into());
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, _: TimerId) {
        let _ = self.report.send("timer after the close".into());
        ctx.end_session();
    }
}

#[test]
fn an_accepted_session_that_keeps_itself_outlives_its_connection() {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let server = start(
        Limits::default(),
        Box::new(move || -> Box<dyn Protocol> {
            Box::new(Keeper {
                report: tx.lock().unwrap().clone(),
            })
        }),
    );
    let mut c = TcpStream::connect(server.addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye\n");
    // The server lingers for this FIN before it closes its side.
    drop(c);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "open, ended=false");
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "closed");
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "timer after the close");
}

/// Connects to `target` from `source` and reports what `connect_with`
/// answered.
struct FromSource {
    target: SocketAddr,
    source: SocketAddr,
    report: mpsc::Sender<String>,
}

impl Protocol for FromSource {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        let how = gaidaros::ConnectOptions {
            source: Some(self.source),
            options: Some(ConnOptions {
                nodelay: true,
                cork: false,
            }),
        };
        match ctx.connect_with(self.target, how) {
            Ok(_) => {}
            Err(e) => {
                let _ = self.report.send(format!("refused: {e}"));
                ctx.end_session();
            }
        }
    }
    fn on_connect(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, result: std::io::Result<()>) {
        let _ = self.report.send(format!("connected: {}", result.is_ok()));
        ctx.close(conn);
        ctx.end_session();
    }
    fn on_data(&mut self, _: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
        data.len()
    }
}

#[test]
fn an_outbound_connection_can_choose_its_source_address() {
    let server = start(Limits::default(), no_accepts());
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = peer.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let spawn = |source: &str| {
        server
            .spawner
            .spawn(Box::new(FromSource {
                target,
                source: source.parse().unwrap(),
                report: tx.clone(),
            }))
            .expect("spawned");
    };
    spawn("127.0.0.2:0");
    let (_conn, from) = peer.accept().unwrap();
    assert_eq!(from.ip().to_string(), "127.0.0.2");
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "connected: true");
    // Not an address of this host; and not of the destination's family.
    for bad in ["192.0.2.1:0", "[::1]:0"] {
        spawn(bad);
        let said = rx.recv_timeout(WAIT).unwrap();
        assert!(
            said.starts_with("refused: cannot connect:"),
            "{bad}: {said}"
        );
    }
}

/// A session keeping its own deadline ([`Protocol::poll_timeout`]): it
/// fires `rounds` times, `every` apart, then reports how many fired and
/// how many came before their deadline, and ends. A message `Duration`
/// moves the deadline to that long from now (later or earlier).
struct Pacer {
    next: Option<Instant>,
    every: Duration,
    rounds: usize,
    fired: usize,
    early: usize,
    report: mpsc::Sender<(usize, usize)>,
}

impl Protocol for Pacer {
    fn on_data(&mut self, _: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
        data.len()
    }
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        self.next = Some(ctx.now() + self.every);
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message) {
        if let Ok(after) = msg.downcast::<Duration>() {
            self.next = Some(ctx.now() + *after);
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }
    fn on_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let Some(due) = self.next else {
            self.early += 1; // called with no deadline at all
            return;
        };
        // The loop's clock, and the real one: neither may be before it.
        if ctx.now() < due || Instant::now() < due {
            self.early += 1;
        }
        self.fired += 1;
        if self.fired == self.rounds {
            self.next = None;
            let _ = self.report.send((self.fired, self.early));
            ctx.end_session();
        } else {
            self.next = Some(ctx.now() + self.every);
        }
    }
}

fn pacer(every: Duration, rounds: usize) -> (Pacer, mpsc::Receiver<(usize, usize)>) {
    let (report, rx) = mpsc::channel();
    let p = Pacer {
        next: None,
        every,
        rounds,
        fired: 0,
        early: 0,
        report,
    };
    (p, rx)
}

#[test]
fn a_deadline_the_session_reports_fires_each_time_and_never_early() {
    let server = start(Limits::default(), no_accepts());
    // 300 µs apart: under a millisecond, which a wait rounded up to whole
    // milliseconds would still meet, but late (that is measured by the
    // `timers` benchmark, not asserted here).
    let (p, rx) = pacer(Duration::from_micros(300), 500);
    let session = server.spawner.spawn(Box::new(p)).expect("spawned");
    assert_eq!(rx.recv_timeout(WAIT), Ok((500, 0)));
    until("the session to end", || session.is_ended());
}

#[test]
fn a_deadline_moved_earlier_fires_at_the_earlier_and_one_moved_later_waits() {
    let server = start(Limits::default(), no_accepts());
    // An hour off at first: only moving it earlier makes it fire in time.
    let (p, rx) = pacer(Duration::from_secs(3600), 1);
    let session = server.spawner.spawn(Box::new(p)).expect("spawned");
    session.send(Box::new(Duration::from_millis(2))).unwrap();
    // Then later: the entry armed for 2 ms comes due, and the session is
    // not told (it would count an early call) until 200 ms.
    session.send(Box::new(Duration::from_millis(200))).unwrap();
    assert_eq!(rx.recv_timeout(WAIT), Ok((1, 0)));
    until("the session to end", || session.is_ended());
}

/// A peer that counts what it reads to EOF and answers the count.
fn counting_peer() -> (SocketAddr, thread::JoinHandle<u64>) {
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = peer.local_addr().unwrap();
    let t = thread::spawn(move || {
        let (mut s, _) = peer.accept().unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).unwrap() {
                0 => break,
                n => total += n as u64,
            }
        }
        s.write_all(&total.to_be_bytes()).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
        total
    });
    (addr, t)
}

fn dial_name(server: &Running, name: String, how: ConnectOptions) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    server
        .spawner
        .spawn(Box::new(Dialer {
            target: Target::Name(name, how),
            len: 256 * 1024,
            sent: 0,
            answer: Vec::new(),
            report: tx,
            conn: None,
        }))
        .expect("spawned");
    rx
}

#[test]
fn a_session_connects_to_a_name_resolved_off_the_loop() {
    let server = start(Limits::default(), no_accepts());
    let (addr, peer) = counting_peer();
    let rx = dial_name(
        &server,
        format!("localhost:{}", addr.port()),
        ConnectOptions::default(),
    );
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "peer counted 262144");
    assert_eq!(peer.join().unwrap(), 256 * 1024);
}

#[test]
fn a_name_that_does_not_resolve_or_has_no_address_of_the_family_is_told() {
    let server = start(Limits::default(), no_accepts());
    let no_port = dial_name(&server, "localhost".into(), ConnectOptions::default());
    let said = no_port.recv_timeout(WAIT).unwrap();
    assert!(
        said.starts_with("connect failed: cannot resolve: "),
        "{said}"
    );
    let too_long = dial_name(&server, "a".repeat(400) + ":80", ConnectOptions::default());
    let said = too_long.recv_timeout(WAIT).unwrap();
    assert!(said.contains("at most 300"), "{said}");
    let v6_source = ConnectOptions {
        source: Some("[::1]:0".parse().unwrap()),
        options: None,
    };
    let v4_only = dial_name(&server, "127.0.0.1:9".into(), v6_source);
    assert_eq!(
        v4_only.recv_timeout(WAIT).unwrap(),
        "connect failed: cannot resolve: no address of the source address's family"
    );
}
