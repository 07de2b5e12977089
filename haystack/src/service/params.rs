//! Parsing of the path segments every group of store node routes shares;
//! anything malformed is a `400 bad_request`, and ids never become paths.

use axum::extract::Path;
use axum::extract::rejection::PathRejection;

use super::error::ApiError;
use crate::api::{parse_key, parse_volume_id};

/// Parses the `{vid}` segment.
pub(crate) fn volume_id(path: Result<Path<String>, PathRejection>) -> Result<u32, ApiError> {
    let Path(text) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    parse_volume_id(&text).ok_or_else(|| ApiError::bad_request("volume id must be a decimal u32"))
}

/// Parses the `{vid}` and `{key}` segments.
pub(crate) fn volume_and_key(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(u32, u64), ApiError> {
    let Path((vid, key)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok((parse_vid(&vid)?, parse_needle_key(&key)?))
}

/// Parses a volume id segment.
pub(crate) fn parse_vid(text: &str) -> Result<u32, ApiError> {
    parse_volume_id(text).ok_or_else(|| ApiError::bad_request("volume id must be a decimal u32"))
}

/// Parses a needle key segment.
pub(crate) fn parse_needle_key(text: &str) -> Result<u64, ApiError> {
    parse_key(text).ok_or_else(|| ApiError::bad_request("key must be 1-16 lowercase hex"))
}
