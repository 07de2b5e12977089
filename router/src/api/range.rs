//! `Range` request header handling (RFC 9110 §14), for one range of bytes.
//!
//! - `bytes=a-b`, `bytes=a-` and `bytes=-n` are served as `206` with
//!   `Content-Range: bytes a-b/len`; an end past the BLOB is clamped, a
//!   suffix longer than the BLOB selects all of it.
//! - A range starting at or past the end, `bytes=-0`, and any range of an
//!   empty BLOB are unsatisfiable: `416` with `Content-Range: bytes */len`.
//! - A malformed `bytes=` range (`bytes=x-1`, `bytes=5-3`, `bytes=`) is a
//!   `416` as well: the design asks for a clear 4xx on bad ranges.
//! - Several ranges (`bytes=0-1,5-6`) and other units are ignored and the
//!   whole BLOB is served with `200`, which RFC 9110 allows; multipart
//!   answers are not worth their complexity for BLOBs.

/// What to serve for a request's `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// No (usable) range: the whole BLOB with `200`.
    Full,
    /// Bytes `start..=end` (inclusive, `end < len`) with `206`.
    Partial {
        /// First byte served.
        start: u64,
        /// Last byte served (inclusive).
        end: u64,
    },
    /// `416` with `Content-Range: bytes */len`.
    Unsatisfiable,
}

impl RangeOutcome {
    /// Number of bytes this outcome serves from a BLOB of `len` bytes.
    pub fn served_len(self, len: u64) -> u64 {
        match self {
            RangeOutcome::Full => len,
            RangeOutcome::Partial { start, end } => end - start + 1,
            RangeOutcome::Unsatisfiable => 0,
        }
    }
}

/// Longest `Range` header value looked at; longer ones are treated as
/// malformed.
const MAX_RANGE_HEADER_LEN: usize = 256;

/// Decides what to serve for the `Range` header `header` (if any) of a
/// request for a BLOB of `len` bytes.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeOutcome {
    let Some(header) = header else {
        return RangeOutcome::Full;
    };
    if header.len() > MAX_RANGE_HEADER_LEN {
        return RangeOutcome::Unsatisfiable;
    }
    let header = header.trim();
    let Some(spec) = strip_prefix_ignore_case(header, "bytes=") else {
        // Other range units are ignored (RFC 9110 §14.2).
        return RangeOutcome::Full;
    };
    if spec.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeOutcome::Unsatisfiable;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last `n` bytes.
        let Some(n) = parse_digits(last) else {
            return RangeOutcome::Unsatisfiable;
        };
        if n == 0 || len == 0 {
            return RangeOutcome::Unsatisfiable;
        }
        return RangeOutcome::Partial {
            start: len.saturating_sub(n),
            end: len - 1,
        };
    }
    let Some(start) = parse_digits(first) else {
        return RangeOutcome::Unsatisfiable;
    };
    let end = if last.is_empty() {
        None
    } else {
        match parse_digits(last) {
            Some(end) if end >= start => Some(end),
            _ => return RangeOutcome::Unsatisfiable,
        }
    };
    if start >= len {
        return RangeOutcome::Unsatisfiable;
    }
    let end = end.map_or(len - 1, |e| e.min(len - 1));
    RangeOutcome::Partial { start, end }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Digits only (no sign, no whitespace); `None` on overflow.
fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reference slicer: a direct transcription of RFC 9110 §14.1.2 for the
    /// three single-range forms, applied to an actual byte vector.
    fn reference(data: &[u8], first: Option<u64>, last: Option<u64>) -> Option<Vec<u8>> {
        let len = data.len() as u64;
        let (start, end) = match (first, last) {
            (Some(a), Some(b)) => {
                if b < a || a >= len {
                    return None;
                }
                (a, b.min(len - 1))
            }
            (Some(a), None) => {
                if a >= len {
                    return None;
                }
                (a, len - 1)
            }
            (None, Some(n)) => {
                if n == 0 || len == 0 {
                    return None;
                }
                (len.saturating_sub(n), len - 1)
            }
            (None, None) => return None,
        };
        Some(data[start as usize..=end as usize].to_vec())
    }

    fn serve(data: &[u8], outcome: RangeOutcome) -> Option<Vec<u8>> {
        match outcome {
            RangeOutcome::Full => Some(data.to_vec()),
            RangeOutcome::Partial { start, end } => {
                assert!(start <= end && end < data.len() as u64);
                Some(data[start as usize..=end as usize].to_vec())
            }
            RangeOutcome::Unsatisfiable => None,
        }
    }

    #[test]
    fn table() {
        use RangeOutcome::*;
        let cases: &[(Option<&str>, u64, RangeOutcome)] = &[
            (None, 10, Full),
            (Some("bytes=0-0"), 10, Partial { start: 0, end: 0 }),
            (Some("bytes=2-5"), 10, Partial { start: 2, end: 5 }),
            (Some("bytes=2-"), 10, Partial { start: 2, end: 9 }),
            (Some("bytes=2-100"), 10, Partial { start: 2, end: 9 }),
            (Some("bytes=-3"), 10, Partial { start: 7, end: 9 }),
            (Some("bytes=-30"), 10, Partial { start: 0, end: 9 }),
            (Some("BYTES=1-1"), 10, Partial { start: 1, end: 1 }),
            (Some("bytes=10-"), 10, Unsatisfiable),
            (Some("bytes=10-20"), 10, Unsatisfiable),
            (Some("bytes=-0"), 10, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=-1"), 0, Unsatisfiable),
            (Some("bytes=5-3"), 10, Unsatisfiable),
            (Some("bytes=x-3"), 10, Unsatisfiable),
            (Some("bytes=-"), 10, Unsatisfiable),
            (Some("bytes="), 10, Unsatisfiable),
            (Some("bytes=+1-2"), 10, Unsatisfiable),
            (Some("bytes=99999999999999999999999-"), 10, Unsatisfiable),
            (Some("bytes=0-1,4-5"), 10, Full),
            (Some("items=0-1"), 10, Full),
        ];
        for (header, len, want) in cases {
            assert_eq!(parse_range(*header, *len), *want, "{header:?} of {len}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn matches_reference_slicer(
            data in proptest::collection::vec(any::<u8>(), 0..64),
            first in proptest::option::of(0u64..80),
            last in proptest::option::of(0u64..80),
        ) {
            let header = format!(
                "bytes={}-{}",
                first.map(|v| v.to_string()).unwrap_or_default(),
                last.map(|v| v.to_string()).unwrap_or_default()
            );
            let outcome = parse_range(Some(&header), data.len() as u64);
            prop_assert_eq!(serve(&data, outcome), reference(&data, first, last));
            if let Some(bytes) = serve(&data, outcome) {
                prop_assert_eq!(bytes.len() as u64, outcome.served_len(data.len() as u64));
            }
        }

        #[test]
        fn never_panics(header in "\\PC{0,40}", len in 0u64..1000) {
            let _ = parse_range(Some(&header), len);
        }
    }
}
