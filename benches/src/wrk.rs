//! What wrk printed, as numbers: the HTTP load generator of the HTTP
//! scenarios (its text output with `--latency`; wrk has no JSON without a
//! Lua script).

/// One wrk run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrkRun {
    /// Requests completed.
    pub requests: u64,
    /// Requests per second over the run.
    pub requests_per_s: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Socket errors (connect, read, write, timeout) plus responses that
    /// were not 2xx or 3xx.
    pub errors: u64,
}

/// Parse wrk's output (run with `--latency`).
pub fn parse(text: &str) -> Result<WrkRun, String> {
    let mut run = WrkRun::default();
    let (mut saw_requests, mut saw_rate, mut saw_p50, mut saw_p99) = (false, false, false, false);
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            run.requests_per_s = rest.trim().parse().map_err(|e| format!("{line:?}: {e}"))?;
            saw_rate = true;
        } else if line.contains(" requests in ") {
            let n = line.split_whitespace().next().unwrap_or("");
            run.requests = n.parse().map_err(|e| format!("{line:?}: {e}"))?;
            saw_requests = true;
        } else if let Some(rest) = line.strip_prefix("50%") {
            run.p50_us = duration_us(rest.trim())?;
            saw_p50 = true;
        } else if let Some(rest) = line.strip_prefix("99%") {
            run.p99_us = duration_us(rest.trim())?;
            saw_p99 = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let n = part.split_whitespace().nth(1).unwrap_or("0");
                run.errors += n.parse::<u64>().map_err(|e| format!("{line:?}: {e}"))?;
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors += rest
                .trim()
                .parse::<u64>()
                .map_err(|e| format!("{line:?}: {e}"))?;
        }
    }
    if !(saw_requests && saw_rate && saw_p50 && saw_p99) {
        return Err(format!("not a wrk --latency report:\n{text}"));
    }
    Ok(run)
}

/// `381.00us`, `1.73ms`, `2.00s` in microseconds.
fn duration_us(s: &str) -> Result<f64, String> {
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        return Err(format!("unknown duration {s:?}"));
    };
    num.parse::<f64>()
        .map(|v| v * scale)
        .map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 2s test @ http://127.0.0.1:8080/hello
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   449.12us  326.81us   8.00ms   90.55%
    Req/Sec    72.82k     5.25k   80.93k    72.50%
  Latency Distribution
     50%  381.00us
     75%  502.00us
     90%  681.00us
     99%    1.73ms
  289800 requests in 2.00s, 36.20MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec: 144873.42
Transfer/sec:     18.10MB
";

    #[test]
    fn reads_a_latency_report() {
        let r = parse(SAMPLE).unwrap();
        assert_eq!(r.requests, 289_800);
        assert_eq!(r.requests_per_s, 144_873.42);
        assert_eq!(r.p50_us, 381.0);
        assert_eq!(r.p99_us, 1730.0);
        assert_eq!(r.errors, 11);
    }

    #[test]
    fn refuses_what_is_not_a_report() {
        assert!(parse("unable to connect to 127.0.0.1:1 Connection refused").is_err());
    }
}
