//! What the runner reads off a server process while a load runs: syscalls
//! and context switches (perf tracepoints), user and kernel instructions
//! (perf's hardware counters, where the machine has them), user-space
//! instructions (valgrind's callgrind), resident memory
//! (`/proc/PID/status`), and the medians and ratios the tables are made of.
//!
//! Why callgrind for instructions: on virtual machines without hardware
//! counters `perf stat -e instructions` reports "not supported", and where
//! it works it drifts with steal time. Callgrind counts the instructions a
//! process executes in user space, the same total for the same work
//! whatever the machine is doing; it cannot see the kernel, so syscalls per
//! request stand in for the kernel's share. Where the counters exist,
//! [`Perf`] also counts `instructions:u` and `instructions:k`: the only way
//! to see work moved into the kernel (io_uring's, say).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Syscalls and context switches of one process over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PerfCounts {
    /// Every syscall entered by any thread (`raw_syscalls:sys_enter`).
    pub syscalls: Option<u64>,
    /// Context switches.
    pub context_switches: Option<u64>,
    /// Instructions retired in user space (`instructions:u`), when counted.
    pub instructions_user: Option<u64>,
    /// Instructions retired in the kernel on the process's behalf
    /// (`instructions:k`), when counted.
    pub instructions_kernel: Option<u64>,
}

/// `perf stat` attached to a running process.
#[derive(Debug)]
pub struct Perf {
    child: Child,
    out: PathBuf,
}

/// What a [`Perf`] run counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerfEvents {
    /// Syscalls and context switches (tracepoints: root, or
    /// `perf_event_paranoid` at -1).
    pub syscalls: bool,
    /// User and kernel instructions apart (hardware counters, which
    /// virtual machines often do not expose: "not supported").
    pub instructions: bool,
}

const SYSCALL_EVENTS: &str = "raw_syscalls:sys_enter,context-switches";
const INSTRUCTION_EVENTS: &str = "instructions:u,instructions:k";

impl PerfEvents {
    /// What perf is installed and allowed to count here.
    pub fn probe() -> PerfEvents {
        PerfEvents {
            syscalls: Perf::available(),
            instructions: Perf::counts_instructions(),
        }
    }

    /// Whether there is anything to count.
    pub fn any(&self) -> bool {
        self.syscalls || self.instructions
    }

    /// perf's `-e` list.
    fn list(&self) -> String {
        let sets = [
            (self.syscalls, SYSCALL_EVENTS),
            (self.instructions, INSTRUCTION_EVENTS),
        ];
        let on: Vec<&str> = sets.iter().filter(|s| s.0).map(|s| s.1).collect();
        on.join(",")
    }
}

impl Perf {
    /// Whether perf is installed and may read syscall tracepoints here.
    pub fn available() -> bool {
        Command::new("perf")
            .args(["stat", "-x,", "-e", SYSCALL_EVENTS, "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Whether perf counts instructions here, in user space and in the
    /// kernel apart (hardware counters exposed, `perf_event_paranoid` low
    /// enough for kernel events).
    pub fn counts_instructions() -> bool {
        Command::new("perf")
            .args(["stat", "-x,", "-e", INSTRUCTION_EVENTS, "true"])
            .stdout(Stdio::null())
            .output()
            .is_ok_and(|out| {
                let counts = parse_perf_csv(&String::from_utf8_lossy(&out.stderr));
                out.status.success()
                    && counts.instructions_user.is_some()
                    && counts.instructions_kernel.is_some()
            })
    }

    /// Start counting `events` of process `pid`; the CSV goes to `out`.
    /// Threads the process starts later are counted too.
    pub fn attach(pid: u32, out: &Path, events: PerfEvents) -> io::Result<Perf> {
        if !events.any() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no perf event to count",
            ));
        }
        let child = Command::new("perf")
            .args(["stat", "-x,", "-e", &events.list(), "-p", &pid.to_string()])
            .arg("-o")
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // perf needs a moment to attach before the load starts.
        thread::sleep(Duration::from_millis(150));
        Ok(Perf {
            child,
            out: out.to_path_buf(),
        })
    }

    /// Stop counting (SIGINT, as perf expects) and read the counts.
    pub fn finish(mut self) -> io::Result<PerfCounts> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).map_err(io::Error::from)?;
        self.child.wait()?;
        Ok(parse_perf_csv(&fs::read_to_string(&self.out)?))
    }
}

/// The counts in `perf stat -x,` output (`count,unit,event,...` lines).
pub fn parse_perf_csv(csv: &str) -> PerfCounts {
    let mut counts = PerfCounts::default();
    for line in csv.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(count), Some(event)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        match *event {
            "raw_syscalls:sys_enter" => counts.syscalls = Some(count),
            "context-switches" => counts.context_switches = Some(count),
            "instructions:u" => counts.instructions_user = Some(count),
            "instructions:k" => counts.instructions_kernel = Some(count),
            _ => {}
        }
    }
    counts
}

/// Whether valgrind (for callgrind) is installed.
pub fn callgrind_available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `cmd` wrapped in callgrind, following the processes it starts (worker
/// processes count too): each writes its profile to `out` with `.PID`
/// appended; [`callgrind_sum`] adds them up.
pub fn under_callgrind(cmd: &Command, out: &Path) -> Command {
    let mut wrapped = Command::new("valgrind");
    wrapped
        .arg("--tool=callgrind")
        .arg("--trace-children=yes")
        .arg(format!("--callgrind-out-file={}.%p", out.display()))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped
}

/// The instructions of every process profiled under `out` (the files
/// `out.PID` that [`under_callgrind`] made), and how many there were.
pub fn callgrind_sum(out: &Path) -> io::Result<(u64, usize)> {
    let dir = out.parent().unwrap_or(Path::new("."));
    let prefix = format!(
        "{}.",
        out.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let mut total = 0;
    let mut files = 0;
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix) else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let profile = fs::read_to_string(entry.path())?;
        total += callgrind_total(&profile).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("no totals in {name}"))
        })?;
        files += 1;
    }
    Ok((total, files))
}

/// The instruction total of a callgrind profile (its `totals:` line, or
/// `summary:` in older formats).
pub fn callgrind_total(profile: &str) -> Option<u64> {
    let pick = |key: &str| {
        profile
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    pick("totals:").or_else(|| pick("summary:"))
}

/// Resident memory of process `pid`, in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in /proc/PID/status"))
}

/// The median of `values` (the mean of the middle two for an even count);
/// NaNs are ignored. `None` when there is nothing left.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_perf_csv() {
        let csv = "# started on Sun Nov 22\n\n1234,,raw_syscalls:sys_enter,916907,100.00,,\n\
                   56,,context-switches,916907,100.00,,\n<not counted>,,cycles,0,0,,\n";
        assert_eq!(
            parse_perf_csv(csv),
            PerfCounts {
                syscalls: Some(1234),
                context_switches: Some(56),
                ..PerfCounts::default()
            }
        );
        assert_eq!(parse_perf_csv(""), PerfCounts::default());
    }

    #[test]
    fn lists_only_the_events_asked_for() {
        let both = PerfEvents {
            syscalls: true,
            instructions: true,
        };
        assert_eq!(
            both.list(),
            "raw_syscalls:sys_enter,context-switches,instructions:u,instructions:k"
        );
        let counters = PerfEvents {
            instructions: true,
            ..PerfEvents::default()
        };
        assert_eq!(counters.list(), "instructions:u,instructions:k");
        assert!(!PerfEvents::default().any());
    }

    #[test]
    fn reads_user_and_kernel_instructions_apart() {
        let csv = "2045,,raw_syscalls:sys_enter,1000,100.00,,\n\
                   918273,,instructions:u,1000,100.00,0.61,insn per cycle\n\
                   1520333,,instructions:k,1000,100.00,1.10,insn per cycle\n";
        let counts = parse_perf_csv(csv);
        assert_eq!(counts.instructions_user, Some(918_273));
        assert_eq!(counts.instructions_kernel, Some(1_520_333));
        // A virtual machine without counters: no number, not a zero.
        let vm = "<not supported>,,instructions:u,0,100.00,,\n\
                  <not supported>,,instructions:k,0,100.00,,\n";
        assert_eq!(parse_perf_csv(vm), PerfCounts::default());
    }

    #[test]
    fn reads_callgrind_totals() {
        assert_eq!(
            callgrind_total("events: Ir\nsummary: 209948779\ntotals: 209948961\n"),
            Some(209948961)
        );
        assert_eq!(callgrind_total("events: Ir\nsummary: 42\n"), Some(42));
        assert_eq!(callgrind_total("events: Ir\n"), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
