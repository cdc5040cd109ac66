//! Atomic delivery into a maildir.
//!
//! A message is written under a unique name into `tmp/`, synced to disk,
//! renamed into `new/`, and `new/` itself is synced so the rename survives
//! a crash. A reader of the maildir only ever sees complete messages in
//! `new/`; a failure at any step removes what was written and returns the
//! error, so the client is told to retry and nothing half-written stays.
//!
//! Unique names follow the maildir convention
//! `{secs}.M{micros}P{pid}Q{counter}.{host}`: the time, the process (read at
//! each delivery: worker processes fork after start-up) and a counter
//! shared by every thread of the process.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::reply::StoreError;

/// A maildir ready to take messages.
#[derive(Debug)]
pub struct Maildir {
    tmp: PathBuf,
    new: PathBuf,
    /// The host part of unique names, with `/` and `:` escaped.
    host: String,
    counter: AtomicU64,
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
    /// Renaming it from `tmp/` into `new/`.
    Rename,
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
            Step::Rename => "rename into new/",
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
    /// written in `tmp/` and renamed into `new/` (a dot-file, which maildir
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
            counter: AtomicU64::new(0),
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
            fs::rename(&tmp, &new).map_err(|e| MaildirError::new(Step::Rename, &new, e))
        })();
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&new);
        result
    }

    /// Store a message made of `parts` (written one after the other);
    /// `now` goes into its unique name, which is returned. On error nothing
    /// of it is left in the maildir.
    pub fn deliver(&self, parts: &[&[u8]], now: SystemTime) -> Result<String, MaildirError> {
        let (file, name) = self.create_unique(now)?;
        let tmp = self.tmp.join(&name);
        let new = self.new.join(&name);
        let written = write_and_sync(file, parts, &tmp).and_then(|()| {
            fs::rename(&tmp, &new).map_err(|e| MaildirError::new(Step::Rename, &new, e))
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // The rename is durable only once the directory is synced.
        if let Err(e) = File::open(&self.new).and_then(|dir| dir.sync_all()) {
            // Unsure to survive a crash: take it back, the client retries.
            let _ = fs::remove_file(&new);
            return Err(MaildirError::new(Step::SyncDir, &self.new, e));
        }
        Ok(name)
    }

    /// Create a new file in `tmp/` under a name no other delivery uses.
    fn create_unique(&self, now: SystemTime) -> Result<(File, String), MaildirError> {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut attempts = 0;
        loop {
            let name = format!(
                "{}.M{}P{}Q{}.{}",
                since.as_secs(),
                since.subsec_micros(),
                std::process::id(),
                self.counter.fetch_add(1, Ordering::Relaxed),
                self.host
            );
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
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 10 => {
                    attempts += 1;
                }
                Err(e) => return Err(MaildirError::new(Step::Create, &path, e)),
            }
        }
    }
}

fn write_and_sync(mut file: File, parts: &[&[u8]], path: &Path) -> Result<(), MaildirError> {
    for part in parts {
        file.write_all(part)
            .map_err(|e| MaildirError::new(Step::Write, path, e))?;
    }
    file.sync_all()
        .map_err(|e| MaildirError::new(Step::Sync, path, e))
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
        assert_eq!(err.step, Step::Rename, "{err}");
        assert!(names(&dir.0.join("tmp")).is_empty(), "tmp file removed");
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
