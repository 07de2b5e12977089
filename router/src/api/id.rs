//! BLOB ids: `VOLUME,KEYCOOKIE`, SeaweedFS's text form.
//!
//! - `VOLUME`: the logical volume id in decimal, no sign, no leading zeros
//!   (`0` itself is allowed), at most `u32::MAX`.
//! - `,`
//! - `KEY`: the 64-bit needle key in lowercase hex printed as whole bytes
//!   with leading zero bytes dropped: an even number of digits, 2 to 16, and
//!   never a leading `00` byte unless the key is 0 (`00`).
//! - `COOKIE`: exactly eight lowercase hex digits.
//!
//! Parsing is strict and canonical: every id has exactly one text form, so
//! `format(parse(s)) == s` for every accepted `s`. Uppercase hex, signs,
//! whitespace, percent-escapes, `/`, `..` and over-long ids are all
//! rejected. The id is never joined into a path or URL without going
//! through [`BlobId::parse`] first.

use std::fmt;

/// Longest id text accepted: 10 decimal digits, a comma, 16 + 8 hex digits.
pub const MAX_ID_LEN: usize = 10 + 1 + 16 + 8;

/// Number of hex digits of the cookie.
const COOKIE_HEX_DIGITS: usize = 8;

/// A parsed BLOB id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobId {
    /// The logical volume.
    pub volume: u32,
    /// The needle key inside the volume.
    pub key: u64,
    /// The random cookie checked on every read.
    pub cookie: u32,
}

/// Why an id was refused (the text goes into the 400 answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed blob id: {0}")]
pub struct BadId(pub &'static str);

impl BlobId {
    /// Parses the canonical text form; anything else is a [`BadId`].
    pub fn parse(text: &str) -> Result<BlobId, BadId> {
        if text.len() > MAX_ID_LEN {
            return Err(BadId("too long"));
        }
        let (volume_text, rest) = text
            .split_once(',')
            .ok_or(BadId("expected VOLUME,KEYCOOKIE"))?;
        let volume = parse_volume(volume_text)?;
        if !rest.bytes().all(is_lower_hex) {
            return Err(BadId("key and cookie must be lowercase hex digits"));
        }
        if rest.len() < 2 + COOKIE_HEX_DIGITS || rest.len() > 16 + COOKIE_HEX_DIGITS {
            return Err(BadId("key and cookie must have 10 to 24 hex digits"));
        }
        let (key_text, cookie_text) = rest.split_at(rest.len() - COOKIE_HEX_DIGITS);
        if key_text.len() % 2 != 0 {
            return Err(BadId(
                "key must be whole bytes (an even number of hex digits)",
            ));
        }
        if key_text.len() > 2 && key_text.starts_with("00") {
            return Err(BadId("key must not start with a zero byte"));
        }
        let key = u64::from_str_radix(key_text, 16).map_err(|_| BadId("bad key"))?;
        let cookie = u32::from_str_radix(cookie_text, 16).map_err(|_| BadId("bad cookie"))?;
        Ok(BlobId {
            volume,
            key,
            cookie,
        })
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn parse_volume(text: &str) -> Result<u32, BadId> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadId("volume must be 1 to 10 decimal digits"));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(BadId("volume must not have leading zeros"));
    }
    text.parse::<u32>()
        .map_err(|_| BadId("volume out of range"))
}

/// Number of bytes needed to print `key`: at least one.
fn key_width_bytes(key: u64) -> usize {
    let bits = 64 - key.leading_zeros() as usize;
    bits.div_ceil(8).max(1)
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = key_width_bytes(self.key) * 2;
        write!(
            f,
            "{},{:0width$x}{:08x}",
            self.volume,
            self.key,
            self.cookie,
            width = width
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn design_example() {
        let id = BlobId::parse("3,01637037d6").expect("valid");
        assert_eq!(
            id,
            BlobId {
                volume: 3,
                key: 1,
                cookie: 0x637037d6
            }
        );
        assert_eq!(id.to_string(), "3,01637037d6");
        let zero = BlobId {
            volume: 0,
            key: 0,
            cookie: 0,
        };
        assert_eq!(zero.to_string(), "0,0000000000");
        let max = BlobId {
            volume: u32::MAX,
            key: u64::MAX,
            cookie: u32::MAX,
        };
        assert_eq!(max.to_string().len(), MAX_ID_LEN);
        assert_eq!(BlobId::parse(&max.to_string()), Ok(max));
        let k = BlobId {
            volume: 7,
            key: 0x100,
            cookie: 1,
        };
        assert_eq!(k.to_string(), "7,010000000001");
    }

    #[test]
    fn bad_ids_are_refused() {
        let bad = [
            "",
            ",",
            "3",
            "3,",
            ",01637037d6",
            "3,01637037D6",
            "3,01637037d",
            "3,1637037d6",
            "3,0001637037d6",
            "03,01637037d6",
            "+3,01637037d6",
            "-3,01637037d6",
            " 3,01637037d6",
            "3,01637037d6 ",
            "3;01637037d6",
            "3,,01637037d6",
            "3,01637037d6,",
            "4294967296,01637037d6",
            "99999999999,01637037d6",
            "3,0102030405060708091637037d6",
            "3%2C01637037d6",
            "3,01637037%64",
            "../3,01637037d6",
            "3,../01637037d6",
            "3,01637037d6/..",
            "..",
            "3,0g637037d6",
            "3,0x637037d6",
            "3,01637037d6\0",
            "3,01\u{e9}37037d6",
            "3,０1637037d6",
        ];
        for text in bad {
            assert!(BlobId::parse(text).is_err(), "{text:?} should be refused");
        }
        let long = "1".repeat(1000);
        assert!(BlobId::parse(&long).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn format_parse_round_trip(volume: u32, key: u64, cookie: u32) {
            let id = BlobId { volume, key, cookie };
            let text = id.to_string();
            prop_assert!(text.len() <= MAX_ID_LEN);
            prop_assert_eq!(BlobId::parse(&text), Ok(id));
        }

        #[test]
        fn accepted_text_is_canonical(text in "[0-9a-fA-F,]{0,30}") {
            if let Ok(id) = BlobId::parse(&text) {
                prop_assert_eq!(id.to_string(), text);
            }
        }
    }
}
