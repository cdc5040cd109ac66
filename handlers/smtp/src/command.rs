//! Parsing one command line into a [`Command`].
//!
//! The input is one line without its CRLF; the session has already checked
//! its length and its line ending. Parsing never panics, whatever the
//! bytes: anything that is not a command of RFC 5321 (with the parameters
//! of the extensions offered: SIZE, BODY) is a [`CommandError`].
//!
//! Where RFC 5321 is strict and clients commonly are not, the parser is
//! lenient in ways that cannot change a command's meaning: verbs in any
//! case, spaces after `FROM:`/`TO:` and at the end of a line, several spaces
//! between parameters. Paths must be in angle brackets; source routes
//! (`<@a,@b:user@c>`) are accepted and dropped (RFC 5321 4.1.1.3, C).
//! Addresses are ASCII: SMTPUTF8 is not offered.

use std::fmt;

use crate::reply::CommandError;

/// The longest local part, in octets (RFC 5321 4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// The longest domain, in octets (RFC 5321 4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// The longest path, angle brackets included (RFC 5321 4.5.3.1.3).
pub const MAX_PATH: usize = 256;

const USAGE_HELO: &str = "HELO domain";
const USAGE_EHLO: &str = "EHLO domain";
const USAGE_MAIL: &str = "MAIL FROM:<address> [SIZE=octets] [BODY=7BIT|8BITMIME]";
const USAGE_RCPT: &str = "RCPT TO:<address>";
const USAGE_VRFY: &str = "VRFY string";

/// A command from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`: start an ESMTP session.
    Ehlo(String),
    /// `HELO domain`: start a plain SMTP session.
    Helo(String),
    /// `MAIL FROM:<path> [params]`: start a transaction.
    Mail {
        /// Who to send bounces to; `<>` for none.
        from: ReversePath,
        /// The ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:<path>`: add a recipient.
    Rcpt {
        /// The recipient.
        to: ForwardPath,
    },
    /// `DATA`: the message text follows.
    Data,
    /// `RSET`: abort the transaction.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`: answered 252 (not verified, but will be accepted).
    Vrfy(String),
    /// `HELP [string]`.
    Help,
}

/// A mailbox: `local-part@domain`, both as written (a quoted local part
/// keeps its quotes), ASCII only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    local_part: String,
    domain: String,
}

impl Mailbox {
    /// The local part, as written.
    pub fn local_part(&self) -> &str {
        &self.local_part
    }

    /// The domain or address literal, as written.
    pub fn domain(&self) -> &str {
        &self.domain
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local_part, self.domain)
    }
}

/// The sender of MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`: no sender (bounces, notifications).
    Null,
    /// `<mailbox>`.
    Mailbox(Mailbox),
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// The recipient of RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain, which every server must accept
    /// (RFC 5321 4.5.1).
    Postmaster,
    /// `<mailbox>`.
    Mailbox(Mailbox),
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<Postmaster>"),
            ForwardPath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// The body type of the BODY parameter (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

impl fmt::Display for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Body::SevenBit => "7BIT",
            Body::EightBitMime => "8BITMIME",
        })
    }
}

/// The parameters of MAIL FROM this server understands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=n` (RFC 1870): the client's estimate of the message size. A
    /// number too large for 64 bits is kept as `u64::MAX`.
    pub size: Option<u64>,
    /// `BODY=...` (RFC 6152).
    pub body: Option<Body>,
}

impl MailParams {
    /// No parameter given?
    pub fn is_empty(&self) -> bool {
        self.size.is_none() && self.body.is_none()
    }
}

impl fmt::Display for Command {
    /// The command line as a client sends it, without CRLF.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Ehlo(d) => write!(f, "EHLO {d}"),
            Command::Helo(d) => write!(f, "HELO {d}"),
            Command::Mail { from, params } => {
                write!(f, "MAIL FROM:{from}")?;
                if let Some(size) = params.size {
                    write!(f, " SIZE={size}")?;
                }
                if let Some(body) = params.body {
                    write!(f, " BODY={body}")?;
                }
                Ok(())
            }
            Command::Rcpt { to } => write!(f, "RCPT TO:{to}"),
            Command::Data => f.write_str("DATA"),
            Command::Rset => f.write_str("RSET"),
            Command::Noop => f.write_str("NOOP"),
            Command::Quit => f.write_str("QUIT"),
            Command::Vrfy(s) => write!(f, "VRFY {s}"),
            Command::Help => f.write_str("HELP"),
        }
    }
}

/// Is `line` (or the start of it) a MAIL or RCPT command, valid or not?
/// Tells which refusals belong to a transaction.
pub fn is_mail_or_rcpt(line: &[u8]) -> bool {
    let end = line
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(line.len());
    let verb = &line[..end];
    verb.eq_ignore_ascii_case(b"MAIL") || verb.eq_ignore_ascii_case(b"RCPT")
}

/// Parse one command line, given without its CRLF.
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let line = trim_end(line);
    let (verb, args) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], trim_start(&line[i + 1..])),
        None => (line, &[][..]),
    };
    if verb.is_empty() || verb.len() > 8 || !verb.iter().all(u8::is_ascii_alphabetic) {
        return Err(CommandError::Unknown);
    }
    let verb = verb.to_ascii_uppercase();
    match verb.as_slice() {
        b"EHLO" => hello_name(args, USAGE_EHLO).map(Command::Ehlo),
        b"HELO" => hello_name(args, USAGE_HELO).map(Command::Helo),
        b"MAIL" => parse_mail(args),
        b"RCPT" => parse_rcpt(args),
        b"DATA" => no_args(args, Command::Data, "DATA"),
        b"RSET" => no_args(args, Command::Rset, "RSET"),
        b"QUIT" => no_args(args, Command::Quit, "QUIT"),
        b"NOOP" => Ok(Command::Noop),
        b"HELP" => Ok(Command::Help),
        b"VRFY" => {
            if args.is_empty() {
                Err(CommandError::Syntax(USAGE_VRFY))
            } else {
                Ok(Command::Vrfy(String::from_utf8_lossy(args).into_owned()))
            }
        }
        b"EXPN" | b"TURN" | b"SEND" | b"SOML" | b"SAML" | b"ETRN" | b"AUTH" | b"BDAT"
        | b"STARTTLS" | b"ATRN" => Err(CommandError::NotImplemented),
        _ => Err(CommandError::Unknown),
    }
}

fn trim_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn trim_start(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

fn no_args(args: &[u8], command: Command, usage: &'static str) -> Result<Command, CommandError> {
    if args.is_empty() {
        Ok(command)
    } else {
        Err(CommandError::Syntax(usage))
    }
}

/// The argument of EHLO/HELO: a domain or address literal. Leniently, any
/// word of visible ASCII up to 255 octets without the characters that would
/// confuse the Received header's syntax (`()<>"\`): clients name
/// themselves after what their host calls itself.
fn hello_name(args: &[u8], usage: &'static str) -> Result<String, CommandError> {
    let ok = !args.is_empty()
        && args.len() <= MAX_DOMAIN
        && args
            .iter()
            .all(|&b| b.is_ascii_graphic() && !b"()<>\"\\".contains(&b));
    match std::str::from_utf8(args) {
        Ok(name) if ok => Ok(name.to_string()),
        _ => Err(CommandError::Syntax(usage)),
    }
}

/// Strip a case-insensitive `keyword` (`FROM:`), then optional spaces.
fn strip_keyword<'a>(args: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| trim_start(&args[keyword.len()..]))
}

fn parse_mail(args: &[u8]) -> Result<Command, CommandError> {
    let rest = strip_keyword(args, b"FROM:").ok_or(CommandError::Syntax(USAGE_MAIL))?;
    let (path, rest) = parse_path(rest).ok_or(CommandError::BadSender)?;
    let from = match path {
        Path::Null => ReversePath::Null,
        Path::Mailbox(m) => ReversePath::Mailbox(m),
        Path::Postmaster => return Err(CommandError::BadSender),
    };
    let mut params = MailParams::default();
    for Param { keyword, value } in parameters(rest, USAGE_MAIL)? {
        match keyword.as_str() {
            "SIZE" => {
                let value = value.ok_or(CommandError::BadParameter("SIZE"))?;
                if params.size.is_some()
                    || value.is_empty()
                    || !value.iter().all(u8::is_ascii_digit)
                {
                    return Err(CommandError::BadParameter("SIZE"));
                }
                // Digits only: the one failure left is overflow.
                let size = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(u64::MAX);
                params.size = Some(size);
            }
            "BODY" => {
                let value = value.ok_or(CommandError::BadParameter("BODY"))?;
                let body = if value.eq_ignore_ascii_case(b"7BIT") {
                    Body::SevenBit
                } else if value.eq_ignore_ascii_case(b"8BITMIME") {
                    Body::EightBitMime
                } else {
                    return Err(CommandError::BadParameter("BODY"));
                };
                if params.body.is_some() {
                    return Err(CommandError::BadParameter("BODY"));
                }
                params.body = Some(body);
            }
            _ => return Err(CommandError::UnknownParameter(keyword)),
        }
    }
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(args: &[u8]) -> Result<Command, CommandError> {
    let rest = strip_keyword(args, b"TO:").ok_or(CommandError::Syntax(USAGE_RCPT))?;
    let (path, rest) = parse_path(rest).ok_or(CommandError::BadRecipient)?;
    let to = match path {
        Path::Null => return Err(CommandError::BadRecipient),
        Path::Postmaster => ForwardPath::Postmaster,
        Path::Mailbox(m) => ForwardPath::Mailbox(m),
    };
    // No RCPT parameter is offered (no DSN).
    if let Some(param) = parameters(rest, USAGE_RCPT)?.into_iter().next() {
        return Err(CommandError::UnknownParameter(param.keyword));
    }
    Ok(Command::Rcpt { to })
}

/// One `esmtp-param`.
struct Param<'a> {
    /// Upper-cased.
    keyword: String,
    value: Option<&'a [u8]>,
}

/// The `esmtp-param`s after a path: `keyword[=value]`, separated by
/// spaces; keywords upper-cased.
fn parameters<'a>(rest: &'a [u8], usage: &'static str) -> Result<Vec<Param<'a>>, CommandError> {
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    if rest[0] != b' ' {
        return Err(CommandError::Syntax(usage));
    }
    let mut out = Vec::new();
    for param in rest.split(|&b| b == b' ').filter(|p| !p.is_empty()) {
        let (keyword, value) = match param.iter().position(|&b| b == b'=') {
            Some(i) => (&param[..i], Some(&param[i + 1..])),
            None => (param, None),
        };
        let keyword_ok = keyword.first().is_some_and(u8::is_ascii_alphanumeric)
            && keyword
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-');
        let value_ok = value
            .is_none_or(|v| !v.is_empty() && v.iter().all(|&b| b.is_ascii_graphic() && b != b'='));
        if !keyword_ok || !value_ok {
            return Err(CommandError::Syntax(usage));
        }
        // Checked above: letters, digits and hyphens only.
        let keyword = String::from_utf8_lossy(keyword).to_ascii_uppercase();
        out.push(Param { keyword, value });
    }
    Ok(out)
}

/// A path as read, before deciding whether it may be a sender or a
/// recipient.
#[derive(Debug)]
enum Path {
    Null,
    Postmaster,
    Mailbox(Mailbox),
}

/// `"<" [ A-d-l ":" ] Mailbox ">"`, `"<>"` or `"<Postmaster>"`; returns the
/// path and what follows it.
fn parse_path(s: &[u8]) -> Option<(Path, &[u8])> {
    let mut r = Reader { s, at: 0 };
    r.expect(b'<')?;
    if r.eat(b'>') {
        return Some((Path::Null, r.rest()));
    }
    if r.peek() == Some(b'@') {
        // A source route: `@domain,@domain:`. Checked, then dropped.
        loop {
            r.expect(b'@')?;
            r.domain()?;
            if r.eat(b':') {
                break;
            }
            r.expect(b',')?;
        }
    }
    let local_start = r.at;
    let quoted = r.peek() == Some(b'"');
    if quoted {
        r.quoted_string()?;
    } else {
        r.dot_string()?;
    }
    let local = &s[local_start..r.at];
    if !quoted && r.peek() == Some(b'>') && local.eq_ignore_ascii_case(b"postmaster") {
        r.at += 1;
        return Some((Path::Postmaster, r.rest()));
    }
    r.expect(b'@')?;
    let domain_start = r.at;
    r.domain()?;
    let domain = &s[domain_start..r.at];
    r.expect(b'>')?;
    if local.len() > MAX_LOCAL_PART || domain.len() > MAX_DOMAIN {
        return None;
    }
    // `<` local `@` domain `>`, without a source route.
    if local.len() + domain.len() + 3 > MAX_PATH {
        return None;
    }
    let mailbox = Mailbox {
        local_part: std::str::from_utf8(local).ok()?.to_string(),
        domain: std::str::from_utf8(domain).ok()?.to_string(),
    };
    Some((Path::Mailbox(mailbox), r.rest()))
}

/// A cursor over a path.
struct Reader<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn rest(&self) -> &'a [u8] {
        self.s.get(self.at..).unwrap_or_default()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }

    /// Advance over bytes matching `f`; how many.
    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> usize {
        let start = self.at;
        while self.peek().is_some_and(&f) {
            self.at += 1;
        }
        self.at - start
    }

    /// `Atom *("." Atom)`.
    fn dot_string(&mut self) -> Option<()> {
        loop {
            if self.take_while(is_atext) == 0 {
                return None;
            }
            if !self.eat(b'.') {
                return Some(());
            }
        }
    }

    /// `DQUOTE *QcontentSMTP DQUOTE`.
    fn quoted_string(&mut self) -> Option<()> {
        self.expect(b'"')?;
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => {
                    self.at += 1;
                    match self.peek()? {
                        32..=126 => self.at += 1,
                        _ => return None,
                    }
                }
                32..=126 => self.at += 1,
                _ => return None,
            }
        }
    }

    /// `sub-domain *("." sub-domain)` or an address literal `[...]`.
    fn domain(&mut self) -> Option<()> {
        if self.eat(b'[') {
            let n = self.take_while(|b| matches!(b, 33..=90 | 94..=126));
            if n == 0 {
                return None;
            }
            return self.expect(b']');
        }
        loop {
            let start = self.at;
            let n = self.take_while(|b| b.is_ascii_alphanumeric() || b == b'-');
            let label = &self.s[start..self.at];
            if n == 0 || n > 63 || label[0] == b'-' || label[n - 1] == b'-' {
                return None;
            }
            if !self.eat(b'.') {
                return Some(());
            }
        }
    }
}

/// `atext` of RFC 5322.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mailbox(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local_part: local.into(),
            domain: domain.into(),
        }
    }

    #[test]
    fn simple_commands_parse_in_any_case() {
        assert_eq!(
            parse(b"ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(
            parse(b"HeLo [127.0.0.1]"),
            Ok(Command::Helo("[127.0.0.1]".into()))
        );
        assert_eq!(parse(b"data"), Ok(Command::Data));
        assert_eq!(parse(b"RSET  "), Ok(Command::Rset));
        assert_eq!(parse(b"NOOP anything at all"), Ok(Command::Noop));
        assert_eq!(parse(b"QUIT"), Ok(Command::Quit));
        assert_eq!(parse(b"VRFY bob"), Ok(Command::Vrfy("bob".into())));
        assert_eq!(parse(b"HELP"), Ok(Command::Help));
    }

    #[test]
    fn mail_with_parameters() {
        assert_eq!(
            parse(b"MAIL FROM:<a@b.example> SIZE=1234 BODY=8bitmime"),
            Ok(Command::Mail {
                from: ReversePath::Mailbox(mailbox("a", "b.example")),
                params: MailParams {
                    size: Some(1234),
                    body: Some(Body::EightBitMime),
                },
            })
        );
        assert_eq!(
            parse(b"mail from: <>"),
            Ok(Command::Mail {
                from: ReversePath::Null,
                params: MailParams::default(),
            })
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b> SIZE=99999999999999999999999"),
            Ok(Command::Mail {
                from: ReversePath::Mailbox(mailbox("a", "b")),
                params: MailParams {
                    size: Some(u64::MAX),
                    body: None
                },
            })
        );
    }

    #[test]
    fn bad_mail_parameters() {
        assert_eq!(
            parse(b"MAIL FROM:<a@b> SIZE=12x"),
            Err(CommandError::BadParameter("SIZE"))
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b> SIZE=1 SIZE=2"),
            Err(CommandError::BadParameter("SIZE"))
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b> BODY=BINARYMIME"),
            Err(CommandError::BadParameter("BODY"))
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b> SMTPUTF8"),
            Err(CommandError::UnknownParameter("SMTPUTF8".into()))
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b>SIZE=1"),
            Err(CommandError::Syntax(USAGE_MAIL))
        );
    }

    #[test]
    fn rcpt_paths() {
        assert_eq!(
            parse(b"RCPT TO:<\"john doe\\\"\"@[192.0.2.1]>"),
            Ok(Command::Rcpt {
                to: ForwardPath::Mailbox(mailbox("\"john doe\\\"\"", "[192.0.2.1]")),
            })
        );
        assert_eq!(
            parse(b"RCPT TO:<postMaster>"),
            Ok(Command::Rcpt {
                to: ForwardPath::Postmaster
            })
        );
        assert_eq!(
            parse(b"RCPT TO:<@relay.example,@b.example:joe@c.example>"),
            Ok(Command::Rcpt {
                to: ForwardPath::Mailbox(mailbox("joe", "c.example")),
            })
        );
        assert_eq!(parse(b"RCPT TO:<>"), Err(CommandError::BadRecipient));
        assert_eq!(
            parse(b"RCPT TO:<a@b> NOTIFY=NEVER"),
            Err(CommandError::UnknownParameter("NOTIFY".into()))
        );
        assert_eq!(
            parse(b"MAIL FROM:<Postmaster>"),
            Err(CommandError::BadSender)
        );
    }

    #[test]
    fn bad_paths() {
        for path in [
            &b"a@b"[..],
            b"<a@b",
            b"<a..b@c>",
            b"<.a@c>",
            b"<a@-b>",
            b"<a@b->",
            b"<a@b..c>",
            b"<a@>",
            b"<@a>",
            b"<a@[]>",
            b"<\"unterminated@b>",
            b"<a\xc3\xa9@b>",
        ] {
            let line = [&b"RCPT TO:"[..], path].concat();
            assert_eq!(
                parse(&line),
                Err(CommandError::BadRecipient),
                "{:?}",
                String::from_utf8_lossy(path)
            );
        }
    }

    #[test]
    fn path_length_limits() {
        let local = "l".repeat(MAX_LOCAL_PART);
        let ok = format!("RCPT TO:<{local}@b>");
        assert!(parse(ok.as_bytes()).is_ok());
        let too_long = format!("RCPT TO:<{local}l@b>");
        assert_eq!(parse(too_long.as_bytes()), Err(CommandError::BadRecipient));
        // 64 + 1 + 189 + 2 = 256 octets: the longest path.
        let domain = format!("{}.{}.{}", "d".repeat(63), "d".repeat(63), "d".repeat(61));
        let longest = format!("RCPT TO:<{local}@{domain}>");
        assert!(parse(longest.as_bytes()).is_ok());
        let over = format!("RCPT TO:<{local}@{domain}d>");
        assert_eq!(parse(over.as_bytes()), Err(CommandError::BadRecipient));
    }

    #[test]
    fn mail_and_rcpt_are_told_apart_even_when_malformed() {
        for line in [
            &b"MAIL FROM:<a@b>"[..],
            b"rcpt TO:<bad",
            b"Mail",
            b"RCPT\r\n",
        ] {
            assert!(is_mail_or_rcpt(line), "{:?}", String::from_utf8_lossy(line));
        }
        for line in [
            &b"DATA"[..],
            b"MAILX FROM:<a@b>",
            b"",
            b" MAIL",
            b"NOOP MAIL",
        ] {
            assert!(
                !is_mail_or_rcpt(line),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn unknown_and_unimplemented_commands() {
        assert_eq!(parse(b""), Err(CommandError::Unknown));
        assert_eq!(parse(b"GET / HTTP/1.1"), Err(CommandError::Unknown));
        assert_eq!(parse(b"\xff\xfe"), Err(CommandError::Unknown));
        assert_eq!(parse(b"EXPN staff"), Err(CommandError::NotImplemented));
        assert_eq!(parse(b"STARTTLS"), Err(CommandError::NotImplemented));
        assert_eq!(parse(b"DATA now"), Err(CommandError::Syntax("DATA")));
        assert_eq!(parse(b"EHLO"), Err(CommandError::Syntax(USAGE_EHLO)));
        assert_eq!(parse(b"EHLO a(b)"), Err(CommandError::Syntax(USAGE_EHLO)));
        assert_eq!(
            parse(b"MAIL TO:<a@b>"),
            Err(CommandError::Syntax(USAGE_MAIL))
        );
        assert_eq!(parse(b"VRFY"), Err(CommandError::Syntax(USAGE_VRFY)));
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?"
    }

    fn domain() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec(label(), 1..4).prop_map(|l| l.join(".")),
            "\\[[0-9]{1,3}(\\.[0-9]{1,3}){3}\\]",
            "\\[IPv6:[0-9a-f:]{2,20}\\]",
        ]
    }

    fn local_part() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,10}(\\.[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,10}){0,2}",
            "\"([ !#-\\[\\]-~]|\\\\[ -~]){0,15}\"",
        ]
    }

    fn a_mailbox() -> impl Strategy<Value = Mailbox> {
        (local_part(), domain()).prop_map(|(l, d)| mailbox(&l, &d))
    }

    fn command() -> impl Strategy<Value = Command> {
        let body = prop_oneof![
            Just(None),
            Just(Some(Body::SevenBit)),
            Just(Some(Body::EightBitMime))
        ];
        let from = prop_oneof![
            Just(ReversePath::Null),
            a_mailbox().prop_map(ReversePath::Mailbox)
        ];
        let to = prop_oneof![
            Just(ForwardPath::Postmaster),
            a_mailbox().prop_map(ForwardPath::Mailbox)
        ];
        prop_oneof![
            domain().prop_map(Command::Ehlo),
            domain().prop_map(Command::Helo),
            (from, prop::option::of(any::<u64>()), body).prop_map(|(from, size, body)| {
                Command::Mail {
                    from,
                    params: MailParams { size, body },
                }
            }),
            to.prop_map(|to| Command::Rcpt { to }),
            Just(Command::Data),
            Just(Command::Rset),
            Just(Command::Noop),
            Just(Command::Quit),
            "[!-~]([ -~]{0,20}[!-~])?".prop_map(Command::Vrfy),
            Just(Command::Help),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(line in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&line);
        }

        #[test]
        fn parse_never_panics_on_near_commands(
            verb in prop_oneof![Just("MAIL FROM:"), Just("RCPT TO:"), Just("EHLO "), Just("mail from: ")],
            rest in "[<>@\\[\\]\":,. =a-zA-Z0-9\\\\-]{0,80}",
        ) {
            let _ = parse(format!("{verb}{rest}").as_bytes());
        }

        #[test]
        fn formatted_command_round_trips(cmd in command()) {
            let line = cmd.to_string();
            prop_assert_eq!(parse(line.as_bytes()), Ok(cmd), "{}", line);
        }
    }
}
