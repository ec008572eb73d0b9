//! Header limits, answered with a JSON 431. hyper itself enforces a looser
//! hard cap (see `server`), beyond which it answers a bare 431 without
//! reading further; this layer gives clients the readable answer.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::gateway::error::{ErrorKind, GatewayError};
use crate::http::error::ApiError;

#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    pub max_headers: usize,
    pub max_bytes: usize,
}

pub async fn layer(State(limits): State<HeaderLimits>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if headers.len() > limits.max_headers || bytes > limits.max_bytes {
        return ApiError(GatewayError::new(
            ErrorKind::HeadersTooLarge,
            "headers_too_large",
            format!(
                "The request has {} headers totalling {bytes} bytes; the limits are {} headers and {} bytes. Send fewer or smaller headers.",
                headers.len(),
                limits.max_headers,
                limits.max_bytes
            ),
        ))
        .into_response();
    }
    next.run(req).await
}
