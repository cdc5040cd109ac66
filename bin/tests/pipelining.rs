//! Pipelined requests (many in one write, or split across many writes) are
//! answered completely and in order, whatever the write path options:
//! coalescing (default), `-K`, `-k` and `-A`.

#[macro_use]
mod util;

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use util::{connect, first_difference, gaidaros, read_exactly, read_to_eof, End, Mode};

/// `n` numbered lines of varying length.
fn numbered_lines(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let pad = "abcdefghijklmnopqrstuvwxyz".repeat(1 + i % 4);
        out.extend_from_slice(format!("line {i:06} {}\n", &pad[..(i * 7) % pad.len()]).as_bytes());
    }
    out
}

/// `n` multiline blocks of 1 to 4 lines; every third one uses CRLF.
fn multiline_blocks(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let eol = if i % 3 == 0 { "\r\n" } else { "\n" };
        for j in 0..=(i % 4) {
            out.extend_from_slice(format!("block {i:05} line {j}{eol}").as_bytes());
        }
        out.extend_from_slice(eol.as_bytes());
    }
    out
}

fn pipelined(mode: Mode, flags: &[&str], request: Vec<u8>, pieces: Vec<usize>) {
    let server = gaidaros().args(flags).mode(mode).start();
    check_whole(server.addr(), request, pieces);
    server.stop();
}

fn check_whole(addr: SocketAddr, request: Vec<u8>, pieces: Vec<usize>) {
    let want = request.clone();
    let mut s = connect(addr);
    let mut w = s.try_clone().expect("clone socket");
    let writer = std::thread::spawn(move || write_in_pieces(&mut w, &request, &pieces));
    let got = read_exactly(&mut s, want.len());
    let sent = writer.join().expect("writer thread");
    let got = got.unwrap_or_else(|e| panic!("answers to {} pipelined bytes: {e}", want.len()));
    sent.expect("write the pipelined requests");
    assert!(
        got == want,
        "answers differ from the requests: {}",
        first_difference(&got, &want)
    );
    let (extra, end) = read_to_eof(&mut s, Duration::from_secs(10));
    assert!(extra.is_empty(), "{} bytes beyond the answers", extra.len());
    assert!(matches!(end, End::Eof), "close after client EOF: {end:?}");
}

/// Write `data` in pieces cycling through `pieces` (one write when empty),
/// then shut down the write side.
fn write_in_pieces(
    w: &mut std::net::TcpStream,
    data: &[u8],
    pieces: &[usize],
) -> std::io::Result<()> {
    if pieces.is_empty() {
        w.write_all(data)?;
    } else {
        w.set_nodelay(true)?;
        let mut at = 0;
        for (k, size) in pieces.iter().cycle().enumerate() {
            if at >= data.len() {
                break;
            }
            let end = (at + size).min(data.len());
            w.write_all(&data[at..end])?;
            at = end;
            if k % 64 == 63 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    w.shutdown(Shutdown::Write)
}

fn pipelined_lines_are_answered_in_order(mode: Mode) {
    pipelined(mode, &[], numbered_lines(2000), vec![]);
}

fn pipelined_lines_are_answered_in_order_without_coalescing(mode: Mode) {
    pipelined(mode, &["-K"], numbered_lines(2000), vec![]);
}

fn pipelined_lines_are_answered_in_order_with_cork_and_nodelay(mode: Mode) {
    pipelined(mode, &["-k", "-A"], numbered_lines(2000), vec![]);
}

fn pipelined_multiline_blocks_are_answered_whole_and_in_order(mode: Mode) {
    let server = gaidaros()
        .args(&["--handler", "multiline"])
        .mode(mode)
        .start();
    check_whole(server.addr(), multiline_blocks(1000), vec![]);
    check_whole(
        server.addr(),
        multiline_blocks(1000),
        vec![1, 7, 300, 2, 61],
    );
    server.stop();
}

fn requests_split_across_many_small_writes_are_reassembled(mode: Mode) {
    pipelined(
        mode,
        &[],
        numbered_lines(2000),
        vec![1, 2, 3, 5, 8, 13, 700, 21, 34],
    );
}

fn pipelined_flood_beyond_the_output_cap_is_answered_in_order(mode: Mode) {
    // About 5 MiB of requests, answers well beyond the 256 KiB output cap:
    // reading pauses and resumes many times, and input left over at each
    // pause must be answered first.
    let server = gaidaros()
        .args(&["-K"])
        .mode(mode)
        .env("GAIDAROS_LISTENER_MAIN__OUTPUT_CAP", "256KiB")
        .start();
    check_whole(server.addr(), numbered_lines(80_000), vec![]);
    server.stop();
    let server = gaidaros()
        .mode(mode)
        .env("GAIDAROS_LISTENER_MAIN__OUTPUT_CAP", "256KiB")
        .start();
    check_whole(server.addr(), numbered_lines(80_000), vec![]);
    server.stop();
}

fn pipelined_requests_with_tiny_reads_are_answered_in_order(mode: Mode) {
    // recv_size 512: most requests straddle two reads, and every read's
    // tail waits in the connection's input buffer.
    let server = gaidaros()
        .mode(mode)
        .env("GAIDAROS_LISTENER_MAIN__RECV_SIZE", "512")
        .start();
    check_whole(server.addr(), numbered_lines(2000), vec![]);
    server.stop();
    let server = gaidaros()
        .args(&["--handler", "multiline"])
        .mode(mode)
        .env("GAIDAROS_LISTENER_MAIN__RECV_SIZE", "512")
        .start();
    check_whole(server.addr(), multiline_blocks(1000), vec![]);
    server.stop();
}

per_server_type!(
    pipelined_requests_with_tiny_reads_are_answered_in_order,
    pipelined_lines_are_answered_in_order,
    pipelined_lines_are_answered_in_order_without_coalescing,
    pipelined_lines_are_answered_in_order_with_cork_and_nodelay,
    pipelined_multiline_blocks_are_answered_whole_and_in_order,
    requests_split_across_many_small_writes_are_reassembled,
    pipelined_flood_beyond_the_output_cap_is_answered_in_order,
);
