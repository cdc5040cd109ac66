//! The README's command, `gaidaros -c etc/gaidaros.conf` from the workspace
//! root, serves echo on 127.0.0.1:8080 and a forwarder to it on 8081.
//!
//! The only tests allowed to use ports 8080 and 8081; they take turns.

#[macro_use]
mod util;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use util::{check_echo, gaidaros_bare, Mode};

/// Both server types use the same fixed ports: one at a time.
static FIXED_PORTS: Mutex<()> = Mutex::new(());

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bin/ has a parent")
        .to_path_buf()
}

fn readme_command_serves_echo_on_8080_and_forward_on_8081(mode: Mode) {
    let _turn = FIXED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let root = workspace_root();
    assert!(
        root.join("etc/gaidaros.conf").is_file(),
        "etc/gaidaros.conf is missing: the README command `cargo run --release -p gaidaros-bin -- -c etc/gaidaros.conf` needs it"
    );
    let server = gaidaros_bare()
        .args(&["-c", "etc/gaidaros.conf"])
        .mode(mode)
        .current_dir(&root)
        .listeners(2)
        .start();
    let echo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let forward: SocketAddr = "127.0.0.1:8081".parse().unwrap();
    let logged: Vec<SocketAddr> = server.addrs().iter().map(|(_, a)| *a).collect();
    for want in [echo, forward] {
        assert!(
            logged.contains(&want),
            "the shipped conf should listen on {want}; listening on {logged:?}"
        );
    }
    check_echo(echo, "shipped echo");
    check_echo(forward, "shipped forward");
    nc_round_trip(echo);
    server.stop();
}

/// `printf 'hi\n' | nc -N 127.0.0.1 8080` prints `hi`.
fn nc_round_trip(addr: SocketAddr) {
    let spawned = Command::new("nc")
        .args(["-N", &addr.ip().to_string(), &addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut nc = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "note: nc is not installed; skipping the nc part (CI installs netcat-openbsd)"
            );
            return;
        }
        Err(e) => panic!("cannot run nc: {e}"),
    };
    nc.stdin
        .take()
        .expect("stdin is piped")
        .write_all(b"hi\n")
        .expect("write to nc");
    // stdin is dropped here: nc -N sends FIN after it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while nc.try_wait().expect("wait for nc").is_none() {
        if Instant::now() >= deadline {
            let _ = nc.kill();
            let _ = nc.wait();
            panic!("nc -N {addr} did not exit within 10 s after stdin closed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = nc.wait_with_output().expect("nc output");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\n",
        "nc stdout (stderr: {})",
        String::from_utf8_lossy(&out.stderr)
    );
}

per_server_type!(readme_command_serves_echo_on_8080_and_forward_on_8081);
