//! [`ApiError`]: every way a public API request can fail, and the one place
//! that maps each to an HTTP status and a stable snake_case code (garage's
//! `src/api/s3/error.rs` pattern). Every error answer is JSON
//! `{"error": CODE, "message": TEXT}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::id::BadId;
use crate::directory::DirectoryClientError;

/// An error of the public API (and of [`super::run`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The BLOB id in the URL is malformed.
    #[error(transparent)]
    BadId(#[from] BadId),
    /// The request is malformed in another way.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No such BLOB: missing, deleted, wrong cookie or unknown volume, all
    /// answered identically.
    #[error("blob not found")]
    NotFound,
    /// No route matches the path.
    #[error("no route for {0}")]
    NoRoute(String),
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The client stopped sending its body for longer than the idle timeout.
    #[error("request body idle for more than {timeout_ms} ms")]
    BodyTimeout {
        /// The configured body-idle timeout.
        timeout_ms: u64,
    },
    /// The body is larger than the configured limit.
    #[error("body larger than the limit of {limit_bytes} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit_bytes: u64,
    },
    /// The `Range` cannot be served for a BLOB of `len` bytes.
    #[error("range not satisfiable for a blob of {len} bytes")]
    RangeNotSatisfiable {
        /// The BLOB's length, sent back in `Content-Range: bytes */len`.
        len: u64,
    },
    /// Too many uploads in flight or upload memory exhausted; retry later.
    #[error("busy: {0}")]
    Busy(String),
    /// No replica could serve the request (all down, stale, failing or slow).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Every upload attempt failed; nothing was acknowledged.
    #[error("upload failed after {attempts} attempts: {last}")]
    UploadFailed {
        /// Attempts made (each on a different volume).
        attempts: u32,
        /// The last attempt's failure.
        last: String,
    },
    /// A replica failed while a streamed body was being sent to it: the
    /// bytes already received are gone, so the upload cannot be retried on
    /// another volume. Nothing was acknowledged; the client may retry.
    #[error(
        "a replica failed while the body was streamed to it; the upload was not stored \
         and can be retried: {0}"
    )]
    ReplicaFailed(String),
    /// No node of that id is registered.
    #[error("unknown node: {0}")]
    UnknownNode(String),
    /// The node cannot be removed (it is up, or a volume keeps data on it).
    #[error("{0}")]
    NodeInUse(String),
    /// The directory could not be reached or refused a request.
    #[error("directory: {0}")]
    Directory(#[from] DirectoryClientError),
    /// A bug or an unexpected condition.
    #[error("internal error: {0}")]
    Internal(String),
    /// Listening or accepting failed (only returned by [`super::run`]).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl ApiError {
    /// The HTTP status and the stable error code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadId(_) => (StatusCode::BAD_REQUEST, "bad_id"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::NoRoute(_) => (StatusCode::NOT_FOUND, "no_route"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::BodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::UploadFailed { .. } => (StatusCode::SERVICE_UNAVAILABLE, "upload_failed"),
            ApiError::ReplicaFailed(_) => (StatusCode::SERVICE_UNAVAILABLE, "replica_failed"),
            ApiError::UnknownNode(_) => (StatusCode::NOT_FOUND, "unknown_node"),
            ApiError::NodeInUse(_) => (StatusCode::CONFLICT, "node_in_use"),
            ApiError::Directory(_) => (StatusCode::BAD_GATEWAY, "directory_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "io"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, code, "request failed");
        } else {
            tracing::debug!(error = %self, code, "request refused");
        }
        let body = ErrorBody {
            error: code,
            message: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        match &self {
            ApiError::RangeNotSatisfiable { len } => {
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
            }
            ApiError::Busy(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn error_body_is_json_with_code_and_message() {
        let response = ApiError::RangeNotSatisfiable { len: 7 }.into_response();
        assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_RANGE)
                .map(|v| v.as_bytes()),
            Some(&b"bytes */7"[..])
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["error"], "range_not_satisfiable");
        assert!(json["message"].as_str().is_some_and(|m| m.contains('7')));
    }
}
