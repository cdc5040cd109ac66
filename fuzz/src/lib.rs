//! What the fuzz targets share: how an input is read as a few control
//! bytes, the cut points of a stream, and the stream itself.
//!
//! ```text
//!  input:  fixed control bytes | n | n piece lengths | stream
//! ```
//!
//! The stream is fed in pieces of the given lengths, used in turn (a 0
//! feeds an empty piece), so the fuzzer chooses where the reads of the
//! loop end as freely as what they carry. A seed is a realistic stream
//! behind `n = 0` (one piece) and the fixed bytes.

/// The longest list of piece lengths.
pub const MAX_CUTS: usize = 32;

/// An input taken apart.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The target's own control bytes (flags, plans).
    pub fixed: &'a [u8],
    /// Piece lengths, used in turn.
    pub cuts: &'a [u8],
    /// The bytes a client sent.
    pub stream: &'a [u8],
}

impl<'a> Input<'a> {
    /// Read `data` with `fixed` control bytes in front; `None` when it is
    /// too short to hold them.
    pub fn parse(data: &'a [u8], fixed: usize) -> Option<Input<'a>> {
        let (fixed, rest) = data.split_at_checked(fixed)?;
        let (&n, rest) = rest.split_first()?;
        let n = (n as usize % (MAX_CUTS + 1)).min(rest.len());
        let (cuts, stream) = rest.split_at(n);
        Some(Input {
            fixed,
            cuts,
            stream,
        })
    }

    /// The stream in its pieces, in order; concatenated they are the
    /// stream. No lengths, or only zeros, give the stream in one piece.
    pub fn pieces(&self) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut rest = self.stream;
        if self.cuts.iter().all(|&c| c == 0) {
            out.push(rest);
            return out;
        }
        for &len in self.cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((len as usize).min(rest.len()));
            out.push(piece);
            rest = tail;
        }
        out
    }
}
