//! The open-file cache, one per loop thread and root (nginx's
//! `open_file_cache`): what a path resolved to (an open file with its
//! metadata, and the bytes of a small one; or a directory), kept for
//! `file_cache_valid` and at most `file_cache` entries, least recently used
//! out first. A hit costs no syscall; a miss is resolved on the offload pool
//! by the session, so a slow disk never stalls the loop, and stored here
//! when it comes back. Errors (404, 403) are not kept: each is looked up
//! again.
//!
//! A file changed in place within `file_cache_valid` is served with the
//! metadata (and, when small, the bytes) it had when it was opened; one
//! replaced by rename keeps its old contents that long. A validity of 0
//! keeps nothing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::files::Found;

/// What a lookup is keyed by: the path below the root, and whether a
/// directory there is answered with its index (the request path ended in
/// `/`) or redirected.
pub(crate) type Key = (PathBuf, bool);

/// The entries of one root on one thread.
struct Entries {
    map: LruCache<Key, (Found, Instant)>,
    valid: Duration,
}

thread_local! {
    /// Per root (by [`crate::StaticFiles`]'s id): this thread's entries.
    static CACHES: RefCell<HashMap<u64, Entries>> = RefCell::new(HashMap::new());
}

/// How a root's cache is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Entries kept per loop thread (`file_cache`); 0 keeps none.
    pub entries: usize,
    /// How long an entry is used before its path is looked up again
    /// (`file_cache_valid`).
    pub valid: Duration,
}

impl Default for CacheLimits {
    /// 1000 entries, 1 s.
    fn default() -> Self {
        CacheLimits {
            entries: 1000,
            valid: Duration::from_secs(1),
        }
    }
}

impl CacheLimits {
    fn keeps_nothing(&self) -> bool {
        self.entries == 0 || self.valid.is_zero()
    }
}

/// What this thread's cache of root `root` holds for `key`, if it is still
/// valid at `now` (an expired entry is dropped).
pub(crate) fn get(root: u64, key: &Key, now: Instant) -> Option<Found> {
    CACHES.with(|c| {
        let mut caches = c.borrow_mut();
        let entries = caches.get_mut(&root)?;
        let valid = entries.valid;
        match entries.map.get(key) {
            Some((found, at)) if now.saturating_duration_since(*at) < valid => Some(found.clone()),
            Some(_) => {
                entries.map.pop(key);
                None
            }
            None => None,
        }
    })
}

/// Keep what `key` resolved to at `at`, if it is worth keeping (a file or
/// a directory, not an error).
pub(crate) fn put(root: u64, limits: CacheLimits, key: Key, found: &Found, at: Instant) {
    if limits.keeps_nothing() || !found.cacheable() {
        return;
    }
    let Some(cap) = NonZeroUsize::new(limits.entries) else {
        return;
    };
    CACHES.with(|c| {
        let mut caches = c.borrow_mut();
        let entries = caches.entry(root).or_insert_with(|| Entries {
            map: LruCache::new(cap),
            valid: limits.valid,
        });
        entries.map.put(key, (found.clone(), at));
    });
}

/// Entries this thread holds for `root` (for tests).
#[cfg(test)]
pub(crate) fn len(root: u64) -> usize {
    CACHES.with(|c| c.borrow().get(&root).map_or(0, |e| e.map.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(name: &str) -> Key {
        (PathBuf::from(name), false)
    }

    const LIMITS: CacheLimits = CacheLimits {
        entries: 2,
        valid: Duration::from_secs(1),
    };

    #[test]
    fn an_entry_is_used_while_valid_and_dropped_after() {
        let t0 = Instant::now();
        put(1, LIMITS, key("a"), &Found::Dir, t0);
        assert!(get(1, &key("a"), t0 + Duration::from_millis(999)).is_some());
        assert!(get(1, &key("a"), t0 + Duration::from_secs(1)).is_none());
        assert_eq!(len(1), 0, "the expired entry is gone");
        assert!(get(2, &key("a"), t0).is_none(), "another root's cache");
    }

    #[test]
    fn the_least_recently_used_goes_first_and_errors_are_not_kept() {
        let t0 = Instant::now();
        put(3, LIMITS, key("a"), &Found::Dir, t0);
        put(3, LIMITS, key("b"), &Found::Dir, t0);
        assert!(get(3, &key("a"), t0).is_some()); // b is now the oldest use
        put(3, LIMITS, key("c"), &Found::Dir, t0);
        assert!(get(3, &key("b"), t0).is_none());
        assert!(get(3, &key("a"), t0).is_some());
        assert!(get(3, &key("c"), t0).is_some());
        let missing = Found::Error(Arc::new(std::io::ErrorKind::NotFound.into()));
        put(3, LIMITS, key("d"), &missing, t0);
        put(3, LIMITS, key("e"), &Found::Forbidden("forbidden\n"), t0);
        assert_eq!(len(3), 2);
        assert!(get(3, &key("d"), t0).is_none());
    }

    #[test]
    fn zero_entries_or_zero_validity_keep_nothing() {
        let t0 = Instant::now();
        for limits in [
            CacheLimits {
                entries: 0,
                ..LIMITS
            },
            CacheLimits {
                valid: Duration::ZERO,
                ..LIMITS
            },
        ] {
            put(4, limits, key("a"), &Found::Dir, t0);
            assert!(get(4, &key("a"), t0).is_none());
        }
    }
}
