//! Error answers of the store node: one [`ApiError`] type, one `match` from
//! engine errors to status codes, and the JSON body every error carries.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::{ERROR_HEADER, ErrorBody, code};
use crate::error::Error;

/// Message of every `404 not_found` answer. It is the same for a missing, a
/// deleted and a wrong-cookie needle, so answers leak nothing about ids.
pub(crate) const NOT_FOUND_MESSAGE: &str = "needle not found";

/// An error answer: status, stable code and message.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code::BAD_REQUEST, message)
    }

    pub(crate) fn payload_too_large(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::PAYLOAD_TOO_LARGE,
            message,
        )
    }

    pub(crate) fn read_only(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, code::READ_ONLY, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code::INTERNAL, message)
    }

    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code::TIMEOUT, message)
    }

    pub(crate) fn peer(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_GATEWAY, code::PEER, message)
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_string(),
            message: self.message,
        };
        // The code is also a header, so that an answer without a body
        // (`HEAD`) still says which error it is.
        let code = [(
            axum::http::HeaderName::from_static(ERROR_HEADER),
            axum::http::HeaderValue::from_static(self.code),
        )];
        (self.status, code, Json(body)).into_response()
    }
}
