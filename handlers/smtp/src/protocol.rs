//! The loop adapter: drives a [`Session`] from [`Protocol`] callbacks.
//!
//! It sends the greeting on open, feeds every byte it is given to the
//! session (consuming all of it: the session keeps its own bounded partial
//! line), writes the replies, stores each message in the maildir at once
//! (blocking, on the loop thread), and closes after QUIT or 421. When the
//! client does not read its replies and the output reaches the cap,
//! reading pauses until it drains.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use gaidaros::{CloseReason, ConnId, Ctx, Protocol, ProtocolFactory};
use tracing::{debug, info, warn};

use crate::maildir::Maildir;
use crate::session::{Config, Delivery, Event, Session};

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
            if !out.is_empty() && !ctx.write(conn, &out) {
                // The client is not reading its replies: stop taking its
                // commands until they drain (on_writable).
                ctx.pause_read(conn);
            }
            match session.poll_event() {
                Some(Event::Deliver(delivery)) => {
                    let result = store(
                        &self.maildir,
                        &delivery,
                        ctx.peer_addr(conn).map(|a| a.ip()),
                    );
                    session.delivered(result.as_deref().map_err(|e| *e));
                }
                Some(Event::Close) => {
                    ctx.close(conn);
                    return;
                }
                None => return,
            }
        }
    }
}

/// Store `delivery`, logging the outcome.
fn store(
    maildir: &Maildir,
    delivery: &Delivery,
    peer: Option<IpAddr>,
) -> Result<String, crate::reply::StoreError> {
    match maildir.deliver(&delivery.parts(), SystemTime::now()) {
        Ok(id) => {
            info!(
                %id,
                size = delivery.len(),
                recipients = delivery.envelope.recipients.len(),
                from = %delivery.envelope.reverse_path,
                "message delivered"
            );
            Ok(id)
        }
        Err(e) => {
            warn!(
                peer = ?peer,
                size = delivery.len(),
                "delivery failed, answering 452: {e}"
            );
            Err(e.store_error())
        }
    }
}

impl Protocol for SmtpConnection {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        let peer = ctx.peer_addr(conn).map(|a| a.ip());
        self.session = Some(Session::new(self.config.clone(), peer));
        self.pump(ctx, conn);
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, data: &[u8]) -> usize {
        let now = SystemTime::now();
        let mut rest = data;
        while let Some(session) = self.session.as_mut() {
            if session.is_closed() {
                break;
            }
            let used = session.handle_input(rest, now);
            rest = rest.get(used..).unwrap_or_default();
            // Stores a message that ended in `data`, which lets the session
            // take the rest.
            self.pump(ctx, conn);
            let stuck = self.session.as_ref().is_some_and(Session::is_delivering);
            if rest.is_empty() || (used == 0 && stuck) {
                break;
            }
        }
        // Everything is consumed: the session keeps what it needs, and
        // bytes after QUIT or 421 are dropped.
        data.len()
    }

    fn on_writable(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        ctx.resume_read(conn);
    }

    fn on_close(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, reason: CloseReason) {
        debug!(%conn, %reason, "smtp connection closed");
    }
}
