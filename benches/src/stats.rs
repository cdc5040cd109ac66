//! The comparison's numbers: one measured run per server per pair, and the
//! medians and gaidaros/peer ratios (pair by pair) the tables are made of.

use serde::{Deserialize, Serialize};

use crate::measure::median;

/// One measured run of one server in one scenario: the load generator's
/// view (throughput, latency) and the server's (CPU, syscalls, memory).
/// Fields that do not apply to a scenario are `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Scenario key, e.g. `a`.
    pub scenario: String,
    /// Server name, e.g. `gaidaros` or `tokio`.
    pub server: String,
    /// Which alternating pair this run belongs to (0-based).
    pub pair: usize,
    /// Requests per second (echo scenarios).
    pub req_s: Option<f64>,
    /// Median latency, microseconds.
    pub p50_us: Option<f64>,
    /// 99th percentile latency, microseconds.
    pub p99_us: Option<f64>,
    /// 99.9th percentile latency, microseconds.
    pub p999_us: Option<f64>,
    /// Server CPU time (user + system) per request, microseconds.
    pub cpu_us_per_req: Option<f64>,
    /// Server syscalls per request (perf).
    pub syscalls_per_req: Option<f64>,
    /// Server context switches per request (perf).
    pub ctxsw_per_req: Option<f64>,
    /// Server system (kernel) CPU time per request, microseconds: the
    /// kernel's part of `cpu_us_per_req`.
    pub sys_us_per_req: Option<f64>,
    /// Server user-space instructions per request (callgrind).
    pub instr_per_req: Option<f64>,
    /// Server user-space instructions per request from the CPU's counters
    /// (perf `instructions:u`), where the machine exposes them.
    pub perf_user_instr_per_req: Option<f64>,
    /// Server kernel instructions per request from the CPU's counters
    /// (perf `instructions:k`), where the machine exposes them.
    pub perf_kernel_instr_per_req: Option<f64>,
    /// Server resident memory growth per held connection, bytes.
    pub bytes_per_conn: Option<f64>,
    /// Stream throughput, Gbit/s.
    pub gbit_s: Option<f64>,
    /// Server CPU seconds per GiB streamed.
    pub cpu_s_per_gib: Option<f64>,
    /// Errors the client saw (connect failures, disconnects, wrong bytes).
    pub errors: u64,
}

impl Sample {
    /// User + kernel instructions per request (perf), when both were
    /// counted: all the work a request costs, wherever it is done.
    pub fn total_instr_per_req(&self) -> Option<f64> {
        Some(self.perf_user_instr_per_req? + self.perf_kernel_instr_per_req?)
    }
}

/// A numeric field of [`Sample`], for generic medians and ratios.
pub type Field = fn(&Sample) -> Option<f64>;

/// The median of `field` over the runs of `server` in `scenario`.
pub fn median_of(samples: &[Sample], scenario: &str, server: &str, field: Field) -> Option<f64> {
    let v: Vec<f64> = samples
        .iter()
        .filter(|s| s.scenario == scenario && s.server == server)
        .filter_map(field)
        .collect();
    median(&v)
}

/// `field` of `a` over `field` of `b`, pair by pair (runs with the same
/// pair number), and the median of those ratios. Pairing cancels drift on
/// the machine that a ratio of two medians would keep.
pub fn pair_ratios(
    samples: &[Sample],
    scenario: &str,
    a: &str,
    b: &str,
    field: Field,
) -> (Vec<f64>, Option<f64>) {
    let pick = |server: &str, pair: usize| {
        samples
            .iter()
            .find(|s| s.scenario == scenario && s.server == server && s.pair == pair)
            .and_then(field)
    };
    let pairs = samples
        .iter()
        .filter(|s| s.scenario == scenario)
        .map(|s| s.pair + 1)
        .max()
        .unwrap_or(0);
    let ratios: Vec<f64> = (0..pairs)
        .filter_map(|p| match (pick(a, p), pick(b, p)) {
            (Some(x), Some(y)) if y > 0.0 => Some(x / y),
            _ => None,
        })
        .collect();
    let m = median(&ratios);
    (ratios, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(server: &str, pair: usize, req_s: f64) -> Sample {
        Sample {
            scenario: "a".into(),
            server: server.into(),
            pair,
            req_s: Some(req_s),
            ..Sample::default()
        }
    }

    #[test]
    fn ratios_are_taken_pair_by_pair() {
        let runs = [
            s("g", 0, 100.0),
            s("t", 0, 50.0),
            s("g", 1, 10.0),
            s("t", 1, 10.0),
            s("g", 2, 30.0),
            s("t", 2, 20.0),
        ];
        let (ratios, m) = pair_ratios(&runs, "a", "g", "t", |s| s.req_s);
        assert_eq!(ratios, vec![2.0, 1.0, 1.5]);
        assert_eq!(m, Some(1.5));
        assert_eq!(median_of(&runs, "a", "g", |s| s.req_s), Some(30.0));
        assert_eq!(median_of(&runs, "b", "g", |s| s.req_s), None);
    }

    #[test]
    fn total_instructions_need_both_counts() {
        let mut x = s("g", 0, 1.0);
        assert_eq!(x.total_instr_per_req(), None);
        x.perf_user_instr_per_req = Some(1500.0);
        assert_eq!(x.total_instr_per_req(), None);
        x.perf_kernel_instr_per_req = Some(4000.0);
        assert_eq!(x.total_instr_per_req(), Some(5500.0));
    }

    #[test]
    fn samples_written_before_a_field_existed_still_read() {
        // compare --from re-renders older JSON lines.
        let line = r#"{"scenario":"a","server":"tokio","pair":0,"req_s":5.0,"p50_us":null,"p99_us":null,"p999_us":null,"cpu_us_per_req":null,"syscalls_per_req":null,"ctxsw_per_req":null,"instr_per_req":null,"bytes_per_conn":null,"gbit_s":null,"cpu_s_per_gib":null,"errors":0}"#;
        let x: Sample = serde_json::from_str(line).unwrap();
        assert_eq!(x.req_s, Some(5.0));
        assert_eq!(x.sys_us_per_req, None);
        assert_eq!(x.perf_kernel_instr_per_req, None);
    }

    #[test]
    fn a_missing_partner_drops_the_pair() {
        let runs = [s("g", 0, 100.0), s("g", 1, 10.0), s("t", 1, 5.0)];
        let (ratios, _) = pair_ratios(&runs, "a", "g", "t", |s| s.req_s);
        assert_eq!(ratios, vec![2.0]);
    }
}
