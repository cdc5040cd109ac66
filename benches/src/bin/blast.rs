//! blast: the sending end of throughput runs. Connects to a sink (a server
//! that counts the bytes of a connection until EOF and answers the count as
//! a decimal line, like `sink`), writes `--bytes` bytes of a fixed non-zero
//! pattern in `--chunk`-byte writes, shuts its write side, reads the count
//! back and checks it.
//!
//! The time runs from the first write to the complete reply, so it covers
//! every byte reaching the server, not just the local send buffer.
//!
//! Exit status: 0 for a transfer the server counted in full, 1 for a failed
//! one (connect error, reset, early close, wrong count), 2 on bad arguments.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use argh::FromArgs;
use gaidaros_benches::peer::parse_args;
use serde::Serialize;

#[derive(FromArgs)]
/// Throughput client: sends N bytes to a sink and checks the count it
/// answers.
struct Args {
    /// server address, HOST:PORT
    #[argh(option)]
    addr: String,
    /// bytes to send; K, M and G suffixes mean KiB, MiB and GiB (e.g. 1G)
    #[argh(option, from_str_fn(parse_size))]
    bytes: u64,
    /// bytes per write, suffixes as for --bytes (default 262144)
    #[argh(option, default = "256 * 1024", from_str_fn(parse_size))]
    chunk: u64,
    /// seconds any one connect, write or read may block (default 60)
    #[argh(option, default = "60.0")]
    timeout: f64,
    /// print the result as one JSON line
    #[argh(switch)]
    json: bool,
}

/// The largest `--chunk`: the write buffer is allocated whole.
const MAX_CHUNK: u64 = 64 * 1024 * 1024;

/// The longest reply line accepted, LF included (u64::MAX has 20 digits).
const MAX_REPLY: usize = 32;

/// One transfer, as printed.
#[derive(Debug, Serialize)]
struct Outcome {
    bytes: u64,
    seconds: f64,
    mib_per_s: f64,
    gbit_per_s: f64,
}

impl Outcome {
    fn new(bytes: u64, elapsed: Duration) -> Outcome {
        // A transfer always takes some time, but never divide by zero.
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Outcome {
            bytes,
            seconds,
            mib_per_s: bytes as f64 / (1024.0 * 1024.0) / seconds,
            gbit_per_s: bytes as f64 * 8.0 / 1e9 / seconds,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes in {:.4} s: {:.1} MiB/s, {:.2} Gbit/s",
            self.bytes, self.seconds, self.mib_per_s, self.gbit_per_s
        )
    }
}

/// The run's parameters, checked.
struct Plan {
    addr: SocketAddr,
    bytes: u64,
    chunk: usize,
    timeout: Duration,
}

fn main() -> ExitCode {
    let args = match parse_args::<Args>("blast") {
        Ok(args) => args,
        Err(code) => return code,
    };
    let plan = match check(&args) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("blast: {e}");
            return ExitCode::from(2);
        }
    };
    match transfer(&plan) {
        Ok(outcome) => {
            if args.json {
                match serde_json::to_string(&outcome) {
                    Ok(line) => println!("{line}"),
                    Err(e) => {
                        eprintln!("blast: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                println!("{outcome}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("blast: {}: {e}", plan.addr);
            ExitCode::FAILURE
        }
    }
}

fn check(args: &Args) -> Result<Plan, String> {
    let addr = args
        .addr
        .to_socket_addrs()
        .map_err(|e| format!("--addr {}: {e}", args.addr))?
        .next()
        .ok_or_else(|| format!("--addr {}: no address", args.addr))?;
    if args.bytes == 0 {
        return Err("--bytes must be at least 1".into());
    }
    if args.chunk == 0 || args.chunk > MAX_CHUNK {
        return Err(format!("--chunk must be between 1 and {MAX_CHUNK}"));
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout < 1e6) {
        return Err(format!(
            "--timeout {}: expected a positive number of seconds",
            args.timeout
        ));
    }
    Ok(Plan {
        addr,
        bytes: args.bytes,
        // At most MAX_CHUNK, checked above.
        chunk: args.chunk as usize,
        timeout: Duration::from_secs_f64(args.timeout),
    })
}

/// A byte count: decimal digits, optionally followed by K, M or G (KiB, MiB,
/// GiB; either case).
fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    // u64::from_str takes a leading '+'; a size is digits only.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{s:?}: expected a number of bytes, e.g. 65536, 64K, 1G"
        ));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// Send the bytes, read the count back, time it.
fn transfer(plan: &Plan) -> io::Result<Outcome> {
    let mut stream = TcpStream::connect_timeout(&plan.addr, plan.timeout)?;
    stream.set_write_timeout(Some(plan.timeout))?;
    stream.set_read_timeout(Some(plan.timeout))?;
    let pattern: Vec<u8> = (0..plan.chunk).map(|i| b'a' + (i % 26) as u8).collect();
    let start = Instant::now();
    let mut left = plan.bytes;
    while left > 0 {
        // At most plan.chunk, a usize.
        let n = left.min(plan.chunk as u64) as usize;
        stream.write_all(&pattern[..n])?;
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let counted = read_count(&mut stream)?;
    let elapsed = start.elapsed();
    if counted != plan.bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the server counted {counted} bytes of {}", plan.bytes),
        ));
    }
    Ok(Outcome::new(plan.bytes, elapsed))
}

/// The server's reply: a decimal count and an LF.
fn read_count(stream: &mut TcpStream) -> io::Result<u64> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut reply = [0u8; MAX_REPLY];
    let mut filled = 0;
    let line = loop {
        if filled == reply.len() {
            return Err(bad(format!("no LF in the first {MAX_REPLY} reply bytes")));
        }
        let n = match stream.read(&mut reply[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed without answering the byte count",
            ));
        }
        filled += n;
        if let Some(lf) = memchr::memchr(b'\n', &reply[..filled]) {
            break &reply[..lf];
        }
    };
    std::str::from_utf8(line)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            bad(format!(
                "expected a byte count, got {:?}",
                String::from_utf8_lossy(line)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(64 * 1024));
        assert_eq!(parse_size("64m"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn malformed_or_overflowing_sizes_are_refused() {
        for s in ["", "K", "1.5G", "+5", "-1", "12X", "1 G", "1GB", "1e9"] {
            assert!(parse_size(s).is_err(), "{s:?}");
        }
        assert!(parse_size("18446744073709551615").is_ok());
        assert!(parse_size("18446744073709551615K").is_err());
    }
}
