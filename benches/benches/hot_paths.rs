//! Micro-benchmarks of the event loop's hot paths, run on the library's own
//! code (no copies): framing pipelined requests, handing one request to a
//! service and back, and writing responses to a real socket with and without
//! coalescing.
//!
//! ```text
//!   loop buffer ──next_frame──► frame ──respond──► OutQueue ──flush──► socket
//!   (framing)                   (respond)          (write_path)
//!   └──────────── serve_batch (what the loop runs per read) ─┘
//! ```
//!
//! These time one step each; they say nothing about a whole server under
//! load (that is what `loadgen` and `scripts/listener-ab.sh` are for).
//!
//! `cargo bench -p gaidaros-benches --bench hot_paths [-- --quick]`

use std::hint::black_box;
use std::io::{self, Read};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gaidaros::event_loop::output::{BufPool, Flushed, OutQueue};
use gaidaros::service::{next_frame, respond, serve_batch, BatchEnd};
use gaidaros::{Limits, Service};
use gaidaros_echo::Echo;
use gaidaros_multiline::Multiline;

/// Bytes per request (terminator included) in the framing and write paths.
const REQUEST_LEN: usize = 64;
/// Requests per read in the pipelined cases.
const PIPELINED: usize = 16;
/// The large request for the respond path.
const LARGE_REQUEST_LEN: usize = 16 * 1024;
/// How long the socket may stay full before the write path gives up: a
/// stalled drainer fails the run instead of hanging it.
const STALL_LIMIT: Duration = Duration::from_secs(10);

/// One echo request: `len - 1` printable bytes and an LF.
fn line(len: usize, seed: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len - 1)
        .map(|i| b'a' + ((seed + i) % 26) as u8)
        .collect();
    v.push(b'\n');
    v
}

/// One multiline request of exactly 64 bytes: three 21-byte lines and the
/// empty line that ends the block, so the framing scans four LFs.
fn block(seed: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(REQUEST_LEN);
    for l in 0..3 {
        v.extend_from_slice(&line(21, seed + l));
    }
    v.push(b'\n');
    debug_assert_eq!(v.len(), REQUEST_LEN);
    v
}

/// `n` requests back to back, as one read would bring them in.
fn pipelined(n: usize, request: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    (0..n).flat_map(request).collect()
}

/// Frame every request in `buf` as the loop does (ask until `Ok(None)`);
/// returns how many there were.
fn frame_all(service: &dyn Service, buf: &[u8], max_request: usize) -> usize {
    let mut rest = buf;
    let mut frames = 0;
    while let Ok(Some(len)) = next_frame(service, rest, max_request) {
        rest = &rest[len..];
        frames += 1;
    }
    frames
}

/// A service and the 64-byte request it frames.
struct FramingCase {
    name: &'static str,
    service: &'static dyn Service,
    request: fn(usize) -> Vec<u8>,
}

/// Framing: finding where each pipelined request ends in the read buffer.
/// It runs once per request plus once per read, before any handler code, so
/// its cost is paid by every request; the multiline case shows what a
/// framing that scans several lines per request costs against the default
/// one-line framing.
fn framing(c: &mut Criterion) {
    let max_request = Limits::default().max_request;
    let cases = [
        FramingCase {
            name: "echo",
            service: &Echo,
            request: |seed| line(REQUEST_LEN, seed),
        },
        FramingCase {
            name: "multiline",
            service: &Multiline,
            request: block,
        },
    ];
    let mut group = c.benchmark_group("framing");
    for n in [1, PIPELINED] {
        group.throughput(Throughput::Elements(n as u64));
        for case in &cases {
            let (name, service) = (case.name, case.service);
            let buf = pipelined(n, case.request);
            assert_eq!(
                frame_all(service, &buf, max_request),
                n,
                "{name}: frames in buffer"
            );
            group.bench_with_input(
                BenchmarkId::new(name, format!("{n}x64B")),
                &buf,
                |b, buf| b.iter(|| frame_all(service, black_box(buf), max_request)),
            );
        }
    }
    group.finish();
}

/// Respond: one complete frame through split_request, decode, handle and
/// encode (with the panic guard) into the output buffer, for the echo
/// service. This is the per-request overhead of the service API itself; the
/// 16 KiB case shows how it scales once the copy dominates.
fn respond_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("respond");
    for (name, len) in [("echo/64B", REQUEST_LEN), ("echo/16KiB", LARGE_REQUEST_LEN)] {
        let frame = line(len, 0);
        let mut out = Vec::with_capacity(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let keep = respond(&Echo, black_box(&frame), &mut out);
                black_box(&out);
                keep
            })
        });
        assert_eq!(out, frame, "{name}: echoed frame");
    }
    group.finish();
}

/// The loop's service path for one read: every pipelined request framed,
/// handled and answered into one output buffer under one panic guard
/// (`service::serve_batch`). Per element = per request.
fn batch_path(c: &mut Criterion) {
    let max_request = Limits::default().max_request;
    let mut group = c.benchmark_group("serve_batch");
    for n in [1, PIPELINED] {
        let buf = pipelined(n, |seed| line(REQUEST_LEN, seed));
        let mut out = Vec::with_capacity(buf.len());
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new("echo", format!("{n}x64B")),
            &buf,
            |b, buf| {
                b.iter(|| {
                    out.clear();
                    serve_batch(&Echo, black_box(buf), max_request, &mut out, |_| false)
                })
            },
        );
        let done = serve_batch(&Echo, &buf, max_request, &mut Vec::new(), |_| false);
        assert_eq!(done.consumed, buf.len(), "every request served");
        assert_eq!(done.end, BatchEnd::NeedMore);
    }
    group.finish();
}

/// A connected TCP loopback pair: the nonblocking writing end, and a thread
/// that reads the other end until EOF and returns the byte count.
fn drained_socket() -> (TcpStream, JoinHandle<io::Result<u64>>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind loopback");
    let addr = listener.local_addr().expect("listener address");
    let writer = TcpStream::connect(addr).expect("connect loopback");
    let (mut reader, _) = listener.accept().expect("accept loopback");
    writer.set_nonblocking(true).expect("nonblocking writer");
    let drainer = thread::spawn(move || {
        let mut buf = vec![0; 64 * 1024];
        let mut total = 0;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    });
    (writer, drainer)
}

/// Flush until the queue is empty. A full socket (`Blocked`) is retried:
/// the drainer makes room; past `STALL_LIMIT` the run fails.
fn flush_all(queue: &mut OutQueue, sock: &mut TcpStream, pool: &mut BufPool) {
    let mut stalled_since = None;
    loop {
        match queue
            .flush(sock, pool)
            .expect("flush to the drained socket")
        {
            Flushed::All => return,
            Flushed::Blocked => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < STALL_LIMIT,
                    "socket full for {STALL_LIMIT:?}"
                );
                thread::yield_now();
            }
        }
    }
}

/// Write path: 16 pipelined 64-byte responses leaving through the
/// connection's output queue to a TCP loopback socket (Nagle on, the
/// listener default), either gathered and flushed once (one write, the
/// default) or flushed after each response (16 writes, what `-K` does).
/// The gap is the syscall and TCP send cost that coalescing saves per
/// request. A thread drains the peer on the other core, as a client would.
fn write_path(c: &mut Criterion) {
    let responses: Vec<Vec<u8>> = (0..PIPELINED).map(|i| line(REQUEST_LEN, i)).collect();
    let (mut sock, drainer) = drained_socket();
    let mut pool = BufPool::new();
    let mut queue = OutQueue::default();
    let mut sent = 0u64;

    let mut group = c.benchmark_group("write_path");
    group.throughput(Throughput::Elements(PIPELINED as u64));
    group.bench_function("coalesced/16x64B", |b| {
        b.iter(|| {
            for r in &responses {
                queue.push_bytes(black_box(r), &mut pool);
            }
            flush_all(&mut queue, &mut sock, &mut pool);
            sent += (PIPELINED * REQUEST_LEN) as u64;
        })
    });
    group.bench_function("per_response/16x64B", |b| {
        b.iter(|| {
            for r in &responses {
                queue.push_bytes(black_box(r), &mut pool);
                flush_all(&mut queue, &mut sock, &mut pool);
            }
            sent += (PIPELINED * REQUEST_LEN) as u64;
        })
    });
    group.finish();

    // Closing the writer ends the drainer; every byte must have arrived.
    drop(sock);
    let drained = drainer
        .join()
        .expect("drainer thread")
        .expect("drainer read");
    assert_eq!(drained, sent, "bytes drained vs bytes flushed");
}

criterion_group!(hot_paths, framing, respond_path, batch_path, write_path);
criterion_main!(hot_paths);
