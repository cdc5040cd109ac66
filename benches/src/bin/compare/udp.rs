//! (n) UDP echo: 64-byte datagrams from `udpgen` (4 clients, 32 in flight
//! each) echoed by `gaidaros --handler echo -P udp -S thread -N 2` (under
//! each backend of `--backends`) against `tokio-udp-echo` (2 workers on
//! one socket, `recv_from` / `send_to`) and `socat UDP4-RECVFROM:PORT,fork
//! PIPE` (a process per datagram, the classic tool). Each run starts a
//! fresh server; the server's CPU (user + system, every thread and child)
//! is divided by the datagrams it answered over the whole run.

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use gaidaros_benches::stats::{median_of, pair_ratios, Field};
use gaidaros_benches::{tree_cpu_time, Sample, ServerProcess};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Deserialize;

use super::{fmt_num, fmt_ratios, free_port, Ctx, Plan, WORKERS};

const KEY: &str = "n";
/// Bytes per datagram.
const SIZE: usize = 64;
/// The efficiency target against tokio (its CPU per datagram ÷ ours).
const TARGET: f64 = 1.5;

/// What udpgen reports (the fields used here).
#[derive(Deserialize)]
struct UdpReport {
    answers_per_s: f64,
    answered: u64,
    wrong: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

enum Running {
    Own(ServerProcess),
    Socat(Child, SocketAddr),
}

impl Running {
    fn addr(&self) -> SocketAddr {
        match self {
            Running::Own(p) => p.addr(),
            Running::Socat(_, a) => *a,
        }
    }
    fn pid(&self) -> u32 {
        match self {
            Running::Own(p) => p.pid(),
            Running::Socat(c, _) => c.id(),
        }
    }
    fn stop(self) {
        match self {
            Running::Own(p) => {
                let _ = p.stop(Duration::from_secs(5));
            }
            Running::Socat(mut c, _) => {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
                thread::sleep(Duration::from_millis(100));
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The name of gaidaros under `backend` in this scenario.
pub fn gaidaros(backend: &str) -> String {
    if backend == "edge" {
        "gaidaros -P udp".into()
    } else {
        format!("gaidaros -P udp -T {backend}")
    }
}

/// The servers of (n), in run order.
pub fn servers(ctx: &Ctx) -> Vec<String> {
    let mut all = vec![gaidaros("edge")];
    all.extend(
        ctx.backends
            .iter()
            .filter(|b| **b != "edge")
            .map(|b| gaidaros(b)),
    );
    all.push("tokio".into());
    if ctx.have["socat"] {
        all.push("socat".into());
    }
    all
}

fn start(ctx: &Ctx, server: &str) -> Result<Running, String> {
    match server {
        "tokio" => {
            let mut c = Command::new(ctx.bin.join("tokio-udp-echo"));
            c.args(["--workers", &WORKERS.to_string()]);
            ServerProcess::spawn(c, Duration::from_secs(20))
                .map(Running::Own)
                .map_err(|e| format!("tokio-udp-echo: {e}"))
        }
        "socat" => {
            let port = free_port()?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let child = Command::new("socat")
                .arg(format!("UDP4-RECVFROM:{port},fork,reuseaddr"))
                .arg("PIPE")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run socat: {e}"))?;
            let running = Running::Socat(child, addr);
            if answers(addr) {
                Ok(running)
            } else {
                running.stop();
                Err("socat did not answer a datagram".into())
            }
        }
        gaidaros => {
            let mut c = Command::new(ctx.bin.join("gaidaros"));
            c.args(["--handler", "echo", "-P", "udp", "-S", "thread", "-N"])
                .arg(WORKERS.to_string())
                .args(["--port", "0"]);
            if let Some(backend) = gaidaros.strip_prefix("gaidaros -P udp -T ") {
                c.args(["-T", backend]);
            }
            ServerProcess::spawn(c, Duration::from_secs(20))
                .map(Running::Own)
                .map_err(|e| format!("{gaidaros}: {e}"))
        }
    }
}

/// Does `addr` echo a datagram within 5 s?
fn answers(addr: SocketAddr) -> bool {
    let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        let _ = s.send_to(b"ping\n", addr);
        if s.recv_from(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

/// One timed run of `server`.
pub fn run(ctx: &Ctx, plan: &Plan, server: &str, pair: usize) -> Result<Vec<Sample>, String> {
    let what = format!("(n) {server}");
    let running = start(ctx, server)?;
    let cpu0 = tree_cpu_time(running.pid()).map_err(|e| format!("{what}: {e}"))?;
    let out = Command::new(ctx.bin.join("udpgen"))
        .arg("--addr")
        .arg(running.addr().to_string())
        .args(["--clients", "4", "--window", "32", "--size"])
        .arg(SIZE.to_string())
        .arg("--duration")
        .arg(plan.duration.to_string())
        .arg("--warmup")
        .arg(plan.warmup.to_string())
        .arg("--json")
        .stderr(Stdio::inherit())
        .output();
    let cpu1 = tree_cpu_time(running.pid()).map_err(|e| format!("{what}: {e}"));
    running.stop();
    let out = out.map_err(|e| format!("cannot run udpgen: {e}"))?;
    let cpu1 = cpu1?;
    let text = String::from_utf8_lossy(&out.stdout);
    let r: UdpReport = serde_json::from_str(text.trim())
        .map_err(|e| format!("{what}: udpgen printed {text:?}: {e}"))?;
    let per =
        (r.answered > 0).then(|| cpu1.saturating_sub(cpu0).as_micros() as f64 / r.answered as f64);
    Ok(vec![Sample {
        scenario: KEY.into(),
        server: server.into(),
        pair,
        req_s: Some(r.answers_per_s),
        p50_us: Some(r.p50_us),
        p99_us: Some(r.p99_us),
        p999_us: Some(r.p999_us),
        cpu_us_per_req: per,
        errors: r.wrong,
        ..Sample::default()
    }])
}

/// The "UDP echo" table and its targets.
pub fn report(
    md: &mut String,
    targets: &mut Vec<(String, String, Option<bool>)>,
    samples: &[Sample],
) {
    let mut names: Vec<String> = Vec::new();
    for s in samples.iter().filter(|s| s.scenario == KEY) {
        if !names.contains(&s.server) {
            names.push(s.server.clone());
        }
    }
    if names.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "### (n) UDP echo: gaidaros `--handler echo -P udp -S thread -N {WORKERS}` vs tokio-udp-echo ({WORKERS} workers) vs socat\n"
    );
    let _ = writeln!(
        md,
        "udpgen: 4 clients, 32 datagrams of {SIZE} bytes in flight each, every answer checked. CPU is the server's (user + system, all threads and processes) \
         per datagram answered; efficiency is tokio's CPU per datagram ÷ the row's, pair by pair (median, then each pair).\n"
    );
    let _ = writeln!(
        md,
        "| server | datagrams/s | ÷ tokio | p50 µs | p99 µs | p99.9 µs | CPU µs/datagram | efficiency vs tokio (CPU) |"
    );
    let _ = writeln!(md, "|---|---:|---|---:|---:|---:|---:|---:|");
    let req: Field = |s| s.req_s;
    let cpu: Field = |s| s.cpu_us_per_req;
    for name in &names {
        let m = |f: Field| median_of(samples, KEY, name, f);
        let vs = |f: Field, a: &str, b: &str| {
            if name == "tokio" {
                "1".to_string()
            } else {
                fmt_ratios(&pair_ratios(samples, KEY, a, b, f))
            }
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_num(m(req), 0),
            vs(req, name, "tokio"),
            fmt_num(m(|s| s.p50_us), 0),
            fmt_num(m(|s| s.p99_us), 0),
            fmt_num(m(|s| s.p999_us), 0),
            fmt_num(m(cpu), 2),
            vs(cpu, "tokio", name),
        );
    }
    md.push('\n');
    for name in names.iter().filter(|n| n.starts_with("gaidaros")) {
        let eff = pair_ratios(samples, KEY, "tokio", name, cpu).1;
        targets.push((
            format!("(n) {name}: ≥ {TARGET}x tokio's efficiency (its CPU per datagram ÷ ours)"),
            eff.map_or("–".into(), |r| format!("{r:.2}x")),
            eff.map(|r| r >= TARGET),
        ));
        let rr = pair_ratios(samples, KEY, name, "tokio", req).1;
        targets.push((
            format!("(n) {name}: datagrams/s ≥ tokio"),
            rr.map_or("–".into(), |r| format!("{r:.2}x")),
            rr.map(|r| r >= 1.0),
        ));
    }
}
