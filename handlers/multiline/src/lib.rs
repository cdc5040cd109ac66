//! `multiline`: a request is a block of lines ended by an empty line (LF or
//! CRLF line ends); the block, blank line included, is echoed back.
#![forbid(unsafe_code)]

use std::sync::Arc;

use gaidaros::{Handler, HandlerSpec, Keep, OptionError, Options, Service, ServiceError};

/// The multiline echo service.
#[derive(Debug, Default, Clone, Copy)]
pub struct Multiline;

/// End of the first block in `buf`: the byte after the LF of the first
/// empty line (`\n\n` or `\n\r\n`), or at the very start (an empty request).
pub fn block_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[line_start..]) {
        let lf = line_start + i;
        let line = &buf[line_start..lf];
        if line.is_empty() || line == b"\r" {
            return Some(lf + 1);
        }
        line_start = lf + 1;
    }
    None
}

impl Service for Multiline {
    fn end_request(&self, buf: &[u8]) -> Result<Option<usize>, ServiceError> {
        Ok(block_end(buf))
    }

    fn handle(&self, request: &[u8], response: &mut Vec<u8>) -> Result<Keep, ServiceError> {
        response.extend_from_slice(request);
        Ok(Keep::Alive)
    }
}

fn build(_: &Options) -> Result<Handler, OptionError> {
    Ok(Handler::Service(Arc::new(Multiline)))
}

/// Registry entry.
pub fn spec() -> HandlerSpec {
    HandlerSpec {
        name: "multiline",
        about: "echoes blocks of lines; a block ends at an empty line",
        options: &[],
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Blocks joined back to back are split into exactly those blocks.
        #[test]
        fn pipelined_blocks_split_back_into_the_blocks(
            blocks in proptest::collection::vec(
                (proptest::collection::vec("[a-z ]{1,20}", 0..5), proptest::bool::ANY), 1..10),
        ) {
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for (lines, crlf) in &blocks {
                let eol = if *crlf { "\r\n" } else { "\n" };
                let mut b = String::new();
                for l in lines {
                    b.push_str(l);
                    b.push_str(eol);
                }
                b.push_str(eol);
                stream.extend_from_slice(b.as_bytes());
                want.push(b.into_bytes());
            }
            let mut got = Vec::new();
            let mut rest = &stream[..];
            while let Some(end) = block_end(rest) {
                got.push(rest[..end].to_vec());
                rest = &rest[end..];
            }
            proptest::prop_assert!(rest.is_empty());
            proptest::prop_assert_eq!(got, want);
        }

        /// No input makes the framing panic, and a reported end is in bounds.
        #[test]
        fn framing_never_panics(bytes in proptest::collection::vec(0u8..=255, 0..400)) {
            if let Some(end) = block_end(&bytes) {
                proptest::prop_assert!(end >= 1 && end <= bytes.len());
            }
        }
    }

    #[test]
    fn a_block_ends_at_an_empty_line() {
        assert_eq!(block_end(b"a\nb\n"), None);
        assert_eq!(block_end(b"a\nb\n\nrest"), Some(5));
        assert_eq!(block_end(b"a\r\nb\r\n\r\nrest"), Some(8));
        assert_eq!(block_end(b"\n"), Some(1));
        assert_eq!(block_end(b"a\n\r"), None);
    }
}
