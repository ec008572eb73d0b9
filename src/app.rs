//! The router and its one layer stack.
//!
//! Layers, outermost first (a request passes them top to bottom):
//! 1. request id: assigns `x-request-id`, renders error envelopes with it,
//!    writes the access-log line when the response body ends;
//! 2. panic catcher: a panicking handler becomes a 500 envelope;
//! 3. header limits: too many or too large headers become a JSON 431;
//! 4. auth: deny by default; public, user and admin routes are listed in
//!    `middleware::auth::access_of`;
//! 5. handler (body size is bounded by its `BodyBytes` extractor). Rate
//!    limits and the credit hold are the domain's first steps
//!    (`Gateway::chat`), because they need the parsed request.

use std::any::Any;

use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

use crate::gateway::error::GatewayError;
use crate::http::error::ApiError;
use crate::http::{account, admin, chat, health, models, responses};
use crate::middleware::{auth, limits, request_id};
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/chat/completions", post(chat::create))
        .route("/api/v1/responses", post(responses::create))
        .route(
            "/api/v1/responses/{id}",
            get(responses::get).delete(responses::delete),
        )
        .route(
            "/api/v1/responses/{id}/input_items",
            get(responses::input_items),
        )
        .route("/api/v1/models", get(models::list))
        .route("/api/v1/models/{*id}", get(models::get))
        .route("/api/v1/key", get(account::key_info))
        .route("/api/v1/generation", get(account::generation))
        .route(
            "/api/v1/keys",
            post(admin::create_key).get(admin::list_keys),
        )
        .route(
            "/api/v1/keys/{id}",
            get(admin::get_key)
                .patch(admin::update_key)
                .delete(admin::delete_key),
        )
        .route("/api/v1/keys/{id}/credits", post(admin::credit_key))
        .route("/api/v1/credits", get(admin::credits))
        .route("/api/v1/providers", get(admin::providers))
        .route("/metrics", get(admin::metrics))
        .route("/health", get(health::live))
        .route("/ready", get(health::ready))
        .fallback(health::not_found)
        .method_not_allowed_fallback(health::method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(from_fn(request_id::layer))
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(from_fn_with_state(state.header_limits, limits::layer))
                .layer(from_fn_with_state(state.accounts.clone(), auth::layer)),
        )
        .with_state(state)
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    ApiError(GatewayError::internal(format!("handler panicked: {what}"))).into_response()
}
