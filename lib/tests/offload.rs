//! Off-loop work for protocol sessions ([`Ctx::offload`]) on a real loop,
//! under the backend `GAIDAROS_TEST_POLL` names: a blocked job does not hold
//! up the loop's other connections, results reach the session that asked,
//! a full pool refuses, a panicking job reports its panic.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gaidaros::net::ConnOptions;
use gaidaros::{
    ConnId, Ctx, Handler, JobId, Limits, LoopSettings, Message, OffloadError, OffloadPool,
    Protocol, ProtocolFactory, Spawner,
};

const WAIT: Duration = Duration::from_secs(10);

/// A loop in a thread and its spawner.
struct Running {
    spawner: Spawner,
    server: common::Running,
}

impl Running {
    /// A spawned [`Offloader`] called `name` reporting to `report`.
    fn offloader(&self, name: &'static str, report: mpsc::Sender<String>) -> gaidaros::SessionRef {
        self.spawner
            .spawn(Box::new(Offloader { report, name }))
            .expect("spawned")
    }
}

/// Accepted connections echo lines; the spawner is kept for the test.
struct Factory(Arc<Mutex<Option<Spawner>>>);

impl ProtocolFactory for Factory {
    fn open(&self) -> Box<dyn Protocol> {
        Box::new(Echo)
    }
    fn on_loop_start(&self, spawner: Spawner) {
        *self.0.lock().unwrap() = Some(spawner);
    }
}

struct Echo;

impl Protocol for Echo {
    fn on_data(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, data: &[u8]) -> usize {
        let _ = ctx.write(conn, data);
        data.len()
    }
}

fn start(pool: OffloadPool) -> Running {
    let slot = Arc::new(Mutex::new(None));
    let settings = LoopSettings {
        offload: Arc::new(pool),
        ..common::loop_settings()
    };
    let server = common::serve(
        Handler::Protocol(Arc::new(Factory(slot.clone()))),
        Limits::default(),
        ConnOptions::default(),
        settings,
    );
    let spawner = slot.lock().unwrap().take().expect("on_loop_start ran");
    Running { spawner, server }
}

type Job = Box<dyn FnOnce() -> Message + Send>;

/// Offloads the jobs it is sent (as messages) and reports what happened.
struct Offloader {
    report: mpsc::Sender<String>,
    name: &'static str,
}

impl Protocol for Offloader {
    fn on_data(&mut self, _: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
        data.len()
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message) {
        let Ok(job) = msg.downcast::<Job>() else {
            return;
        };
        let said = match ctx.offload(*job) {
            Ok(_) => "taken".to_string(),
            Err(OffloadError::Full(_)) => "full".to_string(),
        };
        let _ = self.report.send(format!("{}: {said}", self.name));
    }
    fn on_done(&mut self, _: &mut Ctx<'_>, _: JobId, result: Result<Message, String>) {
        let said = match result {
            Ok(v) => match v.downcast::<u64>() {
                Ok(n) => format!("done {n}"),
                Err(_) => "done, not a u64".into(),
            },
            Err(panic) => format!("panicked: {panic}"),
        };
        let _ = self.report.send(format!("{}: {said}", self.name));
    }
}

fn job(f: impl FnOnce() -> Message + Send + 'static) -> Message {
    let job: Job = Box::new(f);
    Box::new(job)
}

#[test]
fn a_blocked_job_does_not_hold_up_the_loops_other_connections() {
    let server = start(OffloadPool::new(2, 16));
    let (tx, rx) = mpsc::channel();
    let session = server.offloader("slow", tx);
    // The job blocks (a slow disk) until released, 5 s at most.
    let (release, wait) = mpsc::channel::<()>();
    session
        .send(job(move || {
            let _ = wait.recv_timeout(Duration::from_secs(5));
            Box::new(42u64)
        }))
        .unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "slow: taken");
    // Meanwhile a connection of the same loop is served, round trip after
    // round trip.
    let mut c = TcpStream::connect(server.server.addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut lines = BufReader::new(c.try_clone().unwrap());
    for i in 0..500 {
        writeln!(c, "ping {i}").unwrap();
        let mut line = String::new();
        lines.read_line(&mut line).unwrap();
        assert_eq!(line, format!("ping {i}\n"));
    }
    assert!(
        rx.try_recv().is_err(),
        "the job is still blocked: nothing came back yet"
    );
    release.send(()).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "slow: done 42");
}

#[test]
fn results_reach_the_session_that_asked() {
    let server = start(OffloadPool::new(2, 16));
    let (tx, rx) = mpsc::channel();
    let mut sessions = Vec::new();
    for (name, n) in [("a", 1u64), ("b", 2)] {
        let s = server.offloader(name, tx.clone());
        s.send(job(move || Box::new(n * 100))).unwrap();
        sessions.push(s);
    }
    let mut said: Vec<String> = (0..4).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    said.sort();
    assert_eq!(said, ["a: done 100", "a: taken", "b: done 200", "b: taken"]);
}

#[test]
fn a_full_pool_hands_the_job_back() {
    // One thread, one job waiting.
    let server = start(OffloadPool::new(1, 1));
    let (tx, rx) = mpsc::channel();
    let session = server.offloader("s", tx);
    let (started_tx, started) = mpsc::channel::<()>();
    let (release, wait) = mpsc::channel::<()>();
    let wait = Arc::new(Mutex::new(wait));
    let w = wait.clone();
    session
        .send(job(move || {
            started_tx.send(()).unwrap();
            let _ = w.lock().unwrap().recv_timeout(WAIT);
            Box::new(1u64)
        }))
        .unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "s: taken");
    started.recv_timeout(WAIT).unwrap();
    // The thread is busy: one more fits in the queue, the next does not.
    session.send(job(|| Box::new(2u64))).unwrap();
    session.send(job(|| Box::new(3u64))).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "s: taken");
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "s: full");
    release.send(()).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "s: done 1");
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "s: done 2");
}

#[test]
fn a_panicking_job_reports_its_panic_and_the_pool_goes_on() {
    let server = start(OffloadPool::new(1, 4));
    let (tx, rx) = mpsc::channel();
    let session = server.offloader("s", tx);
    session
        .send(job(|| panic!("the disk caught fire")))
        .unwrap();
    session.send(job(|| Box::new(7u64))).unwrap();
    let said: Vec<String> = (0..4).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    // A result may come back before the second job is taken; the results
    // come in the order the one thread ran the jobs.
    let (taken, results): (Vec<&String>, Vec<&String>) =
        said.iter().partition(|s| s.as_str() == "s: taken");
    assert_eq!(taken.len(), 2, "{said:?}");
    assert_eq!(
        results,
        ["s: panicked: the disk caught fire", "s: done 7"],
        "{said:?}"
    );
}

/// Takes one line at a time, offloads its handling, and takes the next
/// only when the job is back (the lines after it wait in the loop).
#[derive(Default)]
struct OneAtATime {
    busy: bool,
    conn: Option<ConnId>,
}

impl Protocol for OneAtATime {
    fn on_data(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, data: &[u8]) -> usize {
        if self.busy {
            return 0;
        }
        let Some(end) = data.iter().position(|&b| b == b'\n') else {
            return 0;
        };
        let line = String::from_utf8_lossy(&data[..end]).into_owned();
        self.busy = true;
        self.conn = Some(conn);
        ctx.offload(move || -> Message { Box::new(format!("done {line}\n")) })
            .expect("room in the pool");
        end + 1
    }
    fn on_done(&mut self, ctx: &mut Ctx<'_>, _: JobId, result: Result<Message, String>) {
        let conn = self.conn.expect("a line came");
        let text = result.expect("no panic").downcast::<String>().unwrap();
        ctx.write(conn, text.as_bytes()).unwrap();
        self.busy = false;
        ctx.replay_input(conn);
    }
}

struct OneAtATimeFactory;

impl ProtocolFactory for OneAtATimeFactory {
    fn open(&self) -> Box<dyn Protocol> {
        Box::new(OneAtATime::default())
    }
}

#[test]
fn replayed_input_reaches_a_session_that_can_take_it_again() {
    let server = common::serve(
        Handler::Protocol(Arc::new(OneAtATimeFactory)),
        Limits::default(),
        ConnOptions::default(),
        common::loop_settings(),
    );
    let mut c = TcpStream::connect(server.addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    // Three lines in one write: only the first is taken at once; the
    // others are replayed, one job after the other, with no new bytes.
    c.write_all(b"a\nb\nc\n").unwrap();
    let mut lines = BufReader::new(c.try_clone().unwrap());
    for want in ["done a\n", "done b\n", "done c\n"] {
        let mut line = String::new();
        lines.read_line(&mut line).unwrap();
        assert_eq!(line, want);
    }
    drop((c, lines));
}
