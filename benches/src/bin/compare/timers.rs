//! (l) Timer lateness: how long after its deadline a 200 µs timer fires,
//! on a gaidaros loop under each backend (armed with `Ctx::set_timer`, and
//! reported through `Protocol::poll_timeout`), against tokio's
//! `sleep_until` on a current-thread runtime and the OS floor, a thread
//! sleeping in `clock_nanosleep`. In process: the loop is the library's,
//! the same code the binary runs. Pacing 100,000 datagrams a second
//! depends on deadlines far below a millisecond.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use gaidaros::net::{self, BindSpec, ConnOptions, IpVersion};
use gaidaros::{
    ConnId, Ctx, Handler, Limits, ListenerSetup, Loop, LoopSettings, PollType, Protocol,
    ProtocolFactory, Spawner, TimerId,
};
use gaidaros_benches::stats::{median_of, Field};
use gaidaros_benches::Sample;
use nix::sys::resource::{getrusage, UsageWho};

use super::fmt_num;

/// The deadline each round waits for.
pub const EVERY: Duration = Duration::from_micros(200);
/// The bound on how late it may fire (p99 is held to it).
const TARGET_US: f64 = 100.0;

/// The contenders, in run order.
pub const SERVERS: [&str; 8] = [
    "gaidaros set_timer -T edge",
    "gaidaros set_timer -T level",
    "gaidaros set_timer -T completion",
    "gaidaros poll_timeout -T edge",
    "gaidaros poll_timeout -T level",
    "gaidaros poll_timeout -T completion",
    "tokio sleep_until",
    "thread::sleep",
];

/// One run of `server`: `rounds` deadlines `EVERY` apart, each armed when
/// the previous fired. The sample's p50/p99/p99.9 are lateness in µs, its
/// CPU the process's (user + system) per timer.
pub fn run(server: &str, rounds: usize, pair: usize) -> Result<Sample, String> {
    let cpu0 = cpu_s();
    let late = match server {
        "tokio sleep_until" => tokio_run(rounds)?,
        "thread::sleep" => sleep_run(rounds),
        _ => {
            let poll = ["edge", "level", "completion"]
                .into_iter()
                .find(|b| server.ends_with(b))
                .and_then(|b| b.parse::<PollType>().ok())
                .ok_or_else(|| format!("unknown contender {server:?}"))?;
            gaidaros_run(poll, server.contains("poll_timeout"), rounds)?
        }
    };
    let cpu = cpu_s() - cpu0;
    let mut us: Vec<f64> = late.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    let at = |q: f64| {
        us.get(((us.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    Ok(Sample {
        scenario: "l".into(),
        server: server.into(),
        pair,
        p50_us: at(0.5),
        p99_us: at(0.99),
        p999_us: at(0.999),
        cpu_us_per_req: Some(cpu * 1e6 / rounds.max(1) as f64),
        ..Sample::default()
    })
}

/// This process's CPU time so far (every thread), seconds.
fn cpu_s() -> f64 {
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 * 1e-6;
        t(u.user_time()) + t(u.system_time())
    })
}

fn sleep_run(rounds: usize) -> Vec<Duration> {
    (0..rounds)
        .map(|_| {
            let due = Instant::now() + EVERY;
            thread::sleep(due.saturating_duration_since(Instant::now()));
            Instant::now().saturating_duration_since(due)
        })
        .collect()
}

fn tokio_run(rounds: usize) -> Result<Vec<Duration>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    Ok(rt.block_on(async {
        let mut late = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let due = tokio::time::Instant::now() + EVERY;
            tokio::time::sleep_until(due).await;
            late.push(tokio::time::Instant::now().saturating_duration_since(due));
        }
        late
    }))
}

/// A spawned session that waits `rounds` times and reports how late each
/// wait ended.
struct Ticker {
    poll_timeout: bool,
    rounds: usize,
    due: Option<Instant>,
    late: Vec<Duration>,
    report: mpsc::Sender<Vec<Duration>>,
}

impl Ticker {
    fn fired(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(due) = self.due.take() {
            self.late
                .push(Instant::now().saturating_duration_since(due));
        }
        if self.late.len() == self.rounds {
            let _ = self.report.send(std::mem::take(&mut self.late));
            ctx.end_session();
            return;
        }
        // Both ways count from the loop's clock, as a protocol would.
        self.due = Some(ctx.now() + EVERY);
        if !self.poll_timeout {
            ctx.set_timer(EVERY);
        }
    }
}

impl Protocol for Ticker {
    fn on_data(&mut self, _: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
        data.len()
    }
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        self.fired(ctx);
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, _: TimerId) {
        self.fired(ctx);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.due.filter(|_| self.poll_timeout)
    }
    fn on_timeout(&mut self, ctx: &mut Ctx<'_>) {
        self.fired(ctx);
    }
}

/// Keeps the spawner of the one loop.
struct Factory(Arc<Mutex<Option<Spawner>>>);

impl ProtocolFactory for Factory {
    fn open(&self) -> Box<dyn Protocol> {
        Box::new(Ticker {
            poll_timeout: false,
            rounds: 0,
            due: None,
            late: Vec::new(),
            report: mpsc::channel().0,
        })
    }
    fn on_loop_start(&self, spawner: Spawner) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(spawner);
        }
    }
}

fn gaidaros_run(
    poll: PollType,
    poll_timeout: bool,
    rounds: usize,
) -> Result<Vec<Duration>, String> {
    let addr: SocketAddr =
        net::resolve("127.0.0.1", 0, IpVersion::V4).map_err(|e| e.to_string())?;
    let listener = net::bind(&BindSpec {
        addr,
        version: IpVersion::V4,
        backlog: 16,
        reuseport: false,
    })
    .map_err(|e| format!("bind: {e}"))?;
    let slot = Arc::new(Mutex::new(None));
    let setup = Arc::new(ListenerSetup::new(
        "timers",
        Handler::Protocol(Arc::new(Factory(slot.clone()))),
        ConnOptions::default(),
        true,
        Limits::default(),
    ));
    let settings = LoopSettings {
        poll,
        ..LoopSettings::default()
    };
    let (lp, handle) =
        Loop::new(vec![(listener, setup)], settings).map_err(|e| format!("loop ({poll}): {e}"))?;
    let looper = thread::spawn(move || lp.run());
    let spawner = slot
        .lock()
        .ok()
        .and_then(|mut s| s.take())
        .ok_or("the loop gave no spawner")?;
    let (report, got) = mpsc::channel();
    let spawned = spawner.spawn(Box::new(Ticker {
        poll_timeout,
        rounds,
        due: None,
        late: Vec::with_capacity(rounds),
        report,
    }));
    let result = match spawned {
        Ok(_) => got
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| format!("the {poll} loop's ticker did not report")),
        Err(e) => Err(format!("spawn: {e}")),
    };
    handle.stop();
    match looper.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("the {poll} loop failed: {e}")),
        Err(_) => return Err(format!("the {poll} loop panicked")),
    }
    result
}

/// The "Timer lateness" table and its target.
pub fn report(
    md: &mut String,
    targets: &mut Vec<(String, String, Option<bool>)>,
    samples: &[Sample],
) {
    let ran: Vec<&str> = SERVERS
        .into_iter()
        .filter(|s| samples.iter().any(|x| x.scenario == "l" && x.server == *s))
        .collect();
    if ran.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "### (l) Timer lateness: a {} µs deadline, re-armed as it fires\n",
        EVERY.as_micros()
    );
    let _ = writeln!(
        md,
        "How long after its deadline each wait ended, in µs (medians over the pairs of each run's percentiles); CPU is the process's, per timer. \
         tokio's timer wheel counts in whole milliseconds; `thread::sleep` (clock_nanosleep) is the floor the kernel's timer slack (50 µs by default) allows.\n"
    );
    let _ = writeln!(
        md,
        "| waiter | p50 µs late | p99 µs late | p99.9 µs late | CPU µs/timer |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    let med = |s: &str, f: Field| median_of(samples, "l", s, f);
    for s in &ran {
        let _ = writeln!(
            md,
            "| {s} | {} | {} | {} | {} |",
            fmt_num(med(s, |x| x.p50_us), 1),
            fmt_num(med(s, |x| x.p99_us), 1),
            fmt_num(med(s, |x| x.p999_us), 1),
            fmt_num(med(s, |x| x.cpu_us_per_req), 2),
        );
    }
    md.push('\n');
    for s in ran.iter().filter(|s| s.starts_with("gaidaros")) {
        let p99 = med(s, |x| x.p99_us);
        targets.push((
            format!(
                "(l) {s}: a {} µs deadline fires within {TARGET_US} µs of its time (p99)",
                EVERY.as_micros()
            ),
            fmt_num(p99, 1),
            p99.map(|p| p <= TARGET_US),
        ));
    }
}
