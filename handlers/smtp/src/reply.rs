//! Replies, and the errors that become them.
//!
//! Every refusal the server can make is a variant of an error enum, one
//! enum per operation (reading a command line, parsing it, running it in
//! the transaction, taking the message text, storing the message, the
//! session as a whole). Each variant knows the reply that goes on the wire
//! ([`Refusal::reply`]): the basic code of RFC 5321 and, since the server
//! advertises ENHANCEDSTATUSCODES, the enhanced status code of RFC 3463.
//! This module is the one table of codes:
//!
//! | operation | error | reply |
//! |---|---|---|
//! | reading a command line | [`LineError::TooLong`] (over 512 octets with CRLF) | `500 5.5.2` |
//! | | [`LineError::BareLineEnding`] (LF without CR, CR without LF) | `500 5.5.2` |
//! | parsing a command | [`CommandError::Unknown`] | `500 5.5.2` |
//! | | [`CommandError::NotImplemented`] (EXPN, TURN, AUTH, ...) | `502 5.5.1` |
//! | | [`CommandError::Syntax`] | `501 5.5.4` |
//! | | [`CommandError::BadSender`] / [`CommandError::BadRecipient`] | `501 5.1.7` / `501 5.1.3` |
//! | | [`CommandError::BadParameter`] (a bad SIZE or BODY value) | `501 5.5.4` |
//! | | [`CommandError::UnknownParameter`] | `555 5.5.4` |
//! | command order | [`SequenceError`] (not counted as an error when it follows a refused MAIL or RCPT of the same transaction) | `503 5.5.1` |
//! | the transaction | [`TransactionError::SizeExceeded`] (MAIL SIZE=n over the limit) | `552 5.3.4` |
//! | | [`TransactionError::TooManyRecipients`] | `452 4.5.3` |
//! | | [`TransactionError::ParametersWithoutEhlo`] | `555 5.5.4` |
//! | the message text | [`MessageError::TooBig`] | `552 5.3.4` |
//! | | [`MessageError::LineTooLong`] (over 1000 octets with CRLF, not counting a stuffed dot) | `554 5.6.0` |
//! | | [`MessageError::BareLineEnding`] (RFC 5321 2.3.8) | `550 5.5.2` |
//! | storing the message | [`StoreError::Full`] (no space or quota left) | `452 4.3.1` |
//! | | [`StoreError::Failed`] (any other local failure) | `451 4.3.0` |
//! | the session | [`SessionError::TooManyErrors`] | `421 4.7.0`, then close |
//!
//! The greeting, the answers to EHLO and HELO and the 354 go without an
//! enhanced code, as RFC 2034 says.
//!
//! The refusals of a message come after its end, where RFC 5321 4.3.2
//! allows 552, 554, 451, 452 and 550. A text line over the limit is a fault
//! of the content, not of a command: `554` (transaction failed) with
//! `5.6.0` (RFC 3463: other or undefined media error), where a command line
//! over the limit gets `500 5.5.2`. A local failure to store the message
//! gets the conventional `451 4.3.0` (local error in processing, try
//! later), and a full disk or quota `452 4.3.1` (insufficient storage).

use std::borrow::Cow;
use std::fmt;

/// One SMTP reply: a three-digit code, an enhanced status code (RFC 3463)
/// when one applies, and one or more lines of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    status: Option<&'static str>,
    lines: Vec<Cow<'static, str>>,
}

impl Reply {
    /// A one-line reply with an enhanced status code (`"2.0.0"`).
    pub fn new(code: u16, status: &'static str, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            status: Some(status),
            lines: vec![text.into()],
        }
    }

    /// A one-line reply without an enhanced status code.
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            status: None,
            lines: vec![text.into()],
        }
    }

    /// `220 HOST ESMTP gaidaros`: the greeting.
    pub fn greeting(hostname: &str) -> Reply {
        Reply::plain(220, format!("{hostname} ESMTP gaidaros"))
    }

    /// The answer to EHLO: the host name, then the extensions offered.
    pub fn ehlo(hostname: &str, max_size: usize) -> Reply {
        Reply {
            code: 250,
            status: None,
            lines: vec![
                hostname.to_string().into(),
                "PIPELINING".into(),
                format!("SIZE {max_size}").into(),
                "8BITMIME".into(),
                "ENHANCEDSTATUSCODES".into(),
            ],
        }
    }

    /// The answer to HELO: the host name.
    pub fn helo(hostname: &str) -> Reply {
        Reply::plain(250, hostname.to_string())
    }

    /// `250 2.0.0 OK` (RSET, NOOP).
    pub fn ok() -> Reply {
        Reply::new(250, "2.0.0", "OK")
    }

    /// `250 2.1.0`: the sender is taken.
    pub fn sender_ok() -> Reply {
        Reply::new(250, "2.1.0", "Sender OK")
    }

    /// `250 2.1.5`: the recipient is taken.
    pub fn recipient_ok() -> Reply {
        Reply::new(250, "2.1.5", "Recipient OK")
    }

    /// `354`: send the message text.
    pub fn start_data() -> Reply {
        Reply::plain(354, "End data with <CR><LF>.<CR><LF>")
    }

    /// `250 2.0.0`: the message is stored as `id`.
    pub fn queued(id: &str) -> Reply {
        Reply::new(250, "2.0.0", format!("OK: queued as {id}"))
    }

    /// `252 2.5.0`: VRFY is not answered, but mail will be accepted.
    pub fn cannot_verify() -> Reply {
        Reply::new(
            252,
            "2.5.0",
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    /// `214 2.0.0`: the commands this server knows.
    pub fn help() -> Reply {
        Reply::new(
            214,
            "2.0.0",
            "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
        )
    }

    /// `221 2.0.0`: the answer to QUIT.
    pub fn bye(hostname: &str) -> Reply {
        Reply::new(221, "2.0.0", format!("{hostname} closing connection"))
    }

    /// The three-digit code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, when there is one.
    pub fn status(&self) -> Option<&'static str> {
        self.status
    }

    /// The lines of text, without codes.
    pub fn lines(&self) -> &[Cow<'static, str>] {
        &self.lines
    }

    /// Append the reply as it goes on the wire: every line `CODE-` but the
    /// last `CODE `, each with the enhanced code, each ended by CRLF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let text = match self.status {
                Some(status) => format!("{}{sep}{status} {line}\r\n", self.code),
                None => format!("{}{sep}{line}\r\n", self.code),
            };
            out.extend_from_slice(text.as_bytes());
        }
    }

    /// The reply as it goes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

/// An error the server answers with a reply.
pub trait Refusal: fmt::Display {
    /// The reply that goes on the wire.
    fn reply(&self) -> Reply;

    /// Whether the error counts towards the session's limit of protocol
    /// errors: a client that sends nonsense, not one that meets a limit or
    /// a failure of ours.
    fn is_client_fault(&self) -> bool;
}

/// A command line that cannot be read as a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// Longer than `limit` octets, CRLF included (RFC 5321 4.5.3.1.4).
    TooLong {
        /// The limit, in octets.
        limit: usize,
    },
    /// Ended by a bare LF, or holding a bare CR (RFC 5321 2.3.8).
    BareLineEnding,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong { limit } => {
                write!(f, "command line over {limit} octets")
            }
            LineError::BareLineEnding => f.write_str("command line with a bare CR or LF"),
        }
    }
}

impl Refusal for LineError {
    fn reply(&self) -> Reply {
        match self {
            LineError::TooLong { limit } => Reply::new(
                500,
                "5.5.2",
                format!("Line too long (limit {limit} octets including CRLF)"),
            ),
            LineError::BareLineEnding => Reply::new(
                500,
                "5.5.2",
                "Line must end in CRLF; bare CR or LF is not allowed (RFC 5321 2.3.8)",
            ),
        }
    }

    fn is_client_fault(&self) -> bool {
        true
    }
}

/// The most of an unknown parameter's keyword its reply repeats.
const MAX_KEYWORD_SHOWN: usize = 64;

/// A command line that is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// No such command.
    Unknown,
    /// A command of RFC 5321 or an extension that this server does not do.
    NotImplemented,
    /// The arguments do not fit the command; the usage is given.
    Syntax(&'static str),
    /// The reverse-path of MAIL is not a valid path.
    BadSender,
    /// The forward-path of RCPT is not a valid path.
    BadRecipient,
    /// A known parameter with a bad or repeated value (`SIZE=x`).
    BadParameter(&'static str),
    /// A MAIL or RCPT parameter this server does not offer (the keyword,
    /// upper-cased; it is made of letters, digits and hyphens only).
    UnknownParameter(String),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Unknown => f.write_str("unknown command"),
            CommandError::NotImplemented => f.write_str("command not implemented"),
            CommandError::Syntax(usage) => write!(f, "syntax error, usage: {usage}"),
            CommandError::BadSender => f.write_str("bad sender address syntax"),
            CommandError::BadRecipient => f.write_str("bad recipient address syntax"),
            CommandError::BadParameter(name) => write!(f, "bad value of parameter {name}"),
            CommandError::UnknownParameter(name) => write!(f, "unsupported parameter {name}"),
        }
    }
}

impl Refusal for CommandError {
    fn reply(&self) -> Reply {
        match self {
            CommandError::Unknown => Reply::new(500, "5.5.2", "Command unrecognized"),
            CommandError::NotImplemented => Reply::new(502, "5.5.1", "Command not implemented"),
            CommandError::Syntax(usage) => {
                Reply::new(501, "5.5.4", format!("Syntax error, usage: {usage}"))
            }
            CommandError::BadSender => Reply::new(501, "5.1.7", "Bad sender address syntax"),
            CommandError::BadRecipient => Reply::new(501, "5.1.3", "Bad recipient address syntax"),
            CommandError::BadParameter(name) => {
                Reply::new(501, "5.5.4", format!("Bad value of parameter {name}"))
            }
            CommandError::UnknownParameter(name) => {
                // A keyword can be nearly as long as its command line, and
                // a reply line must stay within 512 octets (RFC 5321
                // 4.5.3.1.5): name the start of a long one.
                let shown: String = name.chars().take(MAX_KEYWORD_SHOWN).collect();
                let more = if shown.len() < name.len() { "..." } else { "" };
                Reply::new(555, "5.5.4", format!("Unsupported parameter {shown}{more}"))
            }
        }
    }

    fn is_client_fault(&self) -> bool {
        true
    }
}

/// A valid command given where the session does not allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceError {
    /// MAIL before EHLO or HELO.
    NeedHello,
    /// MAIL inside a transaction.
    NestedMail,
    /// RCPT or DATA without MAIL.
    NeedMail,
    /// DATA without an accepted recipient.
    NeedRecipient,
}

impl fmt::Display for SequenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SequenceError::NeedHello => "MAIL before EHLO/HELO",
            SequenceError::NestedMail => "nested MAIL",
            SequenceError::NeedMail => "RCPT or DATA before MAIL",
            SequenceError::NeedRecipient => "DATA without a recipient",
        })
    }
}

impl Refusal for SequenceError {
    fn reply(&self) -> Reply {
        let text = match self {
            SequenceError::NeedHello => "Send EHLO or HELO first",
            SequenceError::NestedMail => "Nested MAIL command",
            SequenceError::NeedMail => "Need MAIL command first",
            SequenceError::NeedRecipient => "No valid recipients",
        };
        Reply::new(503, "5.5.1", text)
    }

    fn is_client_fault(&self) -> bool {
        true
    }
}

/// MAIL or RCPT refused by a limit of the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionError {
    /// MAIL declared `SIZE=n` over the message size limit (RFC 1870).
    SizeExceeded {
        /// The limit, in octets.
        limit: usize,
    },
    /// RCPT beyond the recipient limit (RFC 5321 4.5.3.1.10: the client
    /// sends the rest in another transaction).
    TooManyRecipients {
        /// The limit.
        limit: usize,
    },
    /// MAIL parameters after HELO: extensions need EHLO.
    ParametersWithoutEhlo,
}

impl fmt::Display for TransactionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransactionError::SizeExceeded { limit } => {
                write!(f, "declared size over the limit of {limit} octets")
            }
            TransactionError::TooManyRecipients { limit } => {
                write!(f, "more than {limit} recipients")
            }
            TransactionError::ParametersWithoutEhlo => f.write_str("MAIL parameters after HELO"),
        }
    }
}

impl Refusal for TransactionError {
    fn reply(&self) -> Reply {
        match self {
            TransactionError::SizeExceeded { limit } => Reply::new(
                552,
                "5.3.4",
                format!("Message size exceeds fixed limit of {limit} octets"),
            ),
            TransactionError::TooManyRecipients { limit } => Reply::new(
                452,
                "4.5.3",
                format!("Too many recipients (limit {limit} per message)"),
            ),
            TransactionError::ParametersWithoutEhlo => {
                Reply::new(555, "5.5.4", "MAIL parameters need EHLO, not HELO")
            }
        }
    }

    fn is_client_fault(&self) -> bool {
        matches!(self, TransactionError::ParametersWithoutEhlo)
    }
}

/// A message refused at the end of its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageError {
    /// Over the message size limit.
    TooBig {
        /// The limit, in octets.
        limit: usize,
    },
    /// A text line over `limit` octets, CRLF included, not counting the
    /// dot of a dot-stuffed line (RFC 5321 4.5.3.1.6).
    LineTooLong {
        /// The limit, in octets.
        limit: usize,
    },
    /// A bare LF or bare CR in the text (RFC 5321 2.3.8). Refusing these
    /// is what stops SMTP smuggling: a `<LF>.<LF>` never ends the data,
    /// and what follows it is never taken for a second message.
    BareLineEnding,
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::TooBig { limit } => write!(f, "message over {limit} octets"),
            MessageError::LineTooLong { limit } => {
                write!(f, "message text line over {limit} octets")
            }
            MessageError::BareLineEnding => f.write_str("bare CR or LF in the message text"),
        }
    }
}

impl Refusal for MessageError {
    fn reply(&self) -> Reply {
        match self {
            MessageError::TooBig { limit } => Reply::new(
                552,
                "5.3.4",
                format!("Message size exceeds fixed limit of {limit} octets"),
            ),
            MessageError::LineTooLong { limit } => Reply::new(
                554,
                "5.6.0",
                format!(
                    "Message refused: line too long in message text (limit {limit} octets including CRLF)"
                ),
            ),
            MessageError::BareLineEnding => Reply::new(
                550,
                "5.5.2",
                "Message refused: bare CR or LF is not allowed in the text, lines end in CRLF (RFC 5321 2.3.8)",
            ),
        }
    }

    fn is_client_fault(&self) -> bool {
        false
    }
}

/// The message could not be stored (creating, writing, syncing or moving
/// its file failed); the client keeps it and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// No space (or quota) left.
    Full,
    /// Any other failure to create, write, sync or link.
    Failed,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreError::Full => "mail store full",
            StoreError::Failed => "mail store failed",
        })
    }
}

impl Refusal for StoreError {
    fn reply(&self) -> Reply {
        match self {
            StoreError::Full => Reply::new(
                452,
                "4.3.1",
                "Insufficient system storage, message not stored; try again later",
            ),
            StoreError::Failed => Reply::new(
                451,
                "4.3.0",
                "Local error in storing the message, not stored; try again later",
            ),
        }
    }

    fn is_client_fault(&self) -> bool {
        false
    }
}

/// The server ends the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The client made too many protocol errors.
    TooManyErrors {
        /// The server's host name (a 421 reply starts with it).
        hostname: String,
    },
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::TooManyErrors { .. } => f.write_str("too many protocol errors"),
        }
    }
}

impl Refusal for SessionError {
    fn reply(&self) -> Reply {
        match self {
            SessionError::TooManyErrors { hostname } => Reply::new(
                421,
                "4.7.0",
                format!("{hostname} Error: too many errors, closing connection"),
            ),
        }
    }

    fn is_client_fault(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_reply_carries_the_enhanced_code() {
        assert_eq!(Reply::ok().to_bytes(), b"250 2.0.0 OK\r\n");
    }

    #[test]
    fn ehlo_reply_is_multiline_without_enhanced_codes() {
        let text = String::from_utf8(Reply::ehlo("mx.test", 1000).to_bytes()).unwrap();
        assert_eq!(
            text,
            "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
        );
    }

    #[test]
    fn greeting_and_354_have_no_enhanced_code() {
        assert_eq!(
            Reply::greeting("mx.test").to_bytes(),
            b"220 mx.test ESMTP gaidaros\r\n"
        );
        assert!(Reply::start_data().to_bytes().starts_with(b"354 End data"));
    }

    #[test]
    fn every_error_reply_has_a_matching_enhanced_class() {
        let replies = [
            LineError::TooLong { limit: 512 }.reply(),
            LineError::BareLineEnding.reply(),
            CommandError::Unknown.reply(),
            CommandError::NotImplemented.reply(),
            CommandError::Syntax("X").reply(),
            CommandError::BadSender.reply(),
            CommandError::BadRecipient.reply(),
            CommandError::BadParameter("SIZE").reply(),
            CommandError::UnknownParameter("X".into()).reply(),
            SequenceError::NeedMail.reply(),
            TransactionError::SizeExceeded { limit: 1 }.reply(),
            TransactionError::TooManyRecipients { limit: 1 }.reply(),
            TransactionError::ParametersWithoutEhlo.reply(),
            MessageError::TooBig { limit: 1 }.reply(),
            MessageError::LineTooLong { limit: 1 }.reply(),
            MessageError::BareLineEnding.reply(),
            StoreError::Full.reply(),
            StoreError::Failed.reply(),
            SessionError::TooManyErrors {
                hostname: "h".into(),
            }
            .reply(),
        ];
        for r in replies {
            let status = r.status().unwrap_or_else(|| panic!("{r} has no status"));
            let class = status.as_bytes()[0];
            assert_eq!(
                u16::from(class - b'0'),
                r.code() / 100,
                "{r}: the enhanced code's class matches the basic code"
            );
            assert!(r.code() >= 400, "{r} is an error");
        }
    }

    /// Found by the `smtp_session` fuzz target: an unknown MAIL
    /// parameter was repeated whole in its 555, and a keyword filling a
    /// 512-octet command line made a 513-octet reply line, over the limit
    /// of RFC 5321 4.5.3.1.5.
    #[test]
    fn a_long_unknown_parameter_keeps_its_reply_line_within_512_octets() {
        let line = format!("MAIL FROM:<a@b> SIZ{}", "a".repeat(510 - 19));
        assert_eq!(line.len() + 2, 512, "a command line at its limit");
        let error = crate::command::parse(line.as_bytes()).unwrap_err();
        assert!(
            matches!(error, CommandError::UnknownParameter(_)),
            "{error}"
        );
        let wire = error.reply().to_bytes();
        assert!(wire.len() <= 512, "{} octets", wire.len());
        assert!(wire.starts_with(b"555 5.5.4 Unsupported parameter SIZAAA"));
        assert!(wire.ends_with(b"...\r\n"));
        let short = CommandError::UnknownParameter("X-FOO".into()).reply();
        assert_eq!(
            short.to_bytes(),
            b"555 5.5.4 Unsupported parameter X-FOO\r\n"
        );
    }

    #[test]
    fn content_and_store_refusals_use_end_of_data_codes() {
        // RFC 5321 4.3.2: after the end of DATA, only 250, 552, 554, 451,
        // 452, 450 and 550.
        let line = MessageError::LineTooLong { limit: 1000 }.reply();
        assert_eq!((line.code(), line.status()), (554, Some("5.6.0")));
        let failed = StoreError::Failed.reply();
        assert_eq!((failed.code(), failed.status()), (451, Some("4.3.0")));
        let full = StoreError::Full.reply();
        assert_eq!((full.code(), full.status()), (452, Some("4.3.1")));
    }
}
