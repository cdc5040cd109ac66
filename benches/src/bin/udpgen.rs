//! udpgen: the load generator of the UDP scenario. `--clients` threads,
//! each with its own socket, keep `--window` datagrams of `--size` bytes
//! in flight to a datagram echo server and check every answer: it must be
//! the bytes sent (a sequence number, the client's id and a pattern, LF
//! last). A window that sees no answer for 100 ms is counted lost and sent
//! again. Reports answers per second, round-trip p50/p99/p99.9, losses and
//! wrong answers, and its own CPU, as text or (`--json`) one JSON line.
//!
//! `udpgen --addr HOST:PORT [--clients 4] [--size 64] [--window 32]
//! [--duration 5] [--warmup 1] [--json]`. Exit 1 when an answer was wrong.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use argh::FromArgs;
use hdrhistogram::Histogram;
use nix::sys::resource::{getrusage, UsageWho};
use serde::Serialize;

#[derive(FromArgs)]
/// UDP echo load generator.
struct Args {
    /// the server, HOST:PORT
    #[argh(option)]
    addr: SocketAddr,
    /// client threads, one socket each (default 4)
    #[argh(option, default = "4")]
    clients: usize,
    /// bytes per datagram, LF included, at least 16 (default 64)
    #[argh(option, default = "64")]
    size: usize,
    /// datagrams in flight per client (default 32)
    #[argh(option, default = "32")]
    window: usize,
    /// measured seconds (default 5)
    #[argh(option, default = "5.0")]
    duration: f64,
    /// seconds before measuring (default 1)
    #[argh(option, default = "1.0")]
    warmup: f64,
    /// one JSON line instead of text
    #[argh(switch)]
    json: bool,
}

/// What one run measured.
#[derive(Debug, Default, Serialize)]
struct UdpReport {
    addr: String,
    clients: usize,
    size: usize,
    window: usize,
    duration_s: f64,
    /// Answers inside the measured window.
    answers: u64,
    answers_per_s: f64,
    /// Answers over the whole run, warm-up included (divide the server's
    /// CPU over the run by this).
    answered: u64,
    /// Datagrams given up on (no answer within 100 ms).
    lost: u64,
    /// Answers that were not the bytes sent.
    wrong: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    /// The generator's own CPU seconds.
    cpu_s: f64,
}

struct ClientResult {
    answers: u64,
    answered: u64,
    lost: u64,
    wrong: u64,
    hist: Histogram<u64>,
}

fn payload(client: u32, seq: u64, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&client.to_be_bytes());
    while out.len() < size - 1 {
        out.push(b'a' + ((seq as usize + out.len()) % 26) as u8);
    }
    out.push(b'\n');
}

fn client(
    id: u32,
    args: &Args,
    measuring: &AtomicBool,
    done: &AtomicBool,
) -> std::io::Result<ClientResult> {
    let bind = if args.addr.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(args.addr)?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let window = args.window.max(1);
    // Send times by sequence number modulo the ring.
    let ring = (window * 4).next_power_of_two();
    let mut sent_at = vec![None::<Instant>; ring];
    let mut out = Vec::with_capacity(args.size);
    let mut want = Vec::with_capacity(args.size);
    let mut buf = vec![0u8; args.size + 64];
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let (mut next, mut in_flight) = (0u64, 0usize);
    let mut r = ClientResult {
        answers: 0,
        answered: 0,
        lost: 0,
        wrong: 0,
        hist: Histogram::new(3).map_err(|e| std::io::Error::other(e.to_string()))?,
    };
    while !done.load(Ordering::Relaxed) {
        while in_flight < window {
            payload(id, next, args.size, &mut out);
            sent_at[(next as usize) & (ring - 1)] = Some(Instant::now());
            s.send(&out)?;
            next += 1;
            in_flight += 1;
        }
        match s.recv(&mut buf) {
            Ok(n) => {
                in_flight = in_flight.saturating_sub(1);
                let got = &buf[..n];
                let seq = got
                    .get(..8)
                    .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
                let ok = match seq {
                    Some(seq) => {
                        payload(id, seq, args.size, &mut want);
                        got == want.as_slice()
                    }
                    None => false,
                };
                if !ok {
                    r.wrong += 1;
                    continue;
                }
                let seq = seq.unwrap_or(0);
                r.answered += 1;
                if measuring.load(Ordering::Relaxed) {
                    r.answers += 1;
                    if let Some(t) = sent_at[(seq as usize) & (ring - 1)].take() {
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // Nothing for 100 ms: what is in flight is lost.
                r.lost += in_flight as u64;
                in_flight = 0;
            }
            Err(e) => return Err(e),
        }
    }
    r.hist = hist;
    Ok(r)
}

fn cpu_s() -> f64 {
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 * 1e-6;
        t(u.user_time()) + t(u.system_time())
    })
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    if args.size < 16 || args.size > 65_000 || args.clients == 0 {
        eprintln!("udpgen: --size must be 16-65000 and --clients at least 1");
        return ExitCode::from(2);
    }
    let args = Arc::new(args);
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..args.clients as u32)
        .map(|id| {
            let (args, measuring, done) = (args.clone(), measuring.clone(), done.clone());
            thread::spawn(move || client(id, &args, &measuring, &done))
        })
        .collect();
    thread::sleep(Duration::from_secs_f64(args.warmup.max(0.0)));
    let cpu0 = cpu_s();
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    thread::sleep(Duration::from_secs_f64(args.duration.max(0.1)));
    measuring.store(false, Ordering::Relaxed);
    let measured = t0.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let mut report = UdpReport {
        addr: args.addr.to_string(),
        clients: args.clients,
        size: args.size,
        window: args.window,
        duration_s: measured,
        ..UdpReport::default()
    };
    let mut hist = Histogram::<u64>::new(3).expect("a histogram");
    for t in threads {
        match t.join() {
            Ok(Ok(r)) => {
                report.answers += r.answers;
                report.answered += r.answered;
                report.lost += r.lost;
                report.wrong += r.wrong;
                let _ = hist.add(&r.hist);
            }
            Ok(Err(e)) => {
                eprintln!("udpgen: a client failed: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => {
                eprintln!("udpgen: a client panicked");
                return ExitCode::FAILURE;
            }
        }
    }
    report.cpu_s = cpu_s() - cpu0;
    report.answers_per_s = report.answers as f64 / measured;
    report.p50_us = hist.value_at_quantile(0.5) as f64;
    report.p99_us = hist.value_at_quantile(0.99) as f64;
    report.p999_us = hist.value_at_quantile(0.999) as f64;
    if args.json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("udpgen: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!(
            "{:.0} answers/s over {:.1} s ({} clients x {} in flight, {} B): p50 {} µs, p99 {} µs, p99.9 {} µs; {} lost, {} wrong; generator CPU {:.2} s",
            report.answers_per_s,
            report.duration_s,
            report.clients,
            report.window,
            report.size,
            report.p50_us,
            report.p99_us,
            report.p999_us,
            report.lost,
            report.wrong,
            report.cpu_s
        );
    }
    if report.wrong > 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
