//! `GET /api/v1/models` and `GET /api/v1/models/{id}` (ids contain "/").

use axum::extract::State;
use axum::Json;
use serde_json::Value;

use super::error::ApiError;
use super::extract::PathId;
use crate::state::AppState;

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(state.gateway.catalog.list_json())
}

pub async fn get(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.gateway.catalog.model_json(&id)?))
}
