//! A server under test as a child process: spawned, its port learned from
//! its log, its CPU time read, stopped.
//!
//! A server announces itself on stderr with a line holding the word
//! `listening` and an `addr=HOST:PORT` field, e.g. gaidaros's
//! `... INFO listening listener=main addr=127.0.0.1:40123 handler=echo` or
//! tokio-echo's `listening addr=127.0.0.1:40123`. Run it with `--port 0`
//! and read the port from there: no port is ever guessed.

use std::collections::VecDeque;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{sysconf, Pid, SysconfVar};

/// Lines of the server's stderr kept for error messages.
const LOG_TAIL: usize = 100;

/// The address in a server's "listening" log line, if `line` is one.
pub fn parse_listening_addr(line: &str) -> Option<SocketAddr> {
    let mut words = line.split_whitespace();
    if !words.clone().any(|w| w == "listening") {
        return None;
    }
    words
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|v| v.trim_matches('"').parse().ok())
}

/// Why a server could not be started.
#[derive(Debug)]
pub enum SpawnError {
    /// The program could not be run.
    Spawn(io::Error),
    /// It exited before announcing its address.
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of its stderr.
        log: Vec<String>,
    },
    /// It did not announce its address in time; it has been killed.
    Timeout {
        /// How long it was given.
        waited: Duration,
        /// The last lines of its stderr.
        log: Vec<String>,
    },
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::Spawn(e) => write!(f, "cannot run the server: {e}"),
            SpawnError::Exited { status, log } => {
                write!(f, "the server exited ({status}) before listening")?;
                log.iter().try_for_each(|l| write!(f, "\n  | {l}"))
            }
            SpawnError::Timeout { waited, log } => {
                write!(
                    f,
                    "the server did not log a listening address within {waited:?}"
                )?;
                log.iter().try_for_each(|l| write!(f, "\n  | {l}"))
            }
        }
    }
}

impl std::error::Error for SpawnError {}

/// A running server; killed when dropped unless [`stop`](Self::stop)ped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl ServerProcess {
    /// Run `cmd` (stdin and stdout closed, stderr read) and wait up to
    /// `timeout` for its "listening ... addr=" line. Its stderr keeps being
    /// drained afterwards, so a chatty server never blocks on the pipe.
    pub fn spawn(mut cmd: Command, timeout: Duration) -> Result<ServerProcess, SpawnError> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(SpawnError::Spawn)?;
        // Set just above with Stdio::piped().
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = parse_listening_addr(&line) {
                        // Only the first one is awaited; later sends fail quietly.
                        let _ = tx.send(addr);
                    }
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() == LOG_TAIL {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        let tail = |log: &Arc<Mutex<VecDeque<String>>>| -> Vec<String> {
            let log = log.lock().unwrap_or_else(|p| p.into_inner());
            log.iter().cloned().collect()
        };
        let start = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => return Ok(ServerProcess { child, addr, log }),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Let the reader thread take in the last lines.
                thread::sleep(Duration::from_millis(20));
                return Err(SpawnError::Exited {
                    status,
                    log: tail(&log),
                });
            }
            if start.elapsed() >= timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SpawnError::Timeout {
                    waited: timeout,
                    log: tail(&log),
                });
            }
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CPU time (user + system, all threads, exited ones included) it
    /// has used so far, from `/proc/PID/stat`. Resolution is one clock tick
    /// (usually 10 ms).
    pub fn cpu_time(&self) -> io::Result<Duration> {
        process_cpu_time(self.pid())
    }

    /// The last lines it wrote to stderr.
    pub fn log_tail(&self) -> Vec<String> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect()
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`.
    pub fn stop(mut self, grace: Duration) -> io::Result<ExitStatus> {
        let pid = Pid::from_raw(self.pid() as i32);
        kill(pid, Signal::SIGTERM).map_err(io::Error::from)?;
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.child.kill()?;
        self.child.wait()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// User + system CPU time of process `pid` (all its threads).
pub fn process_cpu_time(pid: u32) -> io::Result<Duration> {
    let t = stat_times(pid)?;
    Ok(ticks_to_duration(t[0] + t[1]))
}

/// CPU time split into user space and kernel (system) time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time in user space.
    pub user: Duration,
    /// Time in the kernel on the process's behalf (syscalls, and the
    /// network stack's work done in its context).
    pub system: Duration,
}

impl CpuTimes {
    /// User + system.
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// The time spent since `earlier` (a reading of the same process).
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// CPU time of process `pid`, its live descendants (nginx workers, say)
/// and the children it has reaped (socat's per-connection forks): all the
/// CPU a forking server spent.
pub fn tree_cpu_time(pid: u32) -> io::Result<Duration> {
    tree_cpu_times(pid).map(|t| t.total())
}

/// [`tree_cpu_time`], user and system apart.
pub fn tree_cpu_times(pid: u32) -> io::Result<CpuTimes> {
    fn walk(pid: u32, depth: usize) -> io::Result<[u64; 2]> {
        let [utime, stime, cutime, cstime] = stat_times(pid)?;
        let mut total = [utime + cutime, stime + cstime];
        if depth < 8 {
            for kid in children(pid) {
                // A child that exits meanwhile is in cutime/cstime by now.
                let [user, system] = walk(kid, depth + 1).unwrap_or([0, 0]);
                total[0] += user;
                total[1] += system;
            }
        }
        Ok(total)
    }
    walk(pid, 0).map(|[user, system]| CpuTimes {
        user: ticks_to_duration(user),
        system: ticks_to_duration(system),
    })
}

/// Live children of `pid` (from `/proc/PID/task/*/children`).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// utime, stime, cutime, cstime of `pid`, in clock ticks.
fn stat_times(pid: u32) -> io::Result<[u64; 4]> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/PID/stat");
    // The command name, field 2, is in parentheses and may hold spaces.
    let after_comm = &stat[stat.rfind(')').ok_or_else(bad)? + 1..];
    // Fields from 3 (state) on: utime is field 14, stime 15, cutime 16,
    // cstime 17.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| -> io::Result<u64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(bad)
    };
    Ok([ticks(14)?, ticks(15)?, ticks(16)?, ticks(17)?])
}

fn ticks_to_duration(ticks: u64) -> Duration {
    let per_s = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .unwrap_or(100) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / per_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_gaidaros_and_tokio_echo_lines() {
        let g = "2026-11-22T00:58:03.308234Z  INFO listening listener=main addr=127.0.0.1:43651 handler=echo";
        assert_eq!(
            parse_listening_addr(g),
            Some("127.0.0.1:43651".parse().unwrap())
        );
        assert_eq!(
            parse_listening_addr("listening addr=[::1]:8080"),
            Some("[::1]:8080".parse().unwrap())
        );
    }

    #[test]
    fn ignores_lines_that_are_not_listening_announcements() {
        assert_eq!(
            parse_listening_addr("INFO serving server=thread loops=2"),
            None
        );
        assert_eq!(parse_listening_addr("INFO connect addr=127.0.0.1:1"), None);
        assert_eq!(parse_listening_addr("listening addr=nonsense"), None);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(process_cpu_time(std::process::id()).is_ok());
        assert!(
            tree_cpu_time(std::process::id()).unwrap()
                >= process_cpu_time(std::process::id()).unwrap()
        );
        let split = tree_cpu_times(std::process::id()).unwrap();
        assert!(split.total() >= split.user && split.total() >= split.system);
        assert_eq!(split.since(&split), CpuTimes::default());
    }
}
