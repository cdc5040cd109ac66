//! Outbound connections opened by protocol sessions.

use std::io::{self};
use std::net::SocketAddr;

use tracing::debug;

use super::conn::Attempt;
use super::{Core, Deferred, Lifecycle, SessionKey};
use crate::net::{self};
use crate::poll::Interest;
use crate::protocol::{CloseReason, ConnId, ConnectError, ConnectOptions, JobId};

impl Core {
    pub(super) fn connect(
        &mut self,
        session: SessionKey,
        addr: SocketAddr,
        how: ConnectOptions,
    ) -> Result<ConnId, ConnectError> {
        if self.stopping {
            return Err(ConnectError::ShuttingDown);
        }
        let Some(listener) = self.sessions.get(session).map(|s| s.listener) else {
            return Err(ConnectError::SessionEnded);
        };
        let options = how.options.unwrap_or(self.setups[listener].conn_options);
        let sock = self.outbound(addr, how.source, options)?;
        let timeout = self.setups[listener].limits.connect_timeout;
        let life = Lifecycle::outbound(self.now + timeout);
        let id = self.add_conn(sock, listener, life, Interest::BOTH)?;
        if let Err(e) = self.start_connect(id, addr) {
            self.conns[id].accepted = false;
            self.close(id, None);
            return Err(e.into());
        }
        let conn = &mut self.conns[id];
        conn.accepted = false;
        conn.proto.session = Some(session);
        conn.proto.options = how.options;
        conn.peer = Some(addr);
        conn.writable_interest = true;
        if let Some(s) = self.sessions.get_mut(session) {
            s.live += 1;
        }
        self.ensure_armed(id);
        Ok(id)
    }

    /// The name session `key` gave [`crate::Ctx::connect_host`] resolved
    /// (or did not): connect to its addresses in the resolver's order (those
    /// of the source's family when one is set), the next when one fails,
    /// and tell the session once one is established or none can be.
    pub(super) fn resolved(
        &mut self,
        key: SessionKey,
        job: JobId,
        result: io::Result<Vec<SocketAddr>>,
        how: ConnectOptions,
    ) {
        if !self.takes_events(key) {
            debug!("a name resolved after its session ended: dropped");
            return;
        }
        let failed = match result {
            Err(e) => ConnectError::Resolve(e.to_string()),
            Ok(addrs) => {
                let of_family =
                    |a: &SocketAddr| how.source.is_none_or(|s| s.is_ipv4() == a.is_ipv4());
                let mut rest: Vec<SocketAddr> = addrs.iter().copied().filter(of_family).collect();
                rest.reverse();
                let none = match addrs.is_empty() {
                    true => "no address for that name",
                    false => "no address of the source address's family",
                };
                match self.attempt(key, job, rest, how, ConnectError::Resolve(none.into())) {
                    Ok(()) => return,
                    Err(e) => e,
                }
            }
        };
        self.deferred
            .push_back(Deferred::Resolved(key, job, Err(failed)));
    }

    /// Start connecting to the next of `rest` (the next last) that a
    /// socket can be made for, as an attempt of request `job`; `last`,
    /// or the error of the last address, when none can.
    fn attempt(
        &mut self,
        key: SessionKey,
        job: JobId,
        mut rest: Vec<SocketAddr>,
        how: ConnectOptions,
        mut last: ConnectError,
    ) -> Result<(), ConnectError> {
        while let Some(addr) = rest.pop() {
            match self.connect(key, addr, how) {
                Ok(id) => {
                    self.conns[id].proto.attempt = Some(Box::new(Attempt { job, rest, how }));
                    return Ok(());
                }
                Err(e @ (ConnectError::ShuttingDown | ConnectError::SessionEnded)) => {
                    return Err(e)
                }
                Err(e) => {
                    debug!(%addr, "cannot connect: {e}; trying the next address");
                    last = e;
                }
            }
        }
        Err(last)
    }

    pub(super) fn finish_connect(&mut self, id: ConnId) {
        let conn = &mut self.conns[id];
        let failure = match conn.sock.take_error() {
            Ok(Some(e)) => Some(e.kind()),
            Err(e) => Some(e.kind()),
            Ok(None) => match conn.sock.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => Some(e.kind()),
            },
        };
        if let Some(kind) = failure {
            self.connect_failed(id, kind);
            return;
        }
        self.connected(id);
    }

    /// `id`'s outbound connect succeeded.
    pub(super) fn connected(&mut self, id: ConnId) {
        let conn = &mut self.conns[id];
        conn.life.connected();
        // The session learns of a connection to a name once it is up.
        if let (Some(a), Some(key)) = (conn.proto.attempt.take(), conn.proto.session) {
            self.deferred
                .push_back(Deferred::Resolved(key, a.job, Ok(id)));
        }
        let conn = &mut self.conns[id];
        let options = conn
            .proto
            .options
            .unwrap_or(self.setups[conn.listener].conn_options);
        if let Err(e) = net::configure(&conn.sock, options) {
            debug!(%id, "socket options on outbound connection: {e}");
        }
        if let Some(key) = conn.proto.session {
            self.deferred
                .push_back(Deferred::Connected(key, id, Ok(())));
        }
        // Bytes queued before the connect completed go out now.
        self.mark_dirty(id);
        self.ready.push_back(id);
    }

    pub(super) fn connect_failed(&mut self, id: ConnId, kind: io::ErrorKind) {
        let conn = &self.conns[id];
        if let (Some(a), Some(key)) = (&conn.proto.attempt, conn.proto.session) {
            // The session never saw this one: try the next address (the
            // failed connection is forgotten, not reported), or tell it
            // none was reachable.
            let (job, how, rest) = (a.job, a.how, a.rest.clone());
            let err = io::Error::new(kind, format!("connect to {:?} failed: {kind}", conn.peer));
            debug!(%id, "{err}");
            if let Err(e) = self.attempt(key, job, rest, how, ConnectError::Io(err)) {
                self.deferred
                    .push_back(Deferred::Resolved(key, job, Err(e)));
            }
            self.close(id, Some(CloseReason::ConnectFailed(kind)));
            return;
        }
        if let Some(key) = conn.proto.session {
            let err = io::Error::new(kind, format!("connect to {:?} failed: {kind}", conn.peer));
            self.deferred
                .push_back(Deferred::Connected(key, id, Err(err)));
        }
        self.close(id, Some(CloseReason::ConnectFailed(kind)));
    }
}

#[cfg(test)]
mod tests {
    //! The fallback over a name's addresses, on a real loop under each
    //! backend: the test posts the resolver's answer itself, since no name
    //! on a test machine is sure to resolve to several addresses.
    use std::net::{SocketAddr, TcpListener};
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::super::mailbox::Letter;
    use crate::net::{self, BindSpec, ConnOptions, IpVersion};
    use crate::protocol::{CloseReason, ConnId, ConnectError, ConnectOptions, JobId};
    use crate::{Ctx, Handler, Limits, ListenerSetup, Loop, LoopSettings, PollType, Protocol};
    use crate::{ProtocolFactory, Spawner};

    /// Reports what it is told about connections.
    struct Dial(mpsc::Sender<String>);

    impl Protocol for Dial {
        fn on_data(&mut self, _: &mut Ctx<'_>, _: ConnId, data: &[u8]) -> usize {
            data.len()
        }
        fn on_resolved(
            &mut self,
            _: &mut Ctx<'_>,
            job: JobId,
            result: Result<ConnId, ConnectError>,
        ) {
            let what = match result {
                Ok(_) => "connected".to_string(),
                Err(ConnectError::Io(e)) => format!("io {:?}", e.kind()),
                Err(e) => format!("error {e}"),
            };
            let _ = self.0.send(format!("resolved {} {what}", job.0));
        }
        fn on_connect(&mut self, _: &mut Ctx<'_>, _: ConnId, result: std::io::Result<()>) {
            let _ = self.0.send(format!("on_connect ok={}", result.is_ok()));
        }
        fn on_close(&mut self, _: &mut Ctx<'_>, _: ConnId, reason: CloseReason) {
            let _ = self.0.send(format!("on_close {reason}"));
        }
    }

    struct Factory(Arc<Mutex<Option<Spawner>>>);

    impl ProtocolFactory for Factory {
        fn open(&self) -> Box<dyn Protocol> {
            Box::new(Dial(mpsc::channel().0))
        }
        fn on_loop_start(&self, spawner: Spawner) {
            *self.0.lock().unwrap() = Some(spawner);
        }
    }

    /// A port on 127.0.0.1 where nothing listens.
    fn dead_addr() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn answers(rx: &mpsc::Receiver<String>, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("an answer"))
            .collect()
    }

    fn on_each_backend(poll: PollType) {
        let listener = net::bind(&BindSpec {
            addr: "127.0.0.1:0".parse().unwrap(),
            version: IpVersion::V4,
            backlog: 16,
            reuseport: false,
        })
        .unwrap();
        let slot = Arc::new(Mutex::new(None));
        let setup = Arc::new(ListenerSetup::new(
            "test",
            Handler::Protocol(Arc::new(Factory(slot.clone()))),
            ConnOptions::default(),
            true,
            Limits::default(),
        ));
        let settings = LoopSettings {
            poll,
            ..LoopSettings::default()
        };
        let (lp, handle) = Loop::new(vec![(listener, setup)], settings).unwrap();
        let thread = std::thread::spawn(move || lp.run());
        let spawner = slot.lock().unwrap().take().unwrap();
        let (tx, rx) = mpsc::channel();
        let session = spawner.spawn(Box::new(Dial(tx))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let key = loop {
            if let Some(k) = session.key() {
                break k;
            }
            assert!(Instant::now() < deadline, "the session started");
            std::thread::sleep(Duration::from_millis(1));
        };
        let resolved = |job: u64, addrs: Vec<SocketAddr>| {
            let letter = Letter::Resolved {
                key,
                job: JobId(job),
                result: Ok(addrs),
                how: ConnectOptions::default(),
            };
            assert!(session.post().deliver(letter).is_ok());
        };

        // Two dead addresses, then a live one: the session hears only of
        // the one that answered.
        let live = TcpListener::bind("127.0.0.1:0").unwrap();
        resolved(
            1,
            vec![dead_addr(), dead_addr(), live.local_addr().unwrap()],
        );
        assert_eq!(
            answers(&rx, 2),
            ["resolved 1 connected", "on_connect ok=true"],
            "under {poll}"
        );
        // Its peer hangs up: the default on_read_closed closes it.
        drop(live.accept().unwrap());
        assert_eq!(
            answers(&rx, 1),
            ["on_close closed by handler"],
            "under {poll}"
        );

        // None answers: one on_resolved with the last error, no connect or
        // close of connections it never knew.
        resolved(2, vec![dead_addr(), dead_addr()]);
        assert_eq!(
            answers(&rx, 1),
            ["resolved 2 io ConnectionRefused"],
            "under {poll}"
        );
        resolved(3, vec![]);
        assert_eq!(
            answers(&rx, 1),
            ["resolved 3 error cannot resolve: no address for that name"],
            "under {poll}"
        );
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());

        handle.stop();
        thread.join().unwrap().unwrap();
    }

    #[test]
    fn a_name_connects_to_the_first_address_that_answers_under_each_backend() {
        for poll in [PollType::Edge, PollType::Level, PollType::Completion] {
            on_each_backend(poll);
        }
    }
}
