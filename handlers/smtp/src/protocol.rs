//! The loop adapter: drives a [`Session`] from [`Protocol`] callbacks.
//!
//! It sends the greeting on open, feeds every byte it is given to the
//! session, writes the replies, and carries out the session's events on
//! the maildir: a message's file is created in `tmp/` when its text
//! starts and each piece of text is appended as it comes (on the loop
//! thread: page-cache writes), and at its end the file is synced and moved
//! into `new/` on the offload pool ([`Ctx::offload`]), so that an fsync on
//! a slow disk never stalls the loop's other connections. Meanwhile the
//! session takes no input; when the job is back, its `250` (or `451`/`452`)
//! is sent and the pipelined commands that waited are read again
//! ([`Ctx::replay_input`]). A full offload pool answers `451` (try later).
//! A refused message, a failed write and a connection that goes away
//! mid-message leave nothing behind (dropping the [`Delivery`] removes its
//! file). It closes after QUIT or 421. When the client does not read its
//! replies and the output reaches the cap, reading pauses until it drains.

use std::net::IpAddr;
use std::sync::Arc;

use gaidaros::{
    CloseReason, ConnId, Ctx, JobId, Message, OffloadError, Protocol, ProtocolFactory, Queued,
};
use tracing::{debug, info, warn};

use crate::maildir::{Delivery, Maildir, MaildirError};
use crate::reply::{Refusal, StoreError};
use crate::session::{Config, Envelope, Event, Session};

/// Creates one [`SmtpConnection`] per accepted connection.
#[derive(Debug, Clone)]
pub struct SmtpFactory {
    config: Arc<Config>,
    maildir: Arc<Maildir>,
}

impl SmtpFactory {
    /// Serve sessions with `config`, storing into `maildir`.
    pub fn new(config: Config, maildir: Maildir) -> SmtpFactory {
        SmtpFactory {
            config: Arc::new(config),
            maildir: Arc::new(maildir),
        }
    }
}

impl ProtocolFactory for SmtpFactory {
    fn open(&self) -> Box<dyn Protocol> {
        Box::new(SmtpConnection {
            config: self.config.clone(),
            maildir: self.maildir.clone(),
            session: None,
            incoming: None,
            peer: None,
            conn: None,
        })
    }
}

/// One SMTP connection.
#[derive(Debug)]
pub struct SmtpConnection {
    config: Arc<Config>,
    maildir: Arc<Maildir>,
    /// Made in `on_open`, when the peer's address is known.
    session: Option<Session>,
    /// The message being written, between [`Event::Begin`] and
    /// [`Event::Finish`] or [`Event::Abort`].
    incoming: Option<Incoming>,
    peer: Option<IpAddr>,
    /// The connection (from `on_open`).
    conn: Option<ConnId>,
}

/// A message being written, and who it is from and for (for the log).
#[derive(Debug)]
struct Incoming {
    delivery: Delivery,
    envelope: Envelope,
}

impl SmtpConnection {
    /// Write the replies and carry out the events the session has ready.
    fn pump(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        loop {
            let mut out = Vec::new();
            while let Some(reply) = session.poll_reply() {
                reply.write_to(&mut out);
            }
            if !out.is_empty() && ctx.write(conn, &out) == Ok(Queued::OverCap) {
                // The client is not reading its replies: stop taking its
                // commands until they drain (on_writable).
                ctx.pause_read(conn);
            }
            let Some(event) = session.poll_event() else {
                return;
            };
            match event {
                Event::Begin { envelope, trace } => {
                    match self.maildir.begin(&trace, ctx.wall_now()) {
                        Ok(delivery) => {
                            self.incoming = Some(Incoming { delivery, envelope });
                        }
                        Err(e) => session.store_failed(failed(&e, self.peer)),
                    }
                }
                Event::Append(text) => {
                    // None after a failure: the session sends no more text
                    // then, but a stray piece is harmless.
                    if let Some(incoming) = self.incoming.as_mut() {
                        if let Err(e) = incoming.delivery.append(&text) {
                            // Dropping the delivery removes its file.
                            self.incoming = None;
                            session.store_failed(failed(&e, self.peer));
                        }
                    }
                }
                Event::Finish => {
                    // The session sends Finish only after a Begin that
                    // worked and appends that did.
                    let Some(incoming) = self.incoming.take() else {
                        session.delivered(Err(StoreError::Failed));
                        continue;
                    };
                    let maildir = self.maildir.clone();
                    let peer = self.peer;
                    let job = move || -> Message { Box::new(finish(&maildir, incoming, peer)) };
                    match ctx.offload(job) {
                        // on_done goes on; the session takes no input
                        // until then, so no other event can be queued.
                        Ok(_) => return,
                        Err(OffloadError::Full(job)) => {
                            // Dropping the job drops the delivery, which
                            // removes its file.
                            drop(job);
                            warn!(peer = ?self.peer, "offload pool full: message answered 451");
                            session.delivered(Err(StoreError::Failed));
                        }
                    }
                }
                Event::Abort => {
                    // Refused for its content: the session answers at its
                    // end; its file goes now.
                    if let Some(incoming) = self.incoming.take() {
                        incoming.delivery.abort();
                    }
                }
                Event::Close => {
                    ctx.close(conn);
                    return;
                }
            }
        }
    }
}

/// Move a complete message into `new/`, logging the outcome.
fn finish(
    maildir: &Maildir,
    incoming: Incoming,
    peer: Option<IpAddr>,
) -> Result<String, StoreError> {
    let size = incoming.delivery.written();
    let envelope = incoming.envelope;
    match maildir.finish(incoming.delivery) {
        Ok(id) => {
            info!(
                %id,
                size,
                recipients = envelope.recipients.len(),
                from = %envelope.reverse_path,
                "message delivered"
            );
            Ok(id)
        }
        Err(e) => Err(failed(&e, peer)),
    }
}

/// Log a failed delivery; what the client is told.
fn failed(error: &MaildirError, peer: Option<IpAddr>) -> StoreError {
    let answer = error.store_error();
    warn!(
        peer = ?peer,
        "delivery failed, answering {}: {error}",
        answer.reply().code()
    );
    answer
}

impl Protocol for SmtpConnection {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        self.conn = Some(conn);
        self.peer = ctx.peer_addr(conn).map(|a| a.ip());
        self.session = Some(Session::new(self.config.clone(), self.peer));
        self.pump(ctx, conn);
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, data: &[u8]) -> usize {
        let now = ctx.wall_now();
        let mut rest = data;
        while let Some(session) = self.session.as_mut() {
            if session.is_closed() {
                // Bytes after QUIT or 421 are dropped.
                return data.len();
            }
            let used = session.handle_input(rest, now);
            rest = rest.get(used..).unwrap_or_default();
            // Writes the text and stores a message that ended in `data`,
            // which lets the session take the rest.
            self.pump(ctx, conn);
            let waiting = self.session.as_ref().is_some_and(Session::is_waiting);
            if rest.is_empty() || (used == 0 && waiting) {
                break;
            }
        }
        // All of it, unless a message is being stored on the offload pool:
        // the rest waits in the loop (within the listener's max_request)
        // until on_done replays it. The session keeps its own bounded
        // partial line.
        data.len() - rest.len()
    }

    fn on_writable(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        ctx.resume_read(conn);
    }

    /// The message of the last [`Event::Finish`] is stored (or not).
    fn on_done(&mut self, ctx: &mut Ctx<'_>, _: JobId, result: Result<Message, String>) {
        let stored = match result {
            Ok(v) => match v.downcast::<Result<String, StoreError>>() {
                Ok(stored) => *stored,
                Err(_) => Err(StoreError::Failed),
            },
            Err(panic) => {
                warn!(peer = ?self.peer, "storing a message panicked: {panic}");
                Err(StoreError::Failed)
            }
        };
        let (Some(session), Some(conn)) = (self.session.as_mut(), self.conn) else {
            return;
        };
        session.delivered(stored.as_deref().map_err(|e| *e));
        self.pump(ctx, conn);
        // Commands pipelined after the message waited in the loop.
        ctx.replay_input(conn);
    }

    fn on_close(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, reason: CloseReason) {
        if let Some(incoming) = self.incoming.take() {
            debug!(%conn, written = incoming.delivery.written(), "message abandoned mid-text");
            incoming.delivery.abort();
        }
        debug!(%conn, %reason, "smtp connection closed");
    }
}
