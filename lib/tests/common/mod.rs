//! Shared by the library's integration tests.
#![allow(dead_code)] // each test crate uses a part of it

use gaidaros::LoopSettings;
use gaidaros::PollType;

/// Loop settings with the poll backend `GAIDAROS_TEST_POLL` names (edge
/// when unset): `scripts/test` runs these tests under each backend.
pub fn loop_settings() -> LoopSettings {
    let poll = match std::env::var("GAIDAROS_TEST_POLL") {
        Ok(name) if !name.is_empty() => name.parse::<PollType>().unwrap_or_else(|()| {
            panic!("GAIDAROS_TEST_POLL={name:?}: not edge, level or completion")
        }),
        _ => PollType::Edge,
    };
    LoopSettings {
        poll,
        ..LoopSettings::default()
    }
}

/// A loop running in a thread, stopped and joined when dropped.
pub struct Running {
    /// Where its listener listens.
    pub addr: std::net::SocketAddr,
    pub handle: gaidaros::LoopHandle,
    pub thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A loop in a thread with one listener on 127.0.0.1 (a free port) served
/// by `handler`, built from `settings`.
pub fn serve(
    handler: gaidaros::Handler,
    limits: gaidaros::Limits,
    options: gaidaros::net::ConnOptions,
    settings: LoopSettings,
) -> Running {
    use gaidaros::net::{self, BindSpec, IpVersion};
    use std::sync::Arc;
    let addr = net::resolve("127.0.0.1", 0, IpVersion::V4).unwrap();
    let listener = net::bind(&BindSpec {
        addr,
        version: IpVersion::V4,
        backlog: 64,
        reuseport: false,
    })
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let setup = Arc::new(gaidaros::ListenerSetup::new(
        "test", handler, options, true, limits,
    ));
    let (lp, handle) = gaidaros::Loop::new(vec![(listener, setup)], settings).unwrap();
    let thread = std::thread::spawn(move || lp.run());
    Running {
        addr,
        handle,
        thread: Some(thread),
    }
}
