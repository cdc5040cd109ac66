//! The protocol API driven by a real loop on loopback sockets: file sends,
//! timers, outbound connects, pause/resume, input limits and socket options.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::{self};
use std::time::Duration;

use gaidaros::net::ConnOptions;
use gaidaros::{
    CloseReason, ConnId, Ctx, Handler, Limits, Protocol, ProtocolFactory, Queued, TimerId,
};

/// Events a test protocol saw, in order.
type Log = Arc<Mutex<Vec<String>>>;

use common::Running;

fn start(factory: impl ProtocolFactory, limits: Limits, options: ConnOptions) -> Running {
    start_handler(Handler::Protocol(Arc::new(factory)), limits, options)
}

/// A loop in a thread serving `handler` on 127.0.0.1:0.
fn start_handler(handler: Handler, limits: Limits, options: ConnOptions) -> Running {
    common::serve(handler, limits, options, common::loop_settings())
}

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn read_all(mut s: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("read until the server closes");
    out
}

/// Build a factory from a closure creating sessions.
struct Factory<F>(F);
impl<F, P> ProtocolFactory for Factory<F>
where
    F: Fn() -> P + Send + Sync + 'static,
    P: Protocol + 'static,
{
    fn open(&self) -> Box<dyn Protocol> {
        Box::new((self.0)())
    }
}

struct SendFile {
    file: Arc<std::fs::File>,
    len: u64,
}

impl Protocol for SendFile {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        ctx.write(conn, b"BEGIN\n").expect("open");
        ctx.send_file(conn, self.file.clone(), 0, self.len)
            .expect("open");
        ctx.write(conn, b"END\n").expect("open");
        ctx.close(conn);
    }
    fn on_data(&mut self, _: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
        data.len()
    }
}

#[test]
fn send_file_delivers_the_range_between_byte_writes() {
    let dir = std::env::temp_dir().join(format!("gaidaros-sendfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data.bin");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let file = Arc::new(std::fs::File::open(&path).unwrap());
    let len = content.len() as u64;
    let server = start(
        Factory(move || SendFile {
            file: file.clone(),
            len,
        }),
        Limits::default(),
        ConnOptions::default(),
    );
    let got = read_all(client(server.addr));
    let mut want = b"BEGIN\n".to_vec();
    want.extend_from_slice(&content);
    want.extend_from_slice(b"END\n");
    assert_eq!(got.len(), want.len());
    assert!(got == want, "file bytes differ");
    std::fs::remove_dir_all(&dir).ok();
}

struct Timers {
    log: Log,
    conn: Option<ConnId>,
    cancelled: Option<TimerId>,
}

impl Protocol for Timers {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        self.conn = Some(conn);
        let doomed = ctx.set_timer(Duration::from_millis(20));
        ctx.set_timer(Duration::from_millis(60));
        let first = ctx.cancel_timer(doomed);
        let again = ctx.cancel_timer(doomed);
        self.log
            .lock()
            .unwrap()
            .push(format!("cancel: {first}, again: {again}"));
        self.cancelled = Some(doomed);
    }
    fn on_data(&mut self, _: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
        data.len()
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: TimerId) {
        self.log.lock().unwrap().push(format!(
            "timer cancelled={}, cancel after firing: {}",
            Some(timer) == self.cancelled,
            ctx.cancel_timer(timer)
        ));
        if let Some(c) = self.conn {
            ctx.write(c, b"tick\n")
                .expect("open until the timer closes it");
            ctx.close(c);
        }
    }
}

#[test]
fn timers_fire_once_and_cancelled_ones_never() {
    let log: Log = Arc::default();
    let l = log.clone();
    let server = start(
        Factory(move || Timers {
            log: l.clone(),
            conn: None,
            cancelled: None,
        }),
        Limits::default(),
        ConnOptions::default(),
    );
    assert_eq!(read_all(client(server.addr)), b"tick\n");
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            "cancel: true, again: false",
            "timer cancelled=false, cancel after firing: false"
        ]
    );
}

struct Dialer {
    target: SocketAddr,
    log: Log,
}

impl Protocol for Dialer {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, _: ConnId) {
        match ctx.connect(self.target) {
            Ok(_) => self.log.lock().unwrap().push("connecting".into()),
            Err(e) => self.log.lock().unwrap().push(format!("connect error {e}")),
        }
    }
    fn on_data(&mut self, _: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
        data.len()
    }
    fn on_connect(&mut self, _: &mut Ctx<'_>, _: ConnId, result: std::io::Result<()>) {
        self.log
            .lock()
            .unwrap()
            .push(format!("on_connect ok={}", result.is_ok()));
    }
    fn on_close(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, reason: CloseReason) {
        self.log
            .lock()
            .unwrap()
            .push(format!("on_close {reason:?}"));
        let _ = (ctx, conn);
    }
}

#[test]
fn failed_outbound_connect_reports_then_closes() {
    // A port that was just free: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let log: Log = Arc::default();
    let l = log.clone();
    let server = start(
        Factory(move || Dialer {
            target: closed,
            log: l.clone(),
        }),
        Limits::default(),
        ConnOptions::default(),
    );
    let _c = client(server.addr);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen[0], "connecting");
    assert_eq!(seen[1], "on_connect ok=false");
    assert!(seen[2].starts_with("on_close ConnectFailed"), "{seen:?}");
}

/// Writes before and after its half-close, and after the close.
struct WriteProbe {
    log: Log,
}
impl Protocol for WriteProbe {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        let first = ctx.write(conn, b"a");
        ctx.shutdown_write(conn);
        let after_fin = ctx.write(conn, b"b");
        let mut log = self.log.lock().unwrap();
        log.push(format!("{first:?}"));
        log.push(format!("{after_fin:?}"));
    }
    fn on_data(&mut self, _: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
        data.len()
    }
    fn on_close(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, reason: CloseReason) {
        let closed = ctx.write(conn, b"c");
        self.log
            .lock()
            .unwrap()
            .push(format!("{closed:?} {reason:?}"));
    }
}

#[test]
fn writes_say_whether_they_were_queued_and_why_not() {
    let log: Log = Arc::default();
    let l = log.clone();
    let server = start(
        Factory(move || WriteProbe { log: l.clone() }),
        Limits::default(),
        ConnOptions::default(),
    );
    let c = client(server.addr);
    c.shutdown(Shutdown::Write).unwrap();
    // What was queued before the half-close, then the server's FIN.
    assert_eq!(read_all(c), b"a");
    assert!(
        wait_for(&log, "Err(NotOpen) Local"),
        "{:?}",
        log.lock().unwrap()
    );
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen[..2], ["Ok(UnderCap)", "Err(Shut)"]);
}

/// Consumes nothing until it has a whole line; lines are answered.
struct LineProto;
impl Protocol for LineProto {
    fn on_data(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, data: &[u8]) -> usize {
        match data.iter().position(|b| *b == b'\n') {
            Some(i) => {
                ctx.write(conn, &data[..=i]).expect("open while reading");
                i + 1
            }
            None => 0,
        }
    }
}

#[test]
fn unconsumed_input_is_presented_again_and_bounded_by_max_request() {
    let limits = Limits {
        max_request: 1000,
        ..Limits::default()
    };
    let server = start(Factory(|| LineProto), limits, ConnOptions::default());
    // A line split over two writes is presented whole.
    let mut c = client(server.addr);
    c.write_all(b"hel").unwrap();
    thread::sleep(Duration::from_millis(50));
    c.write_all(b"lo\n").unwrap();
    let mut buf = [0u8; 6];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello\n");
    // More unconsumed input than max_request closes the connection.
    let mut big = client(server.addr);
    big.write_all(&[b'x'; 5000]).unwrap();
    let mut rest = Vec::new();
    match big.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "nothing is answered"),
        // Closing over unread input resets: also a close, not a timeout.
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// Echoes, pausing reads while the client's output is over the cap.
struct PausingEcho {
    paused: bool,
}
impl Protocol for PausingEcho {
    fn on_data(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, data: &[u8]) -> usize {
        if ctx.write(conn, data) == Ok(Queued::OverCap) {
            ctx.pause_read(conn);
            self.paused = true;
        }
        data.len()
    }
    fn on_writable(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        if self.paused {
            self.paused = false;
            ctx.resume_read(conn);
        }
    }
    fn on_read_closed(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        ctx.shutdown_write(conn);
    }
}

#[test]
fn pause_and_resume_keep_a_slow_reader_bounded_and_lossless() {
    let limits = Limits {
        output_cap: 64 * 1024,
        ..Limits::default()
    };
    let server = start(
        Factory(|| PausingEcho { paused: false }),
        limits,
        ConnOptions::default(),
    );
    let c = client(server.addr);
    let mut reader = c.try_clone().unwrap();
    let total = 16 * 1024 * 1024;
    let writer = thread::spawn(move || {
        let mut c = c;
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
        let mut sent = 0;
        while sent < total {
            c.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
        c.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = 0usize;
    let mut buf = vec![0u8; 4096];
    let mut expect_pos = 0usize;
    loop {
        // Read slowly at first so the server hits its cap.
        if got < 2 * 1024 * 1024 {
            thread::sleep(Duration::from_micros(200));
        }
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for b in &buf[..n] {
            assert_eq!(*b, ((expect_pos % 65536) % 253) as u8, "byte {expect_pos}");
            expect_pos += 1;
        }
        got += n;
    }
    writer.join().unwrap();
    assert_eq!(got, total);
}

/// The server side of `client`, found among this process's descriptors (the
/// loop runs in-process).
fn server_side_options(server: SocketAddr, client: &TcpStream) -> (bool, bool) {
    use std::os::fd::BorrowedFd;
    let me = client.local_addr().unwrap();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(fd) = entry.unwrap().file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed for a few getsockopt calls
        // while the loop that owns it is running (it stays open: the client
        // connection is alive).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&borrowed);
        let (Ok(local), Ok(peer)) = (sock.local_addr(), sock.peer_addr()) else {
            continue;
        };
        if local.as_socket() == Some(server) && peer.as_socket() == Some(me) {
            return (sock.nodelay().unwrap(), sock.cork().unwrap());
        }
    }
    panic!("server side of {me} not found");
}

struct Quiet;
impl Protocol for Quiet {
    fn on_data(&mut self, _: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
        data.len()
    }
}

#[test]
fn accepted_sockets_carry_the_listener_options() {
    for (nodelay, cork) in [(false, false), (true, false), (false, true), (true, true)] {
        let server = start(
            Factory(|| Quiet),
            Limits::default(),
            ConnOptions { nodelay, cork },
        );
        let c = client(server.addr);
        // Let the loop accept.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let got = loop {
            let found = std::panic::catch_unwind(|| server_side_options(server.addr, &c));
            match found {
                Ok(v) => break v,
                Err(_) if std::time::Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10))
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        };
        assert_eq!(got, (nodelay, cork), "TCP_NODELAY, TCP_CORK read back");
    }
}

/// Panics on a line saying "panic"; echoes other lines.
struct Fragile;
impl gaidaros::Service for Fragile {
    fn handle(
        &self,
        request: &[u8],
        response: &mut Vec<u8>,
    ) -> Result<gaidaros::Keep, gaidaros::ServiceError> {
        if request.starts_with(b"panic") {
            panic!("test service told to panic");
        }
        response.extend_from_slice(request);
        Ok(gaidaros::Keep::Alive)
    }
}

#[test]
fn a_panicking_service_fails_one_request_and_the_loop_serves_on() {
    let server = start_handler(
        Handler::Service(Arc::new(Fragile)),
        Limits::default(),
        ConnOptions::default(),
    );
    let mut calm = client(server.addr);
    calm.write_all(b"before\n").unwrap();
    let mut buf = [0u8; 7];
    calm.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"before\n");

    let mut bad = client(server.addr);
    bad.write_all(b"ok\npanic\nnever answered\n").unwrap();
    let got = read_all(bad);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "ok\nERR internal error: handler panicked\n"
    );

    calm.write_all(b"after\n").unwrap();
    let mut buf = [0u8; 6];
    calm.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after\n");
}

/// Panics when it sees data; the session's connections close.
struct PanicOnData;
impl Protocol for PanicOnData {
    fn on_data(&mut self, _: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
        if data.starts_with(b"boom") {
            panic!("test protocol told to panic");
        }
        data.len()
    }
}

#[test]
fn a_panicking_protocol_loses_its_session_only() {
    let server = start(
        Factory(|| PanicOnData),
        Limits::default(),
        ConnOptions::default(),
    );
    let mut calm = client(server.addr);
    let mut bad = client(server.addr);
    bad.write_all(b"boom").unwrap();
    let mut rest = Vec::new();
    match bad.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // The loop is alive: the other session still gets its FIN handling.
    calm.write_all(b"fine").unwrap();
    calm.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(calm), b"");
}

/// The first connection opened is the client: connect to the upstream
/// for it (the upstream's own open comes here too, and is not a client).
fn open_upstream_once(
    client: &mut Option<ConnId>,
    ctx: &mut Ctx<'_>,
    conn: ConnId,
    target: SocketAddr,
) {
    if client.is_none() {
        *client = Some(conn);
        ctx.connect(target).expect("connect upstream");
    }
}

/// Sends a file to the client, then splices an upstream's bytes behind it.
struct FileThenRelay {
    target: SocketAddr,
    file: Arc<std::fs::File>,
    len: u64,
    client: Option<ConnId>,
}

impl Protocol for FileThenRelay {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        open_upstream_once(&mut self.client, ctx, conn, self.target);
    }
    fn on_connect(&mut self, ctx: &mut Ctx<'_>, up: ConnId, result: std::io::Result<()>) {
        result.expect("upstream connects");
        let client = self.client.expect("client first");
        ctx.send_file(client, self.file.clone(), 0, self.len)
            .expect("client open");
        ctx.splice(up, client).expect("splice upstream to client");
    }
    fn on_data(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, data: &[u8]) -> usize {
        // Bytes that came before the splice began, or whose splice found
        // the destination gone.
        if let Some(client) = self.client.filter(|c| *c != conn) {
            // The client may have gone meanwhile: nothing to do then.
            let _ = ctx.write(client, data);
        }
        data.len()
    }
    fn on_read_closed(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        if let Some(client) = self.client.filter(|c| *c != conn) {
            ctx.close(client);
        }
        ctx.close(conn);
    }
}

#[test]
fn spliced_bytes_leave_behind_a_file_range_in_order() {
    let dir = std::env::temp_dir().join(format!("gaidaros-file-relay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data.bin");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let file = Arc::new(std::fs::File::open(&path).unwrap());
    let len = content.len() as u64;
    // The upstream writes in small segments (one pipe slot each when
    // spliced), so the destination's pipe runs out of slots before bytes.
    let relayed: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = upstream.local_addr().unwrap();
    let sent = relayed.clone();
    let up = thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        s.set_nodelay(true).unwrap();
        for piece in sent.chunks(1000) {
            s.write_all(piece).unwrap();
        }
    });
    let server = start(
        Factory(move || FileThenRelay {
            target,
            file: file.clone(),
            len,
            client: None,
        }),
        Limits::default(),
        ConnOptions::default(),
    );
    let got = read_all(client(server.addr));
    up.join().unwrap();
    let mut want = content;
    want.extend_from_slice(&relayed);
    assert_eq!(got.len(), want.len());
    let first_difference = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "bytes out of order");
    std::fs::remove_dir_all(&dir).ok();
}

/// Splices an upstream into the client; once the client has gone, the
/// upstream's bytes must come to on_data.
struct LateBytes {
    target: SocketAddr,
    log: Log,
    client: Option<ConnId>,
}

impl Protocol for LateBytes {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        open_upstream_once(&mut self.client, ctx, conn, self.target);
    }
    fn on_connect(&mut self, ctx: &mut Ctx<'_>, up: ConnId, result: std::io::Result<()>) {
        result.expect("upstream connects");
        let client = self.client.expect("client first");
        ctx.splice(up, client).expect("splice upstream to client");
        self.log.lock().unwrap().push("spliced".into());
    }
    fn on_data(&mut self, _: &mut Ctx<'_>, conn: ConnId, data: &[u8]) -> usize {
        if Some(conn) != self.client {
            let text = String::from_utf8_lossy(data).into_owned();
            self.log.lock().unwrap().push(format!("upstream: {text}"));
        }
        data.len()
    }
    fn on_read_closed(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        ctx.close(conn);
    }
    fn on_close(&mut self, _: &mut Ctx<'_>, conn: ConnId, _: CloseReason) {
        if Some(conn) == self.client {
            self.log.lock().unwrap().push("client closed".into());
        }
    }
}

fn wait_for(log: &Log, entry: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if log.lock().unwrap().iter().any(|e| e == entry) {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn bytes_after_the_splice_destination_closed_reach_on_data() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = upstream.local_addr().unwrap();
    let log: Log = Arc::default();
    let l = log.clone();
    let server = start(
        Factory(move || LateBytes {
            target,
            log: l.clone(),
            client: None,
        }),
        Limits::default(),
        ConnOptions::default(),
    );
    let c = client(server.addr);
    let (mut up, _) = upstream.accept().unwrap();
    assert!(wait_for(&log, "spliced"), "{:?}", log.lock().unwrap());
    // Under -T completion a splice from the upstream is out now.
    c.shutdown(Shutdown::Both).unwrap();
    drop(c);
    assert!(wait_for(&log, "client closed"), "{:?}", log.lock().unwrap());
    up.write_all(b"LATE").unwrap();
    assert!(
        wait_for(&log, "upstream: LATE"),
        "bytes lost: {:?}",
        log.lock().unwrap()
    );
    drop(up);
}
