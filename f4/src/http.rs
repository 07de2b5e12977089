//! What the storage node and the backoff node add to the hot tier's HTTP
//! pieces (`haystack::http`: the error answer, the request deadline, the
//! fallbacks): the mapping from warm-tier errors to status codes, and a JSON
//! body extractor whose rejections are such answers.

use axum::Json;
use axum::http::StatusCode;

pub(crate) use haystack::http::ApiError;

use crate::api::code;
use crate::error::Error;

/// `404 unknown_volume`: this node is not a journal holder of the volume.
pub(crate) fn unknown_volume(volume: u32, generation: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        code::UNKNOWN_VOLUME,
        format!("this node holds no index of volume {volume} generation {generation}"),
    )
}

/// A local IO error as an answer.
pub(crate) fn io(error: std::io::Error) -> ApiError {
    ApiError::from(Error::Io(error))
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let (status, code) = match &error {
            Error::Corrupt(_) => {
                tracing::error!(error = %error, "corrupt warm data refused");
                (StatusCode::INTERNAL_SERVER_ERROR, code::BLOCK_CORRUPT)
            }
            Error::Coding(coding::CodingError::ChecksumMismatch { .. }) => {
                tracing::error!(error = %error, "block checksum mismatch");
                (StatusCode::INTERNAL_SERVER_ERROR, code::BLOCK_CORRUPT)
            }
            Error::WrongBlock(_) => (StatusCode::CONFLICT, code::WRONG_BLOCK),
            Error::OutOfRange { .. } => (StatusCode::BAD_REQUEST, code::OUT_OF_RANGE),
            Error::InvalidGeometry(_) | Error::UnsupportedVersion(_) | Error::NotLocked { .. } => {
                (StatusCode::BAD_REQUEST, code::BAD_REQUEST)
            }
            Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (StatusCode::NOT_FOUND, code::BLOCK_NOT_FOUND)
            }
            Error::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                (StatusCode::INSUFFICIENT_STORAGE, code::IO)
            }
            Error::DamagedNeedle { .. } => (StatusCode::UNPROCESSABLE_ENTITY, code::PEER),
            _ => {
                tracing::error!(error = %error, "warm node error");
                (StatusCode::INTERNAL_SERVER_ERROR, code::IO)
            }
        };
        ApiError::new(status, code, error.to_string())
    }
}

/// A JSON body extractor whose rejection is our `400` with a JSON error.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T, S> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}
