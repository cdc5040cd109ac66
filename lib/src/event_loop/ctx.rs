//! The command side of the protocol API: what a session may ask the loop.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::mailbox::{Letter, Mailbox, Message};
use super::{Conn, Core, Deferred, Limits, SessionKey, SessionRef, Spawner};
use crate::pools::offload::Task;
use crate::protocol::{
    ConnId, ConnectError, ConnectOptions, JobId, OffloadError, Queued, SendToError, TimerId, UdpId,
    WriteError,
};
use tracing::debug;

/// The longest `HOST:PORT` [`Ctx::connect_host`] takes.
const MAX_HOST_LEN: usize = 300;

fn queued(under_cap: bool) -> Queued {
    if under_cap {
        Queued::UnderCap
    } else {
        Queued::OverCap
    }
}

/// Handed to every [`crate::Protocol`] callback. Records what the session
/// asks for; the loop carries it out when the callback returns. Requests
/// about a connection that is closed or belongs to another session are
/// ignored (queries answer as for a closed connection).
pub struct Ctx<'a> {
    pub(super) core: &'a mut Core,
    pub(super) session: SessionKey,
}

impl Ctx<'_> {
    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.core
            .conns
            .get(id)
            .filter(|c| c.proto.session == Some(self.session))
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        let session = self.session;
        self.core
            .conns
            .get_mut(id)
            .filter(|c| c.proto.session == Some(session))
    }

    /// The loop's clock, read once per loop iteration.
    pub fn now(&self) -> Instant {
        self.core.now
    }

    /// The system time (for dates on the wire, file times, logs), read at
    /// most once per loop iteration, the first time a session asks: every
    /// callback of one iteration sees the same value. Durations and
    /// deadlines belong to [`Ctx::now`], which never jumps.
    pub fn wall_now(&self) -> SystemTime {
        match self.core.wall.get() {
            Some(t) => t,
            None => {
                let t = SystemTime::now();
                self.core.wall.set(Some(t));
                t
            }
        }
    }

    /// Queue `data` for `conn`. [`Queued::OverCap`] once the pending output
    /// reaches the output cap: stop producing for `conn` (pause the source)
    /// until [`crate::Protocol::on_writable`]. Queued bytes are never
    /// dropped, even past the cap. An error says why nothing was queued.
    pub fn write(&mut self, conn: ConnId, data: &[u8]) -> Result<Queued, WriteError> {
        let core = &mut *self.core;
        let Some(c) = core
            .conns
            .get_mut(conn)
            .filter(|c| c.proto.session == Some(self.session))
        else {
            return Err(WriteError::NotOpen);
        };
        if !c.life.takes_output() {
            return Err(WriteError::Shut);
        }
        c.out.push_bytes(data, &mut core.bufs);
        let under = core.note_output(conn);
        core.mark_dirty(conn);
        Ok(queued(under))
    }

    /// Queue `len` bytes of `file` from `offset` for `conn`, sent with
    /// sendfile (zero-copy). Same results as [`Ctx::write`].
    pub fn send_file(
        &mut self,
        conn: ConnId,
        file: Arc<File>,
        offset: u64,
        len: u64,
    ) -> Result<Queued, WriteError> {
        let Some(c) = self.conn_mut(conn) else {
            return Err(WriteError::NotOpen);
        };
        if !c.life.takes_output() {
            return Err(WriteError::Shut);
        }
        c.out.push_file(file, offset, len);
        let under = self.core.note_output(conn);
        self.core.mark_dirty(conn);
        Ok(queued(under))
    }

    /// Bytes queued for `conn` and not yet written (0 when closed).
    pub fn pending(&self, conn: ConnId) -> usize {
        self.conn(conn).map_or(0, |c| c.out.len())
    }

    /// The output cap of `conn`'s listener.
    pub fn output_cap(&self, conn: ConnId) -> usize {
        self.conn(conn)
            .map_or(0, |c| self.core.setups[c.listener].limits.output_cap)
    }

    /// Is `conn` open?
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conn(conn).is_some()
    }

    /// The peer address of `conn`.
    pub fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        self.conn(conn).and_then(|c| c.peer)
    }

    /// Open an outbound TCP connection owned by this session. The result
    /// arrives in [`crate::Protocol::on_connect`]; bytes written before that
    /// are queued. Errors that happen at once (no descriptors left, an
    /// address of the wrong kind, the server shutting down) are returned
    /// here.
    pub fn connect(&mut self, addr: SocketAddr) -> Result<ConnId, ConnectError> {
        self.connect_with(addr, ConnectOptions::default())
    }

    /// [`Ctx::connect`] from a chosen source address, or with socket
    /// options other than the listener's. A source address that cannot be
    /// bound (not this host's, in use) is an error here.
    pub fn connect_with(
        &mut self,
        addr: SocketAddr,
        how: ConnectOptions,
    ) -> Result<ConnId, ConnectError> {
        let session = self.session;
        self.core.connect(session, addr, how)
    }

    /// Connect to `host`, a `NAME:PORT` (or `ADDRESS:PORT`, `[V6]:PORT`)
    /// resolved off the loop, on the offload pool, so a slow resolver
    /// never stalls it. [`crate::Protocol::on_resolved`] gets the answer,
    /// with the id returned here: the connection (to the first address
    /// the resolver gave), or why there is none. A session that has ended
    /// by then is not told (a session born from an accept ends with its
    /// last connection unless it called [`Ctx::keep_session`]).
    pub fn connect_host(&mut self, host: &str) -> Result<JobId, ConnectError> {
        self.connect_host_with(host, ConnectOptions::default())
    }

    /// [`Ctx::connect_host`] with [`ConnectOptions`]: with a source
    /// address, the first resolved address of its family is used.
    pub fn connect_host_with(
        &mut self,
        host: &str,
        how: ConnectOptions,
    ) -> Result<JobId, ConnectError> {
        if self.core.stopping {
            return Err(ConnectError::ShuttingDown);
        }
        // A DNS name is at most 253 bytes; with a port and brackets, less
        // than this. Longer is not a name.
        if host.len() > MAX_HOST_LEN {
            return Err(ConnectError::Resolve(format!(
                "a name of {} bytes (at most {MAX_HOST_LEN})",
                host.len()
            )));
        }
        let name = host.to_string();
        self.core.last_job += 1;
        let id = JobId(self.core.last_job);
        let post = self.core.post.clone();
        let key = self.session;
        let task = Task {
            job: Box::new(move || -> Message {
                use std::net::ToSocketAddrs;
                Box::new(name.to_socket_addrs().map(|a| a.collect::<Vec<_>>()))
            }),
            reply: Box::new(move |result| {
                let result = match result {
                    Ok(found) => match found.downcast::<io::Result<Vec<std::net::SocketAddr>>>() {
                        Ok(r) => *r,
                        Err(_) => Err(io::Error::other("the resolver returned something else")),
                    },
                    Err(panic) => Err(io::Error::other(format!("the resolver panicked: {panic}"))),
                };
                let letter = Letter::Resolved {
                    key,
                    job: id,
                    result,
                    how,
                };
                if post.deliver(letter).is_err() {
                    debug!("a name resolved after its loop stopped");
                }
            }),
        };
        match self.core.offload.submit(task) {
            Ok(()) => Ok(id),
            Err(_) => Err(ConnectError::ResolverBusy),
        }
    }

    /// Bind a UDP socket at `addr` (port 0: any free one) for this session:
    /// its datagrams arrive as [`crate::Protocol::on_datagram`]. It closes
    /// with [`Ctx::close_udp`] or when the session ends.
    pub fn bind_udp(&mut self, addr: SocketAddr) -> io::Result<UdpId> {
        let session = self.session;
        self.core.bind_udp(session, addr)
    }

    /// Queue `data` for `to` on `sock`, sent when this callback returns
    /// (batched with the others). [`SendToError::Blocked`] when the queue
    /// holds the listener's `udp_queue` datagrams: nothing is queued, and
    /// [`crate::Protocol::on_udp_writable`] follows once it has drained to
    /// half.
    pub fn send_to(&mut self, sock: UdpId, to: SocketAddr, data: &[u8]) -> Result<(), SendToError> {
        if !self.core.owns_udp(self.session, sock) {
            return Err(SendToError::NotOpen);
        }
        self.core.send_to(sock, to, data)
    }

    /// Datagrams queued on `sock` and not yet sent (0 for one not open).
    pub fn udp_queued(&self, sock: UdpId) -> usize {
        if !self.core.owns_udp(self.session, sock) {
            return 0;
        }
        self.core.udp_queued(sock)
    }

    /// The local address of `sock` (None for one not open or not this
    /// session's).
    pub fn udp_local_addr(&self, sock: UdpId) -> Option<SocketAddr> {
        if !self.core.owns_udp(self.session, sock) {
            return None;
        }
        self.core.udps.get(sock)?.sock.local_addr().ok()
    }

    /// Close `sock`; datagrams still queued are dropped.
    pub fn close_udp(&mut self, sock: UdpId) {
        if self.core.owns_udp(self.session, sock) {
            self.core.close_udp(sock);
        }
    }

    /// Stop reading from `conn` (its peer's bytes wait in the kernel).
    pub fn pause_read(&mut self, conn: ConnId) {
        if let Some(c) = self.conn_mut(conn) {
            c.life.holds.paused = true;
        }
    }

    /// Resume reading from `conn`.
    pub fn resume_read(&mut self, conn: ConnId) {
        if let Some(c) = self.conn_mut(conn) {
            if c.life.holds.paused {
                c.life.holds.paused = false;
                self.core.ready.push_back(conn);
            }
        }
    }

    /// Hand the input `on_data` left unconsumed on `conn` to it again, soon
    /// (before the next read), without waiting for new bytes: for a session
    /// that could not take it then and now can (a reply it waited for came
    /// back from [`Ctx::offload`], say). Nothing happens when there is
    /// none; while reading is paused, it is presented once it resumes.
    pub fn replay_input(&mut self, conn: ConnId) {
        if let Some(c) = self.conn_mut(conn) {
            if !c.input.is_empty() && !c.proto.replay {
                c.proto.replay = true;
                self.core.ready.push_back(conn);
            }
        }
    }

    /// Arm a one-shot timer; [`crate::Protocol::on_timer`] gets its id.
    pub fn set_timer(&mut self, after: Duration) -> TimerId {
        let at = self.core.now + after;
        self.core.timers.arm_session(at, self.session)
    }

    /// Disarm a timer of this session that has not fired yet: it never
    /// fires. Returns false (and does nothing) for one that has fired or
    /// was cancelled already, or is another session's. Cancelling costs no
    /// memory that outlives the timer, however many are set and cancelled.
    pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
        self.core.timers.cancel(self.session, timer)
    }

    /// From now on, move the bytes arriving on `from` to `to` inside the
    /// kernel (splice(2) through a pipe the loop owns) instead of passing
    /// them to [`crate::Protocol::on_data`]: a relay without copies through
    /// user space. They queue behind what `to` already has pending and
    /// count towards its cap (the pipe's capacity, at most the output cap);
    /// when `to` is full, reading `from` pauses and resumes by itself once
    /// `to` drains to half. The end of `from`'s stream still arrives as
    /// [`crate::Protocol::on_read_closed`]. Both connections must belong to
    /// this session; a closed `to` sends `from`'s bytes to `on_data` again.
    pub fn splice(&mut self, from: ConnId, to: ConnId) -> io::Result<()> {
        if from == to {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot splice a connection to itself",
            ));
        }
        if self.conn(from).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "splice source is closed",
            ));
        }
        let cap = {
            let Some(dest) = self.conn(to) else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "splice destination is closed",
                ));
            };
            self.core.setups[dest.listener].limits.output_cap
        };
        self.core.conns[to].out.attach_pipe(cap)?;
        self.core.conns[to].proto.fed_by = Some(from);
        self.core.conns[from].proto.splice_to = Some(to);
        // Bytes may already wait on `from`: no new edge would announce them.
        self.core.ready.push_back(from);
        Ok(())
    }

    /// Send FIN on `conn` once its pending output is written; reading goes on.
    pub fn shutdown_write(&mut self, conn: ConnId) {
        if let Some(c) = self.conn_mut(conn) {
            if c.life.shutdown_write() {
                self.core.mark_dirty(conn);
            }
        }
    }

    /// Close `conn` once its pending output is written.
    pub fn close(&mut self, conn: ConnId) {
        if let Some(c) = self.conn_mut(conn) {
            c.life.close(None);
            self.core.mark_dirty(conn);
        }
    }

    /// This session's address, for other threads to send it messages
    /// ([`crate::Protocol::on_message`]). Every call answers the same
    /// mailbox, bounded by the listener's `mailbox` limit.
    pub fn session_ref(&mut self) -> SessionRef {
        let cap = self.limits().mailbox;
        let post = self.core.post.clone();
        let key = self.session;
        let session = &mut self.core.sessions[key];
        let mailbox = session.mailbox.get_or_insert_with(|| {
            let mb = Mailbox::new(cap);
            let _ = mb.key.set(key);
            mb
        });
        SessionRef::new(mailbox.clone(), post)
    }

    /// What starts sessions on this loop, as sessions of this session's
    /// listener (hand it to another thread, or spawn at once).
    pub fn spawner(&self) -> Spawner {
        let listener = self.core.sessions[self.session].listener;
        Spawner {
            post: self.core.post.clone(),
            listener,
            setup: self.core.setups[listener].clone(),
        }
    }

    /// This session outlives its connections: when the last has closed it
    /// goes on (on its timers, messages and new connections) until it
    /// calls [`Ctx::end_session`] or the server stops. A session started
    /// by [`crate::Spawner::spawn`] is kept from the start.
    pub fn keep_session(&mut self) {
        self.core.sessions[self.session].kept = true;
    }

    /// End this session once the callback returns: its connections close
    /// (each after its pending output is written; `on_close` still tells
    /// of each), its timers no longer fire and its address takes no more
    /// messages.
    pub fn end_session(&mut self) {
        self.core.deferred.push_back(Deferred::End(self.session));
    }

    /// Run `job` on the offload pool, off this loop (a file operation,
    /// hashing, a database write: anything that blocks). What it returns
    /// comes back as [`crate::Protocol::on_done`] on this loop, with the id
    /// answered here; a session that has ended by then does not get it.
    /// A full pool hands the job back.
    pub fn offload(
        &mut self,
        job: impl FnOnce() -> Message + Send + 'static,
    ) -> Result<JobId, OffloadError> {
        self.core.last_job += 1;
        let id = JobId(self.core.last_job);
        let post = self.core.post.clone();
        let key = self.session;
        let task = Task {
            job: Box::new(job),
            reply: Box::new(move |result| {
                let done = Letter::Done {
                    key,
                    job: id,
                    result,
                };
                if post.deliver(done).is_err() {
                    debug!("an offloaded job finished after its loop stopped");
                }
            }),
        };
        match self.core.offload.submit(task) {
            Ok(()) => Ok(id),
            Err(task) => Err(OffloadError::Full(task.job)),
        }
    }

    /// The limits of this session's listener.
    pub fn limits(&self) -> &Limits {
        let listener = self.core.sessions[self.session].listener;
        &self.core.setups[listener].limits
    }
}
