//! Shared helpers for the integration tests of the `gaidaros` binary.
//!
//! They start the real binary on loopback, drain its log, talk to it with
//! plain blocking sockets whose every read and write has a timeout, and read
//! what the kernel says about the server process (/proc). Nothing here waits
//! without a bound: a broken server makes a test fail, never hang.
//!
//! Every server they start runs under the poll backend named by
//! `GAIDAROS_TEST_POLL` (edge, level or completion; unset: the server's
//! default), unless the test chooses one itself (see [`ServerCmd`]).
//! `scripts/test` runs the integration tests under each.

// Every test file includes this module and uses a different part of it.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_gaidaros");
/// Default timeout of every socket read and write in the tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to print its listening lines.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server may take to exit after SIGTERM when idle.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The variable of the test run naming the poll backend of every server the
/// tests start: edge, level or completion; unset or empty = the server's
/// default.
pub const TEST_POLL_VAR: &str = "GAIDAROS_TEST_POLL";
/// How the backend under test reaches the server: the environment layer,
/// above the conf file and below the flags.
const SERVER_POLL_VAR: &str = "GAIDAROS_SERVER__POLL";

/// The poll backend named by `GAIDAROS_TEST_POLL`, if any; panics on a name
/// the server does not know (a typo would otherwise fail every test with a
/// conf error about a variable the test did not set).
pub fn test_poll() -> Option<String> {
    let poll = std::env::var(TEST_POLL_VAR)
        .ok()
        .filter(|p| !p.is_empty())?;
    assert!(
        ["edge", "level", "completion"].contains(&poll.as_str()),
        "{TEST_POLL_VAR}={poll:?}: expected edge, level or completion"
    );
    Some(poll)
}

/// Remove the `GAIDAROS_*` variables the test run inherited (its own
/// settings, and `GAIDAROS_TEST_POLL` itself, which the server would refuse)
/// from `cmd`'s environment.
fn clear_inherited_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("GAIDAROS_") {
            cmd.env_remove(k);
        }
    }
}

/// " (poll backend X from GAIDAROS_TEST_POLL)" for failure messages, or
/// nothing.
fn poll_note(poll: &Option<String>) -> String {
    match poll {
        Some(p) => format!(" (poll backend {p} from {TEST_POLL_VAR})"),
        None => String::new(),
    }
}

/// The two server layouts every scenario runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `-S blocking`: one loop on the main thread.
    Blocking,
    /// `-S thread -N 2`: two loop threads.
    Thread,
}

impl Mode {
    /// The command-line flags selecting this layout.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Mode::Blocking => &["-S", "blocking"],
            Mode::Thread => &["-S", "thread", "-N", "2"],
        }
    }
}

/// Generate, for each named scenario `fn NAME(mode: Mode)` of the file, two
/// tests: `blocking::NAME` and `thread::NAME`.
#[allow(unused_macros)]
macro_rules! per_server_type {
    ($($scenario:ident),+ $(,)?) => {
        mod blocking {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario($crate::util::Mode::Blocking)
                }
            )+
        }
        mod thread {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario($crate::util::Mode::Thread)
                }
            )+
        }
    };
}

/// A `gaidaros` command being put together.
///
/// The server gets no `GAIDAROS_*` variable of the test run, only those set
/// with [`ServerCmd::env`], plus `GAIDAROS_SERVER__POLL` with the backend
/// under test ([`test_poll`]) when the test chooses none itself: no `-T` or
/// `--poll` flag, no `GAIDAROS_SERVER__POLL` of its own, no `poll` key in
/// the `[server]` section of its conf file.
#[derive(Debug, Clone)]
pub struct ServerCmd {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    listeners: usize,
    nofile: Option<u64>,
    dir: Option<PathBuf>,
    hooks: Vec<PreExec>,
}

/// Code run in the forked child before exec (see [`ServerCmd::pre_exec`]).
#[derive(Clone)]
struct PreExec(Arc<dyn Fn() -> io::Result<()> + Send + Sync>);

impl std::fmt::Debug for PreExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreExec(..)")
    }
}

/// `gaidaros --port 0`, with one listener expected, and no `GAIDAROS_*`
/// variable inherited from the environment of the test run.
pub fn gaidaros() -> ServerCmd {
    ServerCmd {
        args: vec!["--port".into(), "0".into()],
        envs: Vec::new(),
        listeners: 1,
        nofile: None,
        dir: None,
        hooks: Vec::new(),
    }
}

/// `gaidaros` with no arguments yet (not even `--port 0`).
pub fn gaidaros_bare() -> ServerCmd {
    ServerCmd {
        args: Vec::new(),
        ..gaidaros()
    }
}

impl ServerCmd {
    /// Append arguments.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args
            .extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Append the flags of a server layout.
    pub fn mode(self, mode: Mode) -> Self {
        self.args(mode.args())
    }

    /// Set an environment variable for the server.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// How many "listening" log lines to wait for (default 1).
    pub fn listeners(mut self, n: usize) -> Self {
        self.listeners = n;
        self
    }

    /// Start the server with RLIMIT_NOFILE soft = hard = `n`.
    pub fn nofile_limit(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// Run the server in `dir`.
    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Run `hook` in the forked child just before it executes the server
    /// (after the hooks given before it); an error fails the spawn.
    ///
    /// # Safety
    ///
    /// As for [`CommandExt::pre_exec`]: the hook runs in a copy of a
    /// multi-threaded process, so it may only do what is async-signal-safe:
    /// system calls, no allocation, no lock.
    pub unsafe fn pre_exec(
        mut self,
        hook: impl Fn() -> io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.hooks.push(PreExec(Arc::new(hook)));
        self
    }

    /// The backend under test, when this command leaves the choice to it
    /// (see [`ServerCmd`]).
    fn poll_under_test(&self) -> Option<String> {
        let poll = test_poll()?;
        let flag = self.args.iter().any(|a| a == "-T" || a == "--poll");
        let env = self.envs.iter().any(|(k, _)| k == SERVER_POLL_VAR);
        (!flag && !env && !self.conf_sets_poll()).then_some(poll)
    }

    /// Whether the conf file given with `-c` sets `[server] poll`.
    fn conf_sets_poll(&self) -> bool {
        let Some(at) = self.args.iter().position(|a| a == "-c" || a == "--conf") else {
            return false;
        };
        let Some(path) = self.args.get(at + 1) else {
            return false;
        };
        let path = match &self.dir {
            Some(dir) => dir.join(path),
            None => PathBuf::from(path),
        };
        // An unreadable conf fails the server at start whatever the backend.
        let Ok(text) = std::fs::read_to_string(path) else {
            return false;
        };
        let mut section = "";
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim();
            } else if section == "server"
                && line
                    .split_once('=')
                    .is_some_and(|(k, _)| k.trim() == "poll")
            {
                return true;
            }
        }
        false
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(&self.args);
        clear_inherited_env(&mut cmd);
        if let Some(poll) = self.poll_under_test() {
            cmd.env(SERVER_POLL_VAR, poll);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        if let Some(n) = self.nofile {
            // SAFETY: the closure runs in the forked child before exec and
            // only makes the setrlimit(2) system call, which is
            // async-signal-safe; it touches no lock and allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                        .map_err(io::Error::from)
                });
            }
        }
        for hook in &self.hooks {
            let hook = hook.0.clone();
            // SAFETY: every hook was given through `ServerCmd::pre_exec`,
            // whose contract is this one; calling it through the Arc only
            // reads the pointer (the count is not touched in the child).
            unsafe {
                cmd.pre_exec(move || hook());
            }
        }
        cmd
    }

    /// Start the server and wait for its listening lines; panics with the
    /// log when it exits or stays silent.
    pub fn start(self) -> Server {
        match self.try_start() {
            Ok(s) => s,
            Err(why) => panic!(
                "gaidaros {:?}{} did not start: {why}",
                self.args,
                poll_note(&self.poll_under_test())
            ),
        }
    }

    /// Start the server and wait for its listening lines; on failure, the
    /// exit status and the log.
    pub fn try_start(&self) -> Result<Server, String> {
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot spawn {BIN}: {e}"))?;
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        {
            let log = log.clone();
            thread::spawn(move || drain_log(stderr, log, tx));
        }
        let mut server = Server {
            child,
            addrs: Vec::new(),
            log,
            exited: None,
            poll: self.poll_under_test(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while server.addrs.len() < self.listeners {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(listening) => server.addrs.push(listening),
                Err(_) => {
                    let status = server.wait_exit(Duration::from_millis(500));
                    server.kill();
                    return Err(format!(
                        "{} listening line(s) of {} seen; exit status {status:?}; log:\n{}",
                        server.addrs.len(),
                        self.listeners,
                        server.log()
                    ));
                }
            }
        }
        Ok(server)
    }

    /// Run to completion (for flags that exit at once and for start-up
    /// errors); kills the process if it is still running after `limit`.
    pub fn run_to_exit(&self, limit: Duration) -> Finished {
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {BIN}: {e}"));
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        let out = thread::spawn(move || read_all(out));
        let err = thread::spawn(move || read_all(err));
        let deadline = Instant::now() + limit;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        Finished {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        }
    }
}

/// What a process that was run to completion printed.
#[derive(Debug)]
pub struct Finished {
    /// `None` when it had to be killed.
    pub status: Option<ExitStatus>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Finished {
    /// The exit code; panics when it had to be killed or died of a signal.
    pub fn code(&self) -> i32 {
        match self.status.and_then(|s| s.code()) {
            Some(c) => c,
            None => panic!(
                "process did not exit by itself (status {:?}); stderr:\n{}",
                self.status, self.stderr
            ),
        }
    }
}

fn read_all(mut r: impl Read) -> String {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Keep reading the server's stderr into `log` (so the server never blocks
/// on logging) and report every listening line.
fn drain_log(
    stderr: impl Read,
    log: Arc<Mutex<String>>,
    listening: mpsc::Sender<(String, SocketAddr)>,
) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        lock(&log).push_str(&text);
        if let Some(l) = parse_listening(&text) {
            let _ = listening.send(l);
        }
    }
}

/// `listener=NAME addr=ADDR` of a "listening" log line.
pub fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let mut words = line.split_whitespace();
    words.by_ref().find(|w| *w == "listening")?;
    let mut name = None;
    let mut addr = None;
    for w in words {
        if let Some(n) = w.strip_prefix("listener=") {
            name = Some(n.to_string());
        } else if let Some(a) = w.strip_prefix("addr=") {
            addr = a.parse().ok();
        }
    }
    Some((name?, addr?))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running `gaidaros`; killed on drop if still running.
pub struct Server {
    child: Child,
    addrs: Vec<(String, SocketAddr)>,
    log: Arc<Mutex<String>>,
    exited: Option<ExitStatus>,
    /// The backend under test it was given, for failure messages.
    poll: Option<String>,
}

impl Server {
    /// The address of the first listener.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0].1
    }

    /// The address of the listener `name`.
    pub fn addr_of(&self, name: &str) -> SocketAddr {
        match self.addrs.iter().find(|(n, _)| n == name) {
            Some((_, a)) => *a,
            None => panic!(
                "no listener {name} in {:?}; log:\n{}",
                self.addrs,
                self.log()
            ),
        }
    }

    /// Every listener, as logged.
    pub fn addrs(&self) -> &[(String, SocketAddr)] {
        &self.addrs
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        lock(&self.log).clone()
    }

    /// Whether the log has a line containing one of `needles`, waiting at
    /// most [`LOG_WAIT`] for it: a thread of its own reads the log, so a
    /// line may arrive after what the test saw of the event it reports.
    pub fn logged(&self, needles: &[&str]) -> bool {
        wait_for(LOG_WAIT, || {
            let log = lock(&self.log);
            needles.iter().any(|n| log.contains(n))
        })
    }

    /// Send a signal.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("signal the server");
    }

    /// Wait at most `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while self.exited.is_none() {
            match self.child.try_wait() {
                Ok(Some(status)) => self.exited = Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => break,
            }
        }
        self.exited
    }

    /// Panic (with the log) if the server has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.exited = Some(status);
            panic!(
                "server exited unexpectedly ({status}){}; log:\n{}",
                poll_note(&self.poll),
                self.log()
            );
        }
    }

    /// SIGTERM, then expect a clean exit (status 0) within `STOP_TIMEOUT`.
    pub fn stop(mut self) {
        self.assert_running();
        self.signal(Signal::SIGTERM);
        match self.wait_exit(STOP_TIMEOUT) {
            Some(status) if status.success() => {}
            other => panic!(
                "after SIGTERM the server should exit 0 within {STOP_TIMEOUT:?}, got {other:?}{}; log:\n{}",
                poll_note(&self.poll),
                self.log()
            ),
        }
    }

    fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    /// The server's resident memory (VmRSS), KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// CPU time used by the server so far (utime + stime), clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/PID/stat");
        // Fields after the command name (which may hold spaces) start with
        // the state, field 3; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').expect("comm in /proc/PID/stat") + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields[11].parse().expect("utime");
        let stime: u64 = fields[12].parse().expect("stime");
        utime + stime
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Connect with the default read and write timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
    s
}

/// Read exactly `n` bytes, giving up (with an error saying how far it got)
/// at the socket's read timeout.
pub fn read_exactly(s: &mut TcpStream, n: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0; n];
    let mut got = 0;
    while got < n {
        match s.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(format!(
                    "EOF after {got} of {n} bytes: {:?}",
                    String::from_utf8_lossy(&buf[..got])
                ))
            }
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!(
                    "{e} after {got} of {n} bytes: {:?}",
                    String::from_utf8_lossy(&buf[..got])
                ))
            }
        }
    }
    Ok(buf)
}

/// How a read until end of file ended.
#[derive(Debug)]
pub enum End {
    /// The peer closed cleanly.
    Eof,
    /// A socket error (reset, timeout).
    Error(io::Error),
    /// `limit` passed first.
    Deadline,
}

/// Read until EOF, an error or `limit`.
pub fn read_to_eof(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, End) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, End::Deadline);
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return (out, End::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return (out, End::Deadline)
            }
            Err(e) => return (out, End::Error(e)),
        }
    }
}

/// Send `line` (LF-terminated) and expect it back from an echo.
pub fn expect_echo(s: &mut TcpStream, line: &str) {
    assert!(line.ends_with('\n'), "test lines end with LF");
    s.write_all(line.as_bytes())
        .unwrap_or_else(|e| panic!("write {line:?}: {e}"));
    let got = read_exactly(s, line.len()).unwrap_or_else(|e| panic!("echo of {line:?}: {e}"));
    assert_eq!(String::from_utf8_lossy(&got), line, "echo answer");
}

/// Open a connection to an echo listener and check a few round trips.
pub fn check_echo(addr: SocketAddr, tag: &str) {
    let mut s = connect(addr);
    for i in 0..3 {
        expect_echo(&mut s, &format!("{tag} round trip {i}\n"));
    }
    s.shutdown(Shutdown::Write).ok();
}

/// The first offset where `got` and `want` differ, with some context, for
/// failure messages about long byte streams.
pub fn first_difference(got: &[u8], want: &[u8]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let from = at.saturating_sub(40);
    format!(
        "got {} bytes, want {}; first difference at byte {at}: got {:?}, want {:?}",
        got.len(),
        want.len(),
        String::from_utf8_lossy(&got[from..(at + 40).min(got.len())]),
        String::from_utf8_lossy(&want[from..(at + 40).min(want.len())]),
    )
}

/// Raise this test process's soft RLIMIT_NOFILE to at least `want` (as far
/// as the hard limit allows).
pub fn raise_nofile_limit(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < want {
        let new = want.min(hard);
        setrlimit(Resource::RLIMIT_NOFILE, new, hard).expect("setrlimit");
        assert!(
            new >= want,
            "this test needs {want} open files; the hard limit is {hard}"
        );
    }
}

/// A loopback port that was free a moment ago (for confs that must name a
/// port in advance).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A directory under the target's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory whose name starts with `tag`.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// Write `name` with `text`; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How long a test waits for a line it expects in the server's log.
pub const LOG_WAIT: Duration = Duration::from_secs(5);

/// Wait until `cond` holds or `limit` passes; returns whether it held.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The kernel's send and receive queue lengths (bytes not yet acknowledged
/// by the peer, bytes not yet read by the owner) of the IPv4 TCP socket
/// whose local port is `local` and remote port is `remote`, from
/// /proc/net/tcp.
pub fn tcp_queues(local: u16, remote: u16) -> Option<(u64, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 || port(f[1])? != local || port(f[2])? != remote {
            return None;
        }
        let (tx, rx) = f[4].split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

/// How [`write_until_blocked`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Blocked {
    /// A write made no progress within the socket's write timeout, after
    /// this many bytes.
    After(u64),
    /// More than the byte limit was written without blocking.
    NeverWithin(u64),
}

/// Write `chunk(written)` again and again until the peer stops taking bytes
/// (a write times out: set a write timeout first), more than `limit` bytes
/// went out, or `within` passed (a panic).
pub fn write_until_blocked(
    s: &mut TcpStream,
    mut chunk: impl FnMut(u64) -> Vec<u8>,
    limit: u64,
    within: Duration,
) -> Blocked {
    let mut written: u64 = 0;
    let deadline = Instant::now() + within;
    loop {
        if written >= limit {
            return Blocked::NeverWithin(written);
        }
        assert!(
            Instant::now() < deadline,
            "writes never blocked within {within:?} ({written} bytes written)"
        );
        match s.write(&chunk(written)) {
            Ok(0) => panic!("write returned 0 after {written} bytes"),
            Ok(n) => written += n as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Blocked::After(written)
            }
            Err(e) => panic!("write failed after {written} bytes: {e}"),
        }
    }
}

/// The live children of process `pid` (worker processes).
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut kids: Vec<i32> = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|l| {
            l.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    kids.sort_unstable();
    kids
}

/// A deterministic pseudo-random byte stream (xorshift64), for payloads
/// whose every byte is checked.
pub struct Pattern(pub u64);

impl Pattern {
    /// Fill `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}
