//! `POST /api/v1/chat/completions`: hands the body to the domain and turns
//! its answer into a JSON or SSE response.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::ApiError;
use super::extract::BodyBytes;
use super::sse;
use crate::gateway::record::RequestContext;
use crate::gateway::ChatOutcome;
use crate::state::AppState;

pub async fn create(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    Ok(match state.gateway.chat(&body, &ctx).await? {
        ChatOutcome::Complete(json) => ([(CONTENT_TYPE, "application/json")], json).into_response(),
        ChatOutcome::Stream(frames) => sse::response(frames),
    })
}
