//! The HTTP scenarios: (i) and (j), `GET /hello` under wrk at 64 and 512
//! connections, gaidaros `--handler http` against hyper-hello and nginx
//! (`return 200`); (k), one large static file over loopback with curl,
//! gaidaros against nginx with sendfile on; (m), one small static file
//! (2 KiB) under wrk at 64 connections, gaidaros (its open-file cache on,
//! the default) against nginx (`open_file_cache` off, nginx's default).
//! With `--baseline`, every gaidaros server has its twin here too.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use gaidaros_benches::chart::Bar;
use gaidaros_benches::stats::{median_of, pair_ratios, Field};
use gaidaros_benches::{measure, tree_cpu_time, wrk, Sample, ServerProcess};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{fmt_num, fmt_ratios, free_port, running_as_root, wait_port, Ctx, Plan};
use super::{NO_REP_MOVSB, WORKERS};

/// A wrk scenario: hello, or a small file.
pub struct Hello {
    pub key: &'static str,
    pub title: &'static str,
    pub conns: usize,
    /// What wrk asks for.
    pub path: &'static str,
}

/// (i) and (j).
pub const HELLO: [Hello; 2] = [
    Hello {
        key: "i",
        title: "(i) HTTP hello, 64 conns",
        conns: 64,
        path: "/hello",
    },
    Hello {
        key: "j",
        title: "(j) HTTP hello, 512 conns",
        conns: 512,
        path: "/hello",
    },
];

/// (m).
pub const SMALL_FILE: Hello = Hello {
    key: "m",
    title: "(m) small static file, 64 conns",
    conns: 64,
    path: "/small.html",
};

/// The bytes of (m)'s file.
const SMALL_LEN: usize = 2048;

/// The HTTP servers compared, in run order.
pub const HTTP_SERVERS: [&str; 3] = ["gaidaros", "hyper", "nginx"];
/// The static file servers of (k).
pub const FILE_SERVERS: [&str; 2] = ["gaidaros", "nginx"];
/// wrk threads (the same two cores the servers use).
const WRK_THREADS: usize = 2;
/// The greeting every server answers.
const GREETING: &str = "Hello, World!";
/// The static file of (k).
const BIG_FILE: &str = "big.bin";

/// A server under test, whichever way it was started.
enum Running {
    /// Ours and hyper-hello: they print their address.
    Own(ServerProcess),
    /// nginx: started on a port chosen here.
    Nginx(Child, SocketAddr),
}

impl Running {
    fn addr(&self) -> SocketAddr {
        match self {
            Running::Own(p) => p.addr(),
            Running::Nginx(_, a) => *a,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Running::Own(p) => p.pid(),
            Running::Nginx(c, _) => c.id(),
        }
    }

    /// SIGTERM, and up to `grace` for it (and, under valgrind, its
    /// profiles) to finish.
    fn stop(self, grace: Duration) {
        match self {
            Running::Own(p) => {
                let _ = p.stop(grace);
            }
            Running::Nginx(mut child, _) => {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The command that starts `server`, serving `root` when given.
fn command(
    ctx: &Ctx,
    server: &str,
    root: Option<&Path>,
) -> Result<(Command, Option<SocketAddr>), String> {
    let baseline = super::baseline::counterpart(server).and(ctx.baseline.as_ref());
    let server = super::baseline::counterpart(server).unwrap_or(server);
    match server {
        "gaidaros" => {
            let mut c = Command::new(
                baseline
                    .cloned()
                    .unwrap_or_else(|| ctx.bin.join("gaidaros")),
            );
            c.args([
                "--handler",
                "http",
                "-S",
                "thread",
                "-N",
                &WORKERS.to_string(),
            ]);
            c.args(["--port", "0"]);
            if let Some(root) = root {
                c.arg("-o").arg(format!("root={}", root.display()));
            }
            Ok((c, None))
        }
        "hyper" => {
            let mut c = Command::new(ctx.bin.join("hyper-hello"));
            c.args(["--workers", &WORKERS.to_string()]);
            Ok((c, None))
        }
        "nginx" => {
            let port = free_port()?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let dir = ctx.work.join(format!("nginx-http-{port}"));
            fs::create_dir_all(&dir).map_err(|e| format!("nginx: {e}"))?;
            let location = match root {
                Some(root) => format!("root {}; sendfile on; tcp_nopush on;", root.display()),
                None => {
                    format!("default_type text/plain; location / {{ return 200 \"{GREETING}\"; }}")
                }
            };
            // As root, workers would switch to `nobody` and could not write
            // their profiles; keep them as the user running the comparison.
            let user = if running_as_root() {
                "user root;\n"
            } else {
                ""
            };
            let conf = format!(
                "{user}daemon off;\nmaster_process on;\nworker_processes {WORKERS};\n\
                 worker_rlimit_nofile 65536;\n\
                 pid {dir}/nginx.pid;\nerror_log stderr;\n\
                 events {{ worker_connections 20000; }}\n\
                 http {{ access_log off; keepalive_requests 1000000; \
                 server {{ listen 127.0.0.1:{port}; {location} }} }}\n",
                dir = dir.display()
            );
            let conf_path = dir.join("nginx.conf");
            fs::write(&conf_path, conf).map_err(|e| format!("nginx: {e}"))?;
            let mut c = Command::new("nginx");
            c.arg("-e")
                .arg("stderr")
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&conf_path);
            Ok((c, Some(addr)))
        }
        other => Err(format!("unknown HTTP server {other}")),
    }
}

/// Start `server`, under callgrind writing to `profile` when given.
fn start(
    ctx: &Ctx,
    server: &str,
    root: Option<&Path>,
    profile: Option<&Path>,
) -> Result<Running, String> {
    let (mut cmd, addr) = command(ctx, server, root)?;
    if let Some(out) = profile {
        cmd.env("GLIBC_TUNABLES", NO_REP_MOVSB);
        cmd = measure::under_callgrind(&cmd, out);
    }
    let startup = if profile.is_some() { 60 } else { 20 };
    match addr {
        None => ServerProcess::spawn(cmd, Duration::from_secs(startup))
            .map(Running::Own)
            .map_err(|e| format!("{server}: {e}")),
        Some(addr) => {
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run {server}: {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(startup);
            loop {
                match wait_port(addr, &mut child, server) {
                    Ok(()) => break,
                    Err(e) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(e);
                    }
                    Err(_) => {}
                }
            }
            Ok(Running::Nginx(child, addr))
        }
    }
}

/// Run wrk against `addr` for `secs` whole seconds.
fn wrk(addr: SocketAddr, path: &str, conns: usize, secs: u64) -> Result<wrk::WrkRun, String> {
    let out = Command::new("wrk")
        .arg(format!("-t{WRK_THREADS}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .args(["--timeout", "10s", "--latency"])
        .arg(format!("http://{addr}{path}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run wrk (package wrk): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("wrk failed ({}): {text}", out.status));
    }
    wrk::parse(&text)
}

fn whole_seconds(s: f64) -> u64 {
    s.ceil().max(1.0) as u64
}

/// One timed wrk run on a fresh server (serving `root` when given).
pub fn hello_run(
    ctx: &Ctx,
    plan: &Plan,
    sc: &Hello,
    server: &str,
    root: Option<&Path>,
    pair: usize,
) -> Result<Vec<Sample>, String> {
    let what = format!("({}) {server}", sc.key);
    let running = start(ctx, server, root, None)?;
    // Warm-up: connections made, caches and allocators in their steady state.
    let warm = wrk(running.addr(), sc.path, sc.conns, 1);
    let cpu0 = tree_cpu_time(running.pid()).map_err(|e| format!("{what}: {e}"))?;
    let run = warm.and_then(|_| {
        wrk(
            running.addr(),
            sc.path,
            sc.conns,
            whole_seconds(plan.duration),
        )
    });
    let cpu1 = tree_cpu_time(running.pid()).map_err(|e| format!("{what}: {e}"))?;
    running.stop(Duration::from_secs(5));
    let run = run.map_err(|e| format!("{what}: {e}"))?;
    let per_req = (run.requests > 0)
        .then(|| (cpu1.saturating_sub(cpu0)).as_micros() as f64 / run.requests as f64);
    Ok(vec![Sample {
        scenario: sc.key.into(),
        server: server.into(),
        pair,
        req_s: Some(run.requests_per_s),
        p50_us: Some(run.p50_us),
        p99_us: Some(run.p99_us),
        cpu_us_per_req: per_req,
        errors: run.errors,
        ..Sample::default()
    }])
}

/// User-space instructions per hello request: the server under callgrind
/// idle and under wrk load; the difference over the requests answered.
pub fn hello_instr(ctx: &Ctx, plan: &Plan, sc: &Hello, server: &str) -> Result<f64, String> {
    let total = |load: bool| -> Result<(u64, u64), String> {
        let out = ctx.work.join(format!(
            "callgrind.http.{server}.{}.{}",
            sc.key,
            if load { "load" } else { "idle" }
        ));
        let running = start(ctx, server, None, Some(&out))?;
        let requests = if load {
            let r = wrk(
                running.addr(),
                "/hello",
                sc.conns,
                whole_seconds(plan.callgrind_duration),
            );
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    running.stop(Duration::from_secs(60));
                    return Err(e);
                }
            };
            if r.errors > 0 {
                running.stop(Duration::from_secs(60));
                return Err(format!("{} errors under callgrind", r.errors));
            }
            r.requests
        } else {
            0
        };
        running.stop(Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            thread::sleep(Duration::from_millis(300));
            match measure::callgrind_sum(&out) {
                Ok((sum, files)) if files > 0 => return Ok((sum, requests)),
                Ok(_) | Err(_) if Instant::now() >= deadline => {
                    return Err(format!("{server} left no complete callgrind profile"))
                }
                _ => {}
            }
        }
    };
    let (idle, _) = total(false)?;
    let (loaded, requests) = total(true)?;
    if requests == 0 {
        return Err("no request answered under callgrind".into());
    }
    Ok(loaded.saturating_sub(idle) as f64 / requests as f64)
}

/// The directory holding (k)'s file of `bytes` bytes and (m)'s small one
/// (made once per run).
pub fn file_root(ctx: &Ctx, bytes: u64) -> Result<PathBuf, String> {
    let root = ctx.work.join("www");
    let path = root.join(BIG_FILE);
    fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let small: String = (0..SMALL_LEN)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let small_path = root.join(SMALL_FILE.path.trim_start_matches('/'));
    fs::write(&small_path, small).map_err(|e| format!("{}: {e}", small_path.display()))?;
    if fs::metadata(&path).is_ok_and(|m| m.len() == bytes) {
        return Ok(root);
    }
    let mut f = fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])
            .map_err(|e| format!("{}: {e}", path.display()))?;
        left -= n as u64;
    }
    Ok(root)
}

/// (k): download the file once with curl; Gbit/s and server CPU per GiB.
pub fn file_run(
    ctx: &Ctx,
    plan: &Plan,
    root: &Path,
    server: &str,
    pair: usize,
) -> Result<Vec<Sample>, String> {
    let what = format!("(k) {server}");
    let running = start(ctx, server, Some(root), None)?;
    let cpu0 = tree_cpu_time(running.pid()).map_err(|e| format!("{what}: {e}"))?;
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "120",
            "-w",
            "%{http_code} %{size_download} %{speed_download}",
        ])
        .arg(format!("http://{}/{BIG_FILE}", running.addr()))
        .output()
        .map_err(|e| format!("cannot run curl: {e}"));
    let cpu1 = tree_cpu_time(running.pid()).map_err(|e| format!("{what}: {e}"))?;
    running.stop(Duration::from_secs(5));
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let fields: Vec<&str> = text.split_whitespace().collect();
    let (code, size, speed) = match fields[..] {
        [c, s, v] => (
            c,
            s.parse::<u64>().unwrap_or(0),
            v.parse::<f64>().unwrap_or(0.0),
        ),
        _ => return Err(format!("{what}: curl printed {text:?}")),
    };
    let errors = u64::from(code != "200" || size != plan.stream_bytes);
    Ok(vec![Sample {
        scenario: "k".into(),
        server: server.into(),
        pair,
        gbit_s: Some(speed * 8.0 / 1e9),
        cpu_s_per_gib: Some(
            cpu1.saturating_sub(cpu0).as_secs_f64()
                / (plan.stream_bytes as f64 / (1u64 << 30) as f64),
        ),
        errors,
        ..Sample::default()
    }])
}

/// The HTTP part of the report.
pub fn report(
    md: &mut String,
    targets: &mut Vec<(String, String, Option<bool>)>,
    bars: &mut Vec<Bar>,
    samples: &[Sample],
    plan: &Plan,
) {
    let ran = |sc: &str| samples.iter().any(|s| s.scenario == sc);
    if HELLO.iter().any(|h| ran(h.key)) {
        let _ = writeln!(
            md,
            "### HTTP hello: gaidaros `--handler http -S thread -N {WORKERS}` vs hyper-hello ({WORKERS} workers) vs nginx ({WORKERS} workers, `return 200`)\n"
        );
        let _ = writeln!(
            md,
            "wrk `-t{WRK_THREADS} --latency`, `GET /hello`, a 1 s warm-up then the measured run, on a fresh server each time. \
             Ratios are gaidaros ÷ peer pair by pair (median). Efficiency is the peer's user-space instructions per request \
             over gaidaros's (callgrind, all processes and threads of the server, glibc's memcpy kept off `rep movsb`): \
             above 1, gaidaros does less work per request. nginx runs with `access_log off` and `keepalive_requests 1000000`.\n"
        );
        let _ = writeln!(
            md,
            "| scenario | server | req/s | gaidaros ÷ server req/s | p50 µs | p99 µs | CPU µs/req | user instr/req | efficiency (server ÷ gaidaros instr) |"
        );
        let _ = writeln!(md, "|---|---|---:|---|---:|---:|---:|---:|---:|");
        for sc in HELLO.iter().filter(|h| ran(h.key)) {
            let k = sc.key;
            let req: Field = |s| s.req_s;
            let instr = |server: &str| median_of(samples, k, server, |s| s.instr_per_req);
            for server in HTTP_SERVERS {
                if !samples
                    .iter()
                    .any(|s| s.scenario == k && s.server == server)
                {
                    continue;
                }
                let m = |f: Field| median_of(samples, k, server, f);
                let is_g = server == "gaidaros";
                let eff = match (instr(server), instr("gaidaros")) {
                    (Some(p), Some(g)) if g > 0.0 => Some(p / g),
                    _ => None,
                };
                let _ = writeln!(
                    md,
                    "| {} | {server} | {} | {} | {} | {} | {} | {} | {} |",
                    if is_g { sc.title } else { "" },
                    fmt_num(m(req), 0),
                    if is_g {
                        "1".into()
                    } else {
                        fmt_ratios(&pair_ratios(samples, k, "gaidaros", server, req))
                    },
                    fmt_num(m(|s| s.p50_us), 0),
                    fmt_num(m(|s| s.p99_us), 0),
                    fmt_num(m(|s| s.cpu_us_per_req), 2),
                    fmt_num(instr(server), 0),
                    if is_g { "1".into() } else { fmt_num(eff, 2) },
                );
            }
            for (peer, want) in [("nginx", 1.3), ("hyper", 1.2)] {
                if !samples.iter().any(|s| s.scenario == k && s.server == peer) {
                    continue;
                }
                let eff = match (instr(peer), instr("gaidaros")) {
                    (Some(p), Some(g)) if g > 0.0 => Some(p / g),
                    _ => None,
                };
                targets.push((
                    format!(
                        "{}: efficiency ≥ {want}x {peer} (its instr/req ÷ ours)",
                        sc.title
                    ),
                    eff.map_or("–".into(), |r| format!("{r:.2}x")),
                    eff.map(|r| r >= want),
                ));
                let rr = pair_ratios(samples, k, "gaidaros", peer, req).1;
                targets.push((
                    format!("{}: requests/s ≥ {peer}", sc.title),
                    rr.map_or("–".into(), |r| format!("{r:.2}x")),
                    rr.map(|r| r >= 1.0),
                ));
                let p99 = |s: &str| median_of(samples, k, s, |x| x.p99_us);
                let pr = match (p99("gaidaros"), p99(peer)) {
                    (Some(g), Some(p)) if p > 0.0 => Some(g / p),
                    _ => None,
                };
                targets.push((
                    format!("{}: p99 ≤ {peer}", sc.title),
                    pr.map_or("–".into(), |r| format!("{r:.2}x")),
                    pr.map(|r| r <= 1.0),
                ));
                if let Some(e) = eff {
                    bars.push(Bar {
                        group: sc.title.into(),
                        series: format!("efficiency vs {peer} (instr)"),
                        value: e,
                        target: Some(want),
                    });
                }
                if let Some(r) = rr {
                    bars.push(Bar {
                        group: sc.title.into(),
                        series: format!("req/s vs {peer}"),
                        value: r,
                        target: Some(1.0),
                    });
                }
            }
        }
        md.push('\n');
    }
    if ran("k") {
        let _ = writeln!(
            md,
            "### (k) A {} MiB static file over loopback: gaidaros (sendfile through the loop) vs nginx (`sendfile on`)\n",
            plan.stream_bytes >> 20
        );
        let _ = writeln!(
            md,
            "`curl -o /dev/null`, one download per server per pair, the file in the page cache. CPU is the server's (all processes) per GiB.\n"
        );
        let _ = writeln!(
            md,
            "| server | Gbit/s | gaidaros ÷ server | server CPU s/GiB |"
        );
        let _ = writeln!(md, "|---|---:|---|---:|");
        let gb: Field = |s| s.gbit_s;
        for server in FILE_SERVERS {
            if !samples
                .iter()
                .any(|s| s.scenario == "k" && s.server == server)
            {
                continue;
            }
            let _ = writeln!(
                md,
                "| {server} | {} | {} | {} |",
                fmt_num(median_of(samples, "k", server, gb), 2),
                if server == "gaidaros" {
                    "1".into()
                } else {
                    fmt_ratios(&pair_ratios(samples, "k", "gaidaros", server, gb))
                },
                fmt_num(median_of(samples, "k", server, |s| s.cpu_s_per_gib), 3),
            );
        }
        md.push('\n');
        let r = pair_ratios(samples, "k", "gaidaros", "nginx", gb).1;
        targets.push((
            "(k) static file throughput ≥ 1.0x nginx".into(),
            r.map_or("–".into(), |r| format!("{r:.2}x")),
            r.map(|r| r >= 1.0),
        ));
        if let Some(r) = r {
            bars.push(Bar {
                group: "(k) static file".into(),
                series: "throughput vs nginx".into(),
                value: r,
                target: Some(1.0),
            });
        }
    }
    if ran("m") {
        let k = SMALL_FILE.key;
        let _ = writeln!(
            md,
            "### {}: gaidaros (open-file cache on, its default) vs nginx (`open_file_cache` off, its default)\n",
            SMALL_FILE.title
        );
        let _ = writeln!(
            md,
            "wrk `-t{WRK_THREADS} --latency`, `GET {}` ({SMALL_LEN} bytes), a 1 s warm-up then the measured run, on a fresh server each time. \
             gaidaros opens a file the first time on its offload pool and then serves it from each loop's cache (1 s validity); \
             nginx opens and fstats the file for every request. Ratios are pair by pair (median); efficiency is nginx's CPU per request over gaidaros's.\n",
            SMALL_FILE.path
        );
        let _ = writeln!(
            md,
            "| server | req/s | gaidaros ÷ server req/s | p50 µs | p99 µs | CPU µs/req | efficiency (CPU, server ÷ gaidaros) |"
        );
        let _ = writeln!(md, "|---|---:|---|---:|---:|---:|---:|");
        let req: Field = |s| s.req_s;
        let cpu: Field = |s| s.cpu_us_per_req;
        for server in FILE_SERVERS {
            if !samples
                .iter()
                .any(|s| s.scenario == k && s.server == server)
            {
                continue;
            }
            let m = |f: Field| median_of(samples, k, server, f);
            let is_g = server == "gaidaros";
            let _ = writeln!(
                md,
                "| {server} | {} | {} | {} | {} | {} | {} |",
                fmt_num(m(req), 0),
                if is_g {
                    "1".into()
                } else {
                    fmt_ratios(&pair_ratios(samples, k, "gaidaros", server, req))
                },
                fmt_num(m(|s| s.p50_us), 0),
                fmt_num(m(|s| s.p99_us), 0),
                fmt_num(m(cpu), 2),
                if is_g {
                    "1".into()
                } else {
                    fmt_ratios(&pair_ratios(samples, k, server, "gaidaros", cpu))
                },
            );
        }
        md.push('\n');
        let r = pair_ratios(samples, k, "gaidaros", "nginx", req).1;
        targets.push((
            format!("{}: requests/s ≥ nginx", SMALL_FILE.title),
            r.map_or("–".into(), |r| format!("{r:.2}x")),
            r.map(|r| r >= 1.0),
        ));
    }
}
