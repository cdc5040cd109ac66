//! The SMTP server session as a state machine, without I/O.
//!
//! A [`Session`] owns no socket, no file and no clock. The driver calls, in
//! this order:
//!
//! 1. [`Session::handle_input`] with the bytes that arrived and the current
//!    time; it returns how many it consumed (all of them, unless a message
//!    waits to be stored, see 3.);
//! 2. [`Session::poll_reply`] until `None`, and writes the replies;
//! 3. [`Session::poll_event`] until `None`: an [`Event::Deliver`] hands over
//!    a complete message; the driver stores it and reports with
//!    [`Session::delivered`], which produces the `250` or `452` reply (back
//!    to 2.). Until then the session takes no input: pipelined commands
//!    after the message wait, so replies keep their order. An
//!    [`Event::Close`] asks to close once the replies are written;
//! 4. [`Session::handle_input`] again with what it did not consume.
//!
//! Memory is bounded per session: a partial line is kept up to the line
//! limit (512 octets for commands, 1000 for message text) and the rest of
//! a longer line is counted and dropped; a message is kept up to
//! `max_size` octets and, once over, dropped while the rest of it is read
//! to its end.
//!
//! Lines end in CRLF, and only `CRLF "." CRLF` ends the message text. A
//! bare LF or bare CR anywhere in the text makes the message refused once
//! its real end comes (RFC 5321 2.3.8), so `<LF>.<LF>`, `<CR><LF>.<LF>`,
//! `<LF>.<CR><LF>` or `<CR>.<CR><LF>` can neither end the data early nor
//! slip a second, smuggled message in.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::debug;

use crate::command::{self, Body, Command, ForwardPath, ReversePath};
use crate::reply::{
    LineError, MessageError, Refusal, Reply, SequenceError, SessionError, StoreError,
    TransactionError,
};

/// The longest command line, CRLF included (RFC 5321 4.5.3.1.4).
pub const COMMAND_LINE_LIMIT: usize = 512;
/// The longest line of message text, CRLF included (RFC 5321 4.5.3.1.6).
pub const TEXT_LINE_LIMIT: usize = 1000;
/// Protocol errors (unknown or malformed commands, commands out of order)
/// a session may make before it is closed with 421: plenty for a confused
/// but honest client, few enough to make a scanner's probing short.
/// Postfix's `smtpd_hard_error_limit` is also 20.
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

/// A complete message, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its envelope.
    pub envelope: Envelope,
    /// The trace headers this server adds (`Return-Path`, `Received`).
    pub trace: Vec<u8>,
    /// The message text as the client sent it, after dot-unstuffing, lines
    /// ended by CRLF, without the final `.` line.
    pub content: Vec<u8>,
}

impl Delivery {
    /// What to store, in order: the trace headers, then the content.
    pub fn parts(&self) -> [&[u8]; 2] {
        [&self.trace, &self.content]
    }

    /// The stored size: trace headers plus content.
    pub fn len(&self) -> usize {
        self.trace.len() + self.content.len()
    }

    /// Nothing to store? (Never: there are always trace headers.)
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the session asks of its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Store this message, then call [`Session::delivered`].
    Deliver(Delivery),
    /// Close the connection once the replies so far are written.
    Close,
}

/// How the client introduced itself.
#[derive(Debug, Clone)]
struct Hello {
    name: String,
    extended: bool,
}

/// The message text being received.
#[derive(Debug)]
struct Message {
    envelope: Envelope,
    /// The text so far, unstuffed; dropped (empty) once `fault` is set.
    content: Vec<u8>,
    /// Did the previous line end in CRLF? True at the start: the CRLF that
    /// ended the DATA command counts.
    after_crlf: bool,
    /// The first reason to refuse the message, reported at its end.
    fault: Option<MessageError>,
}

impl Message {
    fn refuse(&mut self, fault: MessageError) {
        if self.fault.is_none() {
            self.fault = Some(fault);
        }
        self.content = Vec::new();
    }
}

#[derive(Debug)]
enum Phase {
    /// Reading command lines.
    Command,
    /// Reading message text, after a 354.
    Data(Message),
    /// A message was handed over with [`Event::Deliver`]; no input is
    /// taken until [`Session::delivered`].
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
    phase: Phase,
    partial: PartialLine,
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
            phase: Phase::Command,
            partial: PartialLine::default(),
            errors: 0,
            replies: VecDeque::from([greeting]),
            events: VecDeque::new(),
        }
    }

    /// Take bytes from the client; `now` dates the Received header of a
    /// message that ends in them. Returns how many bytes were consumed:
    /// all, except while a message waits for [`Session::delivered`] (then
    /// the bytes after its end are left to be given again). After QUIT or
    /// 421 every byte is consumed and dropped.
    pub fn handle_input(&mut self, data: &[u8], now: SystemTime) -> usize {
        let mut used = 0;
        while used < data.len() {
            match self.phase {
                Phase::Delivering => return used,
                Phase::Closed => return data.len(),
                Phase::Command | Phase::Data(_) => {}
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

    /// The result of storing the message of the last [`Event::Deliver`]:
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

    /// Is a message waiting for [`Session::delivered`]?
    pub fn is_delivering(&self) -> bool {
        matches!(self.phase, Phase::Delivering)
    }

    /// Octets of input held (the start of an unfinished line), and of
    /// message text held: never more than the line limit plus `max_size`.
    pub fn buffered(&self) -> usize {
        let message = match &self.phase {
            Phase::Data(m) => m.content.len(),
            _ => 0,
        };
        self.partial.head.len() + message
    }

    fn line_limit(&self) -> usize {
        match self.phase {
            Phase::Data(_) => TEXT_LINE_LIMIT,
            _ => COMMAND_LINE_LIMIT,
        }
    }

    fn on_line(&mut self, line: Line<'_>, now: SystemTime) {
        if matches!(self.phase, Phase::Data(_)) {
            self.on_text_line(line, now);
        } else {
            self.on_command_line(line);
        }
    }

    fn on_command_line(&mut self, line: Line<'_>) {
        if line.len > COMMAND_LINE_LIMIT {
            return self.refuse(LineError::TooLong {
                limit: COMMAND_LINE_LIMIT,
            });
        }
        match line.text() {
            Some(text) if line.crlf && !text.contains(&b'\r') => match command::parse(text) {
                Ok(cmd) => self.on_command(cmd),
                Err(e) => self.refuse(e),
            },
            _ => self.refuse(LineError::BareLineEnding),
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let hostname = &self.config.hostname;
        match cmd {
            Command::Ehlo(name) => {
                // A new EHLO or HELO ends any transaction (RFC 5321 4.1.4).
                self.envelope = None;
                self.hello = Some(Hello {
                    name,
                    extended: true,
                });
                let reply = Reply::ehlo(hostname, self.config.max_size);
                self.replies.push_back(reply);
            }
            Command::Helo(name) => {
                self.envelope = None;
                self.hello = Some(Hello {
                    name,
                    extended: false,
                });
                let reply = Reply::helo(hostname);
                self.replies.push_back(reply);
            }
            Command::Mail { from, params } => {
                let Some(hello) = &self.hello else {
                    return self.refuse(SequenceError::NeedHello);
                };
                if self.envelope.is_some() {
                    return self.refuse(SequenceError::NestedMail);
                }
                if !hello.extended && !params.is_empty() {
                    return self.refuse(TransactionError::ParametersWithoutEhlo);
                }
                let limit = self.config.max_size;
                if params.size.is_some_and(|size| size > limit as u64) {
                    return self.refuse(TransactionError::SizeExceeded { limit });
                }
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
                    return self.refuse(SequenceError::NeedMail);
                };
                if envelope.recipients.len() >= limit {
                    return self.refuse(TransactionError::TooManyRecipients { limit });
                }
                envelope.recipients.push(to);
                self.replies.push_back(Reply::recipient_ok());
            }
            Command::Data => match self.envelope.take() {
                None => self.refuse(SequenceError::NeedMail),
                Some(envelope) if envelope.recipients.is_empty() => {
                    self.envelope = Some(envelope);
                    self.refuse(SequenceError::NeedRecipient);
                }
                Some(envelope) => {
                    self.replies.push_back(Reply::start_data());
                    self.phase = Phase::Data(Message {
                        envelope,
                        content: Vec::new(),
                        after_crlf: true,
                        fault: None,
                    });
                }
            },
            Command::Rset => {
                self.envelope = None;
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

    fn on_text_line(&mut self, line: Line<'_>, now: SystemTime) {
        let max_size = self.config.max_size;
        let Phase::Data(message) = &mut self.phase else {
            return;
        };
        if message.after_crlf && line.len == 3 && line.head == b".\r\n" {
            return self.end_of_data(now);
        }
        message.after_crlf = line.crlf;
        if message.fault.is_some() {
            // Refused already: only the end is looked for.
            return;
        }
        let Some(text) = line.text() else {
            return message.refuse(MessageError::LineTooLong {
                limit: TEXT_LINE_LIMIT,
            });
        };
        if !line.crlf || text.contains(&b'\r') {
            return message.refuse(MessageError::BareLineEnding);
        }
        // Dot-unstuffing (RFC 5321 4.5.2): a leading "." was doubled.
        let unstuffed = line.head.strip_prefix(b".").unwrap_or(line.head);
        if message.content.len() + unstuffed.len() > max_size {
            return message.refuse(MessageError::TooBig { limit: max_size });
        }
        message.content.extend_from_slice(unstuffed);
    }

    fn end_of_data(&mut self, now: SystemTime) {
        let Phase::Data(message) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        if let Some(fault) = message.fault {
            return self.refuse(fault);
        }
        let trace = self.trace_headers(&message.envelope, now);
        self.events.push_back(Event::Deliver(Delivery {
            envelope: message.envelope,
            trace,
            content: message.content,
        }));
        self.phase = Phase::Delivering;
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
            httpdate::fmt_http_date(now),
        )
        .into_bytes()
    }

    /// Answer with `error`'s reply; close after too many client faults.
    fn refuse<E: Refusal>(&mut self, error: E) {
        let reply = error.reply();
        debug!(code = reply.code(), "refused: {error}");
        self.replies.push_back(reply);
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

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.envelope = None;
        self.partial = PartialLine::default();
        self.events.push_back(Event::Close);
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

    fn config() -> Arc<Config> {
        Arc::new(Config {
            hostname: "mx.test".into(),
            max_size: MAX_SIZE,
            max_recipients: 100,
        })
    }

    /// 2023-11-14 22:13:20 UTC.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    /// Drives a session as the protocol adapter does, storing in memory.
    struct Driver {
        session: Session,
        replies: Vec<Reply>,
        delivered: Vec<Delivery>,
        /// The result the next deliveries get (`None`: stored).
        store_fails: Option<StoreError>,
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
                delivered: Vec::new(),
                store_fails: None,
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
                let blocked = self.session.is_delivering();
                self.drain();
                if bytes.is_empty() {
                    return;
                }
                assert!(used > 0 || blocked, "input refused without a delivery");
            }
        }

        fn drain(&mut self) {
            loop {
                while let Some(r) = self.session.poll_reply() {
                    self.replies.push(r);
                }
                match self.session.poll_event() {
                    Some(Event::Deliver(d)) => {
                        let n = self.delivered.len();
                        self.delivered.push(d);
                        match self.store_fails {
                            None => self.session.delivered(Ok(&format!("id{n}"))),
                            Some(e) => {
                                self.delivered.pop();
                                self.session.delivered(Err(e));
                            }
                        }
                    }
                    Some(Event::Close) => self.closed = true,
                    None => return,
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
             Received: from client.test ([192.0.2.7]) by mx.test with ESMTP; Tue, 14 Nov 2023 22:13:20 GMT\r\n"
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
    fn input_waits_while_a_message_is_being_stored() {
        let mut s = Session::new(config(), None);
        let input = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n";
        let used = s.handle_input(input, now());
        assert_eq!(&input[used..], b"NOOP\r\n", "stops after the end of data");
        assert!(matches!(s.poll_event(), Some(Event::Deliver(_))));
        assert_eq!(
            s.handle_input(b"NOOP\r\n", now()),
            0,
            "no input until delivered"
        );
        s.delivered(Ok("x1"));
        assert_eq!(s.handle_input(b"NOOP\r\n", now()), 6);
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
        // One octet more, in a line that starts with a stuffed dot (which
        // does not count).
        let over = format!("..y\r\n{}z\r\n", &exactly[..MAX_SIZE - 6]);
        assert_eq!(over.len() - 1, MAX_SIZE + 1);
        assert_eq!(
            send(&mut d, format!("{over}.\r\n").as_bytes()),
            [250, 250, 354, 552]
        );
        assert_eq!(d.delivered.len(), 1);
        // The session goes on.
        assert_eq!(send(&mut d, b"small\r\n.\r\n"), [250, 250, 354, 250]);
    }

    #[test]
    fn oversized_message_is_not_kept_in_memory() {
        let mut d = Driver::greeted();
        d.feed(ENVELOPE);
        let chunk = format!("{}\r\n", "y".repeat(500)).repeat(20);
        for _ in 0..50 {
            d.feed(chunk.as_bytes());
            assert!(d.session.buffered() <= MAX_SIZE + TEXT_LINE_LIMIT);
        }
        d.feed(b".\r\n");
        assert_eq!(d.codes(), [250, 250, 354, 552]);
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
    fn text_line_of_1000_octets_is_taken_and_1001_gets_500_after_the_end() {
        let mut d = Driver::greeted();
        let fits = format!("{}\r\n", "b".repeat(998));
        assert_eq!(
            send(&mut d, format!("{fits}.\r\n").as_bytes()),
            [250, 250, 354, 250]
        );
        assert_eq!(d.delivered[0].content, fits.as_bytes());
        let over = format!("{}\r\n", "b".repeat(999));
        assert_eq!(
            send(&mut d, format!("{over}more\r\n.\r\n").as_bytes()),
            [250, 250, 354, 500]
        );
        assert_eq!(d.delivered.len(), 1);
        // A stuffed dot counts: the line is 1000 octets as sent.
        let stuffed = format!(".{}\r\n", "b".repeat(997));
        assert_eq!(
            send(&mut d, format!("{stuffed}.\r\n").as_bytes()),
            [250, 250, 354, 250]
        );
        // An overlong line made of a long line split over many inputs.
        d.feed(ENVELOPE);
        for _ in 0..10 {
            d.feed(&[b'c'; 300]);
        }
        d.feed(b"\r\n.\r\nNOOP\r\n");
        assert_eq!(d.codes(), [250, 250, 354, 500, 250]);
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
    fn failed_store_gets_452_and_the_session_goes_on() {
        let mut d = Driver::greeted();
        d.store_fails = Some(StoreError::Failed);
        assert_eq!(send(&mut d, b"x\r\n.\r\n"), [250, 250, 354, 452]);
        d.store_fails = Some(StoreError::Full);
        send(&mut d, b"x\r\n.\r\n");
        d.store_fails = None;
        assert_eq!(send(&mut d, b"y\r\n.\r\n"), [250, 250, 354, 250]);
        assert_eq!(d.delivered.len(), 1);
        assert_eq!(d.delivered[0].content, b"y\r\n");
    }

    #[test]
    fn failed_store_reply_codes() {
        let mut d = Driver::greeted();
        d.store_fails = Some(StoreError::Full);
        d.feed(ENVELOPE);
        d.feed(b"x\r\n.\r\n");
        let last = d.replies.last().unwrap();
        assert_eq!((last.code(), last.status()), (452, Some("4.3.1")));
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

    /// Replies (on the wire) and delivered contents.
    fn outcome(d: &mut Driver) -> (String, Vec<Vec<u8>>, bool) {
        let wire = String::from_utf8_lossy(&{
            let mut out = Vec::new();
            for r in d.replies.drain(..) {
                r.write_to(&mut out);
            }
            out
        })
        .into_owned();
        let contents = d.delivered.iter().map(|m| m.content.clone()).collect();
        (wire, contents, d.closed)
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
                prop_assert!(d.session.buffered() <= MAX_SIZE + TEXT_LINE_LIMIT);
            }
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
