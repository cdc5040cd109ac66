//! Handler pools driven by a real loop on loopback sockets: a panicking
//! request fails only its own connection, responses leave in request order
//! whatever order the pool finishes them in, green threads overlap waiting
//! requests on tasks, and a full pool or `max_pipelined` stops the loop
//! reading instead of queueing without bound.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use gaidaros::net::{self, BindSpec, ConnOptions, IpVersion};
use gaidaros::pools::{self, ExecMode, Pool};
use gaidaros::service::HandleFuture;
use gaidaros::{Handler, Keep, Limits, ListenerSetup, Loop, LoopHandle, Service, ServiceError};

/// Every socket read and write of these tests gives up after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Every pool type (blocking, which has none, is the reference).
const POOLED: [ExecMode; 4] = [
    ExecMode::Thread,
    ExecMode::ThreadPool,
    ExecMode::Gthread,
    ExecMode::GthreadPool,
];

struct Running {
    addr: SocketAddr,
    handle: LoopHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A loop in a thread serving `service` on 127.0.0.1:0 through `pool`.
fn start(service: Arc<dyn Service>, pool: Option<Arc<dyn Pool>>, limits: Limits) -> Running {
    let addr = net::resolve("127.0.0.1", 0, IpVersion::V4).unwrap();
    let listener: TcpListener = net::bind(&BindSpec {
        addr,
        version: IpVersion::V4,
        backlog: 256,
        reuseport: false,
    })
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let setup = ListenerSetup::new(
        "test",
        Handler::Service(service),
        ConnOptions::default(),
        true,
        limits,
    )
    .with_pool(pool);
    let (lp, handle) = Loop::new(vec![(listener, Arc::new(setup))], common::loop_settings())
        .expect("create the loop");
    let thread = thread::spawn(move || lp.run());
    Running {
        addr,
        handle,
        thread: Some(thread),
    }
}

/// The pool of `kind`: `size` workers (or requests in flight), `queue` queued.
fn pool(kind: ExecMode, size: usize, queue: usize) -> Option<Arc<dyn Pool>> {
    pools::build(kind, size, queue).expect("build the pool")
}

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

#[track_caller]
fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    let mut got = 0;
    while got < n {
        match s.read(&mut buf[got..]) {
            Ok(0) => panic!(
                "EOF after {got} of {n} bytes: {:?}",
                String::from_utf8_lossy(&buf[..got])
            ),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "{e} after {got} of {n} bytes: {:?}",
                String::from_utf8_lossy(&buf[..got])
            ),
        }
    }
    buf
}

#[track_caller]
fn expect_echo(s: &mut TcpStream, line: &str) {
    s.write_all(line.as_bytes()).expect("write");
    let got = read_exactly(s, line.len());
    assert_eq!(String::from_utf8_lossy(&got), line);
}

/// Everything until the server closes (the read timeout bounds it).
#[track_caller]
fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    if let Err(e) = s.read_to_end(&mut out) {
        let tail = &out[out.len().saturating_sub(60)..];
        panic!(
            "read until the server closes: {e} after {} bytes, ending {:?}",
            out.len(),
            String::from_utf8_lossy(tail)
        );
    }
    out
}

/// Echoes lines; panics on `boom`.
struct Boom;

impl Service for Boom {
    fn handle(&self, request: &[u8], response: &mut Vec<u8>) -> Result<Keep, ServiceError> {
        if request == b"boom\n" {
            panic!("test service told to panic");
        }
        response.extend_from_slice(request);
        Ok(Keep::Alive)
    }
}

fn a_panic_fails_its_connection_only(kind: ExecMode) {
    let server = start(Arc::new(Boom), pool(kind, 4, 64), Limits::default());
    let mut calm = client(server.addr);
    expect_echo(&mut calm, "before\n");

    let mut bad = client(server.addr);
    bad.write_all(b"a\nboom\nc\n").unwrap();
    let got = read_to_eof(&mut bad);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "a\nERR internal error: handler panicked\n",
        "-X {kind}: the answer before the panic, the error reply, then EOF"
    );

    expect_echo(&mut calm, "after\n");
    // The pool is still whole: a new connection is served too.
    let mut fresh = client(server.addr);
    for i in 0..10 {
        expect_echo(&mut fresh, &format!("fresh {i}\n"));
    }
    calm.shutdown(Shutdown::Write).ok();
}

#[test]
fn a_panic_fails_its_connection_only_blocking() {
    a_panic_fails_its_connection_only(ExecMode::Blocking);
}

#[test]
fn a_panic_fails_its_connection_only_thread() {
    a_panic_fails_its_connection_only(ExecMode::Thread);
}

#[test]
fn a_panic_fails_its_connection_only_threadpool() {
    a_panic_fails_its_connection_only(ExecMode::ThreadPool);
}

#[test]
fn a_panic_fails_its_connection_only_gthread() {
    a_panic_fails_its_connection_only(ExecMode::Gthread);
}

#[test]
fn a_panic_fails_its_connection_only_gthreadpool() {
    a_panic_fails_its_connection_only(ExecMode::GthreadPool);
}

#[test]
fn every_pool_survives_a_panic_on_each_of_its_workers() {
    // More panics than workers: a pool that lost a worker to each would
    // have none left.
    for kind in POOLED {
        let server = start(Arc::new(Boom), pool(kind, 2, 64), Limits::default());
        for _ in 0..6 {
            let mut bad = client(server.addr);
            bad.write_all(b"boom\n").unwrap();
            let got = read_to_eof(&mut bad);
            assert_eq!(
                String::from_utf8_lossy(&got),
                "ERR internal error: handler panicked\n",
                "-X {kind}"
            );
        }
        let mut fresh = client(server.addr);
        expect_echo(&mut fresh, "still here\n");
    }
}

/// Sleeps `n` ms for the request line `n`, then echoes it; records the
/// order in which requests finish.
struct Sleepy {
    finished: Mutex<Vec<u64>>,
}

impl Service for Sleepy {
    fn handle(&self, request: &[u8], response: &mut Vec<u8>) -> Result<Keep, ServiceError> {
        let text =
            std::str::from_utf8(request).map_err(|e| ServiceError::Malformed(e.to_string()))?;
        let (ms, _) = text
            .trim_end()
            .split_once(' ')
            .ok_or_else(|| ServiceError::Malformed(text.into()))?;
        let ms: u64 = ms
            .parse()
            .map_err(|_| ServiceError::Malformed(text.into()))?;
        thread::sleep(Duration::from_millis(ms));
        response.extend_from_slice(request);
        self.finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ms);
        Ok(Keep::Alive)
    }
}

/// Requests finishing out of order still leave in request order.
fn responses_leave_in_request_order(kind: ExecMode, size: usize) {
    let service = Arc::new(Sleepy {
        finished: Mutex::new(Vec::new()),
    });
    let server = start(service.clone(), pool(kind, size, 64), Limits::default());
    // "MS SEQ": the sleep, then the request's place (so each line is
    // unique); long sleeps ahead of short ones.
    let delays = [30u64, 1, 20, 0, 25, 2, 15, 0, 10, 5, 30, 0, 3, 12, 1, 0];
    let mut request = String::new();
    for round in 0..3 {
        for (i, ms) in delays.iter().enumerate() {
            request.push_str(&format!("{ms} {}\n", round * delays.len() + i));
        }
    }
    let mut s = client(server.addr);
    s.write_all(request.as_bytes()).unwrap();
    let got = read_exactly(&mut s, request.len());
    assert_eq!(
        String::from_utf8_lossy(&got),
        request,
        "-X {kind}: answers in request order"
    );
    // The test means something only if the pool did finish them out of
    // order.
    let finished = service
        .finished
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let sent: Vec<u64> = delays
        .iter()
        .copied()
        .cycle()
        .take(finished.len())
        .collect();
    assert_eq!(finished.len(), 3 * delays.len());
    assert_ne!(
        finished, sent,
        "-X {kind}: the requests finished in request order"
    );
}

#[test]
fn responses_leave_in_request_order_threadpool() {
    responses_leave_in_request_order(ExecMode::ThreadPool, 8);
}

#[test]
fn responses_leave_in_request_order_thread() {
    responses_leave_in_request_order(ExecMode::Thread, 8);
}

#[test]
fn responses_leave_in_request_order_gthreadpool() {
    responses_leave_in_request_order(ExecMode::GthreadPool, 8);
}

/// Echoes after an asynchronous 50 ms sleep, counting how many requests
/// are inside `handle_async` at once.
#[derive(Default)]
struct Napper {
    inside: AtomicUsize,
    most: AtomicUsize,
}

impl Service for Napper {
    fn handle(&self, request: &[u8], response: &mut Vec<u8>) -> Result<Keep, ServiceError> {
        response.extend_from_slice(request);
        Ok(Keep::Alive)
    }

    fn handle_async<'a>(
        &'a self,
        request: &'a [u8],
        response: &'a mut Vec<u8>,
    ) -> HandleFuture<'a> {
        Box::pin(async move {
            let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.inside.fetch_sub(1, Ordering::SeqCst);
            response.extend_from_slice(request);
            Ok(Keep::Alive)
        })
    }
}

#[test]
fn green_threads_overlap_waiting_requests_on_tasks() {
    let service = Arc::new(Napper::default());
    let server = start(
        service.clone(),
        pool(ExecMode::GthreadPool, 100, 1024),
        Limits::default(),
    );
    let mut conns: Vec<TcpStream> = (0..100).map(|_| client(server.addr)).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(format!("nap {i}\n").as_bytes()).unwrap();
    }
    for (i, s) in conns.iter_mut().enumerate() {
        let want = format!("nap {i}\n");
        let got = read_exactly(s, want.len());
        assert_eq!(String::from_utf8_lossy(&got), want);
    }
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let most = service.most.load(Ordering::SeqCst);
    assert!(
        most > cores,
        "at most {most} requests were inside handle_async at once, with {cores} cores: \
         the green pool ran them one per thread"
    );
    assert_eq!(service.inside.load(Ordering::SeqCst), 0);
}

/// Echoes, but holds every request until the test opens the gate;
/// counts the requests it has received.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    received: AtomicUsize,
    timed_out: AtomicBool,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.opened.notify_all();
    }
}

impl Service for Gate {
    fn handle(&self, request: &[u8], response: &mut Vec<u8>) -> Result<Keep, ServiceError> {
        self.received.fetch_add(1, Ordering::SeqCst);
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (_open, wait) = self
            .opened
            .wait_timeout_while(open, Duration::from_secs(30), |open| !*open)
            .unwrap_or_else(|e| e.into_inner());
        if wait.timed_out() {
            self.timed_out.store(true, Ordering::SeqCst);
        }
        response.extend_from_slice(request);
        Ok(Keep::Alive)
    }
}

/// Line `i` of the backpressure stream (fixed width, so the bytes written
/// say how many lines went out).
const LINE: usize = 12;
fn gate_line(i: usize) -> String {
    format!("req {i:07}\n")
}

/// Write lines until the server stops taking them, open the gate, and
/// expect every line back in order. The service must have received at most
/// `bound` requests while closed: the loop read only what it could hand
/// on, and the rest stayed in the kernel's socket buffers.
fn backpressure(kind: ExecMode, size: usize, queue: usize, max_pipelined: usize, bound: usize) {
    let gate = Arc::new(Gate::default());
    let limits = Limits {
        max_pipelined,
        ..Limits::default()
    };
    let server = start(gate.clone(), pool(kind, size, queue), limits);
    let mut s = client(server.addr);
    s.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();

    // Whole lines in 64 KiB writes until one makes no progress.
    const LIMIT: usize = 256 * 1024 * 1024;
    let started = Instant::now();
    let mut stream: Vec<u8> = Vec::new();
    let mut written = 0;
    let blocked = loop {
        assert!(
            written < LIMIT,
            "-X {kind}: {written} bytes were taken without blocking: the loop reads without bound"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "-X {kind}: writes never blocked within 60 s ({written} bytes)"
        );
        while stream.len() < written + 64 * 1024 {
            stream.extend_from_slice(gate_line(stream.len() / LINE).as_bytes());
        }
        match s.write(&stream[written..written + 64 * 1024]) {
            Ok(0) => panic!("write returned 0"),
            Ok(n) => written += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break written
            }
            Err(e) => panic!("write after {written} bytes: {e}"),
        }
    };
    assert!(
        blocked > 100 * LINE,
        "-X {kind}: writes blocked after only {blocked} bytes"
    );
    // Give the loop time to read (wrongly) more than it may.
    thread::sleep(Duration::from_millis(200));
    let received = gate.received.load(Ordering::SeqCst);
    assert!(
        (1..=bound).contains(&received),
        "-X {kind} -n {size}, queue {queue}, max_pipelined {max_pipelined}: \
         the service received {received} requests while blocked (at most {bound} expected)"
    );

    gate.open();
    // Complete the last line, then read everything back while nothing
    // else is written.
    let total = blocked.div_ceil(LINE) * LINE;
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut reader = s.try_clone().unwrap();
    let answers = thread::spawn(move || read_to_eof(&mut reader));
    s.write_all(&stream[blocked..total]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = answers
        .join()
        .unwrap_or_else(|_| panic!("-X {kind}: the answers stopped (the reader's panic is above)"));
    assert!(!gate.timed_out.load(Ordering::SeqCst), "the gate timed out");
    assert_eq!(got.len(), total, "-X {kind}: every line is answered");
    if got != stream[..total] {
        let at = got
            .iter()
            .zip(&stream)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        let line = at / LINE * LINE;
        panic!(
            "-X {kind}: answers out of order at byte {at}: got {:?}, want {:?}",
            String::from_utf8_lossy(&got[line..(line + 3 * LINE).min(got.len())]),
            String::from_utf8_lossy(&stream[line..(line + 3 * LINE).min(total)])
        );
    }
    assert_eq!(gate.received.load(Ordering::SeqCst), total / LINE);
}

#[test]
fn a_full_threadpool_stops_reading_until_a_job_finishes() {
    // One worker, one queued job, two in flight: 1 + 1 + 2.
    backpressure(ExecMode::ThreadPool, 1, 1, 2, 4);
}

#[test]
fn max_pipelined_stops_reading_with_room_in_the_pool() {
    // Eight idle workers, but one connection may only have two requests in
    // the pool.
    backpressure(ExecMode::ThreadPool, 8, 64, 2, 2);
}

#[test]
fn a_full_green_pool_stops_reading_until_a_task_finishes() {
    backpressure(ExecMode::GthreadPool, 1, 1, 2, 4);
}

#[test]
fn a_full_thread_per_request_pool_stops_reading_until_a_thread_finishes() {
    backpressure(ExecMode::Thread, 1, 1, 2, 4);
}

/// Echoes lines.
struct Echo;

impl Service for Echo {
    fn handle(&self, request: &[u8], response: &mut Vec<u8>) -> Result<Keep, ServiceError> {
        response.extend_from_slice(request);
        Ok(Keep::Alive)
    }
}

/// A pool of one, always full: every request after the first waits for
/// the one before it to finish. 2000 pipelined lines must all come back;
/// a lost wake-up between "a job finished" and "the pool has room" stalls
/// the connection for good.
fn a_pool_of_one_serves_a_long_pipeline(kind: ExecMode) {
    let server = start(Arc::new(Echo), pool(kind, 1, 1), Limits::default());
    let request: String = (0..2000)
        .map(|i| format!("one at a time {i:05}\n"))
        .collect();
    let mut s = client(server.addr);
    let mut w = s.try_clone().unwrap();
    let body = request.clone();
    let writer = thread::spawn(move || w.write_all(body.as_bytes()));
    let mut got = vec![0; request.len()];
    let mut at = 0;
    while at < got.len() {
        match s.read(&mut got[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "-X {kind} -n 1: {e} after {} of 2000 answers; the last: {:?}",
                at / 20,
                String::from_utf8_lossy(&got[at.saturating_sub(40)..at])
            ),
        }
    }
    writer.join().unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got[..at]),
        request,
        "-X {kind} -n 1"
    );
}

#[test]
fn a_pool_of_one_serves_a_long_pipeline_thread() {
    a_pool_of_one_serves_a_long_pipeline(ExecMode::Thread);
}

#[test]
fn a_pool_of_one_serves_a_long_pipeline_threadpool() {
    a_pool_of_one_serves_a_long_pipeline(ExecMode::ThreadPool);
}

#[test]
fn a_pool_of_one_serves_a_long_pipeline_gthread() {
    a_pool_of_one_serves_a_long_pipeline(ExecMode::Gthread);
}

#[test]
fn a_pool_of_one_serves_a_long_pipeline_gthreadpool() {
    a_pool_of_one_serves_a_long_pipeline(ExecMode::GthreadPool);
}

/// Echoes; a line starting with `hold` waits for the gate first.
#[derive(Default)]
struct HoldOnRequest {
    gate: Gate,
}

impl Service for HoldOnRequest {
    fn handle(&self, request: &[u8], response: &mut Vec<u8>) -> Result<Keep, ServiceError> {
        if request.starts_with(b"hold") {
            return self.gate.handle(request, response);
        }
        response.extend_from_slice(request);
        Ok(Keep::Alive)
    }
}

/// Two loops share one pool, as under `-S thread -N 2`. While loop A's
/// jobs fill the pool, loop B's connection finds it full; when A's jobs
/// finish, B must try again although none of its own jobs finished.
#[test]
fn a_pool_shared_by_two_loops_resumes_the_loop_that_found_it_full() {
    let service = Arc::new(HoldOnRequest::default());
    // One worker and one queued job: no race between a job's reply and
    // its slot being freed (the queue slot frees when the worker takes it).
    let shared = pool(ExecMode::ThreadPool, 1, 1);
    let loop_a = start(service.clone(), shared.clone(), Limits::default());
    let loop_b = start(service.clone(), shared, Limits::default());

    let mut a = client(loop_a.addr);
    a.write_all(b"hold 1\n").unwrap();
    let held = Instant::now();
    while service.gate.received.load(Ordering::SeqCst) == 0 {
        assert!(held.elapsed() < IO_TIMEOUT, "the worker never took hold 1");
        thread::sleep(Duration::from_millis(5));
    }
    // The worker is busy: this one fills the queue.
    a.write_all(b"queued 2\n").unwrap();
    thread::sleep(Duration::from_millis(200));
    // The pool is full: loop B keeps this request and stops reading.
    let mut b = client(loop_b.addr);
    b.write_all(b"from b\n").unwrap();
    thread::sleep(Duration::from_millis(200));

    service.gate.open();
    let got = read_exactly(&mut a, b"hold 1\nqueued 2\n".len());
    assert_eq!(String::from_utf8_lossy(&got), "hold 1\nqueued 2\n");
    let got = read_exactly(&mut b, b"from b\n".len());
    assert_eq!(String::from_utf8_lossy(&got), "from b\n");
}
