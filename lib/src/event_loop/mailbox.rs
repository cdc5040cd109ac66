//! Reaching sessions from other threads: starting a session on a running
//! loop ([`Spawner`]) and sending messages into a live one ([`SessionRef`]).
//!
//! Both travel as letters through one channel per loop, the loop's post,
//! and wake it. The channel itself is unbounded; what bounds it is counted
//! on the sending side: every session's mailbox holds at most its
//! listener's `mailbox` undelivered messages, and a listener has at most
//! `max_sessions` spawned sessions alive or on their way, across its loops.
//! A send over either limit is refused at once and hands the message (or
//! the session) back; nothing is dropped silently.
//!
//! A message accepted for a session that ends before the loop delivers it
//! is dropped there, with a debug log: a reply channel it carries is then
//! dropped too, which is how the sender learns of it.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_channel::Sender;
use tracing::warn;

use super::{ListenerSetup, SessionKey};
use crate::poll::Waker;
use crate::protocol::{JobId, Protocol};

/// What [`SessionRef::send`] carries and [`crate::Protocol::on_message`]
/// receives: any value a session knows how to downcast. Put a reply
/// channel in it (a `crossbeam_channel::Sender`, a oneshot) to be answered.
pub type Message = Box<dyn Any + Send>;

/// What goes through a loop's post.
pub(crate) enum Letter {
    /// Start `proto` as a session of listener `listener`.
    Start {
        proto: Box<dyn Protocol>,
        listener: usize,
        mailbox: Arc<Mailbox>,
        slot: SpawnSlot,
    },
    /// Deliver `msg` to the session of `to`.
    Message { to: Arc<Mailbox>, msg: Message },
    /// Job `job` of session `key` ([`crate::Ctx::offload`]) has finished.
    Done {
        key: SessionKey,
        job: JobId,
        result: Result<Message, String>,
    },
    /// The name session `key` asked to connect to ([`crate::Ctx::connect_host`])
    /// has resolved, or failed to.
    Resolved {
        key: SessionKey,
        job: JobId,
        result: std::io::Result<Vec<std::net::SocketAddr>>,
        how: crate::protocol::ConnectOptions,
    },
}

/// One loop's post: where letters for its sessions go.
#[derive(Clone)]
pub(crate) struct Post {
    pub(crate) tx: Sender<Letter>,
    pub(crate) waker: Arc<Waker>,
    /// The loop is stopping (its [`super::LoopHandle`]'s flag).
    pub(crate) stop: Arc<AtomicBool>,
}

impl Post {
    /// Send `letter` and wake the loop; the letter back when the loop has
    /// gone.
    pub(crate) fn deliver(&self, letter: Letter) -> Result<(), Letter> {
        self.tx.send(letter).map_err(|e| e.0)?;
        if let Err(e) = self.waker.wake() {
            warn!("cannot wake a loop for a letter: {e}");
        }
        Ok(())
    }
}

/// The shared half of a session's mailbox.
pub(crate) struct Mailbox {
    /// The session's key, set by its loop when it starts.
    pub(crate) key: OnceLock<SessionKey>,
    /// Messages accepted and not yet delivered.
    pub(crate) queued: AtomicUsize,
    cap: usize,
    /// The session has ended: no message is accepted any more.
    ended: AtomicBool,
}

impl Mailbox {
    pub(crate) fn new(cap: usize) -> Arc<Mailbox> {
        Arc::new(Mailbox {
            key: OnceLock::new(),
            queued: AtomicUsize::new(0),
            cap: cap.max(1),
            ended: AtomicBool::new(false),
        })
    }

    /// Its session has ended (or will never start): refuse messages.
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

/// A spawned session's place under its listener's `max_sessions`, held
/// from the spawn until the session is gone (or its start letter is
/// dropped undelivered).
pub(crate) struct SpawnSlot(Arc<ListenerSetup>);

impl Drop for SpawnSlot {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a message was not accepted.
pub enum SendError {
    /// The session's mailbox holds its listener's `mailbox` undelivered
    /// messages: try again later (the message is handed back).
    Full(Message),
    /// The session has ended, or its loop has stopped.
    Ended(Message),
}

impl SendError {
    /// The message that was not sent.
    pub fn into_message(self) -> Message {
        match self {
            SendError::Full(m) | SendError::Ended(m) => m,
        }
    }
}

impl fmt::Debug for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::Full(_) => "SendError::Full(..)",
            SendError::Ended(_) => "SendError::Ended(..)",
        })
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::Full(_) => "the session's mailbox is full",
            SendError::Ended(_) => "the session has ended",
        })
    }
}

impl std::error::Error for SendError {}

/// A live session's address: any thread may send it messages, delivered in
/// the order sent as [`crate::Protocol::on_message`] on the session's loop.
/// Made by [`Spawner::spawn`] or [`crate::Ctx::session_ref`]; cheap to clone.
#[derive(Clone)]
pub struct SessionRef {
    mailbox: Arc<Mailbox>,
    post: Post,
}

impl SessionRef {
    pub(crate) fn new(mailbox: Arc<Mailbox>, post: Post) -> Self {
        SessionRef { mailbox, post }
    }

    /// Send `msg` to the session. Refused, and handed back, when its
    /// mailbox is full ([`SendError::Full`]) or it has ended
    /// ([`SendError::Ended`]).
    pub fn send(&self, msg: Message) -> Result<(), SendError> {
        let mb = &self.mailbox;
        if mb.is_ended() {
            return Err(SendError::Ended(msg));
        }
        if mb.queued.fetch_add(1, Ordering::AcqRel) >= mb.cap {
            mb.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::Full(msg));
        }
        let letter = Letter::Message {
            to: mb.clone(),
            msg,
        };
        self.post.deliver(letter).map_err(|letter| {
            mb.queued.fetch_sub(1, Ordering::AcqRel);
            match letter {
                Letter::Message { msg, .. } => SendError::Ended(msg),
                Letter::Start { .. } | Letter::Done { .. } | Letter::Resolved { .. } => {
                    unreachable!("a message was sent")
                }
            }
        })
    }

    /// The session's key once its loop has started it (for tests of the
    /// loop that post letters themselves).
    #[cfg(test)]
    pub(crate) fn key(&self) -> Option<SessionKey> {
        self.mailbox.key.get().copied()
    }

    /// The post of the session's loop.
    #[cfg(test)]
    pub(crate) fn post(&self) -> &Post {
        &self.post
    }

    /// Has the session ended? (A `false` can be out of date at once.)
    pub fn is_ended(&self) -> bool {
        self.mailbox.is_ended()
    }

    /// Messages sent and not yet delivered.
    pub fn queued(&self) -> usize {
        self.mailbox.queued.load(Ordering::Acquire)
    }
}

impl fmt::Debug for SessionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRef")
            .field("ended", &self.is_ended())
            .field("queued", &self.queued())
            .finish()
    }
}

/// Why [`Spawner::spawn`] did not start a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnRefused {
    /// The listener has `max_sessions` spawned sessions alive or starting.
    TooMany,
    /// The loop is stopping or has stopped.
    Stopped,
}

/// A session [`Spawner::spawn`] did not start, handed back with why.
pub struct SpawnError {
    /// Why.
    pub reason: SpawnRefused,
    /// The session that was not started.
    pub proto: Box<dyn Protocol>,
}

impl fmt::Debug for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpawnError")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            SpawnRefused::TooMany => f.write_str(
                "too many sessions: the listener's max_sessions spawned sessions are alive",
            ),
            SpawnRefused::Stopped => f.write_str("the loop is stopping"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// Starts sessions on one loop, as sessions of one of its listeners (whose
/// limits and options apply to them and their outbound connections). Any
/// thread may use it; a [`crate::ProtocolFactory`] gets one per loop in
/// [`crate::ProtocolFactory::on_loop_start`], a session gets its own
/// loop's from [`crate::Ctx::spawner`]. Cheap to clone.
#[derive(Clone)]
pub struct Spawner {
    pub(crate) post: Post,
    pub(crate) listener: usize,
    pub(crate) setup: Arc<ListenerSetup>,
}

impl Spawner {
    /// Start `proto` on the loop: [`crate::Protocol::on_start`] is its
    /// first callback. It has no connection; it lives on its timers, its
    /// messages and the connections it opens, until it calls
    /// [`crate::Ctx::end_session`] or the server stops. Its address comes
    /// back at once (messages sent before it has started wait for it).
    pub fn spawn(&self, proto: Box<dyn Protocol>) -> Result<SessionRef, SpawnError> {
        if self.post.stop.load(Ordering::Acquire) {
            return Err(SpawnError {
                reason: SpawnRefused::Stopped,
                proto,
            });
        }
        let max = self.setup.limits.max_sessions;
        if self.setup.sessions.fetch_add(1, Ordering::AcqRel) >= max {
            self.setup.sessions.fetch_sub(1, Ordering::AcqRel);
            return Err(SpawnError {
                reason: SpawnRefused::TooMany,
                proto,
            });
        }
        let slot = SpawnSlot(self.setup.clone());
        let mailbox = Mailbox::new(self.setup.limits.mailbox);
        let letter = Letter::Start {
            proto,
            listener: self.listener,
            mailbox: mailbox.clone(),
            slot,
        };
        match self.post.deliver(letter) {
            Ok(()) => Ok(SessionRef::new(mailbox, self.post.clone())),
            Err(Letter::Start { proto, .. }) => Err(SpawnError {
                reason: SpawnRefused::Stopped,
                proto,
            }),
            Err(Letter::Message { .. } | Letter::Done { .. } | Letter::Resolved { .. }) => {
                unreachable!("a start was sent")
            }
        }
    }

    /// The name of the listener its sessions belong to.
    pub fn listener(&self) -> &str {
        &self.setup.name
    }
}

impl fmt::Debug for Spawner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spawner")
            .field("listener", &self.setup.name)
            .finish_non_exhaustive()
    }
}
