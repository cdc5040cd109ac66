//! The SMTP server session as a state machine, without I/O.
//!
//! A [`Session`] owns no socket, no file and no clock. The driver calls, in
//! this order:
//!
//! 1. [`Session::handle_input`] with the bytes that arrived and the current
//!    time; it returns how many it consumed: all of them, unless it stopped
//!    to wait for the driver (see [`Session::is_waiting`]);
//! 2. [`Session::poll_reply`] until `None`, and writes the replies;
//! 3. [`Session::poll_event`] until `None`, and carries each event out:
//!    - [`Event::Begin`] (after the 354): a message starts; create its file
//!      and write its trace headers;
//!    - [`Event::Append`]: the next piece of its text; append it;
//!    - [`Event::Finish`]: its text is complete; store it for good and
//!      report with [`Session::delivered`], which produces the `250` or
//!      `451`/`452` reply (back to 2.);
//!    - [`Event::Abort`]: it is refused (the reply comes at its end);
//!      remove what was written;
//!    - [`Event::Close`]: close once the replies are written.
//!
//!    When creating or appending fails, the driver removes what it wrote
//!    and calls [`Session::store_failed`]: the rest of the text is read and
//!    dropped, and its end is answered `451` or `452`. The session goes on.
//! 4. [`Session::handle_input`] again with what it did not consume.
//!
//! While an event about the message waits to be polled, and from
//! [`Event::Finish`] until [`Session::delivered`], the session takes no
//! input: the driver keeps up with the text as it arrives, and pipelined
//! commands after a message wait, so replies keep their order.
//!
//! Memory is bounded per session by a constant, whatever `max_size`: a
//! partial line is kept up to the line limit (512 octets for commands,
//! 1001 for message text) and the rest of a longer line is counted and
//! dropped; message text is handed over in pieces of at most
//! [`Config::text_buffer`] octets (64 KiB by default), one piece at a time.
//! [`Session::buffered`] tells how much is held.
//!
//! Lines end in CRLF, and only `CRLF "." CRLF` ends the message text. A
//! bare LF or bare CR anywhere in the text makes the message refused once
//! its real end comes (RFC 5321 2.3.8), so `<LF>.<LF>`, `<CR><LF>.<LF>`,
//! `<LF>.<CR><LF>` or `<CR>.<CR><LF>` can neither end the data early nor
//! slip a second, smuggled message in. A message found faulty (too big, a
//! line too long, a bare line ending) is aborted at once and refused at its
//! end: nothing of it is stored.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::debug;

use crate::command::{self, Body, Command, ForwardPath, ReversePath};
use crate::reply::{
    CommandError, LineError, MessageError, Refusal, Reply, SequenceError, SessionError, StoreError,
    TransactionError,
};

/// The longest command line, CRLF included (RFC 5321 4.5.3.1.4).
pub const COMMAND_LINE_LIMIT: usize = 512;
/// The longest line of message text, CRLF included (RFC 5321 4.5.3.1.6),
/// not counting the dot of a dot-stuffed line (which may be one longer on
/// the wire).
pub const TEXT_LINE_LIMIT: usize = 1000;
/// Default of [`Config::text_buffer`]: message text held before it is
/// handed to the driver.
pub const TEXT_BUFFER: usize = 64 << 10;
/// Protocol errors (unknown or malformed commands, commands out of order)
/// a session may make before it is closed with 421: plenty for a confused
/// but honest client, few enough to make a scanner's probing short.
/// Postfix's `smtpd_hard_error_limit` is also 20. The 503s that follow
/// from a refused MAIL or RCPT in the same transaction (a pipelining
/// client sends its RCPTs and DATA before it sees the refusal) do not
/// count.
pub const MAX_ERRORS: u32 = 20;

/// What every session of a listener shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The server's name in the greeting, replies and Received headers.
    pub hostname: String,
    /// The largest message, in octets (the text after dot-unstuffing,
    /// without the trace headers this server adds).
    pub max_size: usize,
    /// The most recipients of one message.
    pub max_recipients: usize,
    /// The most message text held before it is handed to the driver with
    /// [`Event::Append`] (a single line longer than this is handed over
    /// alone). [`TEXT_BUFFER`] unless testing.
    pub text_buffer: usize,
}

impl Config {
    /// The most octets a session of this config holds
    /// ([`Session::buffered`]), whatever `max_size`: text not handed over
    /// yet, or a piece waiting to be polled (at most `text_buffer`, or one
    /// line when that is longer), plus a partial line or the line that
    /// starts the next piece (at most 1001 octets; the trace headers are
    /// shorter and wait alone).
    pub fn buffer_bound(&self) -> usize {
        self.text_buffer.max(TEXT_LINE_LIMIT) + TEXT_LINE_LIMIT + 1
    }
}

/// Who a message is from and for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The MAIL FROM path.
    pub reverse_path: ReversePath,
    /// The accepted RCPT TO paths, in order.
    pub recipients: Vec<ForwardPath>,
    /// The BODY parameter, if given.
    pub body: Option<Body>,
    /// The SIZE parameter, if given.
    pub declared_size: Option<u64>,
}

/// What the session asks of its driver. The events about one message come
/// in this order: `Begin`, any number of `Append`, then `Finish` or
/// `Abort` (or none of them after [`Session::store_failed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message starts (its 354 is sent): create its file and write
    /// `trace` into it. On failure, call [`Session::store_failed`].
    Begin {
        /// Who it is from and for.
        envelope: Envelope,
        /// The trace headers this server adds (`Return-Path`,
        /// `Received`), the first bytes of the stored message.
        trace: Vec<u8>,
    },
    /// The next piece of the message text (dot-unstuffed, lines ended by
    /// CRLF): append it. On failure, call [`Session::store_failed`].
    Append(Vec<u8>),
    /// The text is complete (the final `.` is not part of it): store the
    /// message for good, then call [`Session::delivered`].
    Finish,
    /// The message is refused (the reply comes at the end of its text):
    /// remove what was written of it.
    Abort,
    /// Close the connection once the replies so far are written.
    Close,
}

impl Event {
    /// Is it about the message being received (not `Close`)?
    fn is_message(&self) -> bool {
        !matches!(self, Event::Close)
    }
}

/// How the client introduced itself.
#[derive(Debug, Clone)]
struct Hello {
    name: String,
    extended: bool,
}

/// Why a message is refused at its end.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Its text breaks a limit or a rule.
    Message(MessageError),
    /// The driver could not write it.
    Store(StoreError),
}

/// The message text being received.
#[derive(Debug)]
struct Message {
    /// Octets of text so far, after dot-unstuffing.
    size: usize,
    /// Text not handed over yet; dropped (empty) once `fault` is set.
    text: Vec<u8>,
    /// Did the previous line end in CRLF? True at the start: the CRLF that
    /// ended the DATA command counts.
    after_crlf: bool,
    /// The first reason to refuse the message, reported at its end.
    fault: Option<Fault>,
}

impl Message {
    fn new() -> Message {
        Message {
            size: 0,
            text: Vec::new(),
            after_crlf: true,
            fault: None,
        }
    }

    /// Keep the first fault and drop the text.
    fn fail(&mut self, fault: Fault) {
        if self.fault.is_none() {
            self.fault = Some(fault);
        }
        self.text = Vec::new();
    }

    /// Refuse the message for its content: the driver removes what it
    /// wrote now, the reply comes at the end.
    fn refuse(&mut self, fault: MessageError, events: &mut VecDeque<Event>) {
        self.fail(Fault::Message(fault));
        events.push_back(Event::Abort);
    }
}

#[derive(Debug)]
enum Phase {
    /// Reading command lines.
    Command,
    /// Reading message text, after a 354.
    Data(Message),
    /// The text ended and [`Event::Finish`] was sent; no input is taken
    /// until [`Session::delivered`].
    Delivering,
    /// After QUIT or 421: input is dropped.
    Closed,
}

/// A line, or as much of it as the limit allows.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    /// The first `min(len, limit)` octets, terminator included when it fits.
    head: &'a [u8],
    /// The whole line's length, terminator included.
    len: usize,
    /// Ended by CRLF (not a bare LF)?
    crlf: bool,
}

impl<'a> Line<'a> {
    fn from_slice(line: &'a [u8], limit: usize) -> Line<'a> {
        Line {
            head: &line[..line.len().min(limit)],
            len: line.len(),
            crlf: line.ends_with(b"\r\n"),
        }
    }

    /// The text without the terminator; `None` when the line was cut.
    fn text(&self) -> Option<&'a [u8]> {
        if self.head.len() < self.len {
            return None;
        }
        let end = if self.crlf { 2 } else { 1 };
        self.head.get(..self.len.saturating_sub(end))
    }
}

/// The start of a line that has not ended yet, kept up to the line limit.
#[derive(Debug, Default)]
struct PartialLine {
    head: Vec<u8>,
    len: usize,
    /// The last two octets seen, to tell CRLF from LF when the line was cut.
    last_two: [u8; 2],
}

impl PartialLine {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, chunk: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.head.len());
        self.head.extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.len = self.len.saturating_add(chunk.len());
        match chunk {
            [.., a, b] => self.last_two = [*a, *b],
            [b] => self.last_two = [self.last_two[1], *b],
            [] => {}
        }
    }

    fn line(&self) -> Line<'_> {
        Line {
            head: &self.head,
            len: self.len,
            crlf: self.last_two == *b"\r\n",
        }
    }

    fn clear(&mut self) {
        self.head.clear();
        self.len = 0;
        self.last_two = [0; 2];
    }
}

/// One SMTP server session. See the module docs for how to drive it.
#[derive(Debug)]
pub struct Session {
    config: Arc<Config>,
    peer: Option<IpAddr>,
    hello: Option<Hello>,
    /// The open transaction, between MAIL and DATA.
    envelope: Option<Envelope>,
    /// A MAIL or RCPT of the current transaction was refused: the 503s
    /// that follow from it (RCPT or DATA without MAIL, DATA without a
    /// recipient) are answered but not counted as errors. Cleared by a
    /// MAIL taken, DATA, RSET, EHLO and HELO.
    transaction_refused: bool,
    phase: Phase,
    partial: PartialLine,
    /// Protocol errors so far, towards [`MAX_ERRORS`].
    errors: u32,
    replies: VecDeque<Reply>,
    events: VecDeque<Event>,
}

impl Session {
    /// A session with a client at `peer`; the greeting is the first reply.
    pub fn new(config: Arc<Config>, peer: Option<IpAddr>) -> Session {
        let greeting = Reply::greeting(&config.hostname);
        Session {
            config,
            peer,
            hello: None,
            envelope: None,
            transaction_refused: false,
            phase: Phase::Command,
            partial: PartialLine::default(),
            errors: 0,
            replies: VecDeque::from([greeting]),
            events: VecDeque::new(),
        }
    }

    /// Take bytes from the client; `now` dates the Received header of a
    /// message that starts in them. Returns how many bytes were consumed:
    /// all, except when the session stops to wait for the driver (see
    /// [`Session::is_waiting`]); then the bytes after the line it stopped
    /// at are left to be given again. After QUIT or 421 every byte is
    /// consumed and dropped.
    pub fn handle_input(&mut self, data: &[u8], now: SystemTime) -> usize {
        let mut used = 0;
        while used < data.len() {
            if self.is_closed() {
                return data.len();
            }
            if self.is_waiting() {
                return used;
            }
            let limit = self.line_limit();
            let rest = &data[used..];
            let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                self.partial.push(rest, limit);
                return data.len();
            };
            used += lf + 1;
            if self.partial.is_empty() {
                // The whole line is in `data`: no copy.
                self.on_line(Line::from_slice(&rest[..=lf], limit), now);
            } else {
                let mut partial = std::mem::take(&mut self.partial);
                partial.push(&rest[..=lf], limit);
                self.on_line(partial.line(), now);
                partial.clear();
                self.partial = partial;
            }
        }
        used
    }

    /// The result of storing the message of the last [`Event::Finish`]:
    /// the id it was stored under, or why it was not.
    pub fn delivered(&mut self, result: Result<&str, StoreError>) {
        if !matches!(self.phase, Phase::Delivering) {
            debug_assert!(false, "delivered() without a pending delivery");
            return;
        }
        self.phase = Phase::Command;
        match result {
            Ok(id) => self.replies.push_back(Reply::queued(id)),
            Err(e) => self.refuse(e),
        }
    }

    /// Creating the file of the message ([`Event::Begin`]) or appending to
    /// it ([`Event::Append`]) failed, and the driver removed what it wrote.
    /// The rest of the message's events are dropped; its text is read to
    /// its end and answered with `error`'s reply (`451` or `452`).
    pub fn store_failed(&mut self, error: StoreError) {
        // Only this message's events can be queued: input waits while one
        // is (see `is_waiting`).
        self.events.retain(|e| !e.is_message());
        match &mut self.phase {
            Phase::Data(message) => message.fail(Fault::Store(error)),
            // Finish was queued behind the piece that failed.
            Phase::Delivering => self.delivered(Err(error)),
            Phase::Command | Phase::Closed => {
                debug_assert!(false, "store_failed() without a message");
            }
        }
    }

    /// The next reply to send.
    pub fn poll_reply(&mut self) -> Option<Reply> {
        self.replies.pop_front()
    }

    /// The next thing the driver must do.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Has the session ended (after QUIT, or 421)?
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Does the session take no input until the driver acts: an event
    /// about the message waits to be polled, or a message waits for
    /// [`Session::delivered`]?
    pub fn is_waiting(&self) -> bool {
        matches!(self.phase, Phase::Delivering) || self.events.iter().any(Event::is_message)
    }

    /// Octets held: the start of an unfinished line, message text not
    /// handed over yet, and text and trace headers in events not polled
    /// yet. Never more than [`Config::buffer_bound`].
    pub fn buffered(&self) -> usize {
        let text = match &self.phase {
            Phase::Data(m) => m.text.len(),
            _ => 0,
        };
        let queued: usize = self
            .events
            .iter()
            .map(|e| match e {
                Event::Begin { trace, .. } => trace.len(),
                Event::Append(piece) => piece.len(),
                _ => 0,
            })
            .sum();
        self.partial.head.len() + text + queued
    }

    fn line_limit(&self) -> usize {
        match self.phase {
            // One more for a stuffed dot.
            Phase::Data(_) => TEXT_LINE_LIMIT + 1,
            _ => COMMAND_LINE_LIMIT,
        }
    }

    fn on_line(&mut self, line: Line<'_>, now: SystemTime) {
        if matches!(self.phase, Phase::Data(_)) {
            self.on_text_line(line);
        } else {
            self.on_command_line(line, now);
        }
    }

    fn on_command_line(&mut self, line: Line<'_>, now: SystemTime) {
        let error = match read_command(line) {
            Ok(cmd) => return self.on_command(cmd, now),
            Err(error) => error,
        };
        // A MAIL or RCPT that cannot be read is refused as much as one
        // that breaks a limit.
        if command::is_mail_or_rcpt(line.head) {
            self.transaction_refused = true;
        }
        match error {
            BadLine::Line(e) => self.refuse(e),
            BadLine::Command(e) => self.refuse(e),
        }
    }

    fn on_command(&mut self, cmd: Command, now: SystemTime) {
        let hostname = &self.config.hostname;
        match cmd {
            Command::Ehlo(name) => {
                // A new EHLO or HELO ends any transaction (RFC 5321 4.1.4).
                self.envelope = None;
                self.transaction_refused = false;
                self.hello = Some(Hello {
                    name,
                    extended: true,
                });
                let reply = Reply::ehlo(hostname, self.config.max_size);
                self.replies.push_back(reply);
            }
            Command::Helo(name) => {
                self.envelope = None;
                self.transaction_refused = false;
                self.hello = Some(Hello {
                    name,
                    extended: false,
                });
                let reply = Reply::helo(hostname);
                self.replies.push_back(reply);
            }
            Command::Mail { from, params } => {
                let Some(hello) = &self.hello else {
                    return self.refuse_transaction(SequenceError::NeedHello);
                };
                if self.envelope.is_some() {
                    return self.refuse_transaction(SequenceError::NestedMail);
                }
                if !hello.extended && !params.is_empty() {
                    return self.refuse_transaction(TransactionError::ParametersWithoutEhlo);
                }
                let limit = self.config.max_size;
                if params.size.is_some_and(|size| size > limit as u64) {
                    return self.refuse_transaction(TransactionError::SizeExceeded { limit });
                }
                self.transaction_refused = false;
                self.envelope = Some(Envelope {
                    reverse_path: from,
                    recipients: Vec::new(),
                    body: params.body,
                    declared_size: params.size,
                });
                self.replies.push_back(Reply::sender_ok());
            }
            Command::Rcpt { to } => {
                let limit = self.config.max_recipients;
                let Some(envelope) = &mut self.envelope else {
                    return self.refuse_sequence(SequenceError::NeedMail);
                };
                if envelope.recipients.len() >= limit {
                    return self.refuse_transaction(TransactionError::TooManyRecipients { limit });
                }
                envelope.recipients.push(to);
                self.replies.push_back(Reply::recipient_ok());
            }
            Command::Data => match self.envelope.take() {
                None => self.refuse_sequence(SequenceError::NeedMail),
                Some(envelope) if envelope.recipients.is_empty() => {
                    self.envelope = Some(envelope);
                    self.refuse_sequence(SequenceError::NeedRecipient);
                }
                Some(envelope) => {
                    self.transaction_refused = false;
                    self.replies.push_back(Reply::start_data());
                    let trace = self.trace_headers(&envelope, now);
                    self.events.push_back(Event::Begin { envelope, trace });
                    self.phase = Phase::Data(Message::new());
                }
            },
            Command::Rset => {
                self.envelope = None;
                self.transaction_refused = false;
                self.replies.push_back(Reply::ok());
            }
            Command::Noop => self.replies.push_back(Reply::ok()),
            Command::Vrfy(_) => self.replies.push_back(Reply::cannot_verify()),
            Command::Help => self.replies.push_back(Reply::help()),
            Command::Quit => {
                let reply = Reply::bye(hostname);
                self.replies.push_back(reply);
                self.close();
            }
        }
    }

    fn on_text_line(&mut self, line: Line<'_>) {
        let max_size = self.config.max_size;
        let text_buffer = self.config.text_buffer;
        let Phase::Data(message) = &mut self.phase else {
            return;
        };
        if message.after_crlf && line.len == 3 && line.head == b".\r\n" {
            return self.end_of_data();
        }
        message.after_crlf = line.crlf;
        if message.fault.is_some() {
            // Refused already: only the end is looked for.
            return;
        }
        // RFC 5321 4.5.3.1.6: the limit does not count a stuffed dot.
        let stuffed = line.head.first() == Some(&b'.');
        let limit = TEXT_LINE_LIMIT + usize::from(stuffed);
        let Some(text) = line.text().filter(|_| line.len <= limit) else {
            let fault = MessageError::LineTooLong {
                limit: TEXT_LINE_LIMIT,
            };
            return message.refuse(fault, &mut self.events);
        };
        if !line.crlf || text.contains(&b'\r') {
            return message.refuse(MessageError::BareLineEnding, &mut self.events);
        }
        // Dot-unstuffing (RFC 5321 4.5.2): a leading "." was doubled.
        let unstuffed = if stuffed { &line.head[1..] } else { line.head };
        message.size += unstuffed.len();
        if message.size > max_size {
            let fault = MessageError::TooBig { limit: max_size };
            return message.refuse(fault, &mut self.events);
        }
        if !message.text.is_empty() && message.text.len() + unstuffed.len() > text_buffer {
            // Hand the text over before it passes the buffer; input waits
            // until the driver polls it.
            let piece = std::mem::take(&mut message.text);
            self.events.push_back(Event::Append(piece));
        }
        message.text.extend_from_slice(unstuffed);
    }

    fn end_of_data(&mut self) {
        let Phase::Data(message) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        match message.fault {
            Some(Fault::Message(e)) => self.refuse(e),
            Some(Fault::Store(e)) => self.refuse(e),
            None => {
                if !message.text.is_empty() {
                    self.events.push_back(Event::Append(message.text));
                }
                self.events.push_back(Event::Finish);
                self.phase = Phase::Delivering;
            }
        }
    }

    /// `Return-Path` and `Received` (RFC 5321 4.4), each one line well
    /// under 998 octets: every part is bounded (a path by 256 octets, the
    /// EHLO name and the host name by 255).
    fn trace_headers(&self, envelope: &Envelope, now: SystemTime) -> Vec<u8> {
        let (name, protocol) = match &self.hello {
            Some(h) => (h.name.as_str(), if h.extended { "ESMTP" } else { "SMTP" }),
            None => ("unknown", "SMTP"),
        };
        let peer = match self.peer {
            Some(IpAddr::V4(ip)) => format!(" ([{ip}])"),
            Some(IpAddr::V6(ip)) => format!(" ([IPv6:{ip}])"),
            None => String::new(),
        };
        format!(
            "Return-Path: {}\r\nReceived: from {name}{peer} by {} with {protocol}; {}\r\n",
            envelope.reverse_path,
            self.config.hostname,
            rfc5322_date(now),
        )
        .into_bytes()
    }

    /// Answer with `error`'s reply; close after too many client faults.
    fn refuse<E: Refusal>(&mut self, error: E) {
        self.answer(&error);
        if error.is_client_fault() {
            self.errors += 1;
            if self.errors >= MAX_ERRORS {
                let bye = SessionError::TooManyErrors {
                    hostname: self.config.hostname.clone(),
                };
                debug!("closing: {bye}");
                self.replies.push_back(bye.reply());
                self.close();
            }
        }
    }

    /// Refuse a MAIL or RCPT: the 503s that follow from it in this
    /// transaction are not counted as errors.
    fn refuse_transaction<E: Refusal>(&mut self, error: E) {
        self.transaction_refused = true;
        self.refuse(error);
    }

    /// A command out of order: counted as an error, unless it follows
    /// from a refused MAIL or RCPT of the same transaction (a pipelining
    /// client sent it before it saw that refusal).
    fn refuse_sequence(&mut self, error: SequenceError) {
        if self.transaction_refused {
            self.answer(&error);
        } else {
            self.refuse(error);
        }
    }

    fn answer<E: Refusal>(&mut self, error: &E) {
        let reply = error.reply();
        debug!(code = reply.code(), "refused: {error}");
        self.replies.push_back(reply);
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.envelope = None;
        self.partial = PartialLine::default();
        self.events.push_back(Event::Close);
    }
}

/// Why a command line is no command.
enum BadLine {
    Line(LineError),
    Command(CommandError),
}

/// The command on a command line.
fn read_command(line: Line<'_>) -> Result<Command, BadLine> {
    if line.len > COMMAND_LINE_LIMIT {
        return Err(BadLine::Line(LineError::TooLong {
            limit: COMMAND_LINE_LIMIT,
        }));
    }
    match line.text() {
        Some(text) if line.crlf && !text.contains(&b'\r') => {
            command::parse(text).map_err(BadLine::Command)
        }
        _ => Err(BadLine::Line(LineError::BareLineEnding)),
    }
}

/// The last second [`httpdate`] can format: 9999-12-31 23:59:59 UTC.
const LAST_DATE: Duration = Duration::from_secs(253_402_300_799);

/// `now` as an RFC 5322 date-time in UTC with a numeric zone, as in
/// `Tue, 14 Nov 2023 22:13:20 +0000`. (The HTTP date's `GMT` is obsolete
/// syntax in RFC 5322 4.3.) A clock before 1970 or after 9999 is clamped.
fn rfc5322_date(now: SystemTime) -> String {
    let now = now.clamp(UNIX_EPOCH, UNIX_EPOCH + LAST_DATE);
    let http = httpdate::fmt_http_date(now);
    match http.strip_suffix(" GMT") {
        Some(date) => format!("{date} +0000"),
        None => http,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::StoreError;
    use proptest::prelude::*;
    use std::net::Ipv6Addr;
    use std::time::{Duration, UNIX_EPOCH};

    const MAX_SIZE: usize = 2000;
    /// Small, so that messages of the tests go over in several pieces.
    const TEXT_BUFFER: usize = 300;

    fn config() -> Arc<Config> {
        Arc::new(Config {
            hostname: "mx.test".into(),
            max_size: MAX_SIZE,
            max_recipients: 100,
            text_buffer: TEXT_BUFFER,
        })
    }

    /// 2023-11-14 22:13:20 UTC.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    /// A message as the driver stored it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Stored {
        envelope: Envelope,
        trace: Vec<u8>,
        content: Vec<u8>,
    }

    /// Drives a session as the protocol adapter does, storing in memory,
    /// and checks the order of the events.
    struct Driver {
        session: Session,
        replies: Vec<Reply>,
        /// The message being written (between Begin and Finish or Abort).
        incoming: Option<Stored>,
        delivered: Vec<Stored>,
        /// Messages aborted after Begin.
        aborted: usize,
        /// The sizes of the Append pieces.
        pieces: Vec<usize>,
        /// The result the next Finish gets (`None`: stored).
        store_fails: Option<StoreError>,
        /// Creating the file at Begin fails with this.
        begin_fails: Option<StoreError>,
        /// Append fails once this much text of a message is written.
        append_fails_after: Option<(usize, StoreError)>,
        /// The most octets the session held, seen after each input.
        most_buffered: usize,
        closed: bool,
    }

    impl Driver {
        fn new() -> Driver {
            Driver::with(config(), Some(IpAddr::from([192, 0, 2, 7])))
        }

        fn with(config: Arc<Config>, peer: Option<IpAddr>) -> Driver {
            let mut d = Driver {
                session: Session::new(config, peer),
                replies: Vec::new(),
                incoming: None,
                delivered: Vec::new(),
                aborted: 0,
                pieces: Vec::new(),
                store_fails: None,
                begin_fails: None,
                append_fails_after: None,
                most_buffered: 0,
                closed: false,
            };
            d.drain();
            d
        }

        /// A driver past the greeting and EHLO.
        fn greeted() -> Driver {
            let mut d = Driver::new();
            d.feed(b"EHLO client.test\r\n");
            assert_eq!(d.codes(), [220, 250]);
            d
        }

        fn feed(&mut self, mut bytes: &[u8]) {
            loop {
                let used = self.session.handle_input(bytes, now());
                assert!(used <= bytes.len());
                bytes = &bytes[used..];
                let waiting = self.session.is_waiting();
                self.most_buffered = self.most_buffered.max(self.session.buffered());
                self.drain();
                if bytes.is_empty() {
                    return;
                }
                assert!(used > 0 || waiting, "input refused without a reason");
            }
        }

        fn drain(&mut self) {
            loop {
                while let Some(r) = self.session.poll_reply() {
                    self.replies.push(r);
                }
                let Some(event) = self.session.poll_event() else {
                    return;
                };
                match event {
                    Event::Begin { envelope, trace } => {
                        assert!(self.incoming.is_none(), "Begin inside a message");
                        match self.begin_fails {
                            None => {
                                self.incoming = Some(Stored {
                                    envelope,
                                    trace,
                                    content: Vec::new(),
                                })
                            }
                            Some(e) => self.session.store_failed(e),
                        }
                    }
                    Event::Append(piece) => {
                        let m = self.incoming.as_mut().expect("Append after Begin");
                        assert!(!piece.is_empty(), "no empty pieces");
                        self.pieces.push(piece.len());
                        m.content.extend_from_slice(&piece);
                        if let Some((after, e)) = self.append_fails_after {
                            if m.content.len() > after {
                                self.incoming = None;
                                self.session.store_failed(e);
                            }
                        }
                    }
                    Event::Finish => {
                        let m = self.incoming.take().expect("Finish after Begin");
                        match self.store_fails {
                            None => {
                                let id = format!("id{}", self.delivered.len());
                                self.delivered.push(m);
                                self.session.delivered(Ok(&id));
                            }
                            Some(e) => self.session.delivered(Err(e)),
                        }
                    }
                    Event::Abort => {
                        self.incoming.take().expect("Abort after Begin");
                        self.aborted += 1;
                    }
                    Event::Close => self.closed = true,
                }
            }
        }

        /// The codes of the replies since the last call.
        fn codes(&mut self) -> Vec<u16> {
            self.replies.drain(..).map(|r| r.code()).collect()
        }

        /// The replies since the last call, as on the wire.
        fn wire(&mut self) -> String {
            let mut out = Vec::new();
            for r in self.replies.drain(..) {
                r.write_to(&mut out);
            }
            String::from_utf8(out).unwrap()
        }
    }

    const ENVELOPE: &[u8] = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n";

    /// Send one message with `text` (given as on the wire, ending with
    /// the final dot or not) and return the codes of MAIL, RCPT, DATA and
    /// the end of data.
    fn send(d: &mut Driver, text: &[u8]) -> Vec<u16> {
        d.feed(ENVELOPE);
        d.feed(text);
        d.codes()
    }

    #[test]
    fn greeting_and_ehlo_advertise_the_extensions() {
        let mut d = Driver::new();
        assert_eq!(d.wire(), "220 mx.test ESMTP gaidaros\r\n");
        d.feed(b"EHLO client.test\r\n");
        assert_eq!(
            d.wire(),
            "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 2000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
        );
    }

    #[test]
    fn a_transaction_delivers_the_text_after_trace_headers() {
        let mut d = Driver::greeted();
        d.feed(b"MAIL FROM:<a@example.org> BODY=8BITMIME\r\n");
        d.feed(b"RCPT TO:<b@example.net>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n");
        d.feed(b"Subject: hi\r\n\r\nHello\r\n.\r\nQUIT\r\n");
        assert_eq!(
            d.wire(),
            "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n\
             354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 OK: queued as id0\r\n\
             221 2.0.0 mx.test closing connection\r\n"
        );
        assert!(d.closed);
        let m = &d.delivered[0];
        assert_eq!(
            String::from_utf8_lossy(&m.trace),
            "Return-Path: <a@example.org>\r\n\
             Received: from client.test ([192.0.2.7]) by mx.test with ESMTP; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
        assert_eq!(m.content, b"Subject: hi\r\n\r\nHello\r\n");
        assert_eq!(m.envelope.recipients.len(), 2);
        assert_eq!(m.envelope.body, Some(Body::EightBitMime));
    }

    #[test]
    fn pipelined_commands_in_one_input_are_answered_in_order() {
        let mut d = Driver::new();
        d.feed(
            b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<bad>\r\nDATA\r\none\r\n.\r\n\
              MAIL FROM:<>\r\nRCPT TO:<e@f>\r\nDATA\r\ntwo\r\n.\r\nNOOP\r\nQUIT\r\nNOOP\r\n",
        );
        assert_eq!(
            d.codes(),
            [220, 250, 250, 250, 501, 354, 250, 250, 250, 354, 250, 250, 221]
        );
        assert_eq!(d.delivered.len(), 2);
        assert_eq!(d.delivered[0].content, b"one\r\n");
        assert_eq!(d.delivered[1].content, b"two\r\n");
        assert!(d.delivered[1].trace.starts_with(b"Return-Path: <>\r\n"));
    }

    #[test]
    fn input_waits_for_the_driver_at_each_message_event() {
        let mut s = Session::new(config(), None);
        let long = format!("{}\r\n", "l".repeat(198)); // 200 octets
        let input = format!(
            "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n{long}{long}x\r\n.\r\nNOOP\r\n"
        );
        let mut rest = input.as_bytes();
        let mut take = |s: &mut Session, want_left: &str| {
            let used = s.handle_input(rest, now());
            rest = &rest[used..];
            assert!(rest.starts_with(want_left.as_bytes()), "{want_left:?}");
            assert!(s.is_waiting());
            assert_eq!(s.handle_input(rest, now()), 0, "nothing until polled");
        };
        take(&mut s, &long);
        assert!(matches!(s.poll_event(), Some(Event::Begin { .. })));
        // The second line would pass the 300-octet buffer: the first goes.
        take(&mut s, "x\r\n");
        assert_eq!(
            s.poll_event(),
            Some(Event::Append(long.clone().into_bytes()))
        );
        take(&mut s, "NOOP\r\n");
        assert_eq!(
            s.poll_event(),
            Some(Event::Append(format!("{long}x\r\n").into_bytes()))
        );
        assert_eq!(s.poll_event(), Some(Event::Finish));
        assert_eq!(s.poll_event(), None);
        assert!(s.is_waiting(), "waits for delivered()");
        assert_eq!(s.handle_input(rest, now()), 0, "no input until delivered");
        s.delivered(Ok("x1"));
        assert_eq!(s.handle_input(rest, now()), 6);
        let codes: Vec<u16> = std::iter::from_fn(|| s.poll_reply())
            .map(|r| r.code())
            .collect();
        assert_eq!(codes, [220, 250, 250, 250, 354, 250, 250]);
    }

    #[test]
    fn commands_out_of_sequence_get_503() {
        let mut d = Driver::new();
        d.feed(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
        assert_eq!(d.codes(), [220, 503, 503, 503]);
        d.feed(b"HELO c\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\nDATA\r\n");
        assert_eq!(d.codes(), [250, 250, 503, 503]);
        d.feed(b"RSET\r\nRCPT TO:<c@d>\r\n");
        assert_eq!(d.codes(), [250, 503], "RSET ends the transaction");
        d.feed(b"MAIL FROM:<a@b>\r\nEHLO again\r\nRCPT TO:<c@d>\r\n");
        assert_eq!(d.codes(), [250, 250, 503], "EHLO ends the transaction");
        assert!(d.replies.is_empty());
        let mut d = Driver::greeted();
        d.feed(b"RCPT TO:<c@d>\r\n");
        assert_eq!(d.replies[0].status(), Some("5.5.1"));
    }

    #[test]
    fn simple_commands() {
        let mut d = Driver::new();
        d.feed(b"NOOP\r\nVRFY root\r\nHELP\r\nFOO\r\nEXPN all\r\nRSET\r\n");
        assert_eq!(d.codes(), [220, 250, 252, 214, 500, 502, 250]);
        d.feed(b"BAR\r\n");
        assert_eq!(d.replies[0].status(), Some("5.5.2"));
    }

    #[test]
    fn helo_allows_no_mail_parameters_and_records_smtp() {
        let mut d = Driver::new();
        d.feed(b"HELO old.client\r\nMAIL FROM:<a@b> SIZE=10\r\nMAIL FROM:<a@b>\r\n");
        assert_eq!(d.codes(), [220, 250, 555, 250]);
        d.feed(b"RCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n");
        assert_eq!(d.codes(), [250, 354, 250]);
        let trace = String::from_utf8_lossy(&d.delivered[0].trace).into_owned();
        assert!(
            trace.contains("from old.client ([192.0.2.7]) by mx.test with SMTP;"),
            "{trace}"
        );
    }

    #[test]
    fn ipv6_peer_is_an_address_literal() {
        let mut d = Driver::with(config(), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        d.feed(b"EHLO c\r\n");
        send(&mut d, b"x\r\n.\r\n");
        let trace = String::from_utf8_lossy(&d.delivered[0].trace).into_owned();
        assert!(trace.contains("from c ([IPv6:::1]) by"), "{trace}");
    }

    #[test]
    fn declared_size_over_the_limit_gets_552_at_once() {
        let mut d = Driver::greeted();
        d.feed(format!("MAIL FROM:<a@b> SIZE={}\r\n", MAX_SIZE + 1).as_bytes());
        assert_eq!(d.codes(), [552]);
        d.feed(b"MAIL FROM:<a@b> SIZE=99999999999999999999999999\r\n");
        assert_eq!(d.replies[0].status(), Some("5.3.4"));
        assert_eq!(d.codes(), [552]);
        d.feed(format!("MAIL FROM:<a@b> SIZE={MAX_SIZE}\r\n").as_bytes());
        assert_eq!(
            d.codes(),
            [250],
            "no transaction was started by the refusals"
        );
    }

    #[test]
    fn message_of_max_size_is_taken_and_one_octet_more_gets_552_after_its_end() {
        let line = format!("{}\r\n", "x".repeat(98)); // 100 octets
        let exactly = line.repeat(MAX_SIZE / 100);
        let mut d = Driver::greeted();
        assert_eq!(
            send(&mut d, format!("{exactly}.\r\n").as_bytes()),
            [250, 250, 354, 250]
        );
        assert_eq!(d.delivered[0].content.len(), MAX_SIZE);
        assert!(d.pieces.len() >= MAX_SIZE / TEXT_BUFFER, "{:?}", d.pieces);
        assert!(d.pieces.iter().all(|&n| n <= TEXT_BUFFER), "{:?}", d.pieces);
        // One octet more, in a line that starts with a stuffed dot (which
        // does not count).
        let over = format!("..y\r\n{}z\r\n", &exactly[..MAX_SIZE - 6]);
        assert_eq!(over.len() - 1, MAX_SIZE + 1);
        assert_eq!(
            send(&mut d, format!("{over}.\r\n").as_bytes()),
            [250, 250, 354, 552]
        );
        assert_eq!(d.delivered.len(), 1);
        assert_eq!(d.aborted, 1, "what was written of it is removed");
        // The session goes on.
        assert_eq!(send(&mut d, b"small\r\n.\r\n"), [250, 250, 354, 250]);
    }

    #[test]
    fn oversized_message_is_aborted_at_once_and_refused_at_its_end() {
        let mut d = Driver::greeted();
        d.feed(ENVELOPE);
        let chunk = format!("{}\r\n", "y".repeat(500)).repeat(20);
        for _ in 0..50 {
            d.feed(chunk.as_bytes());
            assert!(d.session.buffered() <= config().buffer_bound());
        }
        assert_eq!(d.aborted, 1, "aborted when it passed max_size");
        assert!(d.pieces.iter().sum::<usize>() <= MAX_SIZE);
        assert_eq!(d.codes(), [250, 250, 354], "refused only at its end");
        d.feed(b".\r\n");
        assert_eq!(d.codes(), [552]);
        assert!(d.delivered.is_empty());
    }

    #[test]
    fn a_large_message_streams_through_in_bounded_memory() {
        let config = Arc::new(Config {
            hostname: "mx.test".into(),
            max_size: 64 << 20,
            max_recipients: 100,
            text_buffer: super::TEXT_BUFFER,
        });
        let mut d = Driver::with(config.clone(), None);
        d.feed(b"EHLO c\r\n");
        d.feed(ENVELOPE);
        let line = format!("{}\r\n", "m".repeat(78));
        let chunk = line.repeat(1000); // 80 000 octets, not a multiple of 64 KiB
        for _ in 0..200 {
            d.feed(chunk.as_bytes());
        }
        d.feed(b".\r\n");
        assert_eq!(d.codes(), [220, 250, 250, 250, 354, 250]);
        assert_eq!(d.delivered[0].content.len(), 16_000_000);
        assert!(d.pieces.iter().all(|&n| n <= super::TEXT_BUFFER));
        assert!(
            d.most_buffered <= config.buffer_bound(),
            "{} held, bound {}",
            d.most_buffered,
            config.buffer_bound()
        );
        assert!(config.buffer_bound() < 70_000, "about 64 KiB");
    }

    #[test]
    fn command_line_of_512_octets_is_taken_and_513_gets_500() {
        let mut d = Driver::greeted();
        let fits = format!("NOOP {}\r\n", "a".repeat(512 - 7));
        assert_eq!(fits.len(), 512);
        d.feed(fits.as_bytes());
        assert_eq!(d.codes(), [250]);
        let over = format!("NOOP {}\r\n", "a".repeat(512 - 6));
        d.feed(over.as_bytes());
        assert_eq!(d.replies[0].status(), Some("5.5.2"));
        assert_eq!(d.codes(), [500]);
        d.feed(b"NOOP\r\n");
        assert_eq!(d.codes(), [250], "the rest of the long line was dropped");
    }

    #[test]
    fn a_huge_command_line_gets_one_500_and_is_not_buffered() {
        let mut d = Driver::greeted();
        for _ in 0..100 {
            d.feed(&[b'x'; 1000]);
            assert!(d.session.buffered() <= COMMAND_LINE_LIMIT);
        }
        d.feed(b"\r\nNOOP\r\n");
        assert_eq!(d.codes(), [500, 250]);
    }

    #[test]
    fn text_line_of_1000_octets_is_taken_and_1001_gets_554_after_the_end() {
        let mut d = Driver::greeted();
        let fits = format!("{}\r\n", "b".repeat(998));
        assert_eq!(
            send(&mut d, format!("{fits}.\r\n").as_bytes()),
            [250, 250, 354, 250]
        );
        assert_eq!(d.delivered[0].content, fits.as_bytes());
        let over = format!("{}\r\n", "b".repeat(999));
        d.feed(ENVELOPE);
        d.feed(format!("{over}more\r\n.\r\n").as_bytes());
        let last = d.replies.last().unwrap();
        assert_eq!((last.code(), last.status()), (554, Some("5.6.0")));
        assert!(last.lines()[0].contains("1000"), "{last}");
        assert_eq!(d.codes(), [250, 250, 354, 554]);
        assert_eq!(d.delivered.len(), 1);
        // An overlong line made of a long line split over many inputs.
        d.feed(ENVELOPE);
        for _ in 0..10 {
            d.feed(&[b'c'; 300]);
        }
        d.feed(b"\r\n.\r\nNOOP\r\n");
        assert_eq!(d.codes(), [250, 250, 354, 554, 250]);
    }

    #[test]
    fn a_stuffed_dot_does_not_count_towards_the_line_limit() {
        // RFC 5321 4.5.3.1.6: 998 octets of text starting with "." arrive
        // as 1001 octets with the stuffed dot and CRLF.
        let mut d = Driver::greeted();
        let text = format!(".{}\r\n", "d".repeat(997));
        assert_eq!(text.len(), 1000);
        let wire = format!(".{text}.\r\n");
        assert_eq!(send(&mut d, wire.as_bytes()), [250, 250, 354, 250]);
        assert_eq!(d.delivered[0].content, text.as_bytes());
        // Split anywhere, the same.
        d.feed(ENVELOPE);
        for piece in wire.as_bytes().chunks(7) {
            d.feed(piece);
        }
        assert_eq!(d.codes(), [250, 250, 354, 250]);
        assert_eq!(d.delivered[1].content, text.as_bytes());
        // One more octet is one too many, dot or not.
        let over = format!("..{}\r\n.\r\n", "d".repeat(998));
        assert_eq!(send(&mut d, over.as_bytes()), [250, 250, 354, 554]);
        assert_eq!(d.delivered.len(), 2);
    }

    const SMUGGLED: &[u8] =
        b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n.\r\n";

    #[test]
    fn smuggling_variants_never_end_data_and_the_message_is_refused_with_550() {
        for variant in [
            &b"\n.\n"[..],
            b"\r\n.\n",
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\r\r\n",
        ] {
            let mut d = Driver::greeted();
            let mut text = b"legit\r\nhello".to_vec();
            text.extend_from_slice(variant);
            text.extend_from_slice(SMUGGLED);
            let codes = send(&mut d, &text);
            let shown = String::from_utf8_lossy(variant).escape_debug().to_string();
            assert_eq!(codes, [250, 250, 354, 550], "{shown}");
            assert!(d.delivered.is_empty(), "{shown}: nothing delivered");
            d.feed(b"NOOP\r\n");
            assert_eq!(d.codes(), [250], "{shown}: back to commands");
        }
    }

    #[test]
    fn bare_line_endings_anywhere_in_the_text_refuse_it() {
        for text in [
            &b"a\nb\r\n.\r\n"[..],
            b"a\rb\r\n.\r\n",
            b"a\r\r\n.\r\n",
            b"\n.\r\n.\r\n",
        ] {
            let mut d = Driver::greeted();
            let shown = String::from_utf8_lossy(text).escape_debug().to_string();
            assert_eq!(send(&mut d, text), [250, 250, 354, 550], "{shown}");
            assert!(d.replies.is_empty());
        }
        let mut d = Driver::greeted();
        d.feed(ENVELOPE);
        assert_eq!(d.codes(), [250, 250, 354]);
        d.feed(b"x\n.\r\n");
        assert!(d.replies.is_empty(), "a dot after a bare LF is no end");
        d.feed(b".\r\n");
        assert_eq!(d.codes(), [550]);
    }

    #[test]
    fn dot_unstuffing_and_lines_that_are_not_the_end() {
        let mut d = Driver::greeted();
        send(&mut d, b"..leading\r\n...\r\n. \r\n.x\r\n.\r\n");
        assert_eq!(d.delivered[0].content, b".leading\r\n..\r\n \r\nx\r\n");
    }

    #[test]
    fn empty_message_ends_at_the_first_line() {
        let mut d = Driver::greeted();
        assert_eq!(send(&mut d, b".\r\n"), [250, 250, 354, 250]);
        assert_eq!(d.delivered[0].content, b"");
    }

    #[test]
    fn end_of_data_split_over_inputs_is_found() {
        let mut d = Driver::greeted();
        d.feed(ENVELOPE);
        for piece in [&b"body\r"[..], b"\n", b".", b"\r", b"\n"] {
            d.feed(piece);
        }
        assert_eq!(d.codes(), [250, 250, 354, 250]);
        assert_eq!(d.delivered[0].content, b"body\r\n");
    }

    #[test]
    fn command_lines_must_end_in_crlf() {
        let mut d = Driver::greeted();
        d.feed(b"NOOP\nNOOP\r\rNOOP\r\n");
        assert_eq!(d.codes(), [500, 500]);
        d.feed(b"NOOP\r\n");
        assert_eq!(d.codes(), [250]);
        d.feed(b"MAIL FROM:<a@b>\n");
        assert_eq!(d.replies[0].status(), Some("5.5.2"));
        assert!(d.replies[0].lines()[0].contains("CRLF"));
    }

    #[test]
    fn too_many_errors_get_421_and_end_the_session() {
        let mut d = Driver::greeted();
        for _ in 0..MAX_ERRORS - 1 {
            d.feed(b"BOGUS\r\n");
        }
        assert_eq!(d.codes(), vec![500; MAX_ERRORS as usize - 1]);
        assert!(!d.closed);
        d.feed(b"RCPT TO:<a@b>\r\nNOOP\r\n");
        assert_eq!(d.codes(), [503, 421]);
        assert_eq!(
            d.session.handle_input(b"NOOP\r\n", now()),
            6,
            "input after 421 is dropped"
        );
        d.drain();
        assert!(d.codes().is_empty());
        assert!(d.closed && d.session.is_closed());
    }

    #[test]
    fn sequence_errors_after_a_refused_mail_do_not_count() {
        // A pipelining client sends MAIL, its RCPTs and DATA at once; the
        // MAIL is refused, so every RCPT and the DATA get 503.
        let mut d = Driver::greeted();
        let mut batch = format!("MAIL FROM:<a@b> SIZE={}\r\n", MAX_SIZE + 1);
        for i in 0..25 {
            batch.push_str(&format!("RCPT TO:<r{i}@example.net>\r\n"));
        }
        batch.push_str("DATA\r\n");
        d.feed(batch.as_bytes());
        let codes = d.codes();
        assert_eq!(codes[0], 552);
        assert_eq!(codes[1..], [503; 26], "no 421");
        assert!(!d.closed);
        // The same after a MAIL refused for its syntax, and after RCPTs
        // that were all refused.
        let mut batch = String::from("MAIL FROM:<bad\r\n");
        batch.push_str(&"RCPT TO:<r@example.net>\r\n".repeat(25));
        batch.push_str("DATA\r\nMAIL FROM:<a@b>\r\n");
        batch.push_str(&"RCPT TO:<bad>\r\n".repeat(5));
        batch.push_str("DATA\r\nRSET\r\n");
        d.feed(batch.as_bytes());
        let codes = d.codes();
        assert_eq!(codes[0], 501);
        assert_eq!(codes[1..27], [503; 26]);
        assert_eq!(codes[27..], [250, 501, 501, 501, 501, 501, 503, 250]);
        assert!(!d.closed, "6 counted errors (the 501s) only");
        // DATA ended that transaction: out of order again, they count.
        for _ in 0..MAX_ERRORS - 7 {
            d.feed(b"RCPT TO:<r@example.net>\r\n");
        }
        assert!(!d.closed);
        d.feed(b"DATA\r\n");
        assert_eq!(d.codes().last(), Some(&421));
        assert!(d.closed);
    }

    #[test]
    fn recipients_beyond_the_limit_get_452_and_the_message_goes_to_the_rest() {
        let mut d = Driver::greeted();
        d.feed(b"MAIL FROM:<a@b>\r\n");
        for i in 0..150 {
            d.feed(format!("RCPT TO:<r{i}@example.net>\r\n").as_bytes());
        }
        d.feed(b"DATA\r\nx\r\n.\r\n");
        let codes = d.codes();
        assert_eq!(codes[..101], [250; 101]);
        assert_eq!(codes[101..151], [452; 50]);
        assert_eq!(codes[151..], [354, 250]);
        assert!(!d.closed, "452 does not count as a client error");
        assert_eq!(d.delivered[0].envelope.recipients.len(), 100);
    }

    #[test]
    fn failed_store_gets_451_or_452_and_the_session_goes_on() {
        let mut d = Driver::greeted();
        d.store_fails = Some(StoreError::Failed);
        d.feed(ENVELOPE);
        d.feed(b"x\r\n.\r\n");
        let last = d.replies.last().unwrap();
        assert_eq!((last.code(), last.status()), (451, Some("4.3.0")));
        d.replies.clear();
        d.store_fails = Some(StoreError::Full);
        d.feed(ENVELOPE);
        d.feed(b"x\r\n.\r\n");
        let last = d.replies.last().unwrap();
        assert_eq!((last.code(), last.status()), (452, Some("4.3.1")));
        d.replies.clear();
        d.store_fails = None;
        assert_eq!(send(&mut d, b"y\r\n.\r\n"), [250, 250, 354, 250]);
        assert_eq!(d.delivered.len(), 1);
        assert_eq!(d.delivered[0].content, b"y\r\n");
    }

    #[test]
    fn a_write_failure_mid_message_drops_the_rest_and_gets_452_at_its_end() {
        let mut d = Driver::greeted();
        d.append_fails_after = Some((500, StoreError::Full));
        d.feed(ENVELOPE);
        let line = format!("{}\r\n", "w".repeat(98));
        for _ in 0..15 {
            d.feed(line.as_bytes());
        }
        // The disk filled up after the second piece; the Driver panics on
        // any piece after the failure.
        assert!(d.incoming.is_none());
        assert_eq!(d.pieces.iter().sum::<usize>(), 600);
        assert_eq!(d.codes(), [250, 250, 354], "nothing said before the end");
        d.feed(b".\r\nNOOP\r\n");
        assert_eq!(d.codes(), [452, 250]);
        assert!(d.delivered.is_empty());
        assert!(!d.closed);
        // A failure on the last piece, queued with Finish.
        d.append_fails_after = Some((0, StoreError::Failed));
        assert_eq!(send(&mut d, b"tiny\r\n.\r\n"), [250, 250, 354, 451]);
        d.append_fails_after = None;
        assert_eq!(send(&mut d, b"ok\r\n.\r\n"), [250, 250, 354, 250]);
        assert_eq!(d.delivered[0].content, b"ok\r\n");
    }

    #[test]
    fn a_file_that_cannot_be_created_gets_451_at_the_end_of_the_text() {
        let mut d = Driver::greeted();
        d.begin_fails = Some(StoreError::Failed);
        let text = format!("{}\r\n", "q".repeat(98)).repeat(10);
        assert_eq!(
            send(&mut d, format!("{text}.\r\n").as_bytes()),
            [250, 250, 354, 451]
        );
        assert!(d.pieces.is_empty(), "no text after a failed Begin");
        // Too big as well: the first fault (the store) is the answer.
        let big = format!("{}\r\n", "q".repeat(98)).repeat(30);
        assert_eq!(
            send(&mut d, format!("{big}.\r\n").as_bytes()),
            [250, 250, 354, 451]
        );
        d.begin_fails = None;
        assert_eq!(send(&mut d, b"z\r\n.\r\n"), [250, 250, 354, 250]);
    }

    #[test]
    fn received_date_has_a_numeric_zone() {
        let at = |secs: u64| rfc5322_date(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(1_795_324_281), "Sun, 22 Nov 2026 05:11:21 +0000");
        assert_eq!(at(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 +0000");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        // A clock outside what can be written is clamped, not a panic.
        let before = UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(rfc5322_date(before), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            at(u64::from(u32::MAX) * 100),
            "Fri, 31 Dec 9999 23:59:59 +0000"
        );
    }

    /// Bits of SMTP, good and bad, to build inputs from.
    fn token() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"EHLO c\r\n".to_vec()),
            Just(b"HELO c\r\n".to_vec()),
            Just(b"MAIL FROM:<a@b>\r\n".to_vec()),
            Just(b"MAIL FROM:<a@b> SIZE=5000\r\n".to_vec()),
            Just(b"RCPT TO:<c@d>\r\n".to_vec()),
            Just(b"DATA\r\n".to_vec()),
            Just(b"RSET\r\n".to_vec()),
            Just(b"NOOP\r\n".to_vec()),
            Just(b"QUIT\r\n".to_vec()),
            Just(b".\r\n".to_vec()),
            Just(b"..\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b".".to_vec()),
            Just(b"text".to_vec()),
            Just(vec![b'z'; 700]),
            prop::collection::vec(any::<u8>(), 0..20),
        ]
    }

    fn input() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(token(), 0..60).prop_map(|t| t.concat())
    }

    /// Replies (on the wire), stored messages, aborts and the end.
    fn outcome(d: &mut Driver) -> (String, Vec<Stored>, usize, bool) {
        let wire = String::from_utf8_lossy(&{
            let mut out = Vec::new();
            for r in d.replies.drain(..) {
                r.write_to(&mut out);
            }
            out
        })
        .into_owned();
        (wire, d.delivered.clone(), d.aborted, d.closed)
    }

    proptest! {
        #[test]
        fn splitting_the_input_anywhere_changes_nothing(
            input in input(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut whole = Driver::new();
            whole.feed(&input);
            let mut pieces = Driver::new();
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            cuts.sort_unstable();
            let mut at = 0;
            for cut in cuts.into_iter().chain([input.len()]) {
                pieces.feed(&input[at..cut]);
                at = cut;
            }
            prop_assert_eq!(outcome(&mut whole), outcome(&mut pieces));
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_grow_the_buffer(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 0..10),
        ) {
            let mut d = Driver::greeted();
            d.feed(ENVELOPE);
            for chunk in chunks {
                d.feed(&chunk);
                prop_assert!(d.session.buffered() <= config().buffer_bound());
            }
        }

        #[test]
        fn any_message_streams_whole_in_bounded_memory(
            // At most 40 + 958 = 998 octets of text: a line of 1000 with its CRLF.
            lines in prop::collection::vec(("[ -~]{0,40}", 0..959usize), 0..80),
            cuts in prop::collection::vec(1..5000usize, 1..20),
        ) {
            let config = Arc::new(Config {
                hostname: "mx.test".into(),
                max_size: 1 << 20,
                max_recipients: 100,
                text_buffer: TEXT_BUFFER,
            });
            let mut d = Driver::with(config.clone(), None);
            d.feed(b"EHLO c\r\n");
            d.feed(ENVELOPE);
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for (start, pad) in &lines {
                let line = format!("{start}{}", "p".repeat(*pad));
                if line.starts_with('.') {
                    wire.push(b'.');
                }
                wire.extend_from_slice(line.as_bytes());
                wire.extend_from_slice(b"\r\n");
                want.extend_from_slice(line.as_bytes());
                want.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b".\r\n");
            let mut at = 0;
            for cut in cuts.iter().cycle() {
                if at == wire.len() {
                    break;
                }
                let end = (at + cut).min(wire.len());
                d.feed(&wire[at..end]);
                at = end;
            }
            prop_assert_eq!(d.codes(), [220, 250, 250, 250, 354, 250]);
            prop_assert_eq!(&d.delivered[0].content, &want);
            prop_assert!(d.pieces.iter().all(|&n| n <= TEXT_BUFFER.max(TEXT_LINE_LIMIT)));
            prop_assert!(d.most_buffered <= config.buffer_bound());
        }

        #[test]
        fn dot_stuffed_text_is_delivered_unchanged(
            lines in prop::collection::vec("[ -~]{0,120}", 0..30),
        ) {
            let mut d = Driver::greeted();
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for l in &lines {
                if l.starts_with('.') {
                    wire.push(b'.');
                }
                wire.extend_from_slice(l.as_bytes());
                wire.extend_from_slice(b"\r\n");
                want.extend_from_slice(l.as_bytes());
                want.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b".\r\n");
            prop_assume!(want.len() <= MAX_SIZE);
            prop_assert_eq!(send(&mut d, &wire), [250, 250, 354, 250]);
            prop_assert_eq!(&d.delivered[0].content, &want);
        }
    }
}
