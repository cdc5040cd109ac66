//! The `http` handler as real clients meet it on loopback: curl gets
//! single and multiple ranges with their exact bytes, resumes a partial
//! file, gets HEAD, 304s for both validators, a whole file for a stale
//! If-Range and 416 with the size; aria2c downloads 256 MiB in 16 segments
//! with a passing checksum and resumes after being killed; python's
//! http.client and h11 parse every kind of response strictly; raw sockets
//! get the exact status and a close for every limit and every malformed
//! head (a 413 even when the body is sent at once), and pipelining,
//! chunked bodies, 100-continue, empty files, large files before a close,
//! keep-alive idle beyond head_timeout and HTTP/1.0 keep-alive work; no
//! spelling of a path and no symlink ever serves a file outside the root;
//! 500 slowloris connections do not stop fresh requests; wrk sees no
//! error under load.
//!
//! curl, aria2c, wrk, slowhttptest and /usr/bin/python3 with h11 are
//! required: a missing one fails its test with the Debian package to
//! install.

#[macro_use]
mod util;

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use util::{connect, gaidaros, read_to_eof, End, Mode, Pattern, Server, TempDir, IO_TIMEOUT};

/// How long one run of a client program may take.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);
/// How long the server may take to close after a final response.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);
/// The body of `/hello`.
const HELLO: &[u8] = b"Hello, World!";
/// Size of `data.bin` in every site.
const DATA_LEN: usize = 10_000;
/// The modification time given to `data.bin`: 2020-01-01T00:00:00Z.
const DATA_MTIME: u64 = 1_577_836_800;
/// `DATA_MTIME` as an HTTP date.
const DATA_LAST_MODIFIED: &str = "Wed, 01 Jan 2020 00:00:00 GMT";
/// A day before `DATA_MTIME`: a stale date validator.
const A_DAY_EARLIER: &str = "Tue, 31 Dec 2019 00:00:00 GMT";
/// The content of `secret.txt`, next to (outside) the served root.
const SECRET: &str = "gaidaros-secret-outside-the-root-7f3a9c";

// --- Fixtures ---------------------------------------------------------------

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A temporary directory holding `secret.txt` and the served `root/`:
///
/// ```text
/// secret.txt                 SECRET, never to be served
/// root/data.bin              DATA_LEN pattern bytes, mtime DATA_MTIME
/// root/sub/index.html
/// root/alias.bin  -> data.bin          (stays inside: followed)
/// root/leak.txt   -> ../secret.txt     (leaves the root: 403)
/// root/leak-abs.txt -> /abs/secret.txt (leaves the root: 403)
/// root/up         -> ..                (a directory outside the root)
/// ```
struct Site {
    dir: TempDir,
    root: PathBuf,
    data: Vec<u8>,
}

impl Site {
    fn new(tag: &str) -> Site {
        let dir = TempDir::new(tag);
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("sub")).expect("create root/sub");
        let mut data = vec![0; DATA_LEN];
        Pattern(0x5EED).fill(&mut data);
        let path = root.join("data.bin");
        fs::write(&path, &data).expect("write data.bin");
        fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(UNIX_EPOCH + Duration::from_secs(DATA_MTIME)))
            .expect("set the mtime of data.bin");
        fs::write(root.join("sub/index.html"), "<p>index</p>\n").expect("write index");
        let secret = dir.path().join("secret.txt");
        fs::write(&secret, SECRET).expect("write secret.txt");
        symlink("data.bin", root.join("alias.bin")).expect("symlink alias.bin");
        symlink("../secret.txt", root.join("leak.txt")).expect("symlink leak.txt");
        symlink(&secret, root.join("leak-abs.txt")).expect("symlink leak-abs.txt");
        symlink("..", root.join("up")).expect("symlink up");
        Site { dir, root, data }
    }

    fn serve(&self, mode: Mode, extra: &[&str]) -> Server {
        http_server(mode, &self.root, extra)
    }

    /// Run curl with `args` (which name the URL), the head going to a file
    /// and the body to `out`; panics unless curl exits 0. Returns the last
    /// response head and what `out` holds.
    fn curl_to(&self, server: &Server, out: &Path, args: &[&str]) -> (Head, Vec<u8>) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let curl = require("curl", "curl");
        let head_file = self.dir.path().join(format!(
            "curl-{}.head",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = Command::new(curl);
        cmd.args(["-sS", "--max-time", "20", "-D"])
            .arg(&head_file)
            .arg("-o")
            .arg(out)
            .args(args);
        let ran = run_client(&mut cmd, CLIENT_LIMIT);
        assert!(
            ran.status.success(),
            "{cmd:?} exited {}:\n{}\nserver log:\n{}",
            ran.status,
            ran.stderr,
            server.log()
        );
        let heads = fs::read_to_string(&head_file).expect("read curl's head file");
        let last = heads
            .split("\r\n\r\n")
            .filter(|h| !h.trim().is_empty())
            .last()
            .unwrap_or_else(|| panic!("{cmd:?} received no head"));
        let head = Head::parse(last).unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        (head, fs::read(out).unwrap_or_default())
    }

    /// [`Site::curl_to`] into a fresh file.
    fn curl(&self, server: &Server, args: &[&str]) -> (Head, Vec<u8>) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let out = self.dir.path().join(format!(
            "curl-{}.body",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        self.curl_to(server, &out, args)
    }
}

fn http_server(mode: Mode, root: &Path, extra: &[&str]) -> Server {
    gaidaros()
        .args(&[
            "--handler",
            "http",
            "-o",
            &format!("root={}", root.display()),
        ])
        .args(extra)
        .mode(mode)
        .start()
}

fn url(server: &Server, path: &str) -> String {
    format!("http://{}{path}", server.addr())
}

// --- Client programs --------------------------------------------------------

/// The path of `program`, found on PATH; panics naming the Debian package
/// to install when it is missing (never a silent skip).
fn require(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| {
            panic!("{program} is not installed: install the Debian package `{package}` (apt-get install {package}); CI installs it and this test needs it")
        })
}

/// Debian's python3 (the first `python3` on PATH may lack h11), checked to
/// import h11.
fn python_with_h11() -> PathBuf {
    let python = PathBuf::from("/usr/bin/python3");
    assert!(
        python.exists(),
        "/usr/bin/python3 is not installed: install the Debian packages `python3` and `python3-h11`"
    );
    let ran = run_client(
        Command::new(&python).args(["-c", "import h11"]),
        CLIENT_LIMIT,
    );
    assert!(
        ran.status.success(),
        "/usr/bin/python3 cannot import h11: install the Debian package `python3-h11`\n{}",
        ran.stderr
    );
    python
}

/// What a client program did.
#[derive(Debug)]
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Wait for `child` at most `limit`; kill it (and return `None`) after.
fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("wait for a client program") {
            Some(status) => return Some(status),
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Run `cmd` to completion, with no input; a panic (with what it printed)
/// when it is still running after `limit`.
fn run_client(cmd: &mut Command, limit: Duration) -> Ran {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = drain(child.stdout.take().expect("stdout is piped"));
    let err = drain(child.stderr.take().expect("stderr is piped"));
    let status = wait_child(&mut child, limit);
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(status) => Ran {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{cmd:?} still running after {limit:?}, killed; stdout:\n{stdout}\nstderr:\n{stderr}"
        ),
    }
}

// --- HTTP on raw sockets ----------------------------------------------------

/// A response head: the status line and the header fields, in order.
#[derive(Debug, Clone)]
struct Head {
    status_line: String,
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    /// Parse a head (lines separated by CRLF, without the empty line).
    fn parse(text: &str) -> Result<Head, String> {
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_string();
        let status = parse_status_line(&status_line)?;
        let mut headers = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("not a header line: {line:?}"))?;
            headers.push((name.to_string(), value.trim().to_string()));
        }
        Ok(Head {
            status_line,
            status,
            headers,
        })
    }

    /// The first field called `name` (case-insensitive).
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> Option<usize> {
        self.get("content-length").and_then(|v| v.parse().ok())
    }
}

/// The status code of `HTTP/1.1 NNN Reason`.
fn parse_status_line(line: &str) -> Result<u16, String> {
    let bad = || format!("not an HTTP/1.1 status line: {line:?}");
    let rest = line.strip_prefix("HTTP/1.1 ").ok_or_else(bad)?;
    let (code, reason) = rest.split_once(' ').ok_or_else(bad)?;
    if code.len() != 3 || reason.is_empty() {
        return Err(bad());
    }
    code.parse().map_err(|_| bad())
}

/// A response: head and body.
#[derive(Debug, Clone)]
struct Reply {
    head: Head,
    body: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The first response in `buf` and the bytes it took; `Ok(None)` when it
/// is not complete yet. `head_only`: the request was HEAD.
fn take_response(buf: &[u8], head_only: bool) -> Result<Option<(Reply, usize)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = Head::parse(&String::from_utf8_lossy(&buf[..end]))?;
    let bodiless = head_only || head.status < 200 || head.status == 204 || head.status == 304;
    let len = if bodiless {
        0
    } else {
        head.content_length()
            .ok_or_else(|| format!("{:?}: no Content-Length", head.status_line))?
    };
    let start = end + 4;
    if buf.len() < start + len {
        return Ok(None);
    }
    let body = buf[start..start + len].to_vec();
    Ok(Some((Reply { head, body }, start + len)))
}

/// One client connection reading responses in order.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn open(addr: SocketAddr) -> Raw {
        Raw {
            s: connect(addr),
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write {} bytes: {e}", bytes.len()));
    }

    /// The next response (within the socket's read timeout).
    fn response(&mut self, head_only: bool) -> Result<Reply, String> {
        loop {
            if let Some((reply, used)) = take_response(&self.buf, head_only)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let mut chunk = vec![0; 64 * 1024];
            match self.s.read(&mut chunk) {
                Ok(0) => {
                    return Err(format!(
                        "EOF before a whole response; have {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(format!(
                        "{e} before a whole response; have {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ))
                }
            }
        }
    }

    /// The server closes (EOF within `CLOSE_LIMIT`) with nothing more sent.
    fn expect_close(&mut self) -> Result<(), String> {
        let (rest, end) = read_to_eof(&mut self.s, CLOSE_LIMIT);
        self.buf.extend_from_slice(&rest);
        if !self.buf.is_empty() {
            return Err(format!(
                "bytes after the last response: {:?}",
                String::from_utf8_lossy(&self.buf)
            ));
        }
        describe_close(end)
    }

    /// The connection stays open: no byte and no EOF for 300 ms.
    fn expect_open(&mut self) -> Result<(), String> {
        self.s
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("read timeout");
        let mut byte = [0; 1];
        let got = match self.s.read(&mut byte) {
            Ok(0) => Err("the server closed the connection".to_string()),
            Ok(_) => Err(format!("unexpected byte {:?}", byte[0] as char)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(format!("connection error: {e}")),
        };
        self.s
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("read timeout");
        got
    }
}

/// `Ok` for a clean close (FIN), else what happened instead.
fn describe_close(end: End) -> Result<(), String> {
    match end {
        End::Eof => Ok(()),
        End::Deadline => Err(format!("the server did not close within {CLOSE_LIMIT:?}")),
        End::Error(e) => Err(format!(
            "the connection ended with an error ({e}), not a clean close: \
             a reset can make a client lose the response"
        )),
    }
}

/// Send `request` on a new connection and expect exactly one response,
/// with `status_line` and `Connection: close`, then the server's close.
fn assert_refused(server: &Server, request: &[u8], status_line: &str) -> Reply {
    let mut s = connect(server.addr());
    s.write_all(request)
        .unwrap_or_else(|e| panic!("write the request: {e}"));
    let (got, end) = read_to_eof(&mut s, CLOSE_LIMIT);
    let shown = || {
        format!(
            "request {:?}\nanswer {:?}\nserver log:\n{}",
            String::from_utf8_lossy(&request[..request.len().min(200)]),
            String::from_utf8_lossy(&got),
            server.log()
        )
    };
    let (reply, used) = match take_response(&got, false) {
        Ok(Some(found)) => found,
        Ok(None) => panic!("no whole response ({end:?})\n{}", shown()),
        Err(e) => panic!("{e}\n{}", shown()),
    };
    assert_eq!(reply.head.status_line, status_line, "{}", shown());
    assert_eq!(
        reply.head.get("connection"),
        Some("close"),
        "a refused request's response announces the close\n{}",
        shown()
    );
    assert_eq!(
        used,
        got.len(),
        "nothing may follow the refusal (no smuggled request answered)\n{}",
        shown()
    );
    if let Err(e) = describe_close(end) {
        panic!("{e}\n{}", shown());
    }
    reply
}

/// A `GET` with `Host` and extra header lines (each ending in CRLF).
fn get(target: &str, extra: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n").into_bytes()
}

// --- 1. curl ----------------------------------------------------------------

fn curl_single_range_gets_206_with_content_range_and_the_exact_bytes(mode: Mode) {
    let site = Site::new("http-curl-range");
    let server = site.serve(mode, &[]);
    let file = url(&server, "/data.bin");
    for (range, first, last) in [
        ("0-99", 0, 99),
        ("-100", DATA_LEN - 100, DATA_LEN - 1),
        ("9990-", 9990, DATA_LEN - 1),
        ("5000-99999", 5000, DATA_LEN - 1),
    ] {
        let (head, body) = site.curl(&server, &["-r", range, &file]);
        assert_eq!(head.status, 206, "-r {range}: {head:?}");
        assert_eq!(
            head.get("content-range"),
            Some(format!("bytes {first}-{last}/{DATA_LEN}").as_str()),
            "-r {range}"
        );
        assert_eq!(head.content_length(), Some(last - first + 1), "-r {range}");
        assert!(
            body == site.data[first..=last],
            "-r {range}: {}",
            util::first_difference(&body, &site.data[first..=last])
        );
    }
    server.stop();
}

/// The parts of a multipart/byteranges body: each part's Content-Range and
/// bytes (RFC 9110 14.6, RFC 2046 5.1.1).
fn multipart_parts(content_type: &str, body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let boundary = content_type
        .strip_prefix("multipart/byteranges;")
        .and_then(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .ok_or_else(|| format!("Content-Type {content_type:?}"))?;
    let delimiter = format!("--{boundary}").into_bytes();
    let mut pos = find(body, &delimiter).ok_or("no delimiter in the body")? + delimiter.len();
    let mut parts = Vec::new();
    loop {
        if body[pos..].starts_with(b"--\r\n") && pos + 4 == body.len() {
            return Ok(parts);
        }
        if !body[pos..].starts_with(b"\r\n") {
            return Err(format!("bad delimiter line at byte {pos}"));
        }
        pos += 2;
        let head_end = find(&body[pos..], b"\r\n\r\n").ok_or("a part without its head")? + pos;
        let head = Head::parse(&format!(
            "HTTP/1.1 200 part\r\n{}",
            String::from_utf8_lossy(&body[pos..head_end])
        ))?;
        let range = head
            .get("content-range")
            .ok_or("a part without Content-Range")?
            .to_string();
        let data_start = head_end + 4;
        let mut close = b"\r\n".to_vec();
        close.extend_from_slice(&delimiter);
        let data_end =
            find(&body[data_start..], &close).ok_or("a part without its end")? + data_start;
        parts.push((range, body[data_start..data_end].to_vec()));
        pos = data_end + close.len();
    }
}

fn curl_multiple_ranges_get_multipart_byteranges_with_each_part_exact(mode: Mode) {
    let site = Site::new("http-curl-multi");
    let server = site.serve(mode, &[]);
    let (head, body) = site.curl(&server, &["-r", "0-9,100-109", &url(&server, "/data.bin")]);
    assert_eq!(head.status, 206, "{head:?}");
    assert_eq!(head.content_length(), Some(body.len()), "{head:?}");
    let content_type = head.get("content-type").unwrap_or_default();
    let parts = multipart_parts(content_type, &body).unwrap_or_else(|e| {
        panic!(
            "multipart body: {e}\nhead {head:?}\nbody {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    let want = [(0, 9), (100, 109)];
    assert_eq!(parts.len(), want.len(), "{parts:?}");
    for ((range, bytes), (a, b)) in parts.iter().zip(want) {
        assert_eq!(*range, format!("bytes {a}-{b}/{DATA_LEN}"));
        assert_eq!(bytes[..], site.data[a..=b], "part {range}");
    }
    server.stop();
}

fn curl_resume_of_a_partial_file_is_byte_identical(mode: Mode) {
    let site = Site::new("http-curl-resume");
    let server = site.serve(mode, &[]);
    let out = site.dir.path().join("partial.bin");
    fs::write(&out, &site.data[..3000]).expect("write the partial file");
    let (head, got) = site.curl_to(&server, &out, &["-C", "-", &url(&server, "/data.bin")]);
    assert_eq!(head.status, 206, "curl -C - asks for the rest: {head:?}");
    assert_eq!(
        head.get("content-range"),
        Some(format!("bytes 3000-{}/{DATA_LEN}", DATA_LEN - 1).as_str())
    );
    assert!(
        got == site.data,
        "resumed file: {}",
        util::first_difference(&got, &site.data)
    );
    server.stop();
}

fn curl_head_gets_the_headers_and_no_body(mode: Mode) {
    let site = Site::new("http-curl-head");
    let server = site.serve(mode, &[]);
    let curl = require("curl", "curl");
    let file = url(&server, "/data.bin");
    // Twice on one connection: a body after the first head would be read
    // as the second response.
    let ran = run_client(
        Command::new(curl).args(["-sS", "--max-time", "20", "-I", &file, &file]),
        CLIENT_LIMIT,
    );
    assert!(
        ran.status.success(),
        "curl -I: {}\n{}",
        ran.status,
        ran.stderr
    );
    let heads: Vec<&str> = ran
        .stdout
        .split("\r\n\r\n")
        .filter(|h| !h.trim().is_empty())
        .collect();
    assert_eq!(heads.len(), 2, "two heads: {:?}", ran.stdout);
    for text in heads {
        let head = Head::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(head.content_length(), Some(DATA_LEN), "{head:?}");
        assert_eq!(head.get("last-modified"), Some(DATA_LAST_MODIFIED));
        assert_eq!(head.get("accept-ranges"), Some("bytes"));
        assert!(head.get("etag").is_some(), "{head:?}");
    }
    // The same on a raw socket: the head, then nothing but the close.
    let mut raw = Raw::open(server.addr());
    raw.send(b"HEAD /data.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let reply = raw.response(true).expect("HEAD response");
    assert_eq!(reply.head.status, 200);
    assert_eq!(reply.head.content_length(), Some(DATA_LEN));
    raw.expect_close()
        .unwrap_or_else(|e| panic!("after a HEAD response: {e}"));
    server.stop();
}

fn curl_if_modified_since_and_if_none_match_get_304(mode: Mode) {
    let site = Site::new("http-curl-304");
    let server = site.serve(mode, &[]);
    let file = url(&server, "/data.bin");
    let (head, _) = site.curl(&server, &[&file]);
    assert_eq!(head.status, 200);
    let last_modified = head
        .get("last-modified")
        .expect("Last-Modified")
        .to_string();
    assert_eq!(last_modified, DATA_LAST_MODIFIED);
    let etag = head.get("etag").expect("ETag").to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "a strong ETag: {etag}"
    );
    for condition in [
        format!("If-Modified-Since: {last_modified}"),
        format!("If-None-Match: {etag}"),
        format!("If-None-Match: \"other\", {etag}"),
    ] {
        let (head, body) = site.curl(&server, &["-H", &condition, &file]);
        assert_eq!(head.status, 304, "{condition}: {head:?}");
        assert!(body.is_empty(), "{condition}: a 304 has no body");
        assert_eq!(head.get("etag"), Some(etag.as_str()), "{condition}");
    }
    // Validators that do not match get the file.
    for condition in [
        format!("If-Modified-Since: {A_DAY_EARLIER}"),
        "If-None-Match: \"other\"".to_string(),
    ] {
        let (head, body) = site.curl(&server, &["-H", &condition, &file]);
        assert_eq!(head.status, 200, "{condition}: {head:?}");
        assert!(body == site.data, "{condition}: the whole file");
    }
    server.stop();
}

fn curl_if_range_with_a_stale_validator_gets_the_whole_file(mode: Mode) {
    let site = Site::new("http-curl-if-range");
    let server = site.serve(mode, &[]);
    let file = url(&server, "/data.bin");
    let (head, _) = site.curl(&server, &["-I", &file]);
    let etag = head.get("etag").expect("ETag").to_string();
    for stale in [
        "\"stale-tag\"".to_string(),
        A_DAY_EARLIER.to_string(),
        format!("W/{etag}"),
    ] {
        let (head, body) = site.curl(
            &server,
            &["-r", "0-99", "-H", &format!("If-Range: {stale}"), &file],
        );
        assert_eq!(head.status, 200, "If-Range: {stale}: {head:?}");
        assert_eq!(head.get("content-range"), None, "If-Range: {stale}");
        assert!(body == site.data, "If-Range: {stale}: the whole file");
    }
    // The current validators keep the range.
    for current in [etag, DATA_LAST_MODIFIED.to_string()] {
        let (head, body) = site.curl(
            &server,
            &["-r", "0-99", "-H", &format!("If-Range: {current}"), &file],
        );
        assert_eq!(head.status, 206, "If-Range: {current}: {head:?}");
        assert_eq!(body[..], site.data[..100], "If-Range: {current}");
    }
    server.stop();
}

fn curl_unsatisfiable_range_gets_416_with_the_size(mode: Mode) {
    let site = Site::new("http-curl-416");
    let server = site.serve(mode, &[]);
    let file = url(&server, "/data.bin");
    for range in ["20000-30000", "10000-"] {
        let (head, _) = site.curl(&server, &["-r", range, &file]);
        assert_eq!(head.status, 416, "-r {range}: {head:?}");
        assert_eq!(
            head.get("content-range"),
            Some(format!("bytes */{DATA_LEN}").as_str()),
            "-r {range}"
        );
    }
    server.stop();
}

// --- 2. aria2c --------------------------------------------------------------

/// Size of the file aria2c downloads.
const BIG: u64 = 256 << 20;

/// Write `len` pattern bytes to `path`; returns their SHA-256 in hex.
fn write_pattern_file(path: &Path, len: u64) -> String {
    let mut f = io::BufWriter::new(fs::File::create(path).expect("create the big file"));
    let mut hash = Sha256::new();
    let mut pattern = Pattern(0xA51A_2C00);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        f.write_all(&buf[..n]).expect("write the big file");
        left -= n as u64;
    }
    f.flush().expect("flush the big file");
    hex(&hash.finalize())
}

/// Bytes the server process has written so far, to sockets and logs,
/// by write and sendfile alike (`wchar` of /proc/PID/io).
fn bytes_written(server: &Server) -> u64 {
    let io = fs::read_to_string(format!("/proc/{}/io", server.pid()))
        .expect("read the server's /proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("wchar in /proc/PID/io")
}

/// The last `(NN%)` of aria2c's progress readout.
fn aria2_percent(output: &str) -> Option<u32> {
    let end = output.rfind("%)")?;
    let start = output[..end].rfind('(')? + 1;
    output[start..end].parse().ok()
}

#[test]
fn aria2c_segmented_download_passes_its_checksum_and_resumes_after_a_kill() {
    let aria2c = require("aria2c", "aria2");
    let dir = TempDir::new("http-aria2");
    let root = dir.path().join("root");
    let downloads = dir.path().join("downloads");
    fs::create_dir_all(&root).expect("create root");
    fs::create_dir_all(&downloads).expect("create downloads");
    let sha256 = write_pattern_file(&root.join("big.bin"), BIG);
    let server = http_server(Mode::Thread, &root, &[]);
    let big = url(&server, "/big.bin");
    let out = downloads.join("big.bin");
    let control = downloads.join("big.bin.aria2");
    let aria2 = |extra: &[&str]| {
        let mut cmd = Command::new(&aria2c);
        cmd.args(["-x16", "-s16", "-k1M", "--file-allocation=none"])
            .args(["--console-log-level=warn", "--check-certificate=false"])
            .arg(format!("--checksum=sha-256={sha256}"))
            .arg("-d")
            .arg(&downloads)
            .args(["-o", "big.bin"])
            .args(extra)
            .arg(&big);
        cmd
    };

    // 1. Sixteen segments at once; aria2c checks the SHA-256 at the end.
    let ran = run_client(
        &mut aria2(&["--summary-interval=0"]),
        Duration::from_secs(60),
    );
    assert!(
        ran.status.success(),
        "aria2c -x16 -s16 exited {} (32 = checksum mismatch):\n{}\n{}\nserver log:\n{}",
        ran.status,
        ran.stdout,
        ran.stderr,
        server.log()
    );
    assert_eq!(fs::metadata(&out).map(|m| m.len()).ok(), Some(BIG));
    assert!(
        !control.exists(),
        "a finished download leaves no .aria2 file"
    );
    fs::remove_file(&out).expect("remove the first download");

    // 2. A slow run, killed (SIGKILL) once some of the file has arrived
    // and aria2c has saved its control file after that.
    let mut child = aria2(&[
        "--max-download-limit=16M",
        "--auto-save-interval=1",
        "--summary-interval=1",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn aria2c");
    let output = Arc::new(Mutex::new(String::new()));
    let reader = {
        let output = output.clone();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut o = output.lock().unwrap_or_else(|e| e.into_inner());
                o.push_str(&line);
                o.push('\n');
            }
        })
    };
    let progressed = util::wait_for(Duration::from_secs(30), || {
        let o = output.lock().unwrap_or_else(|e| e.into_inner());
        aria2_percent(&o).is_some_and(|p| p >= 15) && control.exists()
    });
    if progressed {
        // An auto-save (every second) after the progress seen.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let seen = output.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        progressed,
        "the slow aria2c run did not reach 15% with a control file within 30 s:\n{seen}"
    );
    assert!(
        control.exists(),
        "the killed run left {}",
        control.display()
    );

    // 3. Resumed with -c: it finishes from where it was, not from zero,
    // and the checksum passes.
    let before = bytes_written(&server);
    let ran = run_client(
        &mut aria2(&["-c", "--summary-interval=0"]),
        Duration::from_secs(60),
    );
    let served = bytes_written(&server) - before;
    assert!(
        ran.status.success(),
        "aria2c -c exited {} (32 = checksum mismatch):\n{}\n{}\nserver log:\n{}",
        ran.status,
        ran.stdout,
        ran.stderr,
        server.log()
    );
    assert!(
        served < BIG - BIG / 10,
        "the resumed run made the server send {served} bytes of a {BIG}-byte file: \
         it started over instead of resuming (killed run's output:\n{seen})"
    );
    assert_eq!(fs::metadata(&out).map(|m| m.len()).ok(), Some(BIG));
    assert!(
        !control.exists(),
        "the finished download removed its .aria2 file"
    );
    server.stop();
}

// --- 3. python: http.client and h11 ------------------------------------------

/// Run the parsing script with `client` against a fresh server.
fn python_parses_every_response(client: &str) {
    let python = python_with_h11();
    let site = Site::new("http-python");
    let server = site.serve(Mode::Thread, &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/http_support/responses.py");
    let addr = server.addr();
    let ran = run_client(
        Command::new(python).arg(&script).args([
            client,
            &addr.ip().to_string(),
            &addr.port().to_string(),
            &DATA_LEN.to_string(),
        ]),
        CLIENT_LIMIT,
    );
    assert!(
        ran.status.success(),
        "{client} could not parse every response (exit {}):\n{}\n{}\nserver log:\n{}",
        ran.status,
        ran.stdout,
        ran.stderr,
        server.log()
    );
    // Every case ran (the script lists 10 well-formed and 9 raw ones).
    let ok = ran.stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(ok, 19, "cases passed:\n{}", ran.stdout);
    server.stop();
}

#[test]
fn python_http_client_parses_every_response() {
    python_parses_every_response("http.client");
}

#[test]
fn h11_parses_every_response_strictly() {
    python_parses_every_response("h11");
}

// --- 4. Raw sockets: limits and malformed heads ------------------------------

fn request_line_over_8_kib_gets_414_and_a_close(mode: Mode) {
    let site = Site::new("http-414");
    let server = site.serve(mode, &[]);
    let target = format!("/{}", "a".repeat(9000));
    assert_refused(&server, &get(&target, ""), "HTTP/1.1 414 URI Too Long");
    server.stop();
}

fn header_line_over_8_kib_gets_431_and_a_close(mode: Mode) {
    let site = Site::new("http-431-line");
    let server = site.serve(mode, &[]);
    let big = format!("X-Big: {}\r\n", "a".repeat(9000));
    assert_refused(
        &server,
        &get("/hello", &big),
        "HTTP/1.1 431 Request Header Fields Too Large",
    );
    server.stop();
}

fn headers_over_32_kib_get_431_and_a_close(mode: Mode) {
    let site = Site::new("http-431-total");
    let server = site.serve(mode, &[]);
    // Five lines of 7 KiB: each under the line limit, together over 32 KiB.
    let lines: String = (0..5)
        .map(|i| format!("X-Part-{i}: {}\r\n", "v".repeat(7 * 1024)))
        .collect();
    assert_refused(
        &server,
        &get("/hello", &lines),
        "HTTP/1.1 431 Request Header Fields Too Large",
    );
    server.stop();
}

fn a_101st_header_gets_431_and_a_close(mode: Mode) {
    let site = Site::new("http-431-count");
    let server = site.serve(mode, &[]);
    // Host and 99 more: exactly 100 fields pass.
    let lines: String = (0..98).map(|i| format!("X-{i}: y\r\n")).collect();
    let mut ok = Raw::open(server.addr());
    ok.send(&get("/hello", &format!("{lines}Connection: close\r\n")));
    let reply = ok.response(false).expect("100 header fields are allowed");
    assert_eq!(reply.head.status, 200, "{:?}", reply.head);
    // Host and 100 more: one too many.
    let lines: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
    assert_refused(
        &server,
        &get("/hello", &lines),
        "HTTP/1.1 431 Request Header Fields Too Large",
    );
    server.stop();
}

fn content_length_over_max_body_gets_413_before_the_body_is_sent(mode: Mode) {
    let site = Site::new("http-413");
    let server = site.serve(mode, &[]);
    // The head alone: the answer must come without the body.
    assert_refused(
        &server,
        b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n",
        "HTTP/1.1 413 Content Too Large",
    );
    // A client that sends the whole 4 MiB body at once (no Expect) still
    // reads the 413, then a clean close: the server drains what it does
    // not read instead of resetting the connection.
    let mut s = connect(server.addr());
    let mut w = s.try_clone().expect("clone the socket");
    let writer = std::thread::spawn(move || {
        let mut request =
            b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n".to_vec();
        request.resize(request.len() + (4 << 20), b'b');
        w.write_all(&request)
    });
    let (got, end) = read_to_eof(&mut s, CLOSE_LIMIT);
    let sent = writer.join().expect("writer thread");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 413 Content Too Large\r\n"),
        "a 4 MiB body sent at once: {text:?} ({end:?}, write: {sent:?})"
    );
    describe_close(end).unwrap_or_else(|e| panic!("after a 413 with the body sent at once: {e}"));
    // Exactly max_body (1 MiB) is accepted.
    let mut raw = Raw::open(server.addr());
    let mut request =
        b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n".to_vec();
    request.resize(request.len() + (1 << 20), b'b');
    raw.send(&request);
    let reply = raw
        .response(false)
        .expect("a 1 MiB body is within max_body");
    assert_eq!(reply.head.status, 200, "{:?}", reply.head);
    assert_eq!(reply.body, HELLO);
    server.stop();
}

fn a_head_slower_than_head_timeout_gets_408_and_a_close(mode: Mode) {
    let site = Site::new("http-408");
    let server = site.serve(mode, &["-o", "head_timeout=1s"]);
    let mut s = connect(server.addr());
    let start = Instant::now();
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        .expect("write the request line");
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("read timeout");
    // One more header line every 300 ms, never the end of the head, until
    // the server answers.
    let mut got = Vec::new();
    let mut i = 0;
    while got.is_empty() && start.elapsed() < Duration::from_secs(6) {
        let mut buf = [0; 4096];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if s.write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                    .is_err()
                {
                    break;
                }
                i += 1;
            }
            Err(e) => panic!("after {:?}: {e}", start.elapsed()),
        }
    }
    let answered = start.elapsed();
    let (rest, end) = read_to_eof(&mut s, CLOSE_LIMIT);
    got.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&got);
    let (reply, used) = take_response(&got, false)
        .unwrap_or_else(|e| panic!("{e}: {text:?}"))
        .unwrap_or_else(|| {
            panic!(
                "no whole response after {answered:?}: {text:?}\nlog:\n{}",
                server.log()
            )
        });
    assert_eq!(
        reply.head.status_line, "HTTP/1.1 408 Request Timeout",
        "{text:?}"
    );
    assert_eq!(reply.head.get("connection"), Some("close"), "{text:?}");
    assert_eq!(used, got.len(), "nothing after the 408: {text:?}");
    describe_close(end).unwrap_or_else(|e| panic!("after the 408: {e}"));
    assert!(
        answered >= Duration::from_millis(900) && answered <= Duration::from_secs(4),
        "408 after {answered:?}, head_timeout is 1 s"
    );
    server.stop();
}

fn content_length_with_transfer_encoding_gets_400(mode: Mode) {
    let site = Site::new("http-cl-te");
    let server = site.serve(mode, &[]);
    // Whichever framing a proxy in front used, the GET after it must not
    // be answered.
    assert_refused(
        &server,
        b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
0\r\n\r\nGET /data.bin HTTP/1.1\r\nHost: x\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
    );
    server.stop();
}

fn two_different_content_lengths_get_400(mode: Mode) {
    let site = Site::new("http-two-cl");
    let server = site.serve(mode, &[]);
    assert_refused(
        &server,
        b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 27\r\n\r\n\
helloGET /data.bin HTTP/1.1\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
    );
    server.stop();
}

fn bare_lf_gets_400(mode: Mode) {
    let site = Site::new("http-bare-lf");
    let server = site.serve(mode, &[]);
    assert_refused(
        &server,
        b"GET /hello HTTP/1.1\nHost: x\n\n",
        "HTTP/1.1 400 Bad Request",
    );
    assert_refused(
        &server,
        b"GET /hello HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
    );
    server.stop();
}

fn obs_fold_gets_400(mode: Mode) {
    let site = Site::new("http-obs-fold");
    let server = site.serve(mode, &[]);
    assert_refused(
        &server,
        b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
    );
    assert_refused(
        &server,
        b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n\tb\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
    );
    server.stop();
}

fn nul_in_a_header_gets_400(mode: Mode) {
    let site = Site::new("http-nul");
    let server = site.serve(mode, &[]);
    assert_refused(
        &server,
        b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
    );
    server.stop();
}

fn http_1_1_without_host_gets_400(mode: Mode) {
    let site = Site::new("http-no-host");
    let server = site.serve(mode, &[]);
    assert_refused(
        &server,
        b"GET /hello HTTP/1.1\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
    );
    server.stop();
}

fn http_2_request_line_gets_505(mode: Mode) {
    let site = Site::new("http-505");
    let server = site.serve(mode, &[]);
    assert_refused(
        &server,
        b"GET /hello HTTP/2.0\r\nHost: x\r\n\r\n",
        "HTTP/1.1 505 HTTP Version Not Supported",
    );
    server.stop();
}

fn head_timeout_spares_idle_keep_alive_and_closes_a_silent_connection_quietly(mode: Mode) {
    let site = Site::new("http-idle");
    let server = site.serve(mode, &["-o", "head_timeout=1s"]);
    // Idle between requests longer than head_timeout: still served.
    let mut raw = Raw::open(server.addr());
    raw.send(&get("/hello", ""));
    let reply = raw.response(false).expect("first response");
    assert_eq!(reply.body, HELLO);
    std::thread::sleep(Duration::from_millis(1500));
    raw.send(&get("/hello", ""));
    let reply = raw.response(false).unwrap_or_else(|e| {
        panic!(
            "a keep-alive connection idle 1.5 s (head_timeout 1 s): {e}\nlog:\n{}",
            server.log()
        )
    });
    assert_eq!(reply.body, HELLO);
    // A connection that never says anything is closed without a word.
    let mut silent = connect(server.addr());
    let start = Instant::now();
    let (got, end) = read_to_eof(&mut silent, CLOSE_LIMIT);
    let after = start.elapsed();
    assert!(
        got.is_empty(),
        "a silent connection gets no response: {:?}",
        String::from_utf8_lossy(&got)
    );
    describe_close(end).unwrap_or_else(|e| panic!("a silent connection: {e}"));
    assert!(
        after >= Duration::from_millis(900) && after <= Duration::from_secs(4),
        "a silent connection closed after {after:?}, head_timeout is 1 s"
    );
    server.stop();
}

fn expect_100_continue_gets_100_before_the_body_and_413_without_it(mode: Mode) {
    let site = Site::new("http-expect");
    let server = site.serve(mode, &[]);
    let mut raw = Raw::open(server.addr());
    raw.send(
        b"POST /hello HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    );
    let interim = raw
        .response(false)
        .unwrap_or_else(|e| panic!("no 100 Continue before the body: {e}"));
    assert_eq!(interim.head.status_line, "HTTP/1.1 100 Continue");
    raw.send(b"hello");
    let reply = raw.response(false).expect("the answer after the body");
    assert_eq!(reply.head.status, 200, "{:?}", reply.head);
    assert_eq!(reply.body, HELLO);
    raw.expect_open()
        .unwrap_or_else(|e| panic!("after a 100-continue exchange: {e}"));
    // Too large: refused at once, no 100 Continue first.
    assert_refused(
        &server,
        b"POST /hello HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1048577\r\n\r\n",
        "HTTP/1.1 413 Content Too Large",
    );
    server.stop();
}

fn an_empty_file_gets_200_with_no_body_and_the_connection_stays_usable(mode: Mode) {
    let site = Site::new("http-empty");
    fs::write(site.root.join("empty.txt"), "").expect("write empty.txt");
    let server = site.serve(mode, &[]);
    let mut raw = Raw::open(server.addr());
    raw.send(&get("/empty.txt", ""));
    let reply = raw
        .response(false)
        .unwrap_or_else(|e| panic!("GET /empty.txt: {e}\nlog:\n{}", server.log()));
    assert_eq!(reply.head.status, 200, "{:?}", reply.head);
    assert_eq!(reply.head.content_length(), Some(0), "{:?}", reply.head);
    raw.send(&get("/empty.txt", "Range: bytes=0-\r\n"));
    let reply = raw.response(false).expect("a range of an empty file");
    assert_eq!(reply.head.status, 416, "{:?}", reply.head);
    assert_eq!(reply.head.get("content-range"), Some("bytes */0"));
    raw.send(&get("/data.bin", "Range: bytes=0-9\r\n"));
    let reply = raw
        .response(false)
        .unwrap_or_else(|e| panic!("a GET after the empty file: {e}"));
    assert_eq!(reply.head.status, 206, "{:?}", reply.head);
    assert_eq!(reply.body, site.data[..10]);
    server.stop();
}

fn a_large_file_before_a_close_arrives_whole(mode: Mode) {
    let site = Site::new("http-large-close");
    let mut large = vec![0; 8 << 20];
    Pattern(0x1A46E).fill(&mut large);
    fs::write(site.root.join("large.bin"), &large).expect("write large.bin");
    let server = site.serve(mode, &[]);
    for request in [
        &b"GET /large.bin HTTP/1.0\r\n\r\n"[..],
        b"GET /large.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let mut raw = Raw::open(server.addr());
        raw.send(request);
        // The server has queued what the socket takes and decided to close
        // before the client reads anything.
        std::thread::sleep(Duration::from_millis(300));
        let line = String::from_utf8_lossy(&request[..request.len().min(30)]).into_owned();
        let reply = raw
            .response(false)
            .unwrap_or_else(|e| panic!("{line:?}: {e}\nlog:\n{}", server.log()));
        assert_eq!(reply.head.status, 200, "{line:?}: {:?}", reply.head);
        assert_eq!(reply.head.get("connection"), Some("close"), "{line:?}");
        assert!(
            reply.body == large,
            "{line:?}: {}",
            util::first_difference(&reply.body, &large)
        );
        raw.expect_close()
            .unwrap_or_else(|e| panic!("{line:?} after the whole file: {e}"));
    }
    server.stop();
}

// --- 4. Raw sockets: keep-alive, pipelining, bodies ---------------------------

fn a_hundred_pipelined_gets_in_one_write_are_answered_in_order(mode: Mode) {
    let site = Site::new("http-pipeline");
    let server = site.serve(mode, &[]);
    let mut raw = Raw::open(server.addr());
    // Request i asks for byte i of data.bin (every tenth is /hello), so
    // each response says which request it answers.
    let mut batch = Vec::new();
    for i in 0..100 {
        if i % 10 == 9 {
            batch.extend_from_slice(&get("/hello", ""));
        } else {
            batch.extend_from_slice(&get("/data.bin", &format!("Range: bytes={i}-{i}\r\n")));
        }
    }
    raw.send(&batch);
    for i in 0..100 {
        let reply = raw
            .response(false)
            .unwrap_or_else(|e| panic!("response {i}: {e}\nlog:\n{}", server.log()));
        if i % 10 == 9 {
            assert_eq!(reply.head.status, 200, "response {i}: {:?}", reply.head);
            assert_eq!(reply.body, HELLO, "response {i}");
        } else {
            assert_eq!(reply.head.status, 206, "response {i}: {:?}", reply.head);
            assert_eq!(
                reply.head.get("content-range"),
                Some(format!("bytes {i}-{i}/{DATA_LEN}").as_str()),
                "response {i} out of order"
            );
            assert_eq!(reply.body, [site.data[i]], "response {i}");
        }
    }
    raw.expect_open()
        .unwrap_or_else(|e| panic!("after 100 keep-alive responses: {e}"));
    raw.send(&get("/hello", "Connection: close\r\n"));
    let last = raw.response(false).expect("response 101");
    assert_eq!(last.body, HELLO);
    raw.expect_close()
        .unwrap_or_else(|e| panic!("after Connection: close: {e}"));
    server.stop();
}

/// Sixty small files, each opened off the loop on its first request,
/// pipelined in one write between /hello, a 404 and a directory redirect:
/// every answer comes in request order, whether its file was a miss of
/// the open-file cache or a hit.
fn pipelined_gets_of_files_opened_off_the_loop_are_answered_in_order(mode: Mode) {
    let site = Site::new("http-pipeline-files");
    for i in 0..60 {
        fs::write(site.root.join(format!("f{i}.txt")), format!("file {i}\n")).expect("write");
    }
    let server = site.serve(mode, &[]);
    let mut raw = Raw::open(server.addr());
    let mut batch = Vec::new();
    // Each file twice: a miss, then (once it came back) a hit.
    let order: Vec<usize> = (0..60).chain(0..60).collect();
    for (n, i) in order.iter().enumerate() {
        batch.extend_from_slice(&get(&format!("/f{i}.txt"), ""));
        match n % 20 {
            5 => batch.extend_from_slice(&get("/hello", "")),
            11 => batch.extend_from_slice(&get("/nothing-here.txt", "")),
            17 => batch.extend_from_slice(&get("/sub", "")),
            _ => {}
        }
    }
    raw.send(&batch);
    for (n, i) in order.iter().enumerate() {
        let reply = raw
            .response(false)
            .unwrap_or_else(|e| panic!("response for f{i}: {e}\nlog:\n{}", server.log()));
        assert_eq!(reply.head.status, 200, "f{i}: {:?}", reply.head);
        assert_eq!(
            reply.body,
            format!("file {i}\n").as_bytes(),
            "f{i} out of order"
        );
        let extra = match n % 20 {
            5 => Some((200, "/hello")),
            11 => Some((404, "the 404")),
            17 => Some((301, "the redirect")),
            _ => None,
        };
        if let Some((status, what)) = extra {
            let reply = raw
                .response(false)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(reply.head.status, status, "{what}: {:?}", reply.head);
            if status == 301 {
                assert_eq!(reply.head.get("location"), Some("/sub/"));
            }
        }
    }
    raw.expect_open()
        .unwrap_or_else(|e| panic!("after the pipelined files: {e}"));
    server.stop();
}

/// Replace `path` by a new file (a rename, as deployments do): a cached
/// open file keeps the old one.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    fs::write(&tmp, text).expect("write the new file");
    fs::rename(&tmp, path).expect("rename it into place");
}

fn fetch(server: &Server, path: &str) -> Vec<u8> {
    let mut raw = Raw::open(server.addr());
    raw.send(&get(path, "Connection: close\r\n"));
    let reply = raw
        .response(false)
        .unwrap_or_else(|e| panic!("GET {path}: {e}\nlog:\n{}", server.log()));
    assert_eq!(reply.head.status, 200, "{:?}", reply.head);
    reply.body
}

/// The open-file cache at work: within file_cache_valid a replaced file is
/// served as it was (no open happens), with file_cache=0 the new one at
/// once, and with the default 1 s the new one soon after.
#[test]
fn the_open_file_cache_serves_a_file_as_opened_until_file_cache_valid() {
    let site = Site::new("http-file-cache");
    let page = site.root.join("page.txt");
    fs::write(&page, "old\n").expect("write page.txt");
    // One loop, so every request meets the same cache.
    let serve = |extra: &[&str]| {
        gaidaros()
            .args(&[
                "--handler",
                "http",
                "-o",
                &format!("root={}", site.root.display()),
            ])
            .args(&["-S", "thread", "-N", "1"])
            .args(extra)
            .start()
    };

    let long = serve(&["-o", "file_cache_valid=1h"]);
    assert_eq!(fetch(&long, "/page.txt"), b"old\n");
    replace_file(&page, "new, longer\n");
    assert_eq!(fetch(&long, "/page.txt"), b"old\n", "served from the cache");
    long.stop();

    replace_file(&page, "old\n");
    let none = serve(&["-o", "file_cache=0"]);
    assert_eq!(fetch(&none, "/page.txt"), b"old\n");
    replace_file(&page, "new, longer\n");
    assert_eq!(fetch(&none, "/page.txt"), b"new, longer\n", "no cache");
    none.stop();

    replace_file(&page, "old\n");
    let default = serve(&[]);
    assert_eq!(fetch(&default, "/page.txt"), b"old\n");
    replace_file(&page, "new, longer\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fetch(&default, "/page.txt") != b"new, longer\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "the default cache never looked again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    default.stop();
}

fn a_chunked_post_is_answered_and_the_connection_stays_usable(mode: Mode) {
    let site = Site::new("http-chunked");
    let server = site.serve(mode, &[]);
    let mut raw = Raw::open(server.addr());
    // The body arrives in two writes, cut inside a chunk.
    raw.send(b"POST /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel");
    std::thread::sleep(Duration::from_millis(50));
    raw.send(b"lo\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    let reply = raw
        .response(false)
        .unwrap_or_else(|e| panic!("chunked POST: {e}\nlog:\n{}", server.log()));
    assert_eq!(reply.head.status, 200, "{:?}", reply.head);
    assert_eq!(reply.body, HELLO);
    assert_eq!(
        reply.head.get("connection"),
        None,
        "keep-alive: {:?}",
        reply.head
    );
    raw.send(&get("/data.bin", "Range: bytes=10-19\r\n"));
    let reply = raw.response(false).expect("the GET after the chunked POST");
    assert_eq!(reply.head.status, 206, "{:?}", reply.head);
    assert_eq!(reply.body, site.data[10..20]);
    raw.expect_open()
        .unwrap_or_else(|e| panic!("after the chunked POST and a GET: {e}"));
    server.stop();
}

fn http_1_0_without_keep_alive_gets_connection_close_and_a_close(mode: Mode) {
    let site = Site::new("http-10-close");
    let server = site.serve(mode, &[]);
    let mut raw = Raw::open(server.addr());
    raw.send(b"GET /hello HTTP/1.0\r\n\r\n");
    let reply = raw.response(false).expect("HTTP/1.0 response");
    assert_eq!(reply.head.status, 200, "{:?}", reply.head);
    assert_eq!(
        reply.head.get("connection"),
        Some("close"),
        "{:?}",
        reply.head
    );
    assert_eq!(reply.body, HELLO);
    raw.expect_close()
        .unwrap_or_else(|e| panic!("HTTP/1.0 without keep-alive: {e}"));
    server.stop();
}

fn http_1_0_with_keep_alive_stays_open(mode: Mode) {
    let site = Site::new("http-10-keep-alive");
    let server = site.serve(mode, &[]);
    let mut raw = Raw::open(server.addr());
    raw.send(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let reply = raw.response(false).expect("HTTP/1.0 keep-alive response");
    assert_eq!(reply.head.status, 200, "{:?}", reply.head);
    assert_eq!(
        reply.head.get("connection"),
        Some("keep-alive"),
        "an HTTP/1.0 client must be told the connection stays: {:?}",
        reply.head
    );
    assert_eq!(reply.body, HELLO);
    raw.expect_open()
        .unwrap_or_else(|e| panic!("HTTP/1.0 with keep-alive: {e}"));
    raw.send(b"GET /data.bin HTTP/1.0\r\nConnection: keep-alive\r\nRange: bytes=0-4\r\n\r\n");
    let reply = raw.response(false).expect("second HTTP/1.0 response");
    assert_eq!(reply.head.status, 206, "{:?}", reply.head);
    assert_eq!(reply.body, site.data[..5]);
    raw.expect_open()
        .unwrap_or_else(|e| panic!("HTTP/1.0 with keep-alive, twice: {e}"));
    server.stop();
}

// --- 5. Path traversal ------------------------------------------------------

/// `GET target` with `Connection: close`: the whole answer, read to EOF.
fn fetch_closing(server: &Server, target: &str) -> (Vec<u8>, Result<Reply, String>) {
    let mut s = connect(server.addr());
    s.write_all(&get(target, "Connection: close\r\n"))
        .unwrap_or_else(|e| panic!("write GET {target}: {e}"));
    let (got, end) = read_to_eof(&mut s, CLOSE_LIMIT);
    let reply = match take_response(&got, false) {
        Ok(Some((reply, _))) => describe_close(end).map(|()| reply),
        Ok(None) => Err(format!("no whole response ({end:?})")),
        Err(e) => Err(e),
    };
    (got, reply)
}

fn traversal_in_any_spelling_never_serves_a_file_outside_the_root(mode: Mode) {
    let site = Site::new("http-traversal");
    let server = site.serve(mode, &[]);
    for target in [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/./../secret.txt",
        "//../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/.%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..%2fsecret.txt",
        "/sub/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/%2fsecret.txt",
        "/sub%2f..%2f..%2fsecret.txt",
        "/..%5csecret.txt",
        "http://127.0.0.1/../secret.txt",
        "http://127.0.0.1/%2e%2e/secret.txt",
        "http://127.0.0.1/sub/../../secret.txt",
        "/secret.txt%00",
        "/%00/../secret.txt",
        "/data.bin%00/../../secret.txt",
        "/up/secret.txt",
        "/up/root/../secret.txt",
        "/%25%32%65%25%32%65/secret.txt",
    ] {
        let (got, reply) = fetch_closing(&server, target);
        assert!(
            find(&got, SECRET.as_bytes()).is_none(),
            "GET {target} leaked the secret: {:?}",
            String::from_utf8_lossy(&got)
        );
        let reply = reply.unwrap_or_else(|e| panic!("GET {target}: {e}"));
        assert!(
            matches!(reply.head.status, 400 | 403 | 404),
            "GET {target}: {:?}",
            reply.head
        );
    }
    server.stop();
}

fn a_symlink_leaving_the_root_gets_403_without_the_secret(mode: Mode) {
    let site = Site::new("http-symlink-out");
    let server = site.serve(mode, &[]);
    for target in ["/leak.txt", "/leak-abs.txt", "/up/secret.txt", "/up/"] {
        let (got, reply) = fetch_closing(&server, target);
        assert!(
            find(&got, SECRET.as_bytes()).is_none(),
            "GET {target} leaked the secret: {:?}",
            String::from_utf8_lossy(&got)
        );
        let reply = reply.unwrap_or_else(|e| panic!("GET {target}: {e}"));
        assert_eq!(reply.head.status, 403, "GET {target}: {:?}", reply.head);
    }
    server.stop();
}

fn a_symlink_inside_the_root_is_followed(mode: Mode) {
    let site = Site::new("http-symlink-in");
    let server = site.serve(mode, &[]);
    let (_, reply) = fetch_closing(&server, "/alias.bin");
    let reply = reply.unwrap_or_else(|e| panic!("GET /alias.bin: {e}"));
    assert_eq!(reply.head.status, 200, "{:?}", reply.head);
    assert!(reply.body == site.data, "/alias.bin serves data.bin");
    // The root's own file and directory index, for comparison.
    let (_, reply) = fetch_closing(&server, "/sub/");
    let reply = reply.unwrap_or_else(|e| panic!("GET /sub/: {e}"));
    assert_eq!(reply.head.status, 200, "{:?}", reply.head);
    assert_eq!(reply.body, b"<p>index</p>\n");
    server.stop();
}

// --- 6. slowhttptest --------------------------------------------------------

/// A fresh connection, `GET /hello`, the answer read to EOF within `limit`.
fn probe_hello(addr: SocketAddr, limit: Duration) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    s.write_all(&get("/hello", "Connection: close\r\n"))
        .map_err(|e| format!("write: {e}"))?;
    let (got, end) = read_to_eof(&mut s, limit);
    match take_response(&got, false)? {
        Some((reply, _)) if reply.head.status == 200 && reply.body == HELLO => describe_close(end),
        Some((reply, _)) => Err(format!("{:?}", reply.head.status_line)),
        None => Err(format!(
            "no whole response ({end:?}): {:?}",
            String::from_utf8_lossy(&got)
        )),
    }
}

/// Remove ANSI escape sequences (slowhttptest colours its output).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The numbers after `label` in each of slowhttptest's status reports.
fn slowhttptest_counts(output: &str, label: &str) -> Vec<u64> {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix(label))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

#[test]
fn slowloris_with_500_connections_does_not_stop_fresh_requests() {
    let slowhttptest = require("slowhttptest", "slowhttptest");
    let site = Site::new("http-slowloris");
    let server = site.serve(Mode::Thread, &[]);
    let addr = server.addr();
    let mut attack = Command::new(slowhttptest);
    attack
        .args([
            "-H", "-c", "500", "-r", "200", "-i", "5", "-l", "15", "-x", "24", "-p", "3",
        ])
        .args(["-u", &url(&server, "/hello")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = attack.spawn().expect("spawn slowhttptest");
    let out = drain(child.stdout.take().expect("stdout is piped"));
    let err = drain(child.stderr.take().expect("stderr is piped"));

    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut probes = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                probes.push((start.elapsed(), probe_hello(addr, Duration::from_secs(3))));
                std::thread::sleep(Duration::from_millis(200).saturating_sub(t.elapsed()));
            }
            probes
        })
    };
    let status = wait_child(&mut child, Duration::from_secs(30));
    stop.store(true, Ordering::SeqCst);
    let probes = prober.join().expect("probe thread");
    let output = strip_ansi(&out.join().unwrap_or_default());
    let errors = err.join().unwrap_or_default();
    let status = status
        .unwrap_or_else(|| panic!("slowhttptest still running after 30 s:\n{output}\n{errors}"));

    let failed: Vec<String> = probes
        .iter()
        .filter_map(|(at, r)| r.as_ref().err().map(|e| format!("at {at:?}: {e}")))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} probes failed during the slowloris attack:\n{}\nserver log (tail):\n{}",
        failed.len(),
        probes.len(),
        failed.join("\n"),
        tail(&server.log(), 40)
    );
    assert!(probes.len() >= 40, "only {} probes in 15 s", probes.len());
    assert!(
        status.success(),
        "slowhttptest exited {status}:\n{output}\n{errors}"
    );
    // The attack really held its connections open.
    let connected = slowhttptest_counts(&output, "connected:");
    assert!(
        connected.iter().any(|&n| n >= 450),
        "slowhttptest never held 450 connections ({connected:?}):\n{output}"
    );
    let available: Vec<&str> = output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("service available:"))
        .map(str::trim)
        .collect();
    assert!(
        !available.is_empty() && available.iter().all(|a| *a == "YES"),
        "slowhttptest's own probe found the service unavailable ({available:?}):\n{output}"
    );
    probe_hello(addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("after the attack: {e}"));
    server.stop();
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// --- 7. wrk -------------------------------------------------------------------

/// The numbers wrk reports: requests, socket errors, non-2xx/3xx.
#[derive(Debug, Default)]
struct WrkReport {
    requests: u64,
    socket_errors: u64,
    non_2xx_3xx: u64,
}

fn parse_wrk(output: &str) -> Option<WrkReport> {
    let mut report = WrkReport::default();
    let mut saw_requests = false;
    for line in output.lines().map(str::trim) {
        if let Some((n, _)) = line.split_once(" requests in ") {
            report.requests = n.trim().parse().ok()?;
            saw_requests = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // connect 0, read 0, write 0, timeout 0
            for part in rest.split(',') {
                let n: u64 = part.split_whitespace().nth(1)?.parse().ok()?;
                report.socket_errors += n;
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.non_2xx_3xx = rest.trim().parse().ok()?;
        }
    }
    saw_requests.then_some(report)
}

fn wrk_gets_only_2xx_and_no_socket_errors(mode: Mode) {
    let wrk = require("wrk", "wrk");
    let site = Site::new("http-wrk");
    let server = site.serve(mode, &[]);
    let ran = run_client(
        Command::new(wrk).args([
            "-t2",
            "-c64",
            "-d2s",
            "--timeout",
            "5s",
            &url(&server, "/hello"),
        ]),
        CLIENT_LIMIT,
    );
    assert!(
        ran.status.success(),
        "wrk exited {}:\n{}\n{}",
        ran.status,
        ran.stdout,
        ran.stderr
    );
    let report =
        parse_wrk(&ran.stdout).unwrap_or_else(|| panic!("unreadable wrk report:\n{}", ran.stdout));
    assert!(report.requests > 0, "{report:?}\n{}", ran.stdout);
    assert_eq!(report.non_2xx_3xx, 0, "{}", ran.stdout);
    assert_eq!(
        report.socket_errors,
        0,
        "{}\nserver log:\n{}",
        ran.stdout,
        tail(&server.log(), 40)
    );
    server.stop();
}

per_server_type!(
    curl_single_range_gets_206_with_content_range_and_the_exact_bytes,
    curl_multiple_ranges_get_multipart_byteranges_with_each_part_exact,
    curl_resume_of_a_partial_file_is_byte_identical,
    curl_head_gets_the_headers_and_no_body,
    curl_if_modified_since_and_if_none_match_get_304,
    curl_if_range_with_a_stale_validator_gets_the_whole_file,
    curl_unsatisfiable_range_gets_416_with_the_size,
    request_line_over_8_kib_gets_414_and_a_close,
    header_line_over_8_kib_gets_431_and_a_close,
    headers_over_32_kib_get_431_and_a_close,
    a_101st_header_gets_431_and_a_close,
    content_length_over_max_body_gets_413_before_the_body_is_sent,
    a_head_slower_than_head_timeout_gets_408_and_a_close,
    content_length_with_transfer_encoding_gets_400,
    two_different_content_lengths_get_400,
    bare_lf_gets_400,
    obs_fold_gets_400,
    nul_in_a_header_gets_400,
    http_1_1_without_host_gets_400,
    http_2_request_line_gets_505,
    head_timeout_spares_idle_keep_alive_and_closes_a_silent_connection_quietly,
    expect_100_continue_gets_100_before_the_body_and_413_without_it,
    an_empty_file_gets_200_with_no_body_and_the_connection_stays_usable,
    a_large_file_before_a_close_arrives_whole,
    a_hundred_pipelined_gets_in_one_write_are_answered_in_order,
    pipelined_gets_of_files_opened_off_the_loop_are_answered_in_order,
    a_chunked_post_is_answered_and_the_connection_stays_usable,
    http_1_0_without_keep_alive_gets_connection_close_and_a_close,
    http_1_0_with_keep_alive_stays_open,
    traversal_in_any_spelling_never_serves_a_file_outside_the_root,
    a_symlink_leaving_the_root_gets_403_without_the_secret,
    a_symlink_inside_the_root_is_followed,
    wrk_gets_only_2xx_and_no_socket_errors,
);
