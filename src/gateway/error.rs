//! The domain's error: what went wrong, in words a client can act on.
//!
//! `ErrorKind` is the row of the error table; the HTTP layer maps each kind
//! to a status code in exactly one place (`http::error`). Nothing here knows
//! about HTTP types. Internal details never go into `message` for
//! `ErrorKind::Internal`: they go into `detail`, which only the log sees.

use std::fmt;
use std::time::Duration;

use serde_json::{json, Value};

/// A row of the error table. The HTTP status for each lives in `http::error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    InsufficientCredits,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    Unprocessable,
    RateLimited,
    HeadersTooLarge,
    Internal,
    Unavailable,
}

impl ErrorKind {
    /// The HTTP status of this row of the error table: the one mapping,
    /// used by the HTTP layer and by the usage log alike.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::InsufficientCredits => 402,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::Conflict => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::Unprocessable => 422,
            ErrorKind::RateLimited => 429,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::Internal => 500,
            ErrorKind::Unavailable => 503,
        }
    }

    /// The `error.type` string of the envelope. Chosen once; the README's
    /// error table documents the vocabulary.
    pub fn type_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::Conflict
            | ErrorKind::Unprocessable
            | ErrorKind::PayloadTooLarge
            | ErrorKind::HeadersTooLarge => "invalid_request_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::InsufficientCredits => "insufficient_credits",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Internal => "server_error",
            ErrorKind::Unavailable => "service_unavailable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub kind: ErrorKind,
    /// Machine-readable reason, e.g. `invalid_json`, `model_not_found`.
    pub code: &'static str,
    /// What was wrong and what to do. Safe to show the client.
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// For 429/503: how long the client should wait.
    pub retry_after: Option<Duration>,
    /// Log-only detail (never sent to the client).
    pub detail: Option<String>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
            detail: None,
        }
    }

    pub fn bad_request(
        code: &'static str,
        message: impl Into<String>,
        param: Option<&str>,
    ) -> Self {
        let mut e = Self::new(ErrorKind::BadRequest, code, message);
        e.param = param.map(str::to_string);
        e
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, code, message)
    }

    /// A gateway bug. The client sees a generic sentence; `detail` is logged.
    pub fn internal(detail: impl Into<String>) -> Self {
        let mut e = Self::new(
            ErrorKind::Internal,
            "internal_error",
            "The gateway hit an internal error. Retry with backoff; if it persists, report the reqId.",
        );
        e.detail = Some(detail.into());
        e
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Whether sending the same request again can never succeed: credit
    /// that does not cover it, or a `max_tokens` over the key's whole
    /// token budget. (Clients are told not to retry.)
    pub fn is_final(&self) -> bool {
        self.kind == ErrorKind::InsufficientCredits || self.code == "max_tokens_over_limit"
    }

    /// The error object clients see, in the HTTP envelope
    /// (`{"error": <this>}`) and in a stream's final error event alike.
    pub fn error_object(&self, request_id: &str) -> Value {
        json!({
            "message": self.message,
            "type": self.kind.type_str(),
            "code": self.code,
            "param": self.param,
            "reqId": request_id,
        })
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.kind.type_str(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for GatewayError {}
