//! Wire types of the store node HTTP API, shared by [`crate::service`] and
//! [`crate::client`].
//!
//! The contract is the "Store node HTTP API" section of
//! `docs/ARCHITECTURE.md`. Ids travel as text: volume ids in decimal, needle
//! keys in lowercase hex (1 to 16 digits), cookies as exactly eight lowercase
//! hex digits. The parsers here are strict on purpose: anything else is a
//! `400 bad_request`, and ids are never joined into file paths.

use serde::{Deserialize, Serialize};

pub use crate::volume::VolumeStatus;

/// Response header carrying the CRC-32 (decimal) of a needle's data.
pub const CRC32_HEADER: &str = "x-hayloft-crc32";

/// Response header repeating the `error` code of an error answer, for
/// answers without a body (`HEAD`).
pub const ERROR_HEADER: &str = "x-hayloft-error";

/// Stable error codes of the `{"error": CODE, "message": TEXT}` body.
pub mod code {
    /// The needle is missing, deleted, or the cookie is wrong (404).
    pub const NOT_FOUND: &str = "not_found";
    /// The needle failed its checksum or framing checks (500).
    pub const CORRUPT: &str = "corrupt";
    /// The replica is locked or read-only (409).
    pub const READ_ONLY: &str = "read_only";
    /// The replica reached its size limit (507).
    pub const VOLUME_FULL: &str = "volume_full";
    /// The key is not above the replica's last key (409).
    pub const KEY_OUT_OF_ORDER: &str = "key_out_of_order";
    /// The replica already exists (409).
    pub const VOLUME_EXISTS: &str = "volume_exists";
    /// The store node has no replica of this volume (404).
    pub const UNKNOWN_VOLUME: &str = "unknown_volume";
    /// Malformed ids, query or body (400).
    pub const BAD_REQUEST: &str = "bad_request";
    /// The body is larger than the configured limit (413).
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// A local IO error (500; 507 when the disk is full).
    pub const IO: &str = "io";
    /// No such route or method (404 / 405).
    pub const NO_ROUTE: &str = "no_route";
    /// The request did not finish within the node's request timeout (503).
    pub const TIMEOUT: &str = "timeout";
    /// A bulk sync or needle repair could not read from its peer (502).
    pub const PEER: &str = "peer";
    /// No peer holds a copy of the needle that passes its checks (409).
    pub const NO_GOOD_COPY: &str = "no_good_copy";
    /// The replica holds needles and cannot be removed (409).
    pub const NOT_EMPTY: &str = "not_empty";
    /// Any other server-side failure (500).
    pub const INTERNAL: &str = "internal";
    /// The node holds no read lease for this volume: read through a
    /// router (409).
    pub const NO_READ_LEASE: &str = "no_read_lease";
}

/// Body of every error answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// A stable snake_case code from [`code`].
    pub error: String,
    /// Human-readable detail.
    pub message: String,
}

/// Body of `GET /health`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthBody {
    /// Always `"ok"` when the node answers.
    pub status: String,
}

/// Body of a successful append (`201`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppendResult {
    /// Byte offset of the needle in the replica's data file.
    pub offset: u64,
    /// Bytes the needle takes on disk (header, data, footer, padding).
    pub size: u64,
}

/// One of the two files of a replica, as streamed by
/// `GET /volumes/{vid}/files/{data|index}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VolumeFile {
    /// The needle data file.
    Data,
    /// The index file.
    Index,
}

impl VolumeFile {
    /// The last path segment naming this file in the API.
    pub fn path_segment(self) -> &'static str {
        match self {
            VolumeFile::Data => "data",
            VolumeFile::Index => "index",
        }
    }

    /// Parses a path segment (`data` or `index`).
    pub fn from_path_segment(segment: &str) -> Option<VolumeFile> {
        match segment {
            "data" => Some(VolumeFile::Data),
            "index" => Some(VolumeFile::Index),
            _ => None,
        }
    }
}

/// Longest read lease, in ms: a store node holds a longer one this long.
/// The directory waits up to this long inside a call (a missed delete's
/// report, a seal's start), within the 5 s its clients give a call.
pub const READ_LEASE_MS_MAX: u64 = 3_000;

/// Most volumes one read lease names; a node's volumes beyond these are
/// simply not granted (their direct reads go through a router).
pub const READ_LEASE_VOLUMES_MAX: usize = 65_536;

/// What the directory grants a store node for direct reads
/// (`POST /nodes/{id}/read-lease`): for `lease_ms`, counted from when the
/// node asked, it may serve `GET /direct/...` of these volumes, its fresh
/// replicas of hot volumes (`docs/ARCHITECTURE.md`, "Direct reads").
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadLease {
    /// How long the grant holds.
    pub lease_ms: u64,
    /// The volumes it covers, at most [`READ_LEASE_VOLUMES_MAX`].
    pub volumes: Vec<u32>,
}

/// Most records of one page of a listing by volume id (a store node's
/// `GET /volumes`, the directory's `GET /volumes`, `GET /migrations` and
/// `GET /companions/dropped`), and the default.
pub const VOLUME_PAGE_MAX: usize = 1024;

/// Query of a listing by volume id: records of volumes after `after`, at
/// most `limit`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VolumePageQuery {
    /// Records of volumes after this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u32>,
    /// At most this many records (1 to [`VOLUME_PAGE_MAX`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl VolumePageQuery {
    /// The volume to list after and the limit, checked.
    pub fn page(&self) -> Result<(Option<u32>, usize), String> {
        Ok((self.after, page_limit(self.limit, VOLUME_PAGE_MAX)?))
    }
}

/// A page query's `limit` (default `max`), checked to be 1 to `max`.
pub fn page_limit(limit: Option<usize>, max: usize) -> Result<usize, String> {
    match limit.unwrap_or(max) {
        limit @ 1.. if limit <= max => Ok(limit),
        _ => Err(format!("limit must be 1 to {max}")),
    }
}

/// The cursor of the page after `page`, a page of at most `limit` items:
/// the `key` of its last item when it is full, else `None` (the end).
pub fn next_after<T, K>(page: &[T], limit: usize, key: impl FnOnce(&T) -> K) -> Option<K> {
    (page.len() == limit)
        .then(|| page.last().map(key))
        .flatten()
}

/// Where a walk through a paged listing stands: the `after` of the next
/// page to ask for, until a page says it was the last. A page whose cursor
/// does not move past the one before would repeat the walk without end, so
/// the walk refuses it.
#[derive(Clone, Copy, Debug)]
pub struct PageCursor<K> {
    after: Option<K>,
    done: bool,
}

impl<K> Default for PageCursor<K> {
    fn default() -> Self {
        PageCursor {
            after: None,
            done: false,
        }
    }
}

impl<K: PartialOrd + Clone> PageCursor<K> {
    /// The `after` of the next page, or `None` once the last page came.
    pub fn next_page(&self) -> Option<Option<K>> {
        (!self.done).then(|| self.after.clone())
    }

    /// Takes a page's `next_after` (`None`: it was the last); `false` if
    /// it does not advance.
    pub fn advance(&mut self, next: Option<K>) -> bool {
        match next {
            Some(next) if self.after.as_ref().is_none_or(|a| next > *a) => self.after = Some(next),
            Some(_) => return false,
            None => self.done = true,
        }
        true
    }
}

/// Every item of a paged listing: `page(after)` answers one page and the
/// cursor of the next (`None` at the end); a cursor that does not advance
/// is `stalled()`'s error rather than a loop without end.
pub async fn every_page<T, K, E, F, Fut>(
    mut page: F,
    stalled: impl FnOnce() -> E,
) -> Result<Vec<T>, E>
where
    K: PartialOrd + Clone,
    F: FnMut(Option<K>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<K>), E>>,
{
    let mut items = Vec::new();
    let mut cursor = PageCursor::default();
    while let Some(after) = cursor.next_page() {
        let (more, next) = page(after).await?;
        items.extend(more);
        if !cursor.advance(next) {
            return Err(stalled());
        }
    }
    Ok(items)
}

/// A page of a store node's `GET /volumes`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VolumeStatusPage {
    /// The node's replicas by volume id.
    pub volumes: Vec<VolumeStatus>,
    /// Ask again with `after` set to this for the next page; `None` at the
    /// end.
    pub next_after: Option<u32>,
}

/// Most entries of one page of `GET /volumes/{vid}/needles` or
/// `GET /volumes/{vid}/deleted`; also the default page size.
pub const PAGE_ENTRIES_MAX: usize = 4096;

/// Query of the paged listings: `?after=KEY&limit=N` (both optional).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Only keys above this one (lowercase hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// At most this many entries (1 to [`PAGE_ENTRIES_MAX`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// One needle of a replica's index, as `GET /volumes/{vid}/needles` lists it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NeedleEntry {
    /// The needle key (lowercase hex on the wire).
    #[serde(with = "hex_key")]
    pub key: u64,
    /// Byte offset of the needle in the replica's data file.
    pub offset: u64,
    /// Bytes the needle takes on disk, padding included.
    pub size_bytes: u64,
    /// Whether it is deleted.
    pub deleted: bool,
}

/// A page of `GET /volumes/{vid}/needles`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NeedlePage {
    /// Entries in key order.
    pub entries: Vec<NeedleEntry>,
    /// Ask again with `after` = this key for the next page; `None` at the end.
    #[serde(with = "hex_key_opt")]
    pub next_after: Option<u64>,
}

/// A page of `GET /volumes/{vid}/deleted`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeletedPage {
    /// Deleted keys in increasing order (lowercase hex on the wire).
    #[serde(with = "hex_keys")]
    pub keys: Vec<u64>,
    /// Ask again with `after` = this key for the next page; `None` at the end.
    #[serde(with = "hex_key_opt")]
    pub next_after: Option<u64>,
}

/// Answer of `POST /volumes/{vid}/scrub`: what one stretch of
/// [`crate::Volume::scrub_needles`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubPage {
    /// Needles read and checked.
    pub checked: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// Keys whose needles failed a check (deleted ones included: their
    /// bytes are still a replica's to keep whole).
    #[serde(with = "hex_keys")]
    pub corrupt: Vec<u64>,
    /// The last key checked: scrub on after it; `None` once the whole
    /// volume is checked.
    #[serde(with = "hex_key_opt")]
    pub next_after: Option<u64>,
}

/// Body of `POST /volumes/{vid}/needles/{key}/repair`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NeedleRepairAnswer {
    /// `already_good` (the local copy passed its checks) or `rewritten`.
    pub outcome: String,
    /// The peer whose copy was written, if one was.
    pub source: Option<String>,
}

/// A needle named in a [`SyncReport`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NeedleRef {
    /// The needle key.
    #[serde(with = "hex_key")]
    pub key: u64,
    /// Its cookie, as its header gives it (`None` if no copy's header could be read).
    pub cookie: Option<u32>,
}

/// Most needles a [`SyncReport`] names in each list.
pub const SYNC_REPORT_NEEDLES_MAX: usize = 256;

/// Body of a successful `POST /volumes/{vid}/sync`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SyncReport {
    /// The replica after the sync.
    pub status: VolumeStatus,
    /// `catch_up` (the replica already held every needle of the source: only
    /// deletes were applied), `copy` (the source's data file was copied and
    /// checked needle by needle) or `deletes` (asked with `deletes_only`:
    /// only the source's deletes were applied, whatever the digests said).
    pub method: String,
    /// Deletes applied from the source's deleted keys (and, after a copy, the
    /// replica's own earlier ones).
    pub deletes_applied: u64,
    /// Needles whose copy at the source failed its checks; each was taken from
    /// this replica's earlier copy or from another peer, unless it is in `lost`.
    pub source_damaged: Vec<NeedleRef>,
    /// Needles no replica holds a good copy of: copied as the source had them
    /// (they fail their checks, so they are never served).
    pub lost: Vec<NeedleRef>,
    /// Whether either list was cut at [`SYNC_REPORT_NEEDLES_MAX`].
    pub truncated: bool,
}

/// Serde of a key as lowercase hex.
mod hex_key {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(key: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_key(*key))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_key(&text).ok_or_else(|| D::Error::custom(format!("bad key {text:?}")))
    }
}

/// Serde of an optional key as lowercase hex or `null`.
mod hex_key_opt {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(key: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match key {
            Some(key) => s.serialize_str(&super::format_key(*key)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                super::parse_key(&text).ok_or_else(|| D::Error::custom(format!("bad key {text:?}")))
            })
            .transpose()
    }
}

/// Serde of a list of keys as lowercase hex strings.
mod hex_keys {
    use serde::{Deserialize, Deserializer, Serializer, de::Error, ser::SerializeSeq};

    pub(super) fn serialize<S: Serializer>(keys: &[u64], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(keys.len()))?;
        for key in keys {
            seq.serialize_element(&super::format_key(*key))?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| {
                super::parse_key(text).ok_or_else(|| D::Error::custom(format!("bad key {text:?}")))
            })
            .collect()
    }
}

/// Formats a needle key as the API writes it: lowercase hex, no leading zeros.
pub fn format_key(key: u64) -> String {
    format!("{key:x}")
}

/// Formats a cookie as exactly eight lowercase hex digits.
pub fn format_cookie(cookie: u32) -> String {
    format!("{cookie:08x}")
}

/// A needle's path on a store node: `/volumes/{vid}/needles/{key}?cookie=C`.
pub fn needle_path(volume: u32, key: u64, cookie: u32) -> String {
    format!(
        "/volumes/{volume}/needles/{}?cookie={}",
        format_key(key),
        format_cookie(cookie)
    )
}

/// What a direct read puts before [`needle_path`] (`GET /direct/volumes/...`).
pub const DIRECT_READ_PREFIX: &str = "/direct";

/// Parses a volume id: decimal `u32`, digits only, at most 10 of them.
pub fn parse_volume_id(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses a needle key: 1 to 16 lowercase hex digits.
pub fn parse_key(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 16 || !is_lower_hex(text) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// Parses a cookie: exactly eight lowercase hex digits.
pub fn parse_cookie(text: &str) -> Option<u32> {
    if text.len() != 8 || !is_lower_hex(text) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_cursor_walks_forward_to_the_end_and_refuses_a_stall() {
        let mut cursor = PageCursor::<u32>::default();
        assert_eq!(cursor.next_page(), Some(None));
        assert!(cursor.advance(Some(4)));
        assert_eq!(cursor.next_page(), Some(Some(4)));
        assert!(!cursor.advance(Some(4)), "the same cursor again");
        assert!(!cursor.advance(Some(3)), "a cursor going back");
        assert!(cursor.advance(Some(9)));
        assert!(cursor.advance(None));
        assert_eq!(cursor.next_page(), None);
        // Names (block inventories) page the same way.
        let mut names = PageCursor::<String>::default();
        assert!(names.advance(Some("v1.g2.s0.b3".into())));
        assert!(!names.advance(Some("v1.g2.s0.b1".into())));
        assert_eq!(names.next_page(), Some(Some("v1.g2.s0.b3".into())));
    }

    #[test]
    fn keys_round_trip_and_reject_malformed() {
        for key in [0u64, 1, 0xabc, u64::MAX] {
            assert_eq!(parse_key(&format_key(key)), Some(key));
        }
        assert_eq!(parse_key("0001"), Some(1));
        for bad in [
            "",
            "ABC",
            "0x1",
            "g",
            "12345678901234567",
            "-1",
            "1 ",
            "../1",
        ] {
            assert_eq!(parse_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cookies_are_exactly_eight_lower_hex_digits() {
        assert_eq!(parse_cookie(&format_cookie(0x637037d6)), Some(0x637037d6));
        assert_eq!(parse_cookie("00000000"), Some(0));
        for bad in [
            "",
            "1234567",
            "123456789",
            "ABCDEF01",
            "1234567g",
            "+1234567",
        ] {
            assert_eq!(parse_cookie(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn volume_ids_are_plain_decimal() {
        assert_eq!(parse_volume_id("0"), Some(0));
        assert_eq!(parse_volume_id("4294967295"), Some(u32::MAX));
        for bad in ["", "4294967296", "+1", "-1", "1a", " 1", "99999999999"] {
            assert_eq!(parse_volume_id(bad), None, "{bad:?}");
        }
    }
}
