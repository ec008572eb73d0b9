//! Request body extraction with the gateway's own limit and errors: a body
//! over the limit is a 413 whether it declared a Content-Length or came
//! chunked, and never a confusing "invalid JSON".

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::http::request::Parts;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::ApiError;
use crate::gateway::error::{ErrorKind, GatewayError};
use crate::state::AppState;

/// The raw request body, at most `server.body_limit_bytes` long.
pub struct BodyBytes(pub Bytes);

fn too_large(limit: usize) -> ApiError {
    ApiError(GatewayError::new(
        ErrorKind::PayloadTooLarge,
        "body_too_large",
        format!("The request body is larger than this gateway's limit of {limit} bytes. Send a smaller request."),
    ))
}

impl FromRequest<AppState> for BodyBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.body_limit;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large(limit));
        }
        match Limited::new(req.into_body(), limit).collect().await {
            Ok(collected) => Ok(Self(collected.to_bytes())),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(limit)),
            Err(e) => Err(ApiError(GatewayError::bad_request(
                "body_unreadable",
                format!("The request body could not be read ({e}). Resend the request."),
                None,
            ))),
        }
    }
}

/// The `{id}` of a route, percent-decoded. An id that does not decode to
/// UTF-8 is a 400 naming `id`, in the gateway's error shape (axum's own
/// rejection is a plain-text body).
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            Err(e) => Err(ApiError(GatewayError::bad_request(
                "invalid_path",
                format!(
                    "The id in the URL path could not be read ({}). Percent-encode it as UTF-8.",
                    e.body_text()
                ),
                Some("id"),
            ))),
        }
    }
}
