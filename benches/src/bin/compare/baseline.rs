//! The baseline: a second gaidaros binary (`--baseline`, typically built
//! from an older commit) run as a peer of the current one, to show that
//! the new binary is not slower than the old.
//!
//! Every gaidaros server of (a)-(d) and (f) (edge, each other poll backend
//! of `--backends`, and `gaidaros-copy` in (f)) gets a twin named after it
//! with [`MARK`] appended (`gaidaros@baseline`,
//! `gaidaros -T completion@baseline`): the baseline binary with the same
//! arguments, run right after its counterpart in every pair. The "Old vs
//! new binary" table puts each server beside its twin: throughput new ÷
//! baseline and CPU efficiency baseline ÷ new, pair by pair, so above 1
//! the new binary is better either way.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gaidaros_benches::stats::{median_of, pair_ratios, Field};
use gaidaros_benches::Sample;

use super::{fmt_num, fmt_ratios, ECHO};

/// What a baseline twin's name adds to its counterpart's.
pub const MARK: &str = "@baseline";

/// The name of the baseline twin of gaidaros server `server`.
pub fn twin(server: &str) -> String {
    format!("{server}{MARK}")
}

/// The gaidaros server a baseline twin stands beside (none for a server
/// that is not a twin).
pub fn counterpart(server: &str) -> Option<&str> {
    server.strip_suffix(MARK)
}

/// `servers` with a twin right after each gaidaros server, so a server
/// and its twin are neighbours in the alternation.
pub fn with_twins(servers: Vec<String>) -> Vec<String> {
    servers
        .into_iter()
        .flat_map(|s| {
            let t = s.starts_with("gaidaros").then(|| twin(&s));
            [Some(s), t]
        })
        .flatten()
        .collect()
}

/// `path` as the baseline: an executable file, made absolute.
pub fn check(path: &Path) -> Result<PathBuf, String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{} is not a file (expected a gaidaros binary)",
            path.display()
        ));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not executable", path.display()));
    }
    fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The servers of `key` that ran beside a twin, in run order.
fn paired(samples: &[Sample], key: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for s in samples.iter().filter(|s| s.scenario == key) {
        if let Some(new) = counterpart(&s.server) {
            if !names.iter().any(|n| n == new) {
                names.push(new.to_string());
            }
        }
    }
    names
}

/// The "Old vs new binary" tables, when twins ran.
pub fn report(md: &mut String, samples: &[Sample]) {
    let echo: Vec<_> = ECHO
        .iter()
        .filter(|e| !paired(samples, e.key).is_empty())
        .collect();
    let forward = paired(samples, "f");
    let http: Vec<&str> = ["i", "j", "m", "k"]
        .into_iter()
        .filter(|k| !paired(samples, k).is_empty())
        .collect();
    if echo.is_empty() && forward.is_empty() && http.is_empty() {
        return;
    }
    let ratio =
        |key: &str, a: &str, b: &str, f: Field| fmt_ratios(&pair_ratios(samples, key, a, b, f));
    let _ = writeln!(md, "### Old vs new binary: gaidaros ÷ gaidaros{MARK}\n");
    let _ = writeln!(
        md,
        "`NAME{MARK}` is the `--baseline` binary with the same arguments as server `NAME`, run right after it in every pair. \
         Above 1 the new binary is better: throughput is new ÷ baseline, efficiency is the baseline's cost ÷ the new one's, \
         pair by pair (median, then each pair). CPU is user + system of all the server's threads; user instructions are \
         callgrind's, one run each.\n"
    );
    if !echo.is_empty() {
        let _ = writeln!(
            md,
            "| scenario | server | req/s | req/s{MARK} | new ÷ baseline | p99 µs | p99 µs{MARK} | CPU µs/req | CPU µs/req{MARK} | efficiency (CPU) | user instr/req | user instr/req{MARK} | efficiency (instr) |"
        );
        let _ = writeln!(
            md,
            "|---|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|"
        );
        let req: Field = |s| s.req_s;
        let p99: Field = |s| s.p99_us;
        let cpu: Field = |s| s.cpu_us_per_req;
        let instr: Field = |s| s.instr_per_req;
        for sc in echo {
            let k = sc.key;
            for (i, new) in paired(samples, k).iter().enumerate() {
                let old = twin(new);
                let m = |name: &str, f: Field| median_of(samples, k, name, f);
                // One callgrind run each: a ratio of the two counts.
                let instr_eff = match (m(&old, instr), m(new, instr)) {
                    (Some(o), Some(n)) if n > 0.0 => Some(o / n),
                    _ => None,
                };
                let _ = writeln!(
                    md,
                    "| {} | `{new}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    if i == 0 { sc.title } else { "" },
                    fmt_num(m(new, req), 0),
                    fmt_num(m(&old, req), 0),
                    ratio(k, new, &old, req),
                    fmt_num(m(new, p99), 0),
                    fmt_num(m(&old, p99), 0),
                    fmt_num(m(new, cpu), 2),
                    fmt_num(m(&old, cpu), 2),
                    ratio(k, &old, new, cpu),
                    fmt_num(m(new, instr), 0),
                    fmt_num(m(&old, instr), 0),
                    fmt_num(instr_eff, 2),
                );
            }
        }
        md.push('\n');
    }
    if !forward.is_empty() {
        let gb: Field = |s| s.gbit_s;
        let per_gib: Field = |s| s.cpu_s_per_gib;
        let m = |name: &str, f: Field| median_of(samples, "f", name, f);
        let _ = writeln!(
            md,
            "(f) through the forwarder; CPU is the forwarder's per GiB.\n"
        );
        let _ = writeln!(
            md,
            "| server | Gbit/s | Gbit/s{MARK} | new ÷ baseline | CPU s/GiB | CPU s/GiB{MARK} | efficiency (CPU) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---|---:|---:|---|");
        for new in &forward {
            let old = twin(new);
            let _ = writeln!(
                md,
                "| `{new}` | {} | {} | {} | {} | {} | {} |",
                fmt_num(m(new, gb), 2),
                fmt_num(m(&old, gb), 2),
                ratio("f", new, &old, gb),
                fmt_num(m(new, per_gib), 3),
                fmt_num(m(&old, per_gib), 3),
                ratio("f", &old, new, per_gib),
            );
        }
        md.push('\n');
    }
    if !http.is_empty() {
        let _ = writeln!(
            md,
            "HTTP: (i), (j) hello and (m) a small file under wrk (req/s, CPU per request), (k) a large file with curl (Gbit/s, CPU per GiB).\n"
        );
        let _ = writeln!(
            md,
            "| scenario | server | throughput | throughput{MARK} | new ÷ baseline | CPU | CPU{MARK} | efficiency (CPU) |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---|---:|---:|---|");
        for k in http {
            let (tput, cpu, unit): (Field, Field, &str) = if k == "k" {
                (|s| s.gbit_s, |s| s.cpu_s_per_gib, "Gbit/s; s/GiB")
            } else {
                (|s| s.req_s, |s| s.cpu_us_per_req, "req/s; µs/req")
            };
            for new in paired(samples, k) {
                let old = twin(&new);
                let m = |name: &str, f: Field| median_of(samples, k, name, f);
                let digits = if k == "k" { 2 } else { 0 };
                let _ = writeln!(
                    md,
                    "| ({k}) {unit} | `{new}` | {} | {} | {} | {} | {} | {} |",
                    fmt_num(m(&new, tput), digits),
                    fmt_num(m(&old, tput), digits),
                    ratio(k, &new, &old, tput),
                    fmt_num(m(&new, cpu), 3),
                    fmt_num(m(&old, cpu), 3),
                    ratio(k, &old, &new, cpu),
                );
            }
        }
        md.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_gaidaros_server_is_followed_by_its_twin() {
        let servers = [
            "gaidaros",
            "gaidaros -T completion",
            "gaidaros-copy",
            "tokio",
            "direct",
        ];
        assert_eq!(
            with_twins(servers.map(String::from).to_vec()),
            [
                "gaidaros",
                "gaidaros@baseline",
                "gaidaros -T completion",
                "gaidaros -T completion@baseline",
                "gaidaros-copy",
                "gaidaros-copy@baseline",
                "tokio",
                "direct",
            ]
        );
        assert_eq!(
            counterpart("gaidaros -T level@baseline"),
            Some("gaidaros -T level")
        );
        assert_eq!(counterpart("gaidaros -T level"), None);
    }

    fn run(server: &str, pair: usize, req_s: f64, cpu: f64) -> Sample {
        Sample {
            scenario: "a".into(),
            server: server.into(),
            pair,
            req_s: Some(req_s),
            cpu_us_per_req: Some(cpu),
            ..Sample::default()
        }
    }

    #[test]
    fn the_table_puts_each_server_beside_its_twin() {
        let samples = [
            run("gaidaros", 0, 1100.0, 9.0),
            run("gaidaros@baseline", 0, 1000.0, 10.0),
            run("tokio", 0, 900.0, 11.0),
        ];
        let mut md = String::new();
        report(&mut md, &samples);
        let row = md
            .lines()
            .find(|l| l.contains("| `gaidaros` |"))
            .unwrap_or_else(|| panic!("{md}"));
        // req/s 1100 ÷ 1000, CPU efficiency 10 ÷ 9.
        assert!(row.contains("| **1.10** |"), "{row}");
        assert!(row.contains("| **1.11** |"), "{row}");
        assert!(!md.contains("tokio"), "{md}");
    }

    #[test]
    fn no_twins_no_table() {
        let mut md = String::new();
        report(
            &mut md,
            &[run("gaidaros", 0, 1.0, 1.0), run("tokio", 0, 1.0, 1.0)],
        );
        assert!(md.is_empty(), "{md}");
    }
}
