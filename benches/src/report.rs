//! The result of one load generator run: human text through `Display`, and
//! one JSON line (serde) for a runner to parse.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What the load generator does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each connection keeps `depth` requests in flight and sends the next
    /// as soon as one is echoed.
    Pingpong,
    /// Connect, stay idle for the duration, then check each connection
    /// still answers one request.
    Hold,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Pingpong => "pingpong",
            Mode::Hold => "hold",
        })
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pingpong" => Ok(Mode::Pingpong),
            "hold" => Ok(Mode::Hold),
            other => Err(format!("unknown mode {other:?}: expected pingpong or hold")),
        }
    }
}

/// One run of the load generator.
///
/// `errors` is the sum of `connect_failures`, `disconnects` and
/// `mismatches`: a run is clean exactly when it is 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Pingpong or hold.
    pub mode: Mode,
    /// The server's address.
    pub addr: String,
    /// Connections asked for (`-c`).
    pub connections: usize,
    /// Connections whose TCP handshake completed.
    pub established: usize,
    /// Bytes per request, the final LF included (`-m`).
    pub message_size: usize,
    /// Requests in flight per connection (`-d`).
    pub depth: usize,
    /// Load generator threads.
    pub threads: usize,
    /// The measured window in seconds (warm-up excluded).
    pub duration_s: f64,
    /// Requests echoed correctly inside the window; in hold mode, the
    /// liveness requests answered after the hold.
    pub requests: u64,
    /// `requests / duration_s`; 0 in hold mode.
    pub requests_per_s: f64,
    /// Requests echoed correctly over the whole run, warm-up included:
    /// divide the server's CPU time over the run by this.
    pub echoed: u64,
    /// CPU seconds (user + system) the load generator itself used; near
    /// `threads * wall time` means the generator may be the bottleneck.
    pub cpu_s: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile latency, microseconds.
    pub p999_us: f64,
    /// Largest latency, microseconds.
    pub max_us: f64,
    /// Connections that could not be established.
    pub connect_failures: u64,
    /// Established connections the server closed or reset.
    pub disconnects: u64,
    /// Echoed requests whose bytes differ from what was sent, and bytes
    /// the server sent that were never asked for.
    pub mismatches: u64,
    /// `connect_failures + disconnects + mismatches`.
    pub errors: u64,
    /// Hold mode: connections that answered one request after the hold.
    /// `None` in pingpong mode.
    pub alive: Option<usize>,
}

impl Report {
    /// Parse the JSON line `loadgen --json` printed.
    pub fn from_json(line: &str) -> Result<Report, serde_json::Error> {
        serde_json::from_str(line.trim())
    }

    /// The report as one JSON line (no trailing newline).
    pub fn to_json(&self) -> String {
        // A struct of numbers, strings and a unit enum always serializes.
        serde_json::to_string(self).expect("Report serializes")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} {}: {}/{} connections, {} B messages, depth {}, {} thread(s), {:.1} s",
            self.mode,
            self.addr,
            self.established,
            self.connections,
            self.message_size,
            self.depth,
            self.threads,
            self.duration_s,
        )?;
        match self.mode {
            Mode::Pingpong => writeln!(
                f,
                "  requests   {} ({:.0} req/s)",
                self.requests, self.requests_per_s
            )?,
            Mode::Hold => writeln!(
                f,
                "  alive      {} of {} established answered after the hold",
                self.alive.unwrap_or(0),
                self.established
            )?,
        }
        writeln!(
            f,
            "  latency    p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  max {:.1} us",
            self.p50_us, self.p99_us, self.p999_us, self.max_us
        )?;
        writeln!(f, "  loadgen    {:.2} s CPU", self.cpu_s)?;
        write!(
            f,
            "  errors     {} (connect failures {}, disconnects {}, mismatches {})",
            self.errors, self.connect_failures, self.disconnects, self.mismatches
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            mode: Mode::Hold,
            addr: "127.0.0.1:9".into(),
            connections: 10,
            established: 9,
            message_size: 64,
            depth: 1,
            threads: 1,
            duration_s: 5.0,
            requests: 8,
            requests_per_s: 0.0,
            echoed: 8,
            cpu_s: 0.25,
            p50_us: 12.5,
            p99_us: 40.0,
            p999_us: 40.0,
            max_us: 41.0,
            connect_failures: 1,
            disconnects: 1,
            mismatches: 0,
            errors: 2,
            alive: Some(8),
        }
    }

    #[test]
    fn json_line_round_trips() {
        let r = sample();
        let line = r.to_json();
        assert!(!line.contains('\n'));
        assert!(line.contains(r#""mode":"hold""#));
        assert_eq!(Report::from_json(&format!("{line}\n")).unwrap(), r);
    }

    #[test]
    fn mode_parses_its_own_name() {
        for m in [Mode::Pingpong, Mode::Hold] {
            assert_eq!(m.to_string().parse::<Mode>(), Ok(m));
        }
        assert!("flood".parse::<Mode>().is_err());
    }
}
