//! The `Date` header, formatted once a second.

use std::time::{SystemTime, UNIX_EPOCH};

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) cached for the second
/// it names. The wall clock is an argument: the caller reads it.
#[derive(Debug, Clone)]
pub struct DateCache {
    secs: u64,
    text: String,
}

impl Default for DateCache {
    fn default() -> Self {
        DateCache {
            secs: u64::MAX,
            text: String::new(),
        }
    }
}

impl DateCache {
    /// The date at `now`, reformatted only when the second changed.
    pub fn at(&mut self, now: SystemTime) -> &str {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if secs != self.secs {
            self.secs = secs;
            self.text = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs));
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_and_caches_per_second() {
        let mut d = DateCache::default();
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(d.at(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            d.at(t + Duration::from_millis(999)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            d.at(t + Duration::from_secs(1)),
            "Sun, 06 Nov 1994 08:49:38 GMT"
        );
    }
}
