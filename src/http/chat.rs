//! `POST /api/v1/chat/completions`: hands the body to the domain and turns
//! its answer into a JSON or SSE response.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::ApiError;
use super::extract::BodyBytes;
use super::sse;
use crate::gateway::error::GatewayError;
use crate::gateway::record::RequestContext;
use crate::gateway::{Caller, ChatOutcome};
use crate::middleware::auth::AuthedKey;
use crate::state::AppState;
use crate::store::KeyRecord;

const MAX_IDEMPOTENCY_KEY: usize = 255;

pub async fn create(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(AuthedKey(key)): Extension<AuthedKey>,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    let caller = caller(key, headers)?;
    Ok(outcome_response(
        state.gateway.chat(body, &ctx, &caller).await?,
    ))
}

/// The authenticated key and the request's `Idempotency-Key`.
///
/// It takes the headers so that they are gone before the handler waits on
/// the domain: hyper parses them as slices of the connection's read
/// buffer, which cannot be reused while they live (the connection takes
/// another), and a stream waits for its first content, which may take
/// seconds.
pub fn caller(key: Arc<KeyRecord>, headers: HeaderMap) -> Result<Caller, GatewayError> {
    Ok(Caller {
        key,
        idempotency_key: idempotency_key(&headers)?,
    })
}

/// A JSON body, or an SSE stream.
pub fn outcome_response(outcome: ChatOutcome) -> Response {
    match outcome {
        ChatOutcome::Complete(json) => ([(CONTENT_TYPE, "application/json")], json).into_response(),
        ChatOutcome::Stream(frames) => sse::response(frames),
    }
}

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let Some(value) = headers.get(&IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(v)
            if !v.is_empty()
                && v.len() <= MAX_IDEMPOTENCY_KEY
                && v.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(v.to_string()))
        }
        _ => Err(GatewayError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters, e.g. a UUID.",
            None,
        )),
    }
}
