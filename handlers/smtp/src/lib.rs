//! `smtp`: an RFC 5321 mail server that stores what it accepts in a maildir.
//!
//! It speaks EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, VRFY (answered 252),
//! HELP and QUIT, and offers PIPELINING, SIZE, 8BITMIME and
//! ENHANCEDSTATUSCODES. Every message accepted with a `250` is in the
//! maildir's `new/`, complete and synced to disk; a message that cannot be
//! stored gets `451` (`452` when the disk or quota is full) and nothing of
//! it stays. There is no relaying, no authentication and no TLS: it is a
//! final destination for mail.
//!
//! ```text
//!                 bytes                  handle_input(bytes, now)               parse(line)
//!  client ───────────────► protocol.rs ─────────────────────────► session.rs ─────────────► command.rs
//!    ▲                    (the loop's    ◄── poll_reply ─────────  (state      ◄── Command ──
//!    │      replies        Protocol)     ◄── poll_event ─────────   machine)
//!    └───────────────────────  │  │        Begin, Append(text)…,        ▲   │ refusals
//!                              │  │        Finish | Abort               │   ▼
//!                              │  └── delivered(Ok(id) | Err) ──────────┤  reply.rs: error enums
//!                              │      store_failed(Err) ────────────────┘   → reply codes
//!                              ▼
//!          maildir.rs: begin ─► tmp/NAME ─append…─► fsync, link ─► new/NAME, fsync new/
//!                                 └── Abort, error or connection gone: unlink ──┘
//! ```
//!
//! - [`session`] is the protocol, without I/O: bytes and the time in,
//!   replies and the message text out, in pieces. Line limits (512 octets
//!   for a command, 1000 for a text line, not counting a stuffed dot), the
//!   message size limit, the recipient limit and the end of DATA (only
//!   `CRLF "." CRLF`: no SMTP smuggling) are enforced there, with memory
//!   bounded by a constant.
//! - [`command`] parses one command line; [`reply`] holds every reply and
//!   the error enums that map to them.
//! - [`maildir`] writes a message into `tmp/` as it arrives and moves it
//!   into `new/` atomically at its end; [`protocol`] connects the session
//!   to the loop.
//!
//! The stored message is the client's text (dot-unstuffed, lines ended by
//! CRLF) after two trace headers: `Return-Path: <sender>` and
//! `Received: from HELO-NAME ([PEER-IP]) by HOSTNAME with ESMTP; DATE`,
//! dated when the DATA command was taken.
//!
//! A message is never held whole in memory: its text goes to its file in
//! `tmp/` in pieces of at most 64 KiB, so a connection holds at most 64 KiB
//! of it plus one line, whatever `max_size` (the disk holds the rest; see
//! [`session::Config::buffer_bound`]). The text is written from the loop
//! thread (into the page cache); the fsync and link at the end of each
//! message run on the offload pool (`gaidaros::Ctx::offload`), so a slow
//! disk does not stall the loop's other connections.
//!
//! Options (`-o KEY=VALUE`, or in a `[listener.NAME]` section with
//! `handler = smtp`): `maildir` (required), `hostname`, `max_size`,
//! `max_recipients`; see [`spec`]. The listener's `idle_timeout` closes
//! silent sessions (RFC 5321 4.5.3.2 suggests minutes: raise it from the
//! default 60s for slow clients).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod command;
pub mod maildir;
pub mod protocol;
pub mod reply;
pub mod session;

use std::path::PathBuf;
use std::sync::Arc;

use gaidaros::{Handler, HandlerSpec, OptionError, OptionSpec, Options};

pub use maildir::{Maildir, MaildirError};
pub use protocol::{SmtpConnection, SmtpFactory};
pub use session::{Config, Session};

/// Default of `max_size`: 10 MiB, about Postfix's `message_size_limit`.
pub const DEFAULT_MAX_SIZE: usize = 10 << 20;
/// The largest `max_size` allowed: 2 GiB. A message is not held in memory
/// (it goes to `tmp/` as it arrives), but each connection may fill this
/// much of the disk before it is refused, and few mail readers cope with
/// larger messages.
pub const MAX_MAX_SIZE: usize = 2 << 30;
/// Default of `max_recipients`: the minimum RFC 5321 4.5.3.1.8 requires.
pub const DEFAULT_MAX_RECIPIENTS: usize = 100;
/// The largest `max_recipients` allowed (each takes up to 256 octets).
pub const MAX_MAX_RECIPIENTS: usize = 100_000;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "maildir",
        default: None,
        help: "maildir to store messages in; tmp/, new/ and cur/ are created if missing, and start-up fails if it cannot be written",
    },
    OptionSpec {
        name: "hostname",
        default: Some("this machine's host name"),
        help: "name in the greeting, replies, Received headers and maildir file names",
    },
    OptionSpec {
        name: "max_size",
        default: Some("10MiB"),
        help: "largest message (K/M/G suffixes, at most 2GiB), advertised with SIZE; larger ones get 552 5.3.4; written to tmp/ as it arrives, not held in memory",
    },
    OptionSpec {
        name: "max_recipients",
        default: Some("100"),
        help: "most recipients of one message (100 to 100000; RFC 5321 asks for at least 100); the next RCPT gets 452 4.5.3",
    },
];

/// Registry entry.
pub fn spec() -> HandlerSpec {
    HandlerSpec {
        name: "smtp",
        about: "SMTP server (RFC 5321, PIPELINING, SIZE, 8BITMIME) delivering into a maildir",
        options: OPTIONS,
        build,
    }
}

fn build(options: &Options) -> Result<Handler, OptionError> {
    let config = config(options)?;
    let raw = options.get("maildir").unwrap_or_default();
    let root = PathBuf::from(raw.trim());
    let maildir = Maildir::open(&root, &config.hostname).map_err(|e| OptionError {
        key: "maildir".into(),
        value: raw.into(),
        expected: format!("a maildir that can be created and written ({e})"),
    })?;
    Ok(Handler::Protocol(Arc::new(SmtpFactory::new(
        config, maildir,
    ))))
}

/// The session settings from the options (all but opening the maildir).
fn config(options: &Options) -> Result<Config, OptionError> {
    let maildir = options.get("maildir").map(str::trim).unwrap_or_default();
    if maildir.is_empty() {
        return Err(OptionError {
            key: "maildir".into(),
            value: maildir.into(),
            expected: "a directory path (this option is required)".into(),
        });
    }
    let hostname = match options.get("hostname") {
        Some(name) => {
            let name = name.trim();
            if !valid_hostname(name) {
                return Err(OptionError {
                    key: "hostname".into(),
                    value: name.into(),
                    expected: "a host name: 1 to 255 visible ASCII characters without ()<>\"\\"
                        .into(),
                });
            }
            name.to_string()
        }
        None => machine_hostname(),
    };
    let max_size = match options.get("max_size") {
        None => DEFAULT_MAX_SIZE,
        Some(v) => gaidaros::config::parse_size(v)
            .filter(|n| (1..=MAX_MAX_SIZE).contains(n))
            .ok_or_else(|| OptionError {
                key: "max_size".into(),
                value: v.into(),
                expected: "a size from 1 to 2GiB: bytes, or with a suffix K, M, G (KiB, MiB, GiB)"
                    .into(),
            })?,
    };
    let expected = "a number from 100 to 100000 (RFC 5321 4.5.3.1.8: at least 100)";
    let max_recipients: usize =
        options.parse_or("max_recipients", DEFAULT_MAX_RECIPIENTS, expected)?;
    if !(DEFAULT_MAX_RECIPIENTS..=MAX_MAX_RECIPIENTS).contains(&max_recipients) {
        return Err(OptionError {
            key: "max_recipients".into(),
            value: max_recipients.to_string(),
            expected: expected.into(),
        });
    }
    Ok(Config {
        hostname,
        max_size,
        max_recipients,
        text_buffer: session::TEXT_BUFFER,
    })
}

/// Fit for the greeting and the Received header?
fn valid_hostname(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>\"\\".contains(&b))
}

/// The machine's host name, or `localhost` when it has none usable.
fn machine_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|n| n.into_string().ok())
        .filter(|n| valid_hostname(n))
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> Options {
        let mut o = Options::new();
        for (k, v) in pairs {
            o.set(*k, *v);
        }
        o
    }

    #[test]
    fn defaults() {
        let c = config(&options(&[("maildir", "/m")])).unwrap();
        assert_eq!(c.max_size, 10 << 20);
        assert_eq!(c.max_recipients, 100);
        assert!(valid_hostname(&c.hostname), "{:?}", c.hostname);
    }

    #[test]
    fn sizes_with_suffixes() {
        for (text, want) in [
            ("1000", 1000),
            ("64K", 64 << 10),
            ("2MiB", 2 << 20),
            ("1G", 1 << 30),
            ("2G", 2 << 30),
        ] {
            let c = config(&options(&[("maildir", "/m"), ("max_size", text)])).unwrap();
            assert_eq!(c.max_size, want, "{text}");
        }
        for bad in ["0", "3G", "2049M", "ten", "-1", "1T"] {
            let e = config(&options(&[("maildir", "/m"), ("max_size", bad)])).unwrap_err();
            assert_eq!(e.key, "max_size", "{bad}");
        }
    }

    #[test]
    fn recipients_below_the_rfc_minimum_are_refused() {
        let e = config(&options(&[("maildir", "/m"), ("max_recipients", "99")])).unwrap_err();
        assert!(e.expected.contains("at least 100"), "{e}");
        let c = config(&options(&[("maildir", "/m"), ("max_recipients", "500")])).unwrap();
        assert_eq!(c.max_recipients, 500);
    }

    #[test]
    fn maildir_is_required_and_hostname_checked() {
        let e = config(&options(&[])).unwrap_err();
        assert_eq!(e.key, "maildir");
        assert!(e.expected.contains("required"), "{e}");
        let e = config(&options(&[("maildir", "/m"), ("hostname", "a b")])).unwrap_err();
        assert_eq!(e.key, "hostname");
        let c = config(&options(&[("maildir", "/m"), ("hostname", "mx.example")])).unwrap();
        assert_eq!(c.hostname, "mx.example");
    }

    #[test]
    fn build_fails_clearly_on_a_maildir_that_cannot_be_made() {
        let file =
            std::env::temp_dir().join(format!("gaidaros-smtp-notdir-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let path = file.join("Maildir");
        let e = build(&options(&[("maildir", path.to_str().unwrap())])).unwrap_err();
        let _ = std::fs::remove_file(&file);
        assert_eq!(e.key, "maildir");
        assert!(e.expected.contains("cannot create directory"), "{e}");
    }
}
