//! compare: gaidaros side by side with its peers, in one run.
//!
//! Scenarios (the benchmark issue's list):
//!
//! - (a) 64 connections, 64-byte ping-pong; (b) 1000 connections, 64-byte;
//!   (c) 64 connections, 16 KiB messages; (d) 64 connections pipelined 16
//!   deep: gaidaros echo (`-S thread -N 2`) against tokio-echo (2 workers),
//!   alternating A B A B for `--pairs` pairs. Each run starts a fresh server
//!   and reads requests/s and latency from the load generator, and the
//!   server's CPU time (/proc, user and system apart), syscalls and, where
//!   the CPU has counters, user and kernel instructions (perf) per request.
//!   Then each server runs each scenario once under callgrind for
//!   user-space instructions per request (repeatable, unlike timings on
//!   this machine).
//! - (e) 10,000 idle connections: server RSS growth per connection.
//! - (f) 1 GiB through a forwarder: gaidaros `forward` against
//!   tokio-forward, socat and nginx's stream proxy (when installed), and the
//!   direct connection with no forwarder (the physical limit; iperf3 single
//!   stream beside it).
//! - the poll backends (`poll.rs`): (a)-(d) and (f) with gaidaros under
//!   `-T level` and `-T completion` as well as the default edge, in the
//!   same alternation (`--backends`).
//! - the generator check: one load generator against two, same total load,
//!   so the docs can say whether the generator is the limit.
//! - old vs new binary (`baseline.rs`): with `--baseline PATH`, each
//!   gaidaros server of (a)-(d) and (f) has a twin running that binary with
//!   the same arguments, right after it in every pair.
//!
//! Writes a markdown report and an SVG chart: with `--quick` into
//! target/compare-quick/, otherwise into docs/benchmarks.md (between its
//! `<!-- compare:begin -->` and `<!-- compare:end -->` markers, keeping the
//! hand-written analysis around them) and docs/benchmarks.svg. Raw samples
//! go to a JSON-lines file. Exits 1 when any run saw an error (a wrong
//! echo, a failed transfer): it checks correctness, never speed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use argh::FromArgs;
use gaidaros_benches::chart::{self, Bar};
use gaidaros_benches::measure::{self, Perf, PerfEvents};
use gaidaros_benches::stats::{median_of, pair_ratios, Field};
use gaidaros_benches::{tree_cpu_time, tree_cpu_times, Report, Sample, ServerProcess};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Deserialize;

mod baseline;
mod http;
mod poll;
mod timers;
mod udp;

#[derive(FromArgs)]
/// Run gaidaros and its peers side by side (scenarios a-f) and write the
/// comparison to docs/benchmarks.md and docs/benchmarks.svg.
struct Args {
    /// every scenario for a second or two, one pair, small sizes; writes to
    /// target/compare-quick/ instead of docs/ (what CI runs)
    #[argh(switch)]
    quick: bool,
    /// alternating pairs per scenario (default 3; 1 with --quick)
    #[argh(option)]
    pairs: Option<usize>,
    /// measured seconds per echo run (default 5; 1 with --quick)
    #[argh(option)]
    duration: Option<f64>,
    /// scenarios to run, letters from "abcdefghijklmn" (g = the generator
    /// check, h = the handler types, i and j = HTTP hello at 64 and 512
    /// connections, k = a large static file, l = timer lateness, m = a
    /// small static file under wrk, n = UDP echo; default all)
    #[argh(option, default = "String::from(\"abcdefghijklmn\")")]
    only: String,
    /// poll backends (-T) gaidaros runs scenarios a-d and f under,
    /// comma-separated from edge, level, completion (default all three);
    /// edge is the default, the ordinary gaidaros run, so naming only edge
    /// adds no run. With --quick the callgrind pass runs the other
    /// backends in (a) only.
    #[argh(option, default = "String::from(\"edge,level,completion\")")]
    backends: String,
    /// a second gaidaros binary (an older build, say) run as a peer of the
    /// current one: in (a)-(d) and (f), under each of --backends, every
    /// gaidaros server is followed by a twin NAME@baseline running this
    /// binary with the same arguments, and an "Old vs new binary" table
    /// gives new ÷ baseline pair by pair. The report goes where any run's
    /// goes (docs/ unless --quick or --out).
    #[argh(option)]
    baseline: Option<PathBuf>,
    /// skip the callgrind pass (instructions per request)
    #[argh(switch)]
    no_callgrind: bool,
    /// do not apt-get install socat, iperf3 and nginx-light when missing
    #[argh(switch)]
    no_install: bool,
    /// do not build the release binaries first (they must exist)
    #[argh(switch)]
    no_build: bool,
    /// re-render the report and chart from a JSON-lines file of samples
    /// written by an earlier run, without measuring
    #[argh(option)]
    from: Option<PathBuf>,
    /// where the markdown report goes (default docs/benchmarks.md, or
    /// target/compare-quick/benchmarks.md with --quick)
    #[argh(option)]
    out: Option<PathBuf>,
}

/// Sizes and times of one comparison.
struct Plan {
    pairs: usize,
    duration: f64,
    warmup: f64,
    callgrind_duration: f64,
    idle_conns: usize,
    hold_s: f64,
    /// Bytes of the static file in (k).
    stream_bytes: u64,
    /// Bytes through a forwarder in (f): more than (k)'s, because a
    /// forwarder's CPU is read from /proc in 10 ms ticks, and at loopback
    /// speed 1 GiB costs it about 0.1 s (a tick is 10 % of that).
    forward_bytes: u64,
    /// Timers per run in (l).
    timer_rounds: usize,
    quick: bool,
}

/// An echo scenario.
struct Echo {
    key: &'static str,
    title: &'static str,
    conns: usize,
    size: usize,
    depth: usize,
}

const ECHO: [Echo; 4] = [
    Echo {
        key: "a",
        title: "(a) 64 conns, 64 B",
        conns: 64,
        size: 64,
        depth: 1,
    },
    Echo {
        key: "b",
        title: "(b) 1000 conns, 64 B",
        conns: 1000,
        size: 64,
        depth: 1,
    },
    Echo {
        key: "c",
        title: "(c) 64 conns, 16 KiB",
        conns: 64,
        size: 16 * 1024,
        depth: 1,
    },
    Echo {
        key: "d",
        title: "(d) 64 conns, pipelined 16",
        conns: 64,
        size: 64,
        depth: 16,
    },
];

/// (h): one connection, one request at a time, so the latency is the
/// request's own path with no queueing: what a handler type adds shows.
const POOLS: Echo = Echo {
    key: "h",
    title: "(h) handler types",
    conns: 1,
    size: 64,
    depth: 1,
};

/// The handler types of (h), blocking (the reference) first.
const HANDLER_TYPES: [&str; 7] = [
    "blocking",
    "threadpool",
    "gthread",
    "gthreadpool",
    "procpool",
    "thread",
    "proc",
];

/// The echo servers compared, in run order.
const ECHO_SERVERS: [&str; 2] = ["gaidaros", "tokio"];
/// The peers of gaidaros's echo, run after it (and its other poll
/// backends) in each pair.
const ECHO_PEERS: [&str; 1] = ["tokio"];
/// Load generator threads for every echo run (one is too few: see the
/// generator check).
const GEN_THREADS: usize = 2;
/// Server worker threads: gaidaros loops and tokio workers alike.
const WORKERS: usize = 2;

impl Ctx {
    /// For re-rendering: nothing to run.
    fn empty() -> Ctx {
        Ctx {
            bin: PathBuf::new(),
            work: PathBuf::new(),
            perf: PerfEvents::default(),
            callgrind: false,
            backends: Vec::new(),
            baseline: None,
            have: HashMap::new(),
            notes: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// The binary gaidaros server `server` runs, and the server whose
    /// arguments it takes: a baseline twin runs the baseline binary as its
    /// counterpart.
    fn gaidaros<'a>(&self, server: &'a str) -> (PathBuf, &'a str) {
        match (baseline::counterpart(server), &self.baseline) {
            (Some(new), Some(path)) => (path.clone(), new),
            _ => (self.bin.join("gaidaros"), server),
        }
    }

    /// `servers` with their baseline twins, when there is a baseline.
    fn with_twins(&self, servers: Vec<String>) -> Vec<String> {
        if self.baseline.is_some() {
            baseline::with_twins(servers)
        } else {
            servers
        }
    }
}

/// Everything a run needs to find.
struct Ctx {
    bin: PathBuf,
    work: PathBuf,
    /// What perf may count here.
    perf: PerfEvents,
    callgrind: bool,
    /// The poll backends gaidaros runs under in (a)-(d) and (f): edge (the
    /// default run) and those of `--backends` that start here.
    backends: Vec<&'static str>,
    /// The `--baseline` binary, checked to start under every backend.
    baseline: Option<PathBuf>,
    have: HashMap<&'static str, bool>,
    notes: Vec<String>,
    failures: Vec<String>,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    let plan = Plan {
        pairs: args.pairs.unwrap_or(if args.quick { 1 } else { 3 }).max(1),
        duration: args.duration.unwrap_or(if args.quick { 1.0 } else { 5.0 }),
        warmup: if args.quick { 0.2 } else { 1.0 },
        callgrind_duration: if args.quick { 0.5 } else { 2.0 },
        idle_conns: if args.quick { 1000 } else { 10_000 },
        hold_s: if args.quick { 1.0 } else { 3.0 },
        stream_bytes: if args.quick { 64 << 20 } else { 1 << 30 },
        forward_bytes: if args.quick { 64 << 20 } else { 8 << 30 },
        timer_rounds: if args.quick { 500 } else { 20_000 },
        quick: args.quick,
    };
    if !(plan.duration.is_finite() && plan.duration > 0.0) {
        eprintln!("compare: --duration must be a positive number of seconds");
        return ExitCode::from(2);
    }
    if let Some(bad) = args.only.chars().find(|c| !"abcdefghijklmn".contains(*c)) {
        eprintln!(
            "compare: --only: unknown scenario {bad:?} (expected letters from abcdefghijklmn)"
        );
        return ExitCode::from(2);
    }
    if let Err(e) = poll::parse(&args.backends) {
        eprintln!("compare: --backends: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = args.baseline.as_deref().map(baseline::check).transpose() {
        eprintln!("compare: --baseline: {e}");
        return ExitCode::from(2);
    }
    match run(&args, &plan) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::from(2)
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(args: &Args, plan: &Plan) -> Result<bool, String> {
    let root = root();
    let (ctx, samples, raw) = match &args.from {
        Some(from) => {
            let text = fs::read_to_string(from).map_err(|e| format!("{}: {e}", from.display()))?;
            let samples = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str::<Sample>)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", from.display()))?;
            let mut ctx = Ctx::empty();
            ctx.notes.push(format!(
                "Re-rendered from `{}` (`compare --from`).",
                from.display()
            ));
            (ctx, samples, from.clone())
        }
        None => {
            let (ctx, samples) = measure_all(args, plan, &root)?;
            (ctx, samples, PathBuf::new())
        }
    };
    let (doc, svg) = match &args.out {
        Some(p) => (p.clone(), p.with_extension("svg")),
        None if plan.quick => {
            let dir = root.join("target/compare-quick");
            (dir.join("benchmarks.md"), dir.join("benchmarks.svg"))
        }
        None => (
            root.join("docs/benchmarks.md"),
            root.join("docs/benchmarks.svg"),
        ),
    };
    let raw = if args.from.is_some() {
        raw
    } else if plan.quick {
        doc.with_file_name("samples.jsonl")
    } else {
        let stamp = date("+%Y-%m-%d");
        root.join(format!(
            "benches/results/{stamp}/compare-{}.jsonl",
            date("+%H%M%S")
        ))
    };
    for p in [&doc, &raw] {
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    if args.from.is_none() {
        let lines: String = samples
            .iter()
            .filter_map(|s| serde_json::to_string(s).ok())
            .map(|l| l + "\n")
            .collect();
        fs::write(&raw, lines).map_err(|e| format!("{}: {e}", raw.display()))?;
    }

    let svg_name = svg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (body, bars) = report(&ctx, plan, &samples, &svg_name, &raw, &root);
    if !bars.is_empty() {
        chart::draw(&svg, "gaidaros against its peers (one run)", &bars)?;
    }
    write_doc(&doc, &body)?;
    println!("{body}");
    eprintln!(
        "compare: wrote {}, {} and {}",
        doc.display(),
        svg.display(),
        raw.display()
    );
    let errors: u64 = samples.iter().map(|s| s.errors).sum();
    if errors > 0 || !ctx.failures.is_empty() {
        eprintln!("compare: {errors} client errors; failures:");
        for f in &ctx.failures {
            eprintln!("  {f}");
        }
        return Ok(false);
    }
    Ok(true)
}

/// Run every scenario asked for; the samples and what was noticed.
fn measure_all(args: &Args, plan: &Plan, root: &Path) -> Result<(Ctx, Vec<Sample>), String> {
    if !args.no_build {
        build(root)?;
    }
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .ok_or("cannot locate the release binaries")?;
    for b in [
        "gaidaros",
        "loadgen",
        "tokio-echo",
        "tokio-forward",
        "hyper-hello",
        "sink",
        "blast",
        "udpgen",
        "tokio-udp-echo",
    ] {
        if !bin.join(b).exists() {
            return Err(format!(
                "{} is missing: build with cargo build --release",
                b
            ));
        }
    }
    // 10,000 connections need descriptors; children inherit the limit.
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    if !args.no_install {
        install_peers();
    }
    let work = std::env::temp_dir().join(format!("gaidaros-compare-{}", std::process::id()));
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let mut ctx = Ctx {
        bin,
        work: work.clone(),
        perf: PerfEvents::probe(),
        callgrind: !args.no_callgrind && measure::callgrind_available(),
        backends: Vec::new(),
        baseline: None,
        have: HashMap::new(),
        notes: Vec::new(),
        failures: Vec::new(),
    };
    for tool in ["socat", "iperf3", "nginx", "wrk", "curl"] {
        let found = which(tool);
        ctx.have.insert(tool, found);
        if !found {
            ctx.notes
                .push(format!("{tool} is not installed: it is left out."));
        }
    }
    ctx.have.insert("nginx-http", ctx.have["nginx"]);
    if ctx.have["nginx"] && !Path::new(NGINX_STREAM_MODULE).exists() {
        ctx.have.insert("nginx", false);
        ctx.notes.push(format!(
            "nginx's stream module ({NGINX_STREAM_MODULE}, package libnginx-mod-stream) is missing: nginx is left out."
        ));
    }
    if !ctx.perf.syscalls {
        ctx.notes
            .push("perf cannot read syscall tracepoints here: no syscalls per request.".into());
    }
    if !ctx.perf.instructions {
        ctx.notes.push(
            "perf cannot count instructions here (no hardware counters, or perf_event_paranoid too high): \
             no kernel or total instructions per request."
                .into(),
        );
    }
    if !ctx.callgrind {
        ctx.notes
            .push("callgrind skipped or valgrind missing: no instructions per request.".into());
    }

    let only = |k: &str| args.only.contains(k);
    if poll::SCENARIOS.chars().any(|k| only(&k.to_string())) {
        // Checked in main.
        let asked = poll::parse(&args.backends).unwrap_or_default();
        ctx.backends = backends_that_start(&mut ctx, &asked);
    }
    if let Some(path) = &args.baseline {
        // Checked in main; again for the absolute path.
        let path = baseline::check(path)?;
        if ctx.backends.is_empty() && !"ijkm".chars().any(|k| only(&k.to_string())) {
            ctx.notes.push(format!(
                "`--baseline` runs in (a)-(d), (f), (i)-(k) and (m) only: `{}` did not run.",
                path.display()
            ));
        } else {
            ctx.notes.push(format!(
                "The baseline (`--baseline`) is `{}`: each gaidaros server of (a)-(d), (f), (i)-(k) and (m) has a twin `NAME{}` running it with the same arguments.",
                path.display(),
                baseline::MARK
            ));
            ctx.baseline = Some(path.clone());
            baseline_starts(&ctx, &path)?;
        }
    }

    let mut samples = Vec::new();
    for pair in 0..plan.pairs {
        for sc in ECHO.iter().filter(|s| only(s.key)) {
            for server in ctx.with_twins(poll::servers(sc.key, &ctx.backends, &ECHO_PEERS)) {
                eprintln!("== ({}) {server}, pair {}", sc.key, pair + 1);
                let r = echo_run(&ctx, plan, sc, &server, pair);
                record(&mut ctx, &mut samples, r);
            }
        }
        if only("e") {
            for server in ECHO_SERVERS {
                eprintln!("== (e) {server}, pair {}", pair + 1);
                let r = hold_run(&ctx, plan, server, pair);
                record(&mut ctx, &mut samples, r);
            }
        }
        if only("f") {
            stream_runs(&mut ctx, plan, pair, &mut samples);
        }
        if only("g") {
            for gens in [1, 2] {
                eprintln!("== generator check, {gens} loadgen(s), pair {}", pair + 1);
                let r = gen_run(&ctx, plan, gens, pair);
                record(&mut ctx, &mut samples, r);
            }
        }
        if only("h") {
            for kind in HANDLER_TYPES {
                eprintln!("== (h) -X {kind}, pair {}", pair + 1);
                let r = echo_run(&ctx, plan, &POOLS, kind, pair);
                record(&mut ctx, &mut samples, r);
            }
        }
        let have_wrk = ctx.have["wrk"];
        for sc in http::HELLO.iter().filter(|h| only(h.key) && have_wrk) {
            let servers = http_servers(&ctx).into_iter().map(String::from).collect();
            for server in ctx.with_twins(servers) {
                eprintln!("== ({}) {server}, pair {}", sc.key, pair + 1);
                let r = http::hello_run(&ctx, plan, sc, &server, None, pair);
                record(&mut ctx, &mut samples, r);
            }
        }
        let file_servers: Vec<String> = http::FILE_SERVERS
            .into_iter()
            .filter(|s| *s != "nginx" || ctx.have["nginx-http"])
            .map(String::from)
            .collect();
        let file_servers = ctx.with_twins(file_servers);
        let (run_k, run_m) = (only("k") && ctx.have["curl"], only("m") && have_wrk);
        if run_k || run_m {
            match http::file_root(&ctx, plan.stream_bytes) {
                Ok(root) => {
                    for server in file_servers.iter().filter(|_| run_k) {
                        eprintln!("== (k) {server}, pair {}", pair + 1);
                        let r = http::file_run(&ctx, plan, &root, server, pair);
                        record(&mut ctx, &mut samples, r);
                    }
                    for server in file_servers.iter().filter(|_| run_m) {
                        let sc = &http::SMALL_FILE;
                        eprintln!("== ({}) {server}, pair {}", sc.key, pair + 1);
                        let r = http::hello_run(&ctx, plan, sc, server, Some(&root), pair);
                        record(&mut ctx, &mut samples, r);
                    }
                }
                Err(e) => ctx.failures.push(format!("(k), (m): {e}")),
            }
        }
        if only("n") {
            for server in udp::servers(&ctx) {
                eprintln!("== (n) {server}, pair {}", pair + 1);
                let r = udp::run(&ctx, plan, &server, pair);
                record(&mut ctx, &mut samples, r);
            }
        }
        if only("l") {
            for server in timers::SERVERS {
                eprintln!("== (l) {server}, pair {}", pair + 1);
                let r = timers::run(server, plan.timer_rounds, pair).map(|s| vec![s]);
                record(&mut ctx, &mut samples, r);
            }
        }
    }
    if ctx.callgrind {
        let under_callgrind = if ECHO.iter().any(|s| only(s.key)) {
            backends_under_callgrind(&mut ctx)
        } else {
            Vec::new()
        };
        let mut runs: Vec<(&Echo, String)> = Vec::new();
        for sc in ECHO.iter().filter(|s| only(s.key)) {
            // --quick: the other backends in (a) only, to keep CI short.
            let backends: &[&str] = if plan.quick && sc.key != "a" {
                &[]
            } else {
                &under_callgrind
            };
            runs.extend(
                ctx.with_twins(poll::servers(sc.key, backends, &ECHO_PEERS))
                    .into_iter()
                    .map(|server| (sc, server)),
            );
        }
        if only("h") {
            // Not -X proc: every request would start a process under
            // valgrind, seconds each.
            runs.extend(
                HANDLER_TYPES
                    .iter()
                    .filter(|k| **k != "proc")
                    .map(|kind| (&POOLS, kind.to_string())),
            );
        }
        let have_wrk = ctx.have["wrk"];
        for sc in http::HELLO.iter().filter(|h| only(h.key) && have_wrk) {
            for server in http_servers(&ctx) {
                eprintln!("== ({}) {server} under callgrind", sc.key);
                let r = http::hello_instr(&ctx, plan, sc, server);
                record_instr(&mut ctx, &mut samples, sc.key, server, r);
            }
        }
        for (sc, server) in runs {
            eprintln!("== ({}) {server} under callgrind", sc.key);
            let r = instr_run(&ctx, plan, sc, &server);
            record_instr(&mut ctx, &mut samples, sc.key, &server, r);
        }
    }

    let _ = fs::remove_dir_all(&ctx.work);
    Ok((ctx, samples))
}

/// Keep an instructions-per-request count (a sample outside the pairs), or
/// note why there is none.
fn record_instr(
    ctx: &mut Ctx,
    samples: &mut Vec<Sample>,
    scenario: &str,
    server: &str,
    r: Result<f64, String>,
) {
    match r {
        Ok(i) => samples.push(Sample {
            scenario: scenario.into(),
            server: server.into(),
            pair: usize::MAX,
            instr_per_req: Some(i),
            ..Sample::default()
        }),
        Err(e) => {
            eprintln!("   {e}");
            ctx.failures
                .push(format!("({scenario}) {server} callgrind: {e}"));
        }
    }
}

/// The HTTP servers of (i) and (j) that are installed.
fn http_servers(ctx: &Ctx) -> Vec<&'static str> {
    http::HTTP_SERVERS
        .into_iter()
        .filter(|s| *s != "nginx" || ctx.have["nginx-http"])
        .collect()
}

fn record(ctx: &mut Ctx, samples: &mut Vec<Sample>, r: Result<Vec<Sample>, String>) {
    match r {
        Ok(s) => {
            for x in &s {
                if x.errors > 0 {
                    ctx.failures.push(format!(
                        "({}) {} pair {}: {} client errors",
                        x.scenario,
                        x.server,
                        x.pair + 1,
                        x.errors
                    ));
                }
            }
            samples.extend(s);
        }
        Err(e) => {
            eprintln!("   {e}");
            ctx.failures.push(e);
        }
    }
}

/// The backends of `asked` gaidaros starts under here, edge always: a
/// backend the machine refuses (io_uring off by sysctl or seccomp, for
/// completion) is left out with a note, as a missing peer is.
fn backends_that_start(ctx: &mut Ctx, asked: &[&'static str]) -> Vec<&'static str> {
    let mut ok = vec!["edge"];
    for backend in asked.iter().filter(|b| **b != "edge") {
        let server = poll::server(backend);
        match spawn(echo_cmd(ctx, &server), &server) {
            Ok(proc) => {
                let _ = proc.stop(Duration::from_secs(5));
                ok.push(backend);
            }
            Err(e) => {
                eprintln!("   {e}");
                ctx.notes.push(format!(
                    "`{server}` did not start here: it is left out. {}",
                    e.replace('\n', " ")
                ));
            }
        }
    }
    ok
}

/// The baseline at `path` starts under every backend of `ctx.backends`
/// (the new binary does: its twins must too, or the pairs would be
/// one-sided).
fn baseline_starts(ctx: &Ctx, path: &Path) -> Result<(), String> {
    for backend in &ctx.backends {
        let server = baseline::twin(&poll::server(backend));
        let proc = spawn(echo_cmd(ctx, &server), &server).map_err(|e| {
            let hint = if *backend == "edge" {
                String::new()
            } else {
                format!(" (leave {backend} out of --backends to compare the others)")
            };
            format!("--baseline {} does not start{hint}: {e}", path.display())
        })?;
        let _ = proc.stop(Duration::from_secs(5));
    }
    eprintln!(
        "== baseline {} starts under {}",
        path.display(),
        ctx.backends.join(", ")
    );
    Ok(())
}

/// The backends of `ctx.backends` whose echo server stops on SIGTERM under
/// callgrind; the others are left out of the instruction runs with a note.
/// valgrind (3.19 at least) keeps its global lock while a thread waits in
/// io_uring_enter, so under `-T completion` the other threads, the signal
/// thread among them, never run again.
fn backends_under_callgrind(ctx: &mut Ctx) -> Vec<&'static str> {
    let mut ok = Vec::new();
    for backend in ctx.backends.clone() {
        if backend == "edge" {
            ok.push(backend);
            continue;
        }
        let server = poll::server(backend);
        eprintln!("== {server} under callgrind: does it stop?");
        let out = ctx.work.join("callgrind.probe");
        let cmd = measure::under_callgrind(&echo_cmd(ctx, &server), &out);
        let stopped = spawn(cmd, &server).and_then(|proc| {
            // Under valgrind the signal handler thread needs a moment.
            thread::sleep(Duration::from_millis(500));
            proc.stop(Duration::from_secs(5))
                .map_err(|e| format!("stopping {server}: {e}"))
        });
        match stopped {
            Ok(status) if status.success() => ok.push(backend),
            Ok(status) => {
                let why = if backend == "completion" {
                    " valgrind holds its lock while a thread waits in io_uring_enter, so the server's other threads never run."
                } else {
                    ""
                };
                ctx.notes.push(format!(
                    "`{server}` does not stop on SIGTERM under callgrind (killed: {status}): \
                     no user instructions per request for it.{why}"
                ));
            }
            Err(e) => ctx.notes.push(format!(
                "`{server}` does not start under callgrind: no user instructions per request for it. {}",
                e.replace('\n', " ")
            )),
        }
    }
    ok
}

fn build(root: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "gaidaros-bin",
            "-p",
            "gaidaros-benches",
            "--bins",
        ])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build failed ({status})"))
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .any(|d| d.join(tool).is_file())
    })
}

/// socat, iperf3 and nginx (with its stream module) join as peers; as root,
/// install them with apt-get when missing. Failure only leaves them out.
fn install_peers() {
    let mut missing = Vec::new();
    for (tool, pkg) in [
        ("socat", "socat"),
        ("iperf3", "iperf3"),
        ("nginx", "nginx-light"),
        ("wrk", "wrk"),
        ("curl", "curl"),
    ] {
        if !which(tool) {
            missing.push(pkg);
        }
    }
    if !Path::new(NGINX_STREAM_MODULE).exists() {
        missing.push("libnginx-mod-stream");
    }
    if missing.is_empty() || !running_as_root() {
        return;
    }
    eprintln!("== apt-get install {}", missing.join(" "));
    let ok = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("compare: apt-get could not install {}", missing.join(" "));
    }
}

/// Whether the effective user is root (the second field of `Uid:` in
/// /proc/self/status).
fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|st| {
        st.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

fn date(fmt: &str) -> String {
    Command::new("date")
        .arg("-u")
        .arg(fmt)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The command starting echo server `server` on a free port.
fn echo_cmd(ctx: &Ctx, server: &str) -> Command {
    match server {
        "tokio" => {
            let mut c = Command::new(ctx.bin.join("tokio-echo"));
            c.args(["--workers", &WORKERS.to_string()]);
            c
        }
        // "gaidaros", gaidaros under a poll backend, a baseline twin of
        // either, or a handler type for (h).
        other => {
            let (bin, other) = ctx.gaidaros(other);
            let mut c = Command::new(bin);
            c.args(["-S", "thread", "-N", &WORKERS.to_string(), "--port", "0"]);
            if let Some(backend) = poll::flag(other) {
                c.args(["-T", backend]);
            } else if other != "gaidaros" {
                // Four workers: the processes of procpool start under
                // valgrind in the instruction runs, seconds each.
                c.args(["-X", other, "-n", "4"]);
            }
            c
        }
    }
}

fn spawn(cmd: Command, what: &str) -> Result<ServerProcess, String> {
    ServerProcess::spawn(cmd, Duration::from_secs(60)).map_err(|e| format!("{what}: {e}"))
}

/// Run the load generator against `addr` and parse its report.
fn loadgen(ctx: &Ctx, addr: SocketAddr, extra: &[String]) -> Result<Report, String> {
    let out = Command::new(ctx.bin.join("loadgen"))
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--json")
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run loadgen: {e}"))?;
    // Exit 1 is a run with errors: the report is there and counts them.
    if out.status.code() == Some(2) || out.status.code().is_none() {
        return Err(format!("loadgen failed ({})", out.status));
    }
    Report::from_json(String::from_utf8_lossy(&out.stdout).trim())
        .map_err(|e| format!("loadgen's report: {e}"))
}

fn echo_args(plan: &Plan, sc: &Echo, conns: usize, duration: f64, warmup: f64) -> Vec<String> {
    vec![
        "-c".into(),
        conns.to_string(),
        "-m".into(),
        sc.size.to_string(),
        "-d".into(),
        sc.depth.to_string(),
        "--threads".into(),
        GEN_THREADS.to_string(),
        "--duration".into(),
        duration.to_string(),
        "--warmup".into(),
        warmup.to_string(),
        "--timeout".into(),
        if plan.quick { "20" } else { "30" }.into(),
    ]
}

/// One timed echo run: a fresh server, the load, the server's counters.
fn echo_run(
    ctx: &Ctx,
    plan: &Plan,
    sc: &Echo,
    server: &str,
    pair: usize,
) -> Result<Vec<Sample>, String> {
    let what = format!("({}) {server}", sc.key);
    let proc = spawn(echo_cmd(ctx, server), &what)?;
    let cpu0 = tree_cpu_times(proc.pid()).map_err(|e| format!("{what}: {e}"))?;
    let perf = Perf::attach(proc.pid(), &ctx.work.join("perf.csv"), ctx.perf).ok();
    let report = loadgen(
        ctx,
        proc.addr(),
        &echo_args(plan, sc, sc.conns, plan.duration, plan.warmup),
    );
    let counts = perf.and_then(|p| p.finish().ok()).unwrap_or_default();
    let cpu = tree_cpu_times(proc.pid())
        .map_err(|e| format!("{what}: {e}"))?
        .since(&cpu0);
    let _ = proc.stop(Duration::from_secs(5));
    let report = report.map_err(|e| format!("{what}: {e}"))?;
    let per_req = |x: Option<u64>| {
        x.filter(|_| report.echoed > 0)
            .map(|x| x as f64 / report.echoed as f64)
    };
    Ok(vec![Sample {
        scenario: sc.key.into(),
        server: server.into(),
        pair,
        req_s: Some(report.requests_per_s),
        p50_us: Some(report.p50_us),
        p99_us: Some(report.p99_us),
        p999_us: Some(report.p999_us),
        cpu_us_per_req: per_req(Some(cpu.total().as_micros() as u64)),
        sys_us_per_req: per_req(Some(cpu.system.as_micros() as u64)),
        syscalls_per_req: per_req(counts.syscalls),
        ctxsw_per_req: per_req(counts.context_switches),
        perf_user_instr_per_req: per_req(counts.instructions_user),
        perf_kernel_instr_per_req: per_req(counts.instructions_kernel),
        errors: report.errors,
        ..Sample::default()
    }])
}

/// User-space instructions per request: the server under callgrind, once
/// idle (start and stop only) and once under load; the difference over
/// the requests echoed. Threads are serialized under valgrind, so this
/// counts work, not parallelism.
fn instr_run(ctx: &Ctx, plan: &Plan, sc: &Echo, server: &str) -> Result<f64, String> {
    let total = |load: bool, tag: &str| -> Result<(u64, u64), String> {
        let out = ctx.work.join(format!("callgrind.{server}.{tag}"));
        let mut cmd = echo_cmd(ctx, server);
        // glibc copies blocks of a few KiB and more with `rep movsb`, which
        // callgrind counts once per byte (the CPU's counter: once). Both
        // servers get the vector copy loop instead, whose instructions
        // both tools count alike.
        cmd.env("GLIBC_TUNABLES", NO_REP_MOVSB);
        let cmd = measure::under_callgrind(&cmd, &out);
        let proc = spawn(cmd, server)?;
        if server == "procpool" {
            // Let the workers finish starting under valgrind, in both runs.
            thread::sleep(Duration::from_secs(4));
        }
        let echoed = if load {
            let r = loadgen(
                ctx,
                proc.addr(),
                &echo_args(plan, sc, sc.conns, plan.callgrind_duration, 0.0),
            )?;
            if r.errors > 0 {
                return Err(format!("{} client errors under callgrind", r.errors));
            }
            r.echoed
        } else {
            0
        };
        let status = proc
            .stop(Duration::from_secs(60))
            .map_err(|e| format!("stopping {server}: {e}"))?;
        // Worker processes write theirs when their socket closes, after
        // the server has exited: wait until every profile is complete.
        let deadline = Instant::now() + Duration::from_secs(20);
        let (total, files) = loop {
            thread::sleep(Duration::from_millis(300));
            match measure::callgrind_sum(&out) {
                Ok(sum) => break sum,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("{server}'s callgrind profiles ({status}): {e}"))
                }
                Err(_) => {}
            }
        };
        if files == 0 {
            return Err(format!("{server} left no callgrind profile ({status})"));
        }
        Ok((total, echoed))
    };
    let (idle, _) = total(false, "idle")?;
    let (loaded, echoed) = total(true, sc.key)?;
    if echoed == 0 {
        return Err("no request echoed under callgrind".into());
    }
    Ok(loaded.saturating_sub(idle) as f64 / echoed as f64)
}

/// The glibc tunable that keeps memcpy off `rep movsb` under callgrind.
const NO_REP_MOVSB: &str = "glibc.cpu.x86_rep_movsb_threshold=4294967295";

/// (e): hold idle connections; the server's RSS growth per connection
/// (the peak over the hold and the final liveness check, over the
/// connections established).
fn hold_run(ctx: &Ctx, plan: &Plan, server: &str, pair: usize) -> Result<Vec<Sample>, String> {
    let what = format!("(e) {server}");
    let proc = spawn(echo_cmd(ctx, server), &what)?;
    thread::sleep(Duration::from_millis(200));
    let base = measure::rss_bytes(proc.pid()).map_err(|e| format!("{what}: {e}"))?;
    let mut child = Command::new(ctx.bin.join("loadgen"))
        .arg("--addr")
        .arg(proc.addr().to_string())
        .args(["--json", "--mode", "hold", "-c"])
        .arg(plan.idle_conns.to_string())
        .args(["--threads", &GEN_THREADS.to_string(), "--duration"])
        .arg(plan.hold_s.to_string())
        .args(["--timeout", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run loadgen: {e}"))?;
    let mut peak = base;
    let deadline = Instant::now() + Duration::from_secs_f64(plan.hold_s + 90.0);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        if let Ok(rss) = measure::rss_bytes(proc.pid()) {
            peak = peak.max(rss);
        }
        thread::sleep(Duration::from_millis(25));
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("loadgen: {e}"))?;
    let _ = proc.stop(Duration::from_secs(5));
    let report = Report::from_json(String::from_utf8_lossy(&out.stdout).trim())
        .map_err(|e| format!("{what}: loadgen's report: {e}"))?;
    let held = report.established.max(1);
    Ok(vec![Sample {
        scenario: "e".into(),
        server: server.into(),
        pair,
        bytes_per_conn: Some(peak.saturating_sub(base) as f64 / held as f64),
        errors: report.errors,
        ..Sample::default()
    }])
}

/// (g): one load generator process against two with half the connections
/// each, against gaidaros, scenario (a)'s load.
fn gen_run(ctx: &Ctx, plan: &Plan, gens: usize, pair: usize) -> Result<Vec<Sample>, String> {
    let sc = &ECHO[0];
    let proc = spawn(echo_cmd(ctx, "gaidaros"), "(g) gaidaros")?;
    let addr = proc.addr();
    let reports: Vec<Result<Report, String>> = thread::scope(|s| {
        let handles: Vec<_> = (0..gens)
            .map(|_| {
                let args = echo_args(plan, sc, sc.conns / gens, plan.duration, plan.warmup);
                s.spawn(move || loadgen(ctx, addr, &args))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("loadgen thread panicked".into()))
            })
            .collect()
    });
    let _ = proc.stop(Duration::from_secs(5));
    let mut total = 0.0;
    let mut errors = 0;
    for r in reports {
        let r = r?;
        total += r.requests_per_s;
        errors += r.errors;
    }
    Ok(vec![Sample {
        scenario: "g".into(),
        server: format!("{gens} loadgen"),
        pair,
        req_s: Some(total),
        errors,
        ..Sample::default()
    }])
}

/// What `blast` prints.
#[derive(Deserialize)]
struct Blast {
    bytes: u64,
    gbit_per_s: f64,
}

fn blast(ctx: &Ctx, addr: SocketAddr, bytes: u64) -> Result<Blast, String> {
    let out = Command::new(ctx.bin.join("blast"))
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--bytes")
        .arg(bytes.to_string())
        .arg("--json")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run blast: {e}"))?;
    if !out.status.success() {
        return Err(format!("blast failed ({})", out.status));
    }
    let b: Blast =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("blast's report: {e}"))?;
    if b.bytes != bytes {
        return Err(format!("blast moved {} of {bytes} bytes", b.bytes));
    }
    Ok(b)
}

const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// A peer started on a port chosen here (socat, nginx and iperf3 do not
/// report the port they bound): killed when dropped.
struct Peer {
    child: Child,
}

impl Peer {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port free at the time of asking (a peer may lose a race for it; the
/// run then fails with a clear error and is counted as a failure).
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn wait_port(addr: SocketAddr, child: &mut Child, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited ({status}) before listening on {addr}"
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what} did not listen on {addr} within 10 s"))
}

fn start_peer(mut cmd: Command, addr: SocketAddr, what: &str) -> Result<Peer, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    wait_port(addr, &mut child, what)?;
    Ok(Peer { child })
}

/// (f): the same bytes through each forwarder to one sink, and directly.
fn stream_runs(ctx: &mut Ctx, plan: &Plan, pair: usize, samples: &mut Vec<Sample>) {
    let sink = match spawn(Command::new(ctx.bin.join("sink")), "sink") {
        Ok(s) => s,
        Err(e) => {
            ctx.failures.push(e);
            return;
        }
    };
    let upstream = sink.addr();
    let mut forwarders = ctx.with_twins(poll::servers(
        "f",
        &ctx.backends,
        &["gaidaros-copy", "tokio"],
    ));
    for peer in ["socat", "nginx"] {
        if ctx.have[peer] {
            forwarders.push(peer.into());
        }
    }
    forwarders.push("direct".into());
    if ctx.have["iperf3"] {
        forwarders.push("iperf3".into());
    }
    for name in forwarders {
        eprintln!("== (f) {name}, pair {}", pair + 1);
        let r = stream_one(ctx, plan, &name, upstream, pair);
        record(ctx, samples, r);
    }
    let _ = sink.stop(Duration::from_secs(5));
}

fn stream_one(
    ctx: &Ctx,
    plan: &Plan,
    name: &str,
    upstream: SocketAddr,
    pair: usize,
) -> Result<Vec<Sample>, String> {
    let what = format!("(f) {name}");
    let sample = |gbit_s: f64, cpu: Option<Duration>| Sample {
        scenario: "f".into(),
        server: name.into(),
        pair,
        gbit_s: Some(gbit_s),
        cpu_s_per_gib: cpu
            .map(|c| c.as_secs_f64() / (plan.forward_bytes as f64 / (1u64 << 30) as f64)),
        ..Sample::default()
    };
    let through = |pid: u32, addr: SocketAddr| -> Result<Sample, String> {
        let cpu0 = tree_cpu_time(pid).map_err(|e| format!("{what}: {e}"))?;
        let b = blast(ctx, addr, plan.forward_bytes).map_err(|e| format!("{what}: {e}"))?;
        // socat's per-connection child is reaped just after the transfer.
        thread::sleep(Duration::from_millis(100));
        let cpu1 = tree_cpu_time(pid).map_err(|e| format!("{what}: {e}"))?;
        Ok(sample(b.gbit_per_s, Some(cpu1.saturating_sub(cpu0))))
    };
    // Ours and tokio-forward print their address.
    let own = |cmd: Command| -> Result<Vec<Sample>, String> {
        let proc = spawn(cmd, &what)?;
        let s = through(proc.pid(), proc.addr());
        let _ = proc.stop(Duration::from_secs(5));
        Ok(vec![s?])
    };
    // A baseline twin runs as its counterpart.
    let (bin, as_server) = ctx.gaidaros(name);
    let spliced = as_server == poll::EDGE || poll::flag(as_server).is_some();
    match as_server {
        _ if spliced || as_server == "gaidaros-copy" => {
            let mut cmd = Command::new(bin);
            cmd.args(["--handler", "forward", "-o"])
                .arg(format!("upstream={upstream}"))
                .arg("-o")
                .arg(format!("splice={spliced}"))
                .args(["-S", "thread", "-N", &WORKERS.to_string(), "--port", "0"]);
            if let Some(backend) = poll::flag(as_server) {
                cmd.args(["-T", backend]);
            }
            own(cmd)
        }
        "tokio" => {
            let mut cmd = Command::new(ctx.bin.join("tokio-forward"));
            cmd.arg("--upstream")
                .arg(upstream.to_string())
                .args(["--workers", &WORKERS.to_string()]);
            own(cmd)
        }
        "socat" => {
            let port = free_port()?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut cmd = Command::new("socat");
            cmd.arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
                .arg(format!("TCP:{upstream}"));
            let peer = start_peer(cmd, addr, "socat")?;
            let s = through(peer.pid(), addr);
            peer.stop();
            Ok(vec![s?])
        }
        "nginx" => {
            let port = free_port()?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let dir = ctx.work.join("nginx");
            fs::create_dir_all(&dir).map_err(|e| format!("{what}: {e}"))?;
            let conf = format!(
                "load_module {NGINX_STREAM_MODULE};\n\
                 daemon off;\nmaster_process on;\nworker_processes {WORKERS};\n\
                 pid {dir}/nginx.pid;\nerror_log stderr;\n\
                 events {{ worker_connections 1024; }}\n\
                 stream {{ server {{ listen 127.0.0.1:{port}; proxy_pass {upstream}; proxy_half_close on; }} }}\n",
                dir = dir.display()
            );
            let conf_path = dir.join("nginx.conf");
            fs::write(&conf_path, conf).map_err(|e| format!("{what}: {e}"))?;
            let mut cmd = Command::new("nginx");
            cmd.arg("-e")
                .arg("stderr")
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&conf_path);
            let peer = start_peer(cmd, addr, "nginx")?;
            let s = through(peer.pid(), addr);
            peer.stop();
            Ok(vec![s?])
        }
        "direct" => {
            let b = blast(ctx, upstream, plan.forward_bytes).map_err(|e| format!("{what}: {e}"))?;
            Ok(vec![sample(b.gbit_per_s, None)])
        }
        "iperf3" => {
            let port = free_port()?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut cmd = Command::new("iperf3");
            cmd.args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()]);
            // The readiness probe is a connection that sends no cookie: the
            // iperf3 server logs it and goes on listening.
            let peer = start_peer(cmd, addr, "iperf3")?;
            // The server can still be busy with the readiness probe ("the
            // server is busy running a test"): a few attempts.
            let mut last = String::new();
            for _ in 0..3 {
                let out = Command::new("iperf3")
                    .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-J", "-n"])
                    .arg(plan.forward_bytes.to_string())
                    .output()
                    .map_err(|e| format!("cannot run iperf3: {e}"))?;
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                    .map_err(|e| format!("{what}: iperf3's JSON: {e}"))?;
                if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
                    peer.stop();
                    return Ok(vec![sample(bps / 1e9, None)]);
                }
                last = v["error"].as_str().unwrap_or("no result").to_string();
                thread::sleep(Duration::from_millis(500));
            }
            peer.stop();
            Err(format!("{what}: iperf3 failed: {last}"))
        }
        other => Err(format!("unknown forwarder {other}")),
    }
}

// ---- the report ----------------------------------------------------------

fn fmt_num(x: Option<f64>, digits: usize) -> String {
    match x {
        None => "–".into(),
        Some(v) if v >= 10_000.0 => {
            // Thousands separators for the big numbers.
            let s = format!("{:.0}", v);
            let mut out = String::new();
            for (i, ch) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(ch);
            }
            out
        }
        Some(v) => format!("{v:.digits$}"),
    }
}

fn fmt_ratios(r: &(Vec<f64>, Option<f64>)) -> String {
    match r.1 {
        None => "–".into(),
        Some(m) => {
            let each: Vec<String> = r.0.iter().map(|x| format!("{x:.2}")).collect();
            if each.len() > 1 {
                format!("**{m:.2}** ({})", each.join(", "))
            } else {
                format!("**{m:.2}**")
            }
        }
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

fn report(
    ctx: &Ctx,
    plan: &Plan,
    samples: &[Sample],
    svg: &str,
    raw: &Path,
    root: &Path,
) -> (String, Vec<Bar>) {
    let mut md = String::new();
    let mut bars = Vec::new();
    let mut targets: Vec<(String, String, Option<bool>)> = Vec::new();
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(
        md,
        "Generated by `compare{}` on {} UTC: {cores} cores, Linux {}, {} alternating pair(s) per scenario, {} s measured per echo run (+{} s warm-up), load generator with {GEN_THREADS} threads, servers with {WORKERS} workers. Raw samples: `{}`.\n",
        if plan.quick { " --quick" } else { "" },
        date("+%Y-%m-%d %H:%M"),
        kernel.trim(),
        plan.pairs,
        plan.duration,
        plan.warmup,
        raw.strip_prefix(root).unwrap_or(raw).display(),
    );
    if !svg.is_empty() {
        let _ = writeln!(md, "![gaidaros ÷ peer per scenario]({svg})\n");
    }
    let ran = |sc: &str| samples.iter().any(|s| s.scenario == sc);

    // (a)-(d)
    if ECHO.iter().any(|e| ran(e.key)) {
        let _ = writeln!(
            md,
            "### Echo: gaidaros `-S thread -N {WORKERS}` vs tokio-echo ({WORKERS} workers)\n"
        );
        let _ = writeln!(
            md,
            "Medians over the pairs; ratios are gaidaros ÷ tokio pair by pair (median, then each pair). \
             Instructions are user space only (callgrind, glibc's memcpy kept off `rep movsb`, which callgrind would count per byte), \
             one run per server; CPU is user + system from /proc; syscalls from perf.\n"
        );
        let _ = writeln!(
            md,
            "| scenario | server | req/s | req/s ratio | p50 µs | p99 µs | p99.9 µs | CPU µs/req | syscalls/req | user instr/req | instr ratio |"
        );
        let _ = writeln!(md, "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
        for sc in ECHO.iter().filter(|e| ran(e.key)) {
            let k = sc.key;
            let req: Field = |s| s.req_s;
            let instr = |server: &str| median_of(samples, k, server, |s| s.instr_per_req);
            let instr_ratio = match (instr("gaidaros"), instr("tokio")) {
                (Some(g), Some(t)) if t > 0.0 => Some(g / t),
                _ => None,
            };
            for server in ECHO_SERVERS {
                let m = |f: Field| median_of(samples, k, server, f);
                let is_g = server == "gaidaros";
                let _ = writeln!(
                    md,
                    "| {} | {server} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    if is_g { sc.title } else { "" },
                    fmt_num(m(req), 0),
                    if is_g {
                        "1".into()
                    } else {
                        fmt_ratios(&pair_ratios(samples, k, "gaidaros", server, req))
                    },
                    fmt_num(m(|s| s.p50_us), 0),
                    fmt_num(m(|s| s.p99_us), 0),
                    fmt_num(m(|s| s.p999_us), 0),
                    fmt_num(m(|s| s.cpu_us_per_req), 2),
                    fmt_num(m(|s| s.syscalls_per_req), 2),
                    fmt_num(instr(server), 0),
                    if is_g {
                        "1".into()
                    } else {
                        fmt_num(instr_ratio, 2)
                    },
                );
            }
            let req_ratio = pair_ratios(samples, k, "gaidaros", "tokio", req).1;
            let p99 = |server: &str| median_of(samples, k, server, |s| s.p99_us);
            let p99_ratio = match (p99("gaidaros"), p99("tokio")) {
                (Some(g), Some(t)) if t > 0.0 => Some(g / t),
                _ => None,
            };
            targets.push((
                format!("{}: instructions/request ≤ 0.8x tokio", sc.title),
                instr_ratio.map_or("–".into(), |r| format!("{r:.2}x")),
                instr_ratio.map(|r| r <= 0.8),
            ));
            targets.push((
                format!("{}: requests/s ≥ tokio", sc.title),
                req_ratio.map_or("–".into(), |r| format!("{r:.2}x")),
                req_ratio.map(|r| r >= 1.0),
            ));
            targets.push((
                format!("{}: p99 ≤ tokio", sc.title),
                p99_ratio.map_or("–".into(), |r| format!("{r:.2}x")),
                p99_ratio.map(|r| r <= 1.0),
            ));
            if let Some(r) = instr_ratio {
                bars.push(Bar {
                    group: sc.title.into(),
                    series: "efficiency vs tokio (instr)".into(),
                    value: 1.0 / r,
                    target: Some(1.25),
                });
            }
            if let Some(r) = req_ratio {
                bars.push(Bar {
                    group: sc.title.into(),
                    series: "req/s vs tokio".into(),
                    value: r,
                    target: Some(1.0),
                });
            }
            if let Some(r) = p99_ratio.filter(|r| *r > 0.0) {
                bars.push(Bar {
                    group: sc.title.into(),
                    series: "p99 vs tokio (inverted)".into(),
                    value: 1.0 / r,
                    target: Some(1.0),
                });
            }
        }
        md.push('\n');
    }

    // (e)
    if ran("e") {
        let _ = writeln!(
            md,
            "### (e) {} idle connections: server memory per connection\n",
            plan.idle_conns
        );
        let _ = writeln!(
            md,
            "Peak RSS growth of the server over the hold and a final one-request liveness check, over the connections held. \
             Kernel socket memory is not in RSS and is the same for both.\n"
        );
        let _ = writeln!(md, "| server | bytes/conn | ratio gaidaros ÷ tokio |");
        let _ = writeln!(md, "|---|---:|---|");
        let bpc: Field = |s| s.bytes_per_conn;
        for server in ECHO_SERVERS {
            let _ = writeln!(
                md,
                "| {server} | {} | {} |",
                fmt_num(median_of(samples, "e", server, bpc), 0),
                if server == "gaidaros" {
                    "1".into()
                } else {
                    fmt_ratios(&pair_ratios(samples, "e", "gaidaros", server, bpc))
                }
            );
        }
        md.push('\n');
        let g = median_of(samples, "e", "gaidaros", bpc);
        targets.push((
            "(e) ≤ 1 KiB per idle connection".into(),
            g.map_or("–".into(), |v| format!("{v:.0} B")),
            g.map(|v| v <= 1024.0),
        ));
        if let (Some(g), Some(t)) = (g, median_of(samples, "e", "tokio", bpc)) {
            if g > 0.0 {
                bars.push(Bar {
                    group: "(e) idle memory".into(),
                    series: "memory vs tokio (inverted)".into(),
                    value: t / g,
                    target: None,
                });
            }
        }
    }

    // (f)
    if ran("f") {
        let _ = writeln!(
            md,
            "### (f) {} MiB through a forwarder on loopback\n",
            plan.forward_bytes >> 20
        );
        let _ = writeln!(
            md,
            "`blast` writes the bytes, the forwarder relays them to `sink`, which answers with the count it read; \
             throughput is measured up to that answer. `gaidaros` splices in the kernel (the default), `gaidaros-copy` is `-o splice=false` \
             (bytes through the handler), `tokio` is tokio-forward (`copy_bidirectional`, {WORKERS} workers); `direct` is blast → sink with no forwarder (the limit), iperf3 one stream for reference. \
             CPU is the forwarder's (all its processes) per GiB.\n"
        );
        let _ = writeln!(
            md,
            "| path | Gbit/s | gaidaros ÷ path | forwarder CPU s/GiB |"
        );
        let _ = writeln!(md, "|---|---:|---|---:|");
        let gb: Field = |s| s.gbit_s;
        let names: Vec<&str> = [
            "gaidaros",
            "gaidaros-copy",
            "tokio",
            "socat",
            "nginx",
            "direct",
            "iperf3",
        ]
        .into_iter()
        .filter(|n| samples.iter().any(|s| s.scenario == "f" && s.server == *n))
        .collect();
        for name in &names {
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} |",
                fmt_num(median_of(samples, "f", name, gb), 2),
                if *name == "gaidaros" {
                    "1".into()
                } else {
                    fmt_ratios(&pair_ratios(samples, "f", "gaidaros", name, gb))
                },
                fmt_num(median_of(samples, "f", name, |s| s.cpu_s_per_gib), 3),
            );
        }
        md.push('\n');
        for (peer, want) in [("socat", 1.0), ("direct", 0.5), ("nginx", f64::NAN)] {
            let r = pair_ratios(samples, "f", "gaidaros", peer, gb).1;
            if !want.is_nan() {
                targets.push((
                    format!("(f) forward throughput ≥ {want:.1}x {peer}"),
                    r.map_or("–".into(), |r| format!("{r:.2}x")),
                    r.map(|r| r >= want),
                ));
            }
            if let Some(r) = r {
                bars.push(Bar {
                    group: "(f) forward".into(),
                    series: format!("throughput vs {peer}"),
                    value: r,
                    target: (!want.is_nan()).then_some(want),
                });
            }
        }
    }

    // (h)
    if ran("h") {
        let _ = writeln!(
            md,
            "### (h) Handler types: what running the service off the loop costs\n"
        );
        let _ = writeln!(
            md,
            "gaidaros echo `-S thread -N {WORKERS} -X TYPE -n 4`, one connection, one 64-byte request at a time: \
             the latency is the request's own path, with no queueing. Added = TYPE − blocking, pair by pair (median). \
             Instructions are user space, all threads and worker processes of the server (callgrind), per request.\n"
        );
        let _ = writeln!(
            md,
            "| -X | p50 µs | added µs | p99 µs | CPU µs/req | user instr/req | added instr |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
        let p50: Field = |s| s.p50_us;
        let instr = |k: &str| median_of(samples, "h", k, |s| s.instr_per_req);
        let mut added_us = HashMap::new();
        for kind in HANDLER_TYPES {
            let added = if kind == "blocking" {
                None
            } else {
                let diffs: Vec<f64> = (0..plan.pairs)
                    .filter_map(|p| {
                        let at = |k: &str| {
                            samples
                                .iter()
                                .find(|s| s.scenario == "h" && s.server == k && s.pair == p)
                                .and_then(|s| s.p50_us)
                        };
                        Some(at(kind)? - at("blocking")?)
                    })
                    .collect();
                measure::median(&diffs)
            };
            added_us.insert(kind, added);
            let added_instr = match (instr(kind), instr("blocking")) {
                (Some(k), Some(b)) if kind != "blocking" => Some(k - b),
                _ => None,
            };
            let _ = writeln!(
                md,
                "| {kind} | {} | {} | {} | {} | {} | {} |",
                fmt_num(median_of(samples, "h", kind, p50), 0),
                fmt_num(added, 1),
                fmt_num(median_of(samples, "h", kind, |s| s.p99_us), 0),
                fmt_num(median_of(samples, "h", kind, |s| s.cpu_us_per_req), 2),
                fmt_num(instr(kind), 0),
                fmt_num(added_instr, 0),
            );
        }
        md.push('\n');
        for (kind, limit) in [("threadpool", 5.0), ("procpool", 25.0), ("gthread", 5.0)] {
            let added = added_us.get(kind).copied().flatten();
            targets.push((
                format!("(h) -X {kind} adds ≤ {limit} µs median latency"),
                added.map_or("–".into(), |a| format!("{a:.1} µs")),
                added.map(|a| a <= limit),
            ));
        }
    }

    // (g)
    if ran("g") {
        let _ = writeln!(md, "### The load generator against itself\n");
        let one = median_of(samples, "g", "1 loadgen", |s| s.req_s);
        let two = median_of(samples, "g", "2 loadgen", |s| s.req_s);
        let r = pair_ratios(samples, "g", "2 loadgen", "1 loadgen", |s| s.req_s);
        let _ = writeln!(
            md,
            "Scenario (a)'s load on gaidaros from one loadgen process ({GEN_THREADS} threads, 64 connections) and from two \
             ({GEN_THREADS} threads, 32 connections each): {} vs {} req/s, two ÷ one = {}. \
             Near 1 means one generator is not what limits the run; well above 1 means it is.\n",
            fmt_num(one, 0),
            fmt_num(two, 0),
            fmt_ratios(&r)
        );
    }

    poll::report(&mut md, &mut targets, samples);
    baseline::report(&mut md, samples);
    http::report(&mut md, &mut targets, &mut bars, samples, plan);
    timers::report(&mut md, &mut targets, samples);
    udp::report(&mut md, &mut targets, samples);

    if !targets.is_empty() {
        let _ = writeln!(md, "### Targets\n");
        let _ = writeln!(md, "| target | measured (gaidaros ÷ peer) | verdict |");
        let _ = writeln!(md, "|---|---|---|");
        for (t, m, ok) in &targets {
            let _ = writeln!(md, "| {t} | {m} | {} |", verdict(*ok));
        }
        md.push('\n');
    }
    if !ctx.notes.is_empty() || !ctx.failures.is_empty() {
        let _ = writeln!(md, "Notes from this run:\n");
        for n in ctx.notes.iter().chain(&ctx.failures) {
            let _ = writeln!(md, "- {n}");
        }
        md.push('\n');
    }
    (md, bars)
}

const BEGIN: &str = "<!-- compare:begin -->";
const END: &str = "<!-- compare:end -->";

/// Put `body` between the markers of `path`, keeping what is around them;
/// a file without markers gets a title and the markers.
fn write_doc(path: &Path, body: &str) -> Result<(), String> {
    let old = fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{BEGIN}\n{body}{}", &old[..b], &old[e..])
        }
        _ => format!("# Benchmarks\n\n{BEGIN}\n{body}{END}\n{old}"),
    };
    fs::write(path, new).map_err(|e| format!("{}: {e}", path.display()))
}
