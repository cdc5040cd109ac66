//! The poll backends: gaidaros under `-T edge`, `-T level` and
//! `-T completion` in scenarios (a)-(d) and (f), tokio as the peer.
//!
//! Edge is the default, so the edge run is the ordinary `gaidaros` run of
//! each scenario; the other backends are extra servers named
//! `gaidaros -T BACKEND` that join the same alternation (edge, level,
//! completion, tokio in every pair). Efficiency is counted in instructions
//! per request, user + kernel (perf's counters): io_uring's gain is fewer
//! syscalls, which user-space counts (callgrind) cannot see. Where the
//! machine has no counters, CPU time per request (user + system, pair by
//! pair) stands in, and the report says so.

use std::fmt::Write as _;

use gaidaros_benches::stats::{median_of, pair_ratios, Field};
use gaidaros_benches::Sample;

use super::{fmt_num, fmt_ratios, ECHO};

/// The backends `-T` takes; edge (the default) first.
pub const BACKENDS: [&str; 3] = ["edge", "level", "completion"];
/// The scenarios run under each backend.
pub const SCENARIOS: &str = "abcdf";
/// The server name of the edge run: gaidaros with no `-T`.
pub const EDGE: &str = "gaidaros";
/// The peer of the echo scenarios and of (f).
const TOKIO: &str = "tokio";
/// What the issue asks of completion: total-instruction efficiency over
/// edge in (a) and (d).
const COMPLETION_EFFICIENCY: f64 = 1.15;

/// The backends named in `list` (comma-separated), in [`BACKENDS`] order.
pub fn parse(list: &str) -> Result<Vec<&'static str>, String> {
    let mut asked = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !BACKENDS.contains(&name) {
            return Err(format!(
                "unknown poll backend {name:?} (expected edge, level or completion)"
            ));
        }
        asked.push(name);
    }
    Ok(BACKENDS.into_iter().filter(|b| asked.contains(b)).collect())
}

/// The server name of gaidaros under `backend`.
pub fn server(backend: &str) -> String {
    if backend == "edge" {
        EDGE.to_string()
    } else {
        format!("gaidaros -T {backend}")
    }
}

/// The `-T` value a server name asks for (none for the default run).
pub fn flag(server: &str) -> Option<&str> {
    server.strip_prefix("gaidaros -T ")
}

/// The servers that run scenario `key`, in run order: gaidaros (edge), the
/// other `backends`, then `peers` (tokio for echo).
pub fn servers(key: &str, backends: &[&str], peers: &[&str]) -> Vec<String> {
    let mut all = vec![EDGE.to_string()];
    if SCENARIOS.contains(key) {
        all.extend(backends.iter().filter(|b| **b != "edge").map(|b| server(b)));
    }
    all.extend(peers.iter().map(|p| p.to_string()));
    all
}

/// A pair-by-pair ratio as a bare number, for a target line.
fn times(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("{r:.2}x"))
}

/// The "Poll backends" tables and their targets.
pub fn report(
    md: &mut String,
    targets: &mut Vec<(String, String, Option<bool>)>,
    samples: &[Sample],
) {
    let ran = |key: &str, server: &str| {
        samples
            .iter()
            .any(|s| s.scenario == key && s.server == server)
    };
    let backends: Vec<&str> = BACKENDS
        .into_iter()
        .filter(|b| *b != "edge")
        .filter(|b| SCENARIOS.chars().any(|k| ran(&k.to_string(), &server(b))))
        .collect();
    if backends.is_empty() {
        return;
    }
    let rows = |key: &str| -> Vec<(String, String)> {
        let mut rows = vec![("edge (`gaidaros`)".to_string(), EDGE.to_string())];
        rows.extend(
            backends
                .iter()
                .filter(|b| ran(key, &server(b)))
                .map(|b| (b.to_string(), server(b))),
        );
        rows.push(("tokio (peer)".into(), TOKIO.into()));
        rows.into_iter().filter(|(_, s)| ran(key, s)).collect()
    };
    let ratio = |key: &str, a: &str, b: &str, f: Field| -> String {
        if a == b {
            "1".into()
        } else {
            fmt_ratios(&pair_ratios(samples, key, a, b, f))
        }
    };
    let total: Field = Sample::total_instr_per_req;
    let cpu: Field = |s| s.cpu_us_per_req;

    let _ = writeln!(
        md,
        "### Poll backends: gaidaros `-T edge|level|completion` vs tokio\n"
    );
    let _ = writeln!(
        md,
        "The echo and forward servers of (a)-(d) and (f) under each poll backend, in the same alternation as the other \
         runs (edge, level, completion, tokio in every pair); edge is the default, the `gaidaros` run above. \
         Throughput ratios are the row's ÷ edge and ÷ tokio, pair by pair (median, then each pair). \
         Efficiency is edge's (or tokio's) cost per request ÷ the row's, pair by pair: above 1, the row does less work. \
         Total instructions are user + kernel (perf `instructions:u` + `instructions:k`, the server's every thread over the \
         whole run, warm-up included); user instructions are callgrind's, as in the echo table; CPU is user + system \
         from /proc, the kernel's part (sys) beside it.\n"
    );
    let echo: Vec<_> = ECHO
        .iter()
        .filter(|e| SCENARIOS.contains(e.key) && ran(e.key, EDGE))
        .collect();
    if !echo.is_empty() {
        let _ = writeln!(
            md,
            "| scenario | backend | req/s | ÷ edge | ÷ tokio | total instr/req | kernel instr/req | user instr/req (callgrind) | CPU µs/req | sys µs/req | syscalls/req | efficiency vs edge (total instr) | vs tokio (total instr) | efficiency vs edge (CPU) | vs tokio (CPU) |"
        );
        let _ = writeln!(
            md,
            "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---|"
        );
        for sc in echo {
            let k = sc.key;
            for (i, (label, name)) in rows(k).iter().enumerate() {
                let m = |f: Field| median_of(samples, k, name, f);
                let req: Field = |s| s.req_s;
                let _ = writeln!(
                    md,
                    "| {} | {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    if i == 0 { sc.title } else { "" },
                    fmt_num(m(req), 0),
                    ratio(k, name, EDGE, req),
                    ratio(k, name, TOKIO, req),
                    fmt_num(m(total), 0),
                    fmt_num(m(|s| s.perf_kernel_instr_per_req), 0),
                    fmt_num(m(|s| s.instr_per_req), 0),
                    fmt_num(m(cpu), 2),
                    fmt_num(m(|s| s.sys_us_per_req), 2),
                    fmt_num(m(|s| s.syscalls_per_req), 2),
                    ratio(k, EDGE, name, total),
                    ratio(k, TOKIO, name, total),
                    ratio(k, EDGE, name, cpu),
                    ratio(k, TOKIO, name, cpu),
                );
            }
        }
        md.push('\n');
    }
    if ran("f", EDGE) {
        let gb: Field = |s| s.gbit_s;
        let per_gib: Field = |s| s.cpu_s_per_gib;
        let _ = writeln!(
            md,
            "(f) through the forwarder: gaidaros `forward` (spliced) under each backend, tokio-forward \
             (`copy_bidirectional`) as the peer; CPU is the forwarder's per GiB.\n"
        );
        let _ = writeln!(
            md,
            "| backend | Gbit/s | ÷ edge | ÷ tokio | CPU s/GiB | efficiency vs edge (CPU) | vs tokio (CPU) |"
        );
        let _ = writeln!(md, "|---|---:|---|---|---:|---|---|");
        for (label, name) in rows("f") {
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} | {} |",
                fmt_num(median_of(samples, "f", &name, gb), 2),
                ratio("f", &name, EDGE, gb),
                ratio("f", &name, TOKIO, gb),
                fmt_num(median_of(samples, "f", &name, per_gib), 3),
                ratio("f", EDGE, &name, per_gib),
                ratio("f", TOKIO, &name, per_gib),
            );
        }
        md.push('\n');
    }

    // The targets, for completion.
    let completion = server("completion");
    for sc in ECHO.iter().filter(|e| matches!(e.key, "a" | "d")) {
        if !ran(sc.key, &completion) || !ran(sc.key, EDGE) {
            continue;
        }
        let by_instr = pair_ratios(samples, sc.key, EDGE, &completion, total).1;
        targets.push((
            format!(
                "{}: completion ≥ {COMPLETION_EFFICIENCY}x as efficient as edge (total instr/req, user + kernel; edge ÷ completion)",
                sc.title
            ),
            times(by_instr),
            by_instr.map(|r| r >= COMPLETION_EFFICIENCY),
        ));
        if by_instr.is_none() {
            let by_cpu = pair_ratios(samples, sc.key, EDGE, &completion, cpu).1;
            targets.push((
                format!(
                    "{}: completion ≥ {COMPLETION_EFFICIENCY}x as efficient as edge in CPU µs/req (stand-in: no instruction counters here)",
                    sc.title
                ),
                times(by_cpu),
                by_cpu.map(|r| r >= COMPLETION_EFFICIENCY),
            ));
        }
    }
    if ran("f", &completion) && ran("f", EDGE) {
        let r = pair_ratios(samples, "f", &completion, EDGE, |s| s.gbit_s).1;
        targets.push((
            "(f) completion forward throughput ≥ edge (completion ÷ edge)".into(),
            times(r),
            r.map(|r| r >= 1.0),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_in_a_fixed_order() {
        assert_eq!(
            parse("completion, edge,level").unwrap(),
            ["edge", "level", "completion"]
        );
        assert_eq!(parse("").unwrap(), Vec::<&str>::new());
        assert!(parse("edge,uring").unwrap_err().contains("uring"));
    }

    #[test]
    fn edge_is_the_default_run_and_others_carry_their_flag() {
        assert_eq!(server("edge"), "gaidaros");
        assert_eq!(server("level"), "gaidaros -T level");
        assert_eq!(flag(&server("completion")), Some("completion"));
        assert_eq!(flag("gaidaros"), None);
        assert_eq!(flag("gaidaros-copy"), None);
    }

    #[test]
    fn backends_join_their_scenarios_only() {
        let b = ["edge", "completion"];
        assert_eq!(
            servers("a", &b, &["tokio"]),
            ["gaidaros", "gaidaros -T completion", "tokio"]
        );
        assert_eq!(servers("e", &b, &["tokio"]), ["gaidaros", "tokio"]);
    }

    fn run(scenario: &str, server: &str, pair: usize, cpu: f64, user: f64, kernel: f64) -> Sample {
        Sample {
            scenario: scenario.into(),
            server: server.into(),
            pair,
            req_s: Some(1000.0),
            gbit_s: Some(10.0),
            cpu_us_per_req: Some(cpu),
            perf_user_instr_per_req: Some(user).filter(|u| *u > 0.0),
            perf_kernel_instr_per_req: Some(kernel).filter(|k| *k > 0.0),
            ..Sample::default()
        }
    }

    #[test]
    fn completion_is_judged_on_total_instructions_when_counted() {
        // Edge 1000 + 5000, completion 1500 + 3500: 6000 ÷ 5000 = 1.2x,
        // although completion does more in user space.
        let samples = [
            run("a", EDGE, 0, 10.0, 1000.0, 5000.0),
            run("a", "gaidaros -T completion", 0, 10.0, 1500.0, 3500.0),
            run("a", TOKIO, 0, 10.0, 1200.0, 5000.0),
        ];
        let (mut md, mut targets) = (String::new(), Vec::new());
        report(&mut md, &mut targets, &samples);
        assert!(md.contains("### Poll backends"), "{md}");
        assert_eq!(targets.len(), 1, "{targets:?}");
        assert_eq!(targets[0].1, "1.20x");
        assert_eq!(targets[0].2, Some(true));
    }

    #[test]
    fn without_counters_cpu_stands_in_and_says_so() {
        let samples = [
            run("d", EDGE, 0, 1.0, 0.0, 0.0),
            run("d", "gaidaros -T completion", 0, 1.0, 0.0, 0.0),
            run("f", EDGE, 0, 1.0, 0.0, 0.0),
            run("f", "gaidaros -T completion", 0, 1.0, 0.0, 0.0),
        ];
        let (mut md, mut targets) = (String::new(), Vec::new());
        report(&mut md, &mut targets, &samples);
        let verdicts: Vec<_> = targets.iter().map(|t| (t.1.as_str(), t.2)).collect();
        assert_eq!(
            verdicts,
            [("–", None), ("1.00x", Some(false)), ("1.00x", Some(true))]
        );
        assert!(targets[1].0.contains("stand-in"), "{targets:?}");
    }
}
