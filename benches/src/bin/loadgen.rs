//! loadgen: a load generator for line echo servers.
//!
//! Each thread runs one mio poll over its share of the connections. In
//! `pingpong` mode every connection keeps `-d` requests of `-m` bytes (an
//! LF-terminated line) in flight and sends the next one as soon as one is
//! echoed; every echoed byte is compared with what was sent. In `hold` mode
//! the connections stay idle for the duration, then each must echo one line.
//!
//! Per request the generator does one clock read per read batch, one memcmp,
//! one histogram record, and shares one read(2) and one write(2) with the
//! other requests that arrived in the same batch.
//!
//! Exit status: 0 for a clean run, 1 for a run that completed with errors
//! (the report is printed all the same), 2 when it could not run.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use argh::FromArgs;
use gaidaros_benches::{Mode, Report};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};
use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use nix::sys::time::TimeVal;

#[derive(FromArgs)]
/// Load generator for line echo servers: verifies every echoed byte and
/// reports requests/s, latency percentiles and errors.
struct Args {
    /// server address, HOST:PORT
    #[argh(option)]
    addr: String,
    /// connections (default 64)
    #[argh(option, short = 'c', default = "64")]
    connections: usize,
    /// bytes per request, the final LF included (default 64)
    #[argh(option, short = 'm', default = "64")]
    size: usize,
    /// requests in flight per connection (default 1)
    #[argh(option, short = 'd', default = "1")]
    depth: usize,
    /// measured seconds (default 5)
    #[argh(option, default = "5.0")]
    duration: f64,
    /// seconds of load before the measured window (default 1; pingpong only)
    #[argh(option, default = "1.0")]
    warmup: f64,
    /// load generator threads (default 1)
    #[argh(option, default = "1")]
    threads: usize,
    /// pingpong (default) or hold
    #[argh(option, default = "Mode::Pingpong")]
    mode: Mode,
    /// seconds allowed for connecting, and in hold mode for the final
    /// answers (default 10)
    #[argh(option, default = "10.0")]
    timeout: f64,
    /// print the report as one JSON line
    #[argh(switch)]
    json: bool,
}

/// The run's parameters, checked.
struct Plan {
    addr: SocketAddr,
    mode: Mode,
    size: usize,
    depth: u64,
    warmup: Duration,
    duration: Duration,
    timeout: Duration,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    let (plan, threads) = match check(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    // Thousands of connections need as many descriptors as the hard limit
    // allows; if even that is too few, the report counts connect failures.
    let _ = raise_nofile_limit();
    let messages = Messages::new(plan.size);
    let barrier = Barrier::new(threads);
    let results: Vec<io::Result<Tally>> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let share =
                    args.connections / threads + usize::from(i < args.connections % threads);
                let (plan, messages, barrier) = (&plan, &messages, &barrier);
                s.spawn(move || run_thread(plan, share, messages, barrier))
            })
            .collect();
        workers
            .into_iter()
            // A panicking worker is a bug here; pass it on.
            .map(|w| w.join().expect("worker thread panicked"))
            .collect()
    });
    let mut total = Tally::new();
    for r in results {
        match r {
            Ok(t) => total.add(&t),
            Err(e) => {
                eprintln!("loadgen: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let report = total.report(&args, &plan, threads);
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    if report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check(args: &Args) -> Result<(Plan, usize), String> {
    let addr = args
        .addr
        .to_socket_addrs()
        .map_err(|e| format!("--addr {}: {e}", args.addr))?
        .next()
        .ok_or_else(|| format!("--addr {}: no address", args.addr))?;
    let secs = |name: &str, v: f64, zero_ok: bool| {
        if v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) && v < 1e6 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(format!(
                "--{name} {v}: expected a positive number of seconds"
            ))
        }
    };
    if args.connections == 0 || args.size == 0 || args.depth == 0 || args.threads == 0 {
        return Err("-c, -m, -d and --threads must be at least 1".into());
    }
    let plan = Plan {
        addr,
        mode: args.mode,
        size: args.size,
        depth: args.depth as u64,
        warmup: secs("warmup", args.warmup, true)?,
        duration: secs("duration", args.duration, false)?,
        timeout: secs("timeout", args.timeout, false)?,
    };
    Ok((plan, args.threads.min(args.connections)))
}

/// The requests sent: `PATTERNS` distinct lines of `size` bytes, used in
/// turn, so a dropped, repeated or reordered line shows as a mismatch.
struct Messages {
    size: usize,
    bytes: Vec<u8>,
}

const PATTERNS: usize = 26;

impl Messages {
    fn new(size: usize) -> Messages {
        let mut bytes = Vec::with_capacity(PATTERNS * size);
        for k in 0..PATTERNS {
            bytes.extend((0..size - 1).map(|i| b'a' + ((k + i) % 26) as u8));
            bytes.push(b'\n');
        }
        Messages { size, bytes }
    }

    /// Request number `seq` of a connection.
    fn get(&self, seq: u64) -> &[u8] {
        let k = (seq % PATTERNS as u64) as usize;
        &self.bytes[k * self.size..(k + 1) * self.size]
    }
}

/// What one thread counted.
struct Tally {
    /// Latency of the requests counted, nanoseconds.
    hist: Histogram<u64>,
    requests: u64,
    /// Correct echoes, warm-up included.
    echoed: u64,
    established: usize,
    connect_failures: u64,
    disconnects: u64,
    mismatches: u64,
    alive: usize,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            // 1 ns to 60 s at 3 significant digits: fixed bounds, so this
            // cannot fail.
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            requests: 0,
            echoed: 0,
            established: 0,
            connect_failures: 0,
            disconnects: 0,
            mismatches: 0,
            alive: 0,
        }
    }

    fn add(&mut self, o: &Tally) {
        // Same bounds on both sides: adding cannot fail.
        self.hist.add(&o.hist).expect("same histogram bounds");
        self.requests += o.requests;
        self.echoed += o.echoed;
        self.established += o.established;
        self.connect_failures += o.connect_failures;
        self.disconnects += o.disconnects;
        self.mismatches += o.mismatches;
        self.alive += o.alive;
    }

    fn report(&self, args: &Args, plan: &Plan, threads: usize) -> Report {
        let us = |q: f64| {
            if self.hist.is_empty() {
                0.0
            } else {
                self.hist.value_at_quantile(q) as f64 / 1e3
            }
        };
        let duration_s = plan.duration.as_secs_f64();
        let pingpong = plan.mode == Mode::Pingpong;
        Report {
            mode: plan.mode,
            addr: plan.addr.to_string(),
            connections: args.connections,
            established: self.established,
            message_size: plan.size,
            depth: args.depth,
            threads,
            duration_s,
            requests: self.requests,
            requests_per_s: if pingpong {
                self.requests as f64 / duration_s
            } else {
                0.0
            },
            echoed: self.echoed,
            cpu_s: own_cpu_s(),
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: self.hist.max() as f64 / 1e3,
            connect_failures: self.connect_failures,
            disconnects: self.disconnects,
            mismatches: self.mismatches,
            errors: self.connect_failures + self.disconnects + self.mismatches,
            alive: (!pingpong).then_some(self.alive),
        }
    }
}

/// Raise the soft RLIMIT_NOFILE to the hard limit.
fn raise_nofile_limit() -> nix::Result<()> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(())
}

/// CPU seconds this process has used (user + system, all threads).
fn own_cpu_s() -> f64 {
    let Ok(u) = getrusage(UsageWho::RUSAGE_SELF) else {
        return 0.0;
    };
    let secs = |t: TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(u.user_time()) + secs(u.system_time())
}

/// Where in the run an echoed request lands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Checked but not counted.
    Warmup,
    /// Checked and counted.
    Measure,
    /// Hold mode's final request: checked, counted as alive.
    Liveness,
}

/// Why a connection was dropped.
enum Lost {
    /// The server closed or reset it.
    Disconnect,
    /// The server sent bytes no request asked for.
    Unexpected,
}

struct Conn {
    stream: TcpStream,
    /// Requests queued so far.
    sent: u64,
    /// Requests fully echoed.
    received: u64,
    /// Bytes of the request being echoed seen so far.
    rx_off: usize,
    /// The request being echoed already differs.
    rx_bad: bool,
    /// When each request in flight was queued.
    sent_at: VecDeque<Instant>,
    out: Vec<u8>,
    out_pos: usize,
}

impl Conn {
    fn new(stream: TcpStream, depth: u64) -> Conn {
        Conn {
            stream,
            sent: 0,
            received: 0,
            rx_off: 0,
            rx_bad: false,
            sent_at: VecDeque::with_capacity(depth as usize),
            out: Vec::new(),
            out_pos: 0,
        }
    }

    fn in_flight(&self) -> u64 {
        self.sent - self.received
    }

    /// Queue requests until `depth` are in flight.
    fn fill(&mut self, depth: u64, msgs: &Messages, now: Instant) {
        while self.in_flight() < depth {
            self.out.extend_from_slice(msgs.get(self.sent));
            self.sent_at.push_back(now);
            self.sent += 1;
        }
    }

    /// Write queued bytes until done or the socket is full.
    fn flush(&mut self) -> Result<(), Lost> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(Lost::Disconnect),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Lost::Disconnect),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(())
    }

    /// Read until the socket is drained, checking every byte.
    fn drain(
        &mut self,
        buf: &mut [u8],
        msgs: &Messages,
        phase: Phase,
        tally: &mut Tally,
    ) -> Result<(), Lost> {
        loop {
            match self.stream.read(buf) {
                Ok(0) => return Err(Lost::Disconnect),
                Ok(n) => {
                    // One clock read per batch: the requests in it were
                    // all complete by now.
                    self.take(&buf[..n], msgs, Instant::now(), phase, tally)?;
                    // A short read emptied the socket: more data raises a
                    // new edge.
                    if n < buf.len() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Lost::Disconnect),
            }
        }
    }

    fn take(
        &mut self,
        mut data: &[u8],
        msgs: &Messages,
        now: Instant,
        phase: Phase,
        tally: &mut Tally,
    ) -> Result<(), Lost> {
        while !data.is_empty() {
            if self.in_flight() == 0 {
                tally.mismatches += 1;
                return Err(Lost::Unexpected);
            }
            let expect = &msgs.get(self.received)[self.rx_off..];
            let n = expect.len().min(data.len());
            if data[..n] != expect[..n] {
                self.rx_bad = true;
            }
            self.rx_off += n;
            data = &data[n..];
            if self.rx_off < msgs.size {
                break;
            }
            // Pushed when the request was queued, and one is in flight.
            let sent_at = self.sent_at.pop_front().expect("a request in flight");
            self.received += 1;
            self.rx_off = 0;
            if std::mem::take(&mut self.rx_bad) {
                tally.mismatches += 1;
                continue;
            }
            let ns = now.saturating_duration_since(sent_at).as_nanos() as u64;
            match phase {
                Phase::Warmup => tally.echoed += 1,
                Phase::Measure => {
                    tally.echoed += 1;
                    tally.requests += 1;
                    tally.hist.saturating_record(ns.max(1));
                }
                Phase::Liveness => {
                    tally.echoed += 1;
                    tally.requests += 1;
                    tally.alive += 1;
                    tally.hist.saturating_record(ns.max(1));
                }
            }
        }
        Ok(())
    }
}

/// Drop connection `i` of `conns`, counting a disconnect.
fn lose(conns: &mut [Option<Conn>], registry: &Registry, i: usize, why: Lost, tally: &mut Tally) {
    if let Some(mut c) = conns[i].take() {
        let _ = registry.deregister(&mut c.stream);
    }
    if let Lost::Disconnect = why {
        tally.disconnects += 1;
    }
}

/// One thread's connections, indexed by token; `None` once dropped.
struct Pool {
    poll: Poll,
    events: Events,
    conns: Vec<Option<Conn>>,
    buf: Vec<u8>,
}

impl Pool {
    /// Act on the events of the last poll: read and check echoes, top
    /// connections up to `refill` requests in flight (if given), write what
    /// is queued; a connection that fails is dropped and counted.
    fn handle_events(
        &mut self,
        msgs: &Messages,
        phase: Phase,
        tally: &mut Tally,
        refill: Option<u64>,
    ) {
        for ev in self.events.iter() {
            let i = ev.token().0;
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            let mut step = Ok(());
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                step = c.drain(&mut self.buf, msgs, phase, tally);
                if let (Ok(()), Some(depth)) = (&step, refill) {
                    if c.in_flight() < depth {
                        c.fill(depth, msgs, Instant::now());
                    }
                }
            }
            if step.is_ok() {
                step = c.flush();
            }
            if let Err(why) = step {
                lose(&mut self.conns, self.poll.registry(), i, why, tally);
            }
        }
    }

    fn open(&self) -> usize {
        self.conns.iter().flatten().count()
    }

    fn poll_until(&mut self, deadline: Instant) -> io::Result<bool> {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        match self.poll.poll(&mut self.events, Some(deadline - now)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }
}

fn run_thread(plan: &Plan, share: usize, msgs: &Messages, barrier: &Barrier) -> io::Result<Tally> {
    let mut tally = Tally::new();
    let pool = connect(plan, share, &mut tally);
    // Every thread reaches the barrier, failed or not, so none waits forever.
    barrier.wait();
    let mut pool = pool?;
    match plan.mode {
        Mode::Pingpong => pingpong(plan, msgs, &mut pool, &mut tally)?,
        Mode::Hold => hold(plan, msgs, &mut pool, &mut tally)?,
    }
    Ok(tally)
}

/// Open `share` connections and wait until each is established or failed.
fn connect(plan: &Plan, share: usize, tally: &mut Tally) -> io::Result<Pool> {
    let mut pool = Pool {
        poll: Poll::new()?,
        events: Events::with_capacity(1024),
        conns: Vec::with_capacity(share),
        buf: vec![0; 64 * 1024],
    };
    let mut pending = 0;
    for i in 0..share {
        let conn = TcpStream::connect(plan.addr).and_then(|mut s| {
            pool.poll.registry().register(
                &mut s,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(s)
        });
        match conn {
            Ok(s) => {
                pool.conns.push(Some(Conn::new(s, plan.depth)));
                pending += 1;
            }
            Err(_) => {
                pool.conns.push(None);
                tally.connect_failures += 1;
            }
        }
    }
    let mut up = vec![false; share];
    let deadline = Instant::now() + plan.timeout;
    while pending > 0 && pool.poll_until(deadline)? {
        for ev in pool.events.iter() {
            let i = ev.token().0;
            let Some(c) = pool.conns[i].as_mut().filter(|_| !up[i]) else {
                continue;
            };
            let state = match c.stream.take_error() {
                Ok(Some(_)) | Err(_) => Err(()),
                Ok(None) => match c.stream.peer_addr() {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                    Err(_) => Err(()),
                },
            };
            match state {
                Ok(false) => continue,
                Ok(true) => {
                    // Requests are single lines: never wait for Nagle.
                    let _ = c.stream.set_nodelay(true);
                    up[i] = true;
                    tally.established += 1;
                }
                Err(()) => {
                    pool.conns[i] = None;
                    tally.connect_failures += 1;
                }
            }
            pending -= 1;
        }
    }
    // Still connecting at the deadline: failed.
    for (i, slot) in pool.conns.iter_mut().enumerate() {
        if slot.is_some() && !up[i] {
            *slot = None;
            tally.connect_failures += 1;
        }
    }
    Ok(pool)
}

fn pingpong(plan: &Plan, msgs: &Messages, pool: &mut Pool, tally: &mut Tally) -> io::Result<()> {
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    for i in 0..pool.conns.len() {
        let Some(c) = pool.conns[i].as_mut() else {
            continue;
        };
        c.fill(plan.depth, msgs, start);
        if let Err(why) = c.flush() {
            lose(&mut pool.conns, pool.poll.registry(), i, why, tally);
        }
    }
    while pool.poll_until(end)? {
        let now = Instant::now();
        // Echoes that complete after the window are not counted.
        if now >= end {
            break;
        }
        let phase = if now < measure_from {
            Phase::Warmup
        } else {
            Phase::Measure
        };
        pool.handle_events(msgs, phase, tally, Some(plan.depth));
    }
    Ok(())
}

fn hold(plan: &Plan, msgs: &Messages, pool: &mut Pool, tally: &mut Tally) -> io::Result<()> {
    let end = Instant::now() + plan.duration;
    // Idle: only watch for the server closing connections.
    while pool.poll_until(end)? {
        // Nothing is queued, so this only reads (and notices closes).
        pool.handle_events(msgs, Phase::Liveness, tally, None);
    }
    // Then one request each: who still answers?
    let now = Instant::now();
    for i in 0..pool.conns.len() {
        let Some(c) = pool.conns[i].as_mut() else {
            continue;
        };
        c.fill(1, msgs, now);
        if let Err(why) = c.flush() {
            lose(&mut pool.conns, pool.poll.registry(), i, why, tally);
        }
    }
    let deadline = Instant::now() + plan.timeout;
    while tally.alive < pool.open() && pool.poll_until(deadline)? {
        pool.handle_events(msgs, Phase::Liveness, tally, None);
    }
    Ok(())
}
