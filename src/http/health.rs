//! Liveness and readiness, and the JSON answers for unknown routes and
//! wrong methods.

use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use crate::gateway::error::{ErrorKind, GatewayError};
use crate::ratelimit::LimiterHealth;
use crate::state::AppState;

/// The process is up and serving; `rate_limiter` says which limiter
/// decides: `memory` (one instance), `redis` (shared), or `fallback`
/// (Redis unreachable: in-process at each limit ÷ `instances`).
pub async fn live(State(state): State<AppState>) -> Json<Value> {
    let limiter = match state.gateway.limiter_health() {
        LimiterHealth::Memory => json!("memory"),
        LimiterHealth::Redis => json!("redis"),
        LimiterHealth::Fallback { instances } => {
            json!({"mode": "fallback", "reason": "Redis is unreachable", "instances": instances})
        }
    };
    Json(json!({"status": "ok", "rate_limiter": limiter}))
}

/// Ready for traffic: false once shutdown has begun, so load balancers
/// stop sending new requests while in-flight ones drain.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.shutting_down.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
    } else {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    }
}

pub async fn not_found(req: Request) -> ApiError {
    ApiError(GatewayError::new(
        ErrorKind::NotFound,
        "route_not_found",
        format!(
            "There is no route {} {}. The API is under /api/v1: POST /api/v1/chat/completions, GET /api/v1/models.",
            req.method(),
            req.uri().path()
        ),
    ))
}

pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError(GatewayError::new(
        ErrorKind::MethodNotAllowed,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}. Check the method in the API reference.",
            req.method(),
            req.uri().path()
        ),
    ))
}
