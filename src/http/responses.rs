//! The Responses API: `POST /api/v1/responses` (the domain serves it like a
//! chat completion), and the stored responses of the caller's key: `GET`
//! and `DELETE /api/v1/responses/{id}`, `GET …/{id}/input_items`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::{Extension, Json};
use serde_json::Value;

use super::chat::{caller, outcome_response};
use super::error::ApiError;
use super::extract::{BodyBytes, PathId};
use crate::gateway::record::RequestContext;
use crate::gateway::responses::input_items_page;
use crate::middleware::auth::AuthedKey;
use crate::state::AppState;

pub async fn create(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(AuthedKey(key)): Extension<AuthedKey>,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    let caller = caller(key, headers)?;
    let outcome = state.gateway.responses(body, &ctx, &caller).await?;
    Ok(outcome_response(outcome))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(AuthedKey(key)): Extension<AuthedKey>,
    PathId(id): PathId,
) -> Result<Json<Value>, ApiError> {
    let stored = state.gateway.stored_response(&key.id, &id).await?;
    Ok(Json(stored.response))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(AuthedKey(key)): Extension<AuthedKey>,
    PathId(id): PathId,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.gateway.delete_response(&key.id, &id).await?))
}

pub async fn input_items(
    State(state): State<AppState>,
    Extension(AuthedKey(key)): Extension<AuthedKey>,
    PathId(id): PathId,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let stored = state.gateway.stored_response(&key.id, &id).await?;
    let items = stored.input.as_array().map(Vec::as_slice).unwrap_or(&[]);
    let page = input_items_page(
        items,
        query.get("order").map(String::as_str),
        query.get("after").map(String::as_str),
        query.get("limit").map(String::as_str),
    )?;
    Ok(Json(page))
}
