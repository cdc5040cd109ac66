//! The `smtp` handler as mail clients meet it: python's smtplib and swaks
//! (pipelining) deliver messages that land intact in the maildir's `new/`;
//! raw sessions get the exact reply codes for the limits (message size,
//! SIZE=, text and command line lengths, recipients), for SMTP smuggling
//! attempts (a bare-LF dot never ends DATA, nothing smuggled is stored),
//! for a maildir that stops being writable (451, nothing accepted is lost,
//! the server keeps serving), for a write that fails mid-message (451, the
//! session goes on) and for a client that keeps erring (421) — but not for
//! a pipelining client whose MAIL was refused. Large messages go to `tmp/`
//! as they arrive (the server's memory does not grow with them), and
//! nothing of a refused or abandoned message stays in `tmp/`.
//!
//! swaks and python3 are required: a missing one fails the test with the
//! package to install.

#[macro_use]
mod util;

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use util::{connect, gaidaros, read_to_eof, End, Mode, Server, ServerCmd, TempDir};

/// How long a client program may run.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);
const HOSTNAME: &str = "mx.test";

/// A maildir in a fresh temporary directory.
struct Mail {
    dir: TempDir,
    root: PathBuf,
}

impl Mail {
    fn new(tag: &str) -> Mail {
        let dir = TempDir::new(tag);
        let root = dir.path().join("Maildir");
        Mail { dir, root }
    }

    fn option(&self) -> String {
        format!("maildir={}", self.root.display())
    }

    /// The messages in `new/`, sorted by content.
    fn messages(&self) -> Vec<Vec<u8>> {
        let mut all: Vec<Vec<u8>> = files(&self.root.join("new"))
            .iter()
            .map(|p| fs::read(p).expect("read a message"))
            .collect();
        all.sort();
        all
    }

    fn assert_tmp_empty(&self) {
        assert_eq!(
            files(&self.root.join("tmp")),
            Vec::<PathBuf>::new(),
            "tmp/ is empty"
        );
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    out.sort();
    out
}

/// `gaidaros --handler smtp` on `mail`, with `extra` options.
fn start(mail: &Mail, mode: Mode, extra: &[&str]) -> Server {
    smtp_server(mail, mode, extra).start()
}

/// The command of [`start`], not started yet.
fn smtp_server(mail: &Mail, mode: Mode, extra: &[&str]) -> ServerCmd {
    let mut args = vec![
        "--handler".to_string(),
        "smtp".into(),
        "-o".into(),
        mail.option(),
        "-o".into(),
        format!("hostname={HOSTNAME}"),
    ];
    for o in extra {
        args.push("-o".into());
        args.push(o.to_string());
    }
    gaidaros().mode(mode).args(&args)
}

/// A stored message: the two trace headers this server adds, then the
/// client's text. Checks the headers and returns the text.
fn split_trace<'a>(stored: &'a [u8], sender: &str, helo: &str) -> &'a [u8] {
    let text = String::from_utf8_lossy(stored);
    let return_path = format!("Return-Path: <{sender}>\r\n");
    assert!(
        text.starts_with(&return_path),
        "starts with {return_path:?}: {text}"
    );
    let rest = &stored[return_path.len()..];
    let end = rest
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("a Received line");
    let received = String::from_utf8_lossy(&rest[..end]);
    let want = format!("Received: from {helo} ([127.0.0.1]) by {HOSTNAME} with ESMTP; ");
    assert!(
        received.starts_with(&want),
        "{received:?} starts with {want:?}"
    );
    assert!(
        is_rfc5322_date(&received[want.len()..]),
        "{received:?} ends with a date"
    );
    &rest[end + 2..]
}

/// `Sun, 22 Nov 2026 05:11:21 +0000`: RFC 5322, numeric zone.
fn is_rfc5322_date(date: &str) -> bool {
    let shape = date
        .bytes()
        .map(|b| match b {
            b'0'..=b'9' => b'9',
            b'A'..=b'Z' | b'a'..=b'z' => b'a',
            other => other,
        })
        .collect::<Vec<u8>>();
    shape == b"aaa, 99 aaa 9999 99:99:99 +9999" && date.ends_with(" +0000")
}

/// A raw SMTP client.
struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

/// One reply: the code and the lines as received.
#[derive(Debug)]
struct Reply {
    code: u16,
    text: String,
}

impl Client {
    /// Connect and read the greeting.
    fn new(addr: SocketAddr) -> Client {
        let stream = connect(addr);
        let reader = BufReader::new(stream.try_clone().expect("clone the socket"));
        let mut c = Client { stream, reader };
        let greeting = c.reply();
        assert_eq!(greeting.code, 220, "{greeting:?}");
        assert_eq!(greeting.text, format!("220 {HOSTNAME} ESMTP gaidaros\r\n"));
        c
    }

    /// Connect, read the greeting and say EHLO.
    fn ehlo(addr: SocketAddr) -> Client {
        let mut c = Client::new(addr);
        c.send(b"EHLO raw.test\r\n");
        let r = c.reply();
        assert_eq!(r.code, 250, "{r:?}");
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("send {:?}: {e}", String::from_utf8_lossy(bytes)));
    }

    /// Read one reply (all its lines).
    fn reply(&mut self) -> Reply {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => panic!("EOF while reading a reply; got so far: {text:?}"),
                Ok(_) => {}
                Err(e) => panic!("{e} while reading a reply; got so far: {text:?}"),
            }
            text.push_str(&line);
            let bytes = line.as_bytes();
            assert!(
                bytes.len() >= 6
                    && bytes[..3].iter().all(u8::is_ascii_digit)
                    && line.ends_with("\r\n"),
                "malformed reply line {line:?}"
            );
            if bytes[3] == b' ' {
                let code = line[..3].parse().expect("three digits");
                return Reply { code, text };
            }
        }
    }

    /// Read `n` replies; their codes.
    fn codes(&mut self, n: usize) -> Vec<u16> {
        (0..n).map(|_| self.reply().code).collect()
    }

    /// Read one reply and expect `code` (and, when given, `status`).
    fn expect(&mut self, code: u16, status: Option<&str>) -> Reply {
        let r = self.reply();
        assert_eq!(r.code, code, "{r:?}");
        if let Some(status) = status {
            assert_eq!(&r.text[4..4 + status.len()], status, "{r:?}");
        }
        r
    }

    /// QUIT, expect 221 and then EOF.
    fn quit(mut self) {
        self.send(b"QUIT\r\n");
        self.expect(221, Some("2.0.0"));
        let mut rest = Vec::new();
        let end = self.reader.read_to_end(&mut rest);
        assert!(
            end.is_ok() && rest.is_empty(),
            "EOF after 221, got {end:?} {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// The envelope of one message from raw.test, pipelined.
const ENVELOPE: &[u8] = b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<rcpt@example.net>\r\nDATA\r\n";

/// Send the envelope and `text` (which ends the data itself) and return
/// the codes of MAIL, RCPT, DATA and the end of data.
fn send_message(c: &mut Client, text: &[u8]) -> Vec<u16> {
    c.send(ENVELOPE);
    assert_eq!(c.codes(3), [250, 250, 354]);
    c.send(text);
    let mut codes = vec![250, 250, 354];
    codes.push(c.reply().code);
    codes
}

// ---------------------------------------------------------------- clients

/// Fail with the package to install when `program` is not on PATH.
fn require(program: &str, package: &str) {
    match Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
            "{program} is not on PATH: install the `{package}` package (CI installs it); this test needs it"
        ),
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

/// What a client program did.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Run `cmd` with `input` on stdin; killed (a panic) after `CLIENT_LIMIT`.
fn run(mut cmd: Command, input: &[u8]) -> Run {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + CLIENT_LIMIT;
    let status = loop {
        match child.try_wait().expect("wait for the client") {
            Some(status) => break status,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{cmd:?} still running after {CLIENT_LIMIT:?}; stderr:\n{}",
                    err.join().unwrap_or_default()
                );
            }
        }
    };
    let _ = writer.join();
    Run {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Sends the message on stdin to three recipients with smtplib, checking
/// the extensions first; prints the refused recipients.
const SMTPLIB_SCRIPT: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
msg = sys.stdin.buffer.read()
with smtplib.SMTP("127.0.0.1", port, local_hostname="python.test", timeout=10) as s:
    code, _ = s.ehlo()
    assert code == 250, code
    for ext in ("pipelining", "size", "8bitmime", "enhancedstatuscodes"):
        assert s.has_extn(ext), ext
    refused = s.sendmail(
        "alice@example.org",
        ["bob@example.net", "carol@example.com", "Dave <dave@example.com>"],
        msg,
        mail_options=["BODY=8BITMIME"],
    )
    print("refused", refused)
"#;

/// With dots at line starts (stuffed by smtplib, unstuffed by the server),
/// a line that is a lone dot, 8-bit text and an empty last line.
const SMTPLIB_MESSAGE: &[u8] = b"From: Alice <alice@example.org>\r\n\
To: bob@example.net, carol@example.com, dave@example.com\r\n\
Subject: smtplib to gaidaros\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Hello from smtplib.\r\n\
.A line starting with a dot\r\n\
..and one with two\r\n\
.\r\n\
Gr\xc3\xbc\xc3\x9fe, eight-bit text\r\n\
\r\n";

#[test]
fn python_smtplib_delivers_a_multi_recipient_message_intact() {
    require("python3", "python3");
    let mail = Mail::new("smtp-python");
    let server = start(&mail, Mode::Blocking, &[]);
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SMTPLIB_SCRIPT, &server.addr().port().to_string()]);
    let r = run(cmd, SMTPLIB_MESSAGE);
    assert!(
        r.status.success() && r.stdout.trim() == "refused {}",
        "smtplib: {r:?}; server log:\n{}",
        server.log()
    );
    let messages = mail.messages();
    assert_eq!(messages.len(), 1, "one message in new/");
    let text = split_trace(&messages[0], "alice@example.org", "python.test");
    assert_eq!(
        String::from_utf8_lossy(text),
        String::from_utf8_lossy(SMTPLIB_MESSAGE),
        "stored intact"
    );
    mail.assert_tmp_empty();
    assert!(
        server.logged(&["recipients=3"]),
        "delivery logged with 3 recipients:\n{}",
        server.log()
    );
    server.stop();
}

#[test]
fn swaks_with_pipelining_delivers_a_message() {
    require("swaks", "swaks");
    let mail = Mail::new("smtp-swaks");
    let server = start(&mail, Mode::Thread, &[]);
    let mut cmd = Command::new("swaks");
    cmd.args([
        "--server",
        &format!("127.0.0.1:{}", server.addr().port()),
        "--helo",
        "swaks.test",
        "--from",
        "sender@example.org",
        "--to",
        "a@example.net,b@example.net",
        "--pipeline",
        "--header",
        "Subject: swaks pipelining",
        "--body",
        "gaidaros swaks test body",
    ]);
    let r = run(cmd, b"");
    assert!(
        r.status.success(),
        "swaks exited {}:\n{}\n{}\nserver log:\n{}",
        r.status,
        r.stdout,
        r.stderr,
        server.log()
    );
    // swaks pipelined: DATA went out before the reply to MAIL came back.
    let data_sent = r.stdout.find(" -> DATA").expect("swaks sent DATA");
    let mail_ok = r.stdout.find("<-  250 2.1.0").expect("MAIL accepted");
    assert!(data_sent < mail_ok, "pipelined:\n{}", r.stdout);
    assert!(
        r.stdout.contains("<-  250 2.0.0 OK: queued as "),
        "{}",
        r.stdout
    );
    let messages = mail.messages();
    assert_eq!(messages.len(), 1, "one message in new/");
    let text = String::from_utf8_lossy(split_trace(
        &messages[0],
        "sender@example.org",
        "swaks.test",
    ))
    .into_owned();
    for want in [
        "\r\nSubject: swaks pipelining\r\n",
        "\r\nX-Mailer: swaks",
        "\r\n\r\ngaidaros swaks test body\r\n",
    ] {
        assert!(
            text.contains(want),
            "{want:?} in the stored message:\n{text}"
        );
    }
    mail.assert_tmp_empty();
    server.stop();
}

// ------------------------------------------------------------ raw sessions

/// A whole session in one write, twice over (two messages), is answered in
/// order and both messages are stored.
fn pipelined_session_in_one_write(mode: Mode) {
    let mail = Mail::new("smtp-pipelined");
    let server = start(&mail, mode, &[]);
    let mut c = Client::new(server.addr());
    c.send(
        b"EHLO raw.test\r\nMAIL FROM:<sender@example.org> SIZE=20\r\nRCPT TO:<a@example.net>\r\n\
          RCPT TO:<Postmaster>\r\nDATA\r\nfirst\r\n..dot\r\n.\r\n\
          MAIL FROM:<>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n.\r\nRSET\r\nNOOP\r\nVRFY someone\r\n",
    );
    assert_eq!(
        c.codes(13),
        [250, 250, 250, 250, 354, 250, 250, 250, 354, 250, 250, 250, 252]
    );
    c.quit();
    let messages = mail.messages();
    assert_eq!(messages.len(), 2);
    let texts: Vec<&[u8]> = messages
        .iter()
        .map(|m| {
            if m.starts_with(b"Return-Path: <>") {
                split_trace(m, "", "raw.test")
            } else {
                split_trace(m, "sender@example.org", "raw.test")
            }
        })
        .collect();
    assert!(texts.contains(&&b"first\r\n.dot\r\n"[..]), "{texts:?}");
    assert!(texts.contains(&&b""[..]), "the empty message: {texts:?}");
    server.stop();
}

#[test]
fn oversized_message_gets_552_after_its_end_and_the_session_goes_on() {
    let mail = Mail::new("smtp-size");
    let server = start(&mail, Mode::Blocking, &["max_size=10K"]);
    let mut c = Client::ehlo(server.addr());
    let line = format!("{}\r\n", "x".repeat(98));
    let exactly = line.repeat(10 * 1024 / 100) + &"y".repeat(10 * 1024 % 100 - 2) + "\r\n";
    assert_eq!(exactly.len(), 10 * 1024);
    assert_eq!(
        send_message(&mut c, format!("{exactly}.\r\n").as_bytes()),
        [250, 250, 354, 250],
        "exactly max_size"
    );
    // 100 KiB: ten times the limit, all read and dropped.
    let big = line.repeat(1024);
    c.send(ENVELOPE);
    assert_eq!(c.codes(3), [250, 250, 354]);
    c.send(big.as_bytes());
    c.send(b"z\r\n.\r\n");
    let r = c.expect(552, Some("5.3.4"));
    assert!(r.text.contains("10240"), "{r:?}");
    assert_eq!(
        send_message(&mut c, b"after\r\n.\r\n"),
        [250, 250, 354, 250]
    );
    c.quit();
    let messages = mail.messages();
    assert_eq!(messages.len(), 2, "exactly max_size and the small one");
    assert!(messages.iter().all(|m| m.len() < 11 * 1024));
    mail.assert_tmp_empty();
    server.stop();
}

#[test]
fn size_parameter_over_the_limit_gets_552_at_once() {
    let mail = Mail::new("smtp-size-param");
    let server = start(&mail, Mode::Blocking, &["max_size=10K"]);
    let mut c = Client::new(server.addr());
    c.send(b"EHLO raw.test\r\n");
    let ehlo = c.expect(250, None);
    assert!(ehlo.text.contains("250-SIZE 10240\r\n"), "{ehlo:?}");
    c.send(b"MAIL FROM:<a@example.org> SIZE=10241\r\n");
    c.expect(552, Some("5.3.4"));
    c.send(b"MAIL FROM:<a@example.org> SIZE=10240\r\n");
    c.expect(250, Some("2.1.0"));
    c.quit();
    server.stop();
}

#[test]
fn text_line_over_1000_octets_gets_554_and_nothing_is_stored() {
    let mail = Mail::new("smtp-text-line");
    let server = start(&mail, Mode::Blocking, &[]);
    let mut c = Client::ehlo(server.addr());
    let fits = format!("{}\r\n", "a".repeat(998));
    assert_eq!(
        send_message(&mut c, format!("{fits}.\r\n").as_bytes()),
        [250, 250, 354, 250],
        "1000 octets with CRLF"
    );
    // 998 octets of text starting with a dot: 1001 on the wire, stuffed.
    let dotted = format!(".{}\r\n", "d".repeat(997));
    assert_eq!(
        send_message(&mut c, format!(".{dotted}.\r\n").as_bytes()),
        [250, 250, 354, 250],
        "a stuffed dot does not count (RFC 5321 4.5.3.1.6)"
    );
    let over = format!("{}\r\n", "b".repeat(999));
    c.send(ENVELOPE);
    assert_eq!(c.codes(3), [250, 250, 354]);
    c.send(format!("{over}more text\r\n.\r\n").as_bytes());
    let r = c.expect(554, Some("5.6.0"));
    assert!(r.text.contains("1000"), "{r:?}");
    c.quit();
    let mut messages = mail.messages();
    assert_eq!(messages.len(), 2);
    messages.sort_by_key(|m| m.ends_with(dotted.as_bytes()));
    assert!(messages[0].ends_with(fits.as_bytes()));
    assert!(messages[1].ends_with(format!("\r\n{dotted}").as_bytes()));
    mail.assert_tmp_empty();
    server.stop();
}

#[test]
fn command_line_over_512_octets_gets_500_and_the_session_goes_on() {
    let mail = Mail::new("smtp-cmd-line");
    let server = start(&mail, Mode::Blocking, &[]);
    let mut c = Client::ehlo(server.addr());
    let fits = format!("NOOP {}\r\n", "a".repeat(505));
    assert_eq!(fits.len(), 512);
    c.send(fits.as_bytes());
    c.expect(250, Some("2.0.0"));
    let over = format!("NOOP {}\r\n", "a".repeat(506));
    c.send(over.as_bytes());
    let r = c.expect(500, Some("5.5.2"));
    assert!(r.text.contains("512"), "{r:?}");
    // A 100 KiB line: one 500, no disconnect (it is never buffered).
    c.send(&[b'M'; 100 * 1024]);
    c.send(b"\r\nNOOP\r\n");
    c.expect(500, Some("5.5.2"));
    c.expect(250, Some("2.0.0"));
    c.quit();
    server.stop();
}

/// The attacker's second message, behind a fake end of data.
const SMUGGLED: &[u8] =
    b"MAIL FROM:<admin@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n\
From: admin@example.org\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n.\r\n";

fn smuggling_is_refused_and_nothing_is_stored(mode: Mode) {
    let mail = Mail::new("smtp-smuggle");
    let server = start(&mail, mode, &[]);
    for fake_end in [&b"\n.\n"[..], b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"] {
        let shown = String::from_utf8_lossy(fake_end).escape_debug().to_string();
        let mut c = Client::new(server.addr());
        // Everything in one write, as an attacker relaying through an
        // upstream server would.
        let mut attack = b"EHLO raw.test\r\n".to_vec();
        attack.extend_from_slice(ENVELOPE);
        attack.extend_from_slice(b"Subject: legit\r\n\r\nhello");
        attack.extend_from_slice(fake_end);
        attack.extend_from_slice(SMUGGLED);
        c.send(&attack);
        // EHLO, MAIL, RCPT, DATA; then the whole rest is one message,
        // refused for its bare line ending at the real CRLF.CRLF.
        assert_eq!(c.codes(4), [250, 250, 250, 354], "{shown}");
        let r = c.expect(550, Some("5.5.2"));
        assert!(r.text.contains("bare CR or LF"), "{shown}: {r:?}");
        // The session is back to commands.
        c.send(b"NOOP\r\n");
        c.expect(250, Some("2.0.0"));
        c.quit();
    }
    assert_eq!(mail.messages(), Vec::<Vec<u8>>::new(), "nothing stored");
    // A clean message on the same server is stored.
    let mut c = Client::ehlo(server.addr());
    assert_eq!(
        send_message(&mut c, b"clean\r\n.\r\n"),
        [250, 250, 354, 250]
    );
    c.quit();
    let messages = mail.messages();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].ends_with(b"\r\nclean\r\n"));
    server.stop();
}

per_server_type!(
    pipelined_session_in_one_write,
    smuggling_is_refused_and_nothing_is_stored,
);

#[test]
fn unwritable_maildir_gets_451_keeps_what_was_accepted_and_recovers() {
    let mail = Mail::new("smtp-452");
    let server = start(&mail, Mode::Blocking, &[]);
    let mut c = Client::ehlo(server.addr());
    assert_eq!(
        send_message(&mut c, b"first\r\n.\r\n"),
        [250, 250, 354, 250]
    );
    // tmp/ becomes a regular file (permissions would not stop root).
    let tmp = mail.root.join("tmp");
    fs::remove_dir(&tmp).expect("remove tmp/");
    fs::write(&tmp, b"in the way").expect("a file for tmp/");
    c.send(ENVELOPE);
    assert_eq!(c.codes(3), [250, 250, 354]);
    c.send(b"second\r\n.\r\n");
    c.expect(451, Some("4.3.0"));
    let messages = mail.messages();
    assert_eq!(messages.len(), 1, "only the first");
    assert!(messages[0].ends_with(b"\r\nfirst\r\n"));
    assert!(server.logged(&["delivery failed"]), "{}", server.log());
    // Fixed: the same session, and a new one, deliver again.
    fs::remove_file(&tmp).expect("remove the file");
    fs::create_dir(&tmp).expect("tmp/ again");
    assert_eq!(
        send_message(&mut c, b"third\r\n.\r\n"),
        [250, 250, 354, 250]
    );
    c.quit();
    let mut c = Client::ehlo(server.addr());
    assert_eq!(
        send_message(&mut c, b"fourth\r\n.\r\n"),
        [250, 250, 354, 250]
    );
    c.quit();
    let mut texts: Vec<String> = mail
        .messages()
        .iter()
        .map(|m| {
            String::from_utf8_lossy(split_trace(m, "sender@example.org", "raw.test")).into_owned()
        })
        .collect();
    // By text: the messages sort by their trace headers first, whose dates
    // may fall in different seconds.
    texts.sort();
    assert_eq!(texts, ["first\r\n", "fourth\r\n", "third\r\n"]);
    mail.assert_tmp_empty();
    server.stop();
}

#[test]
fn recipients_beyond_100_get_452_and_the_message_goes_to_the_first_100() {
    let mail = Mail::new("smtp-rcpt");
    let server = start(&mail, Mode::Blocking, &[]);
    let mut c = Client::ehlo(server.addr());
    let mut batch = b"MAIL FROM:<sender@example.org>\r\n".to_vec();
    for i in 0..120 {
        batch.extend_from_slice(format!("RCPT TO:<r{i}@example.net>\r\n").as_bytes());
    }
    batch.extend_from_slice(b"DATA\r\n");
    c.send(&batch);
    let codes = c.codes(122);
    assert_eq!(codes[..101], [250; 101], "MAIL and 100 recipients");
    assert_eq!(codes[101..121], [452; 20]);
    assert_eq!(codes[121], 354);
    c.send(b"to many\r\n.\r\n");
    c.expect(250, Some("2.0.0"));
    c.quit();
    assert_eq!(mail.messages().len(), 1);
    assert!(
        server.logged(&["recipients=100"]),
        "delivered to 100:\n{}",
        server.log()
    );
    server.stop();
}

#[test]
fn conf_file_listener_with_more_recipients() {
    let mail = Mail::new("smtp-conf");
    let conf = mail.dir.write(
        "smtp.conf",
        &format!(
            "[server]\ntype = blocking\n\n[listener.mail]\nhandler = smtp\nport = 0\nmaildir = {}\nhostname = {HOSTNAME}\nmax_recipients = 150\nmax_size = 1M\n",
            mail.root.display()
        ),
    );
    let server = util::gaidaros_bare()
        .args(&["-c", conf.to_str().expect("utf-8 path")])
        .start();
    let mut c = Client::new(server.addr_of("mail"));
    c.send(b"EHLO raw.test\r\n");
    let ehlo = c.expect(250, None);
    assert!(ehlo.text.contains("250-SIZE 1048576\r\n"), "{ehlo:?}");
    let mut batch = b"MAIL FROM:<sender@example.org>\r\n".to_vec();
    for i in 0..151 {
        batch.extend_from_slice(format!("RCPT TO:<r{i}@example.net>\r\n").as_bytes());
    }
    c.send(&batch);
    let codes = c.codes(152);
    assert_eq!(codes[..151], [250; 151]);
    assert_eq!(codes[151], 452);
    c.quit();
    server.stop();
}

#[test]
fn too_many_errors_get_421_and_a_close() {
    let mail = Mail::new("smtp-errors");
    let server = start(&mail, Mode::Blocking, &[]);
    let mut c = Client::ehlo(server.addr());
    c.send(&b"FOO\r\n".repeat(25));
    assert_eq!(c.codes(20), [500; 20]);
    let r = c.expect(421, Some("4.7.0"));
    assert!(
        r.text.starts_with(&format!("421 4.7.0 {HOSTNAME} ")),
        "{r:?}"
    );
    assert!(c.reader.buffer().is_empty(), "nothing after 421");
    let (rest, end) = read_to_eof(c.reader.get_mut(), Duration::from_secs(10));
    assert!(
        rest.is_empty() && matches!(end, End::Eof),
        "closed after 421: {end:?} {:?}",
        String::from_utf8_lossy(&rest)
    );
    server.stop();
}

#[test]
fn a_pipelined_transaction_whose_mail_is_refused_is_not_cut_off_with_421() {
    let mail = Mail::new("smtp-pipelined-refusal");
    let server = start(&mail, Mode::Blocking, &["max_size=10K"]);
    let mut c = Client::ehlo(server.addr());
    // What a PIPELINING client sends before it sees a reply: MAIL (too
    // big), 25 RCPTs and DATA. Every RCPT and the DATA get 503; none of
    // those 26 counts towards the limit of 20 errors.
    let mut batch = b"MAIL FROM:<sender@example.org> SIZE=20000\r\n".to_vec();
    for i in 0..25 {
        batch.extend_from_slice(format!("RCPT TO:<r{i}@example.net>\r\n").as_bytes());
    }
    batch.extend_from_slice(b"DATA\r\n");
    c.send(&batch);
    c.expect(552, Some("5.3.4"));
    for _ in 0..26 {
        c.expect(503, Some("5.5.1"));
    }
    c.send(b"RSET\r\n");
    c.expect(250, Some("2.0.0"));
    assert_eq!(
        send_message(&mut c, b"smaller\r\n.\r\n"),
        [250, 250, 354, 250]
    );
    c.quit();
    assert_eq!(mail.messages().len(), 1);
    server.stop();
}

/// The sizes of the files in `dir`.
fn sizes(dir: &Path) -> Vec<u64> {
    files(dir)
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .collect()
}

#[test]
fn large_messages_stream_to_tmp_and_do_not_grow_the_server() {
    const TEXT: usize = 12_000_000;
    let mail = Mail::new("smtp-stream");
    let server = start(&mail, Mode::Blocking, &["max_size=64M"]);
    let before = server.rss_kib();
    let line = format!("{}\r\n", "s".repeat(78));
    let text = line.repeat(TEXT / line.len());
    // Three clients, each in the middle of a 12 MB message.
    let mut clients: Vec<Client> = (0..3).map(|_| Client::ehlo(server.addr())).collect();
    for c in &mut clients {
        c.send(ENVELOPE);
        assert_eq!(c.codes(3), [250, 250, 354]);
        c.send(text.as_bytes());
    }
    let tmp = mail.root.join("tmp");
    let arrived = util::wait_for(Duration::from_secs(20), || {
        let s = sizes(&tmp);
        // All but the last piece, up to 64 KiB, which waits for more.
        s.len() == 3 && s.iter().all(|&n| n > (TEXT - 64 * 1024) as u64)
    });
    assert!(
        arrived,
        "the text is in tmp/ before its end: {:?}",
        sizes(&tmp)
    );
    assert!(sizes(&mail.root.join("new")).is_empty());
    // Held in memory, the three would take 36 MB.
    let grown = server.rss_kib().saturating_sub(before);
    assert!(
        grown < 12 * 1024,
        "the server grew by {grown} KiB for 3 messages of 12 MB in transit"
    );
    for c in &mut clients {
        c.send(b".\r\n");
        c.expect(250, Some("2.0.0"));
    }
    for c in clients {
        c.quit();
    }
    let stored = sizes(&mail.root.join("new"));
    assert_eq!(stored.len(), 3);
    assert!(
        stored
            .iter()
            .all(|&n| n > TEXT as u64 && n < TEXT as u64 + 1000),
        "{stored:?}"
    );
    mail.assert_tmp_empty();
    server.stop();
}

#[test]
fn a_client_gone_mid_message_leaves_nothing_in_tmp() {
    let mail = Mail::new("smtp-gone");
    let server = start(&mail, Mode::Blocking, &[]);
    let mut c = Client::ehlo(server.addr());
    c.send(ENVELOPE);
    assert_eq!(c.codes(3), [250, 250, 354]);
    c.send(format!("{}\r\n", "g".repeat(98)).repeat(2000).as_bytes());
    let tmp = mail.root.join("tmp");
    assert!(
        util::wait_for(Duration::from_secs(10), || sizes(&tmp)
            .iter()
            .any(|&n| n > 100_000)),
        "the text is in tmp/: {:?}",
        sizes(&tmp)
    );
    drop(c);
    assert!(
        util::wait_for(Duration::from_secs(10), || files(&tmp).is_empty()),
        "tmp/ emptied after the client left: {:?}",
        files(&tmp)
    );
    assert!(mail.messages().is_empty());
    let mut c = Client::ehlo(server.addr());
    assert_eq!(send_message(&mut c, b"next\r\n.\r\n"), [250, 250, 354, 250]);
    c.quit();
    server.stop();
}

/// `gaidaros --handler smtp` on `mail` that may not write files over
/// `limit` octets (RLIMIT_FSIZE; the server ignores SIGXFSZ), so that a write past
/// it fails (EFBIG) instead of killing it: a write error mid-message, as
/// from a full disk, without filling one.
fn start_limited(mail: &Mail, limit: u64) -> Server {
    let cmd = smtp_server(mail, Mode::Blocking, &[]);
    // SAFETY: the hook makes one async-signal-safe system call
    // (setrlimit); it takes no lock and allocates nothing. SIGXFSZ keeps
    // its default action (terminate): the server itself must ignore it and
    // survive.
    let cmd = unsafe {
        cmd.pre_exec(move || {
            use nix::sys::resource::{setrlimit, Resource};
            setrlimit(Resource::RLIMIT_FSIZE, limit, limit).map_err(io::Error::from)
        })
    };
    cmd.start()
}

#[test]
fn a_write_failure_mid_message_gets_451_and_the_session_goes_on() {
    let mail = Mail::new("smtp-efbig");
    let server = start_limited(&mail, 256 * 1024);
    let mut c = Client::ehlo(server.addr());
    // 1 MB: the file cannot grow past 256 KiB.
    let text = format!("{}\r\n", "f".repeat(98)).repeat(10_000);
    c.send(ENVELOPE);
    assert_eq!(c.codes(3), [250, 250, 354]);
    c.send(text.as_bytes());
    c.send(b".\r\n");
    c.expect(451, Some("4.3.0"));
    assert!(
        server.logged(&["delivery failed, answering 451"]),
        "{}",
        server.log()
    );
    mail.assert_tmp_empty();
    assert!(mail.messages().is_empty());
    // The same session delivers a message that fits.
    assert_eq!(
        send_message(&mut c, b"small\r\n.\r\n"),
        [250, 250, 354, 250]
    );
    c.quit();
    assert_eq!(mail.messages().len(), 1);
    mail.assert_tmp_empty();
}

#[test]
fn bare_lf_command_lines_get_500() {
    let mail = Mail::new("smtp-bare-lf");
    let server = start(&mail, Mode::Blocking, &[]);
    let mut c = Client::ehlo(server.addr());
    c.send(b"NOOP\nMAIL FROM:<a@example.org>\n");
    let r = c.expect(500, Some("5.5.2"));
    assert!(r.text.contains("CRLF"), "{r:?}");
    c.expect(500, Some("5.5.2"));
    c.quit();
    server.stop();
}

#[test]
fn start_up_fails_clearly_when_the_maildir_cannot_be_made() {
    let dir = TempDir::new("smtp-bad-maildir");
    let file = dir.write("file", "not a directory");
    let run = gaidaros()
        .args(&[
            "--handler",
            "smtp",
            "-o",
            &format!("maildir={}", file.join("Maildir").display()),
        ])
        .run_to_exit(Duration::from_secs(10));
    assert_ne!(run.code(), 0, "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("maildir") && run.stderr.contains("cannot create directory"),
        "stderr:\n{}",
        run.stderr
    );
    let run = gaidaros()
        .args(&["--handler", "smtp"])
        .run_to_exit(Duration::from_secs(10));
    assert_ne!(run.code(), 0);
    assert!(run.stderr.contains("maildir"), "stderr:\n{}", run.stderr);
}
