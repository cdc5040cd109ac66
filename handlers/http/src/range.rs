//! `Range: bytes=...` (RFC 9110 14.2), resolved against a length.

use crate::head::trim;

/// What a Range header asks of a representation of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranges {
    /// No usable Range: send everything with 200 (a malformed header, a
    /// unit other than bytes, or more ranges than allowed, which a server
    /// may ignore).
    Whole,
    /// None of the ranges overlaps the representation: 416.
    Unsatisfiable,
    /// These byte ranges, first and last byte inclusive, in the order asked.
    Parts(Vec<(u64, u64)>),
}

/// Resolve `value` against `size` bytes, allowing at most `max_ranges`.
pub fn parse(value: &[u8], size: u64, max_ranges: usize) -> Ranges {
    let value = trim(value);
    let Some(specs) = value
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case(b"bytes="))
        .map(|_| &value[6..])
    else {
        return Ranges::Whole;
    };
    let mut parts = Vec::new();
    let mut count = 0;
    for spec in specs.split(|&b| b == b',') {
        let spec = trim(spec);
        if spec.is_empty() {
            // Empty list elements are allowed (RFC 9110 5.6.1).
            continue;
        }
        count += 1;
        if count > max_ranges {
            return Ranges::Whole;
        }
        let Some(dash) = spec.iter().position(|&b| b == b'-') else {
            return Ranges::Whole;
        };
        let (first, last) = (&spec[..dash], &spec[dash + 1..]);
        match (number(first), number(last)) {
            (Some(first), last) if !first_is_empty(spec) => {
                let last = match last {
                    Some(l) if l < first => return Ranges::Whole,
                    Some(l) => l,
                    None if spec[dash + 1..].is_empty() => u64::MAX,
                    None => return Ranges::Whole,
                };
                if first < size {
                    parts.push((first, last.min(size - 1)));
                }
            }
            (None, Some(suffix)) if first.is_empty() => {
                if suffix > 0 && size > 0 {
                    parts.push((size.saturating_sub(suffix), size - 1));
                }
            }
            _ => return Ranges::Whole,
        }
    }
    if count == 0 {
        return Ranges::Whole;
    }
    if parts.is_empty() {
        return Ranges::Unsatisfiable;
    }
    // Overlapping ranges would send the same bytes several times (RFC 9110
    // 14.2 lets a server ignore them): answer with the whole representation.
    let mut sorted = parts.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[1].0 <= w[0].1) {
        return Ranges::Whole;
    }
    Ranges::Parts(parts)
}

fn first_is_empty(spec: &[u8]) -> bool {
    spec.first() == Some(&b'-')
}

fn number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_forms_of_a_range() {
        assert_eq!(parse(b"bytes=0-99", 1000, 16), Ranges::Parts(vec![(0, 99)]));
        assert_eq!(
            parse(b"bytes=900-", 1000, 16),
            Ranges::Parts(vec![(900, 999)])
        );
        assert_eq!(
            parse(b"bytes=-100", 1000, 16),
            Ranges::Parts(vec![(900, 999)])
        );
        assert_eq!(
            parse(b"bytes=-5000", 1000, 16),
            Ranges::Parts(vec![(0, 999)])
        );
        assert_eq!(
            parse(b"bytes=990-2000", 1000, 16),
            Ranges::Parts(vec![(990, 999)])
        );
        assert_eq!(
            parse(b"bytes=0-0, -1 ,, 5-9", 1000, 16),
            Ranges::Parts(vec![(0, 0), (999, 999), (5, 9)])
        );
        assert_eq!(
            parse(b"bytes=0-0,1-1", 1000, 16),
            Ranges::Parts(vec![(0, 0), (1, 1)])
        );
    }

    #[test]
    fn unsatisfiable_and_ignored() {
        assert_eq!(parse(b"bytes=1000-", 1000, 16), Ranges::Unsatisfiable);
        assert_eq!(parse(b"bytes=-0", 1000, 16), Ranges::Unsatisfiable);
        assert_eq!(parse(b"bytes=0-", 0, 16), Ranges::Unsatisfiable);
        assert_eq!(parse(b"bytes=5-1", 1000, 16), Ranges::Whole);
        assert_eq!(parse(b"items=0-1", 1000, 16), Ranges::Whole);
        assert_eq!(parse(b"bytes=abc", 1000, 16), Ranges::Whole);
        assert_eq!(parse(b"bytes=", 1000, 16), Ranges::Whole);
        assert_eq!(parse(b"bytes=1-2,3-4,5-6", 1000, 2), Ranges::Whole);
        assert_eq!(parse(b"bytes=0-,0-", 1000, 16), Ranges::Whole);
        assert_eq!(parse(b"bytes=0-10,5-20", 1000, 16), Ranges::Whole);
        assert_eq!(parse(b"Bytes=0-0", 1000, 16), Ranges::Parts(vec![(0, 0)]));
    }

    proptest! {
        #[test]
        fn parts_always_lie_inside_the_representation(value in proptest::collection::vec(any::<u8>(), 0..40), size in 0u64..5000) {
            if let Ranges::Parts(parts) = parse(&value, size, 16) {
                for (a, b) in parts {
                    prop_assert!(a <= b && b < size);
                }
            }
        }

        #[test]
        fn formatted_ranges_parse_back(a in 0u64..10_000, len in 1u64..10_000, size in 1u64..30_000) {
            let b = a + len - 1;
            let got = parse(format!("bytes={a}-{b}").as_bytes(), size, 16);
            if a < size {
                prop_assert_eq!(got, Ranges::Parts(vec![(a, b.min(size - 1))]));
            } else {
                prop_assert_eq!(got, Ranges::Unsatisfiable);
            }
        }
    }
}
