//! Error answers of the store node: the shared [`ApiError`] type
//! (`crate::http`) and one `match` from engine errors to status codes.

use axum::http::StatusCode;

use crate::api::code;
use crate::error::Error;
pub(crate) use crate::http::ApiError;

/// Message of every `404 not_found` answer. It is the same for a missing, a
/// deleted and a wrong-cookie needle, so answers leak nothing about ids.
pub(crate) const NOT_FOUND_MESSAGE: &str = "needle not found";

impl ApiError {
    pub(crate) fn read_only(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, code::READ_ONLY, message)
    }

    pub(crate) fn io(err: &std::io::Error) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code::IO, err.to_string())
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let (status, code) = match &err {
            Error::NotFound => {
                return ApiError::new(StatusCode::NOT_FOUND, code::NOT_FOUND, NOT_FOUND_MESSAGE);
            }
            Error::Corrupt {
                volume,
                offset,
                reason,
            } => {
                tracing::error!(volume, offset, reason = %reason, "corrupt needle refused");
                (StatusCode::INTERNAL_SERVER_ERROR, code::CORRUPT)
            }
            Error::ReadOnly { .. } => (StatusCode::CONFLICT, code::READ_ONLY),
            Error::VolumeFull { .. } => (StatusCode::INSUFFICIENT_STORAGE, code::VOLUME_FULL),
            Error::KeyOutOfOrder { .. } => (StatusCode::CONFLICT, code::KEY_OUT_OF_ORDER),
            Error::VolumeExists { .. } => (StatusCode::CONFLICT, code::VOLUME_EXISTS),
            Error::UnknownVolume { .. } => (StatusCode::NOT_FOUND, code::UNKNOWN_VOLUME),
            Error::InvalidInput(_) => (StatusCode::BAD_REQUEST, code::BAD_REQUEST),
            Error::Io(e) => {
                tracing::error!(error = %e, "store io error");
                // A full disk clears once space is freed: 507, like the directory's.
                match e.kind() {
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                        (StatusCode::INSUFFICIENT_STORAGE, code::IO)
                    }
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, code::IO),
                }
            }
            #[allow(unreachable_patterns)]
            _ => {
                tracing::error!(error = %err, "unexpected store error");
                (StatusCode::INTERNAL_SERVER_ERROR, code::INTERNAL)
            }
        };
        ApiError::new(status, code, err.to_string())
    }
}
