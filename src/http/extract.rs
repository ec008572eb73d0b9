//! Request body extraction with the gateway's own limit and errors: a body
//! over the limit is a 413 whether it declared a Content-Length or came
//! chunked, and never a confusing "invalid JSON".

use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_LENGTH;
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
