//! Atomic delivery into a maildir, written as the message arrives.
//!
//! A message is a [`Delivery`]: [`Maildir::begin`] creates its file in
//! `tmp/` under a unique name and writes the first bytes (the trace
//! headers), [`Delivery::append`] adds the text piece by piece as it comes
//! off the wire, and [`Maildir::finish`] syncs the file to disk, links it
//! into `new/` and syncs `new/` so the link survives a crash. A reader of
//! the maildir only ever sees complete messages in `new/`. A delivery that
//! is dropped unfinished ([`Delivery::abort`], a failed step, a connection
//! gone mid-message) removes its file from `tmp/`: nothing half-written
//! stays.
//!
//! ```text
//!  begin(head) ──► tmp/NAME ──append──► … ──finish: fsync, link ──► new/NAME ──► fsync new/
//!                     │                                │ (EEXIST: another NAME)
//!                     └── abort / drop / error ──► unlink tmp/NAME
//! ```
//!
//! A message never replaces another: it goes into `new/` with link(2),
//! which fails when the name is taken (then another name is tried),
//! rather than rename(2), which would overwrite. Opening the maildir
//! checks that its file system can make such links.
//!
//! Unique names follow the maildir convention
//! `{secs}.M{micros}P{pid}Q{counter}.{host}`: the time, the process (read at
//! each delivery: worker processes fork after start-up) and a counter
//! shared by every thread and every listener of the process.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::reply::StoreError;

/// The `Q` part of unique names: one counter for the whole process, so two
/// listeners (or two loops) on the same maildir never pick the same name in
/// the same microsecond.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// How many names a delivery tries before giving up, when the names it
/// picks are taken (by files a process with the same pid left behind).
const NAME_ATTEMPTS: u32 = 10;

/// A maildir ready to take messages.
#[derive(Debug)]
pub struct Maildir {
    tmp: PathBuf,
    new: PathBuf,
    /// The host part of unique names, with `/` and `:` escaped.
    host: String,
}

/// A message being written into `tmp/`; see the module docs. Dropping it
/// unfinished removes its file.
#[derive(Debug)]
pub struct Delivery {
    file: File,
    /// Its path in `tmp/`.
    tmp: PathBuf,
    /// Its unique name (in `tmp/`, and in `new/` unless that is taken).
    name: String,
    /// When it began, since the epoch: the time part of its names.
    since: Duration,
    written: u64,
    /// Is the file still in `tmp/` (to be removed on drop)?
    in_tmp: bool,
}

/// The step of a delivery (or of opening the maildir) that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Creating a directory of the maildir.
    CreateDir,
    /// Creating the file in `tmp/`.
    Create,
    /// Writing the message.
    Write,
    /// Syncing the file.
    Sync,
    /// Linking it from `tmp/` into `new/`.
    Link,
    /// Syncing `new/`.
    SyncDir,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::CreateDir => "create directory",
            Step::Create => "create",
            Step::Write => "write",
            Step::Sync => "fsync",
            Step::Link => "link into new/",
            Step::SyncDir => "fsync directory",
        })
    }
}

/// A failed delivery or a maildir that cannot be used: which step, on
/// which path, and the system's error.
#[derive(Debug)]
pub struct MaildirError {
    /// The step that failed.
    pub step: Step,
    /// The path it was working on.
    pub path: PathBuf,
    /// The system's error.
    pub source: io::Error,
}

impl MaildirError {
    fn new(step: Step, path: &Path, source: io::Error) -> MaildirError {
        MaildirError {
            step,
            path: path.to_path_buf(),
            source,
        }
    }

    /// What the client is told: out of space, or another failure.
    pub fn store_error(&self) -> StoreError {
        match self.source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StoreError::Full,
            _ => StoreError::Failed,
        }
    }
}

impl fmt::Display for MaildirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} {}: {}",
            self.step,
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for MaildirError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl Maildir {
    /// Use the maildir at `root`, creating `root`, `tmp/`, `new/` and
    /// `cur/` when missing (mode 0700), and check that a file can be
    /// written in `tmp/` and linked into `new/` (a dot-file, which maildir
    /// readers skip, removed at once). `host` names this machine in unique
    /// names.
    pub fn open(root: &Path, host: &str) -> Result<Maildir, MaildirError> {
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(0o700);
        for sub in ["tmp", "new", "cur"] {
            let dir = root.join(sub);
            builder
                .create(&dir)
                .map_err(|e| MaildirError::new(Step::CreateDir, &dir, e))?;
        }
        let maildir = Maildir {
            tmp: root.join("tmp"),
            new: root.join("new"),
            host: host.replace('/', "\\057").replace(':', "\\072"),
        };
        maildir.probe()?;
        Ok(maildir)
    }

    fn probe(&self) -> Result<(), MaildirError> {
        let name = format!(".gaidaros-probe.P{}", std::process::id());
        let tmp = self.tmp.join(&name);
        let new = self.new.join(&name);
        let result = (|| {
            let mut file =
                File::create(&tmp).map_err(|e| MaildirError::new(Step::Create, &tmp, e))?;
            file.write_all(b"probe\n")
                .map_err(|e| MaildirError::new(Step::Write, &tmp, e))?;
            let _ = fs::remove_file(&new);
            fs::hard_link(&tmp, &new).map_err(|e| MaildirError::new(Step::Link, &new, e))
        })();
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&new);
        result
    }

    /// Start a message: create its file in `tmp/` under a unique name
    /// (`now` goes into it) and write `head` (the trace headers). Nothing
    /// is left behind on error.
    pub fn begin(&self, head: &[u8], now: SystemTime) -> Result<Delivery, MaildirError> {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let (file, name) = self.create_unique(since)?;
        let mut delivery = Delivery {
            file,
            tmp: self.tmp.join(&name),
            name,
            since,
            written: 0,
            in_tmp: true,
        };
        delivery.append(head)?;
        Ok(delivery)
    }

    /// Complete a message: sync its file, link it into `new/` under a
    /// name no other message has, remove it from `tmp/` and sync `new/`.
    /// Returns the name in `new/`. On error nothing of it is left in the
    /// maildir.
    pub fn finish(&self, mut delivery: Delivery) -> Result<String, MaildirError> {
        // On every error below, dropping `delivery` removes the tmp/ file.
        delivery
            .file
            .sync_all()
            .map_err(|e| MaildirError::new(Step::Sync, &delivery.tmp, e))?;
        let name = self.link_into_new(&delivery)?;
        delivery.remove_tmp();
        // The link is durable only once the directory is synced.
        if let Err(e) = File::open(&self.new).and_then(|dir| dir.sync_all()) {
            // Unsure to survive a crash: take it back, the client retries.
            let _ = fs::remove_file(self.new.join(&name));
            return Err(MaildirError::new(Step::SyncDir, &self.new, e));
        }
        Ok(name)
    }

    /// Store a whole message made of `parts` (written one after the
    /// other): [`Maildir::begin`], [`Delivery::append`] and
    /// [`Maildir::finish`] in one call.
    pub fn deliver(&self, parts: &[&[u8]], now: SystemTime) -> Result<String, MaildirError> {
        let mut delivery = self.begin(&[], now)?;
        for part in parts {
            delivery.append(part)?;
        }
        self.finish(delivery)
    }

    /// `{secs}.M{micros}P{pid}Q{counter}.{host}`, never the same twice in
    /// this process.
    fn unique_name(&self, since: Duration) -> String {
        format!(
            "{}.M{}P{}Q{}.{}",
            since.as_secs(),
            since.subsec_micros(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            self.host
        )
    }

    /// Create a new file in `tmp/` under a name no other delivery uses.
    fn create_unique(&self, since: Duration) -> Result<(File, String), MaildirError> {
        let mut attempts = 1;
        loop {
            let name = self.unique_name(since);
            let path = self.tmp.join(&name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => return Ok((file, name)),
                // Left over by a process with our pid before a restart:
                // the counter gives another name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < NAME_ATTEMPTS => {
                    attempts += 1;
                }
                Err(e) => return Err(MaildirError::new(Step::Create, &path, e)),
            }
        }
    }

    /// Link the file of `delivery` into `new/`: under its own name, or
    /// under a new one when a message there has it already. link(2) fails
    /// on a taken name where rename(2) would replace that message.
    fn link_into_new(&self, delivery: &Delivery) -> Result<String, MaildirError> {
        let mut name = delivery.name.clone();
        let mut attempts = 1;
        loop {
            let new = self.new.join(&name);
            match fs::hard_link(&delivery.tmp, &new) {
                Ok(()) => return Ok(name),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < NAME_ATTEMPTS => {
                    attempts += 1;
                    name = self.unique_name(delivery.since);
                }
                Err(e) => return Err(MaildirError::new(Step::Link, &new, e)),
            }
        }
    }
}

impl Delivery {
    /// Write the next part of the message. On error the delivery is
    /// useless: drop it (which removes its file).
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), MaildirError> {
        self.file
            .write_all(bytes)
            .map_err(|e| MaildirError::new(Step::Write, &self.tmp, e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Octets written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Its unique name in `tmp/` (also its name in `new/`, unless a message
    /// there has it already).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Give the message up: its file is removed from `tmp/` (as on drop).
    pub fn abort(self) {}

    fn remove_tmp(&mut self) {
        if std::mem::take(&mut self.in_tmp) {
            // After the link into new/, a failure here leaves a second link
            // in tmp/, which is harmless: readers skip tmp/, and clean it of
            // files older than 36 hours.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.remove_tmp();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("gaidaros-smtp-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn open_creates_the_three_directories_and_leaves_no_probe() {
        let dir = TempDir::new("open");
        let root = dir.0.join("deep/Maildir");
        Maildir::open(&root, "mx").unwrap();
        for sub in ["tmp", "new", "cur"] {
            assert!(root.join(sub).is_dir(), "{sub}/ exists");
            assert!(names(&root.join(sub)).is_empty(), "{sub}/ is empty");
        }
    }

    #[test]
    fn delivered_message_appears_only_in_new() {
        let dir = TempDir::new("deliver");
        let md = Maildir::open(&dir.0, "mx.example").unwrap();
        let now = UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        let id = md
            .deliver(&[b"Header: 1\r\n", b"\r\nbody\r\n"], now)
            .unwrap();
        assert!(
            id.starts_with("1700000000.M123456P") && id.ends_with(".mx.example"),
            "{id}"
        );
        assert_eq!(names(&dir.0.join("new")), vec![id.clone()]);
        assert!(names(&dir.0.join("tmp")).is_empty());
        assert_eq!(
            fs::read(dir.0.join("new").join(&id)).unwrap(),
            b"Header: 1\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn names_are_unique_within_one_microsecond() {
        let dir = TempDir::new("unique");
        let md = Maildir::open(&dir.0, "a/b:c").unwrap();
        let now = SystemTime::now();
        let a = md.deliver(&[b"1"], now).unwrap();
        let b = md.deliver(&[b"2"], now).unwrap();
        assert_ne!(a, b);
        assert!(a.ends_with(".a\\057b\\072c"), "{a}: / and : escaped");
        assert_eq!(names(&dir.0.join("new")).len(), 2);
    }

    #[test]
    fn tmp_replaced_by_a_file_fails_and_stores_nothing() {
        let dir = TempDir::new("tmpfile");
        let md = Maildir::open(&dir.0, "mx").unwrap();
        fs::remove_dir(dir.0.join("tmp")).unwrap();
        fs::write(dir.0.join("tmp"), b"in the way").unwrap();
        let err = md.deliver(&[b"message"], SystemTime::now()).unwrap_err();
        assert_eq!(err.step, Step::Create, "{err}");
        assert_eq!(err.store_error(), StoreError::Failed);
        assert!(names(&dir.0.join("new")).is_empty());
    }

    #[test]
    fn new_replaced_by_a_file_fails_and_leaves_tmp_empty() {
        let dir = TempDir::new("newfile");
        let md = Maildir::open(&dir.0, "mx").unwrap();
        fs::remove_dir(dir.0.join("new")).unwrap();
        fs::write(dir.0.join("new"), b"in the way").unwrap();
        let err = md.deliver(&[b"message"], SystemTime::now()).unwrap_err();
        assert_eq!(err.step, Step::Link, "{err}");
        assert!(names(&dir.0.join("tmp")).is_empty(), "tmp file removed");
    }

    #[test]
    fn a_message_streamed_in_pieces_is_stored_whole() {
        let dir = TempDir::new("stream");
        let md = Maildir::open(&dir.0, "mx").unwrap();
        let mut d = md.begin(b"Return-Path: <>\r\n", SystemTime::now()).unwrap();
        let tmp_name = d.name().to_string();
        assert_eq!(names(&dir.0.join("tmp")), vec![tmp_name.clone()]);
        for i in 0..100 {
            d.append(format!("line {i}\r\n").as_bytes()).unwrap();
        }
        assert!(
            names(&dir.0.join("new")).is_empty(),
            "not in new/ before finish"
        );
        let written = d.written();
        let id = md.finish(d).unwrap();
        assert_eq!(id, tmp_name, "same name in new/");
        let stored = fs::read(dir.0.join("new").join(&id)).unwrap();
        assert_eq!(stored.len() as u64, written);
        assert!(stored.starts_with(b"Return-Path: <>\r\nline 0\r\n"));
        assert!(stored.ends_with(b"line 99\r\n"));
        assert!(names(&dir.0.join("tmp")).is_empty());
    }

    #[test]
    fn an_aborted_or_dropped_delivery_leaves_nothing() {
        let dir = TempDir::new("abort");
        let md = Maildir::open(&dir.0, "mx").unwrap();
        let mut d = md.begin(b"head\r\n", SystemTime::now()).unwrap();
        d.append(b"some text\r\n").unwrap();
        d.abort();
        let d = md.begin(b"head\r\n", SystemTime::now()).unwrap();
        drop(d);
        assert!(names(&dir.0.join("tmp")).is_empty());
        assert!(names(&dir.0.join("new")).is_empty());
    }

    #[test]
    fn a_message_in_new_is_never_overwritten() {
        let dir = TempDir::new("nooverwrite");
        let md = Maildir::open(&dir.0, "mx").unwrap();
        let mut d = md.begin(b"", SystemTime::now()).unwrap();
        d.append(b"second").unwrap();
        // Another message took the name in new/ meanwhile.
        let taken = dir.0.join("new").join(d.name());
        fs::write(&taken, b"first").unwrap();
        let id = md.finish(d).unwrap();
        assert_ne!(dir.0.join("new").join(&id), taken);
        assert_eq!(fs::read(&taken).unwrap(), b"first", "left alone");
        assert_eq!(fs::read(dir.0.join("new").join(&id)).unwrap(), b"second");
        assert!(names(&dir.0.join("tmp")).is_empty());
    }

    #[test]
    fn two_maildir_handles_on_one_directory_never_share_a_name() {
        // Two listeners on one maildir deliver in the same microsecond.
        let dir = TempDir::new("twohandles");
        let a = Maildir::open(&dir.0, "mx").unwrap();
        let b = Maildir::open(&dir.0, "mx").unwrap();
        let now = SystemTime::now();
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(a.deliver(&[format!("a{i}").as_bytes()], now).unwrap());
            ids.push(b.deliver(&[format!("b{i}").as_bytes()], now).unwrap());
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 10);
        assert_eq!(names(&dir.0.join("new")).len(), 10, "none overwritten");
    }

    #[test]
    fn open_fails_when_a_directory_cannot_be_made() {
        let dir = TempDir::new("blocked");
        fs::write(dir.0.join("file"), b"not a dir").unwrap();
        let err = Maildir::open(&dir.0.join("file"), "mx").unwrap_err();
        assert_eq!(err.step, Step::CreateDir, "{err}");
        fs::create_dir(dir.0.join("md")).unwrap();
        fs::write(dir.0.join("md/new"), b"not a dir").unwrap();
        let err = Maildir::open(&dir.0.join("md"), "mx").unwrap_err();
        assert!(err.to_string().contains("md/new"), "{err}");
    }
}
