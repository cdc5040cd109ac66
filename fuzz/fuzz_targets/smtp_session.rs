//! `gaidaros_smtp::Session`, driven in the order its module docs give:
//! `handle_input`, then `poll_reply` and `poll_event` until empty, each
//! event carried out on an in-memory store (`delivered` / `store_failed`),
//! then `handle_input` again with what was not consumed.
//!
//! Input: `flags | plan | n | n piece lengths | stream` (see `src/lib.rs`).
//! flags bit 0: small limits (2000-octet messages, a 300-octet text
//! buffer, 3 recipients); bit 1: failures are `Full` rather than `Failed`.
//! `plan` says, two bits per message in turn, whether storing it works (0),
//! fails at Begin (1), at the first Append (2) or at Finish (3).
//!
//! Checks:
//! - nothing panics; `consumed <= input.len()`; input is refused only
//!   while the session waits for the driver, and the driver can always
//!   make it go on;
//! - `buffered()` never passes `Config::buffer_bound()`, and no piece of
//!   text is longer than `text_buffer` (or one line, when that is longer);
//! - the events of a message come in order (Begin, Append*, Finish or
//!   Abort), never an empty piece, nothing after Close;
//! - a stored message is within `max_size` and made of CRLF lines of at
//!   most 1000 octets with no bare CR or LF (RFC 5321 2.3.8: no smuggling);
//! - every reply is well formed on the wire (`ddd-`… `ddd `, CRLF, no CR
//!   or LF inside a line);
//! - the stream in one piece and in the pieces chosen give the same
//!   replies, the same stored messages, aborts and close
//!   (`splitting_the_input_anywhere_changes_nothing`).
#![no_main]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gaidaros_fuzz::Input;
use gaidaros_smtp::reply::StoreError;
use gaidaros_smtp::session::{Envelope, Event, TEXT_BUFFER, TEXT_LINE_LIMIT};
use gaidaros_smtp::{Config, Session};
use libfuzzer_sys::fuzz_target;

fn config(flags: u8) -> Config {
    if flags & 1 == 1 {
        Config {
            hostname: "mx.test".into(),
            max_size: 2000,
            max_recipients: 3,
            text_buffer: 300,
        }
    } else {
        Config {
            hostname: "mx.test".into(),
            max_size: 10 << 20,
            max_recipients: 100,
            text_buffer: TEXT_BUFFER,
        }
    }
}

/// 2023-11-14 22:13:20 UTC.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    envelope: Envelope,
    trace: Vec<u8>,
    content: Vec<u8>,
}

/// How storing one message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Works,
    BeginFails,
    AppendFails,
    FinishFails,
}

struct Driver {
    config: Arc<Config>,
    session: Session,
    plan: u8,
    error: StoreError,
    /// Messages begun so far (which plan the next one gets).
    begun: usize,
    incoming: Option<(Stored, Plan)>,
    replies: Vec<u8>,
    delivered: Vec<Stored>,
    aborted: usize,
    closed: bool,
}

impl Driver {
    fn new(config: Arc<Config>, plan: u8, error: StoreError) -> Driver {
        let session = Session::new(config.clone(), Some(IpAddr::from([192, 0, 2, 7])));
        let mut d = Driver {
            config,
            session,
            plan,
            error,
            begun: 0,
            incoming: None,
            replies: Vec::new(),
            delivered: Vec::new(),
            aborted: 0,
            closed: false,
        };
        d.drain();
        d
    }

    fn plan_of(&self, message: usize) -> Plan {
        match (self.plan >> (2 * (message % 4))) & 3 {
            0 => Plan::Works,
            1 => Plan::BeginFails,
            2 => Plan::AppendFails,
            _ => Plan::FinishFails,
        }
    }

    fn check_buffered(&self) {
        let (held, bound) = (self.session.buffered(), self.config.buffer_bound());
        assert!(held <= bound, "{held} octets held, bound {bound}");
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        let mut stalled = false;
        loop {
            let used = self.session.handle_input(bytes, now());
            assert!(used <= bytes.len(), "consumed {used} of {}", bytes.len());
            if self.session.is_closed() {
                assert_eq!(used, bytes.len(), "input after the end is dropped");
            }
            let waiting = self.session.is_waiting();
            assert!(
                used > 0 || waiting || bytes.is_empty(),
                "input refused without a reason"
            );
            bytes = &bytes[used..];
            self.check_buffered();
            self.drain();
            self.check_buffered();
            if bytes.is_empty() {
                return;
            }
            // After the driver did all it was asked, the session goes on.
            assert!(!(stalled && used == 0), "the session waits for nothing");
            stalled = used == 0;
        }
    }

    fn drain(&mut self) {
        loop {
            while let Some(r) = self.session.poll_reply() {
                assert!(!self.closed, "a reply after Close");
                let start = self.replies.len();
                r.write_to(&mut self.replies);
                check_reply(&self.replies[start..], r.code());
            }
            let Some(event) = self.session.poll_event() else {
                return;
            };
            assert!(!self.closed, "an event after Close");
            match event {
                Event::Begin { envelope, trace } => {
                    assert!(self.incoming.is_none(), "Begin inside a message");
                    assert!(!envelope.recipients.is_empty(), "a message for no one");
                    assert!(envelope.recipients.len() <= self.config.max_recipients);
                    check_lines(&trace, "trace headers");
                    let plan = self.plan_of(self.begun);
                    self.begun += 1;
                    let stored = Stored {
                        envelope,
                        trace,
                        content: Vec::new(),
                    };
                    if plan == Plan::BeginFails {
                        self.session.store_failed(self.error);
                    } else {
                        self.incoming = Some((stored, plan));
                    }
                }
                Event::Append(piece) => {
                    let (m, plan) = self.incoming.as_mut().expect("Append after Begin");
                    assert!(!piece.is_empty(), "an empty piece");
                    let most = self.config.text_buffer.max(TEXT_LINE_LIMIT);
                    assert!(piece.len() <= most, "a piece of {}", piece.len());
                    m.content.extend_from_slice(&piece);
                    assert!(
                        m.content.len() <= self.config.max_size,
                        "text over max_size"
                    );
                    if *plan == Plan::AppendFails {
                        self.incoming = None;
                        self.session.store_failed(self.error);
                    }
                }
                Event::Finish => {
                    let (m, plan) = self.incoming.take().expect("Finish after Begin");
                    if plan == Plan::FinishFails {
                        self.session.delivered(Err(self.error));
                    } else {
                        check_lines(&m.content, "message text");
                        let id = format!("id{}", self.delivered.len());
                        self.delivered.push(m);
                        self.session.delivered(Ok(&id));
                    }
                }
                Event::Abort => {
                    self.incoming.take().expect("Abort after Begin");
                    self.aborted += 1;
                }
                Event::Close => {
                    assert!(self.session.is_closed());
                    self.closed = true;
                }
            }
        }
    }

    fn outcome(&self) -> (&[u8], &[Stored], usize, bool) {
        (&self.replies, &self.delivered, self.aborted, self.closed)
    }
}

/// CRLF-ended lines of at most 1000 octets, no CR or LF elsewhere.
fn check_lines(text: &[u8], what: &str) {
    assert!(
        text.is_empty() || text.ends_with(b"\r\n"),
        "{what} not ended by CRLF"
    );
    for line in text.split_inclusive(|&b| b == b'\n') {
        assert!(line.ends_with(b"\r\n"), "{what}: bare LF");
        let inner = &line[..line.len() - 2];
        assert!(!inner.contains(&b'\r'), "{what}: bare CR");
        assert!(
            line.len() <= TEXT_LINE_LIMIT,
            "{what}: a line of {}",
            line.len()
        );
    }
}

/// `ddd-text` lines and a last `ddd text`, each ended by CRLF.
fn check_reply(wire: &[u8], code: u16) {
    assert!((200..=599).contains(&code), "code {code}");
    let prefix = code.to_string();
    let lines: Vec<&[u8]> = wire.split_inclusive(|&b| b == b'\n').collect();
    assert!(!lines.is_empty(), "an empty reply");
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(prefix.as_bytes()),
            "a line without its code"
        );
        let sep = if i + 1 == lines.len() { b' ' } else { b'-' };
        assert_eq!(line.get(3), Some(&sep), "continuation marks");
        assert!(line.ends_with(b"\r\n"), "a reply line not ended by CRLF");
        assert!(
            !line[..line.len() - 2].contains(&b'\r'),
            "a CR inside a reply"
        );
        assert!(line.len() <= 512, "a reply line of {} octets", line.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data, 2) else {
        return;
    };
    let (flags, plan) = (input.fixed[0], input.fixed[1]);
    let config = Arc::new(config(flags));
    let error = if flags & 2 == 0 {
        StoreError::Failed
    } else {
        StoreError::Full
    };

    let mut whole = Driver::new(config.clone(), plan, error);
    whole.feed(input.stream);

    let mut split = Driver::new(config, plan, error);
    for piece in input.pieces() {
        split.feed(piece);
    }
    assert_eq!(
        whole.outcome(),
        split.outcome(),
        "the same bytes in other reads"
    );
    assert_eq!(whole.session.buffered(), split.session.buffered());
    assert_eq!(whole.session.is_closed(), split.session.is_closed());
});
