//! The HTTP edge of errors: error kind to status (`ErrorKind::status` is
//! the one table), and the one function that writes the JSON envelope.
//!
//! `ApiError::into_response` only sets the status and headers and attaches
//! the `GatewayError` to the response; the request-id middleware, which
//! knows the request id, calls `render` and logs. So every error response,
//! from a handler, an extractor, a fallback or a caught panic, gets the
//! same envelope with `reqId`.

use axum::body::Body;
use axum::http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::gateway::error::{ErrorKind, GatewayError};

#[derive(Debug)]
pub struct ApiError(pub GatewayError);

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        Self(e)
    }
}

pub fn status_of(kind: ErrorKind) -> StatusCode {
    StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = status_of(self.0.kind).into_response();
        let headers = response.headers_mut();
        if let Some(after) = self.0.retry_after {
            // Whole seconds, at least 1: what Retry-After and the SDKs expect.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if self.0.is_final() {
            // Tells the OpenAI SDKs not to retry a condition that will not clear.
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        response.extensions_mut().insert(self.0);
        response
    }
}

/// Writes the envelope `{"error": {message, type, code, param, reqId}}`.
pub fn render(response: &mut Response, error: &GatewayError, request_id: &str) {
    let body = json!({ "error": error.error_object(request_id) }).to_string();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.remove(CONTENT_LENGTH);
    *response.body_mut() = Body::from(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let e = GatewayError::new(ErrorKind::RateLimited, "x", "slow down")
            .with_retry_after(Duration::from_millis(1500));
        let r = ApiError(e).into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "2");
    }

    #[test]
    fn insufficient_credits_is_not_retried_by_sdks() {
        let r = ApiError(GatewayError::new(
            ErrorKind::InsufficientCredits,
            "x",
            "top up",
        ))
        .into_response();
        assert_eq!(r.status(), 402);
        assert_eq!(r.headers()["x-should-retry"], "false");
        let never = GatewayError::new(ErrorKind::RateLimited, "max_tokens_over_limit", "lower it")
            .with_retry_after(Duration::from_secs(60));
        let r = ApiError(never).into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["x-should-retry"], "false");
        let r = ApiError(GatewayError::new(
            ErrorKind::RateLimited,
            "rate_limit_requests",
            "wait",
        ))
        .into_response();
        assert!(r.headers().get("x-should-retry").is_none());
    }
}
