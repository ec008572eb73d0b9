//! The built-in `mock` provider: no network, deterministic answers.
//!
//! `echo` repeats the last user message (word by word when streamed), calls
//! the first offered tool when tools are given, and echoes a tool result
//! back. The other models inject faults so a user can rehearse every row of
//! the error table; config/gateway.toml lists them.

mod reply;

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::Value;

use super::{ChatCall, ChatReply, EventData, Provider, ProviderError};
use crate::config::Timeouts;
use crate::gateway::error::{ErrorKind, GatewayError};
use reply::MockReply;

/// Every upstream model name the mock provider serves.
pub const MODEL_NAMES: &[&str] = &[
    "echo",
    "slow",
    "cut",
    "stall",
    "silent",
    "error-400",
    "error-401",
    "error-402",
    "error-429",
    "error-500",
    "error-503",
];

pub fn is_known_model(name: &str) -> bool {
    MODEL_NAMES.contains(&name)
}

/// Words a faulty stream sends before it breaks.
const WORDS_BEFORE_FAULT: usize = 3;
const SLOW_WORD_DELAY: Duration = Duration::from_millis(250);

pub struct MockProvider {
    name: String,
    timeouts: Timeouts,
}

impl MockProvider {
    pub fn new(name: &str, timeouts: Timeouts) -> Self {
        Self {
            name: name.to_string(),
            timeouts,
        }
    }
}

#[async_trait]
impl Provider for MockProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    fn rehearses_faults(&self) -> bool {
        true
    }

    async fn chat(&self, call: ChatCall) -> Result<ChatReply, ProviderError> {
        let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some(error) = rehearsal(&model) {
            return Err(ProviderError::Rehearsal(error));
        }
        let reply = MockReply::answer(&body);
        match (model.as_str(), call.stream) {
            ("silent", _) | ("stall", false) => futures::future::pending().await,
            ("cut", false) => Err(ProviderError::Transport(
                "connection reset by the mock upstream".into(),
            )),
            (_, false) => Ok(ChatReply::Complete(reply.completion().to_string().into())),
            (_, true) => {
                let include_usage = body
                    .pointer("/stream_options/include_usage")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                Ok(ChatReply::Stream(stream(
                    model,
                    reply.chunks(include_usage),
                    include_usage,
                )))
            }
        }
    }
}

/// Plays the chunks with the timing and fault the model asks for. `cut`
/// and `stall` break after at most `WORDS_BEFORE_FAULT` words, and always
/// before the finishing chunk, so even a one-word answer fails mid-stream.
fn stream(model: String, chunks: Vec<Value>, include_usage: bool) -> super::EventStream {
    let delay = if model == "slow" {
        SLOW_WORD_DELAY
    } else {
        Duration::ZERO
    };
    let finish_at = chunks.len() - 1 - usize::from(include_usage);
    let fault_at =
        matches!(model.as_str(), "cut" | "stall").then(|| finish_at.min(WORDS_BEFORE_FAULT + 1));
    async_stream::stream! {
        for (i, chunk) in chunks.into_iter().enumerate() {
            if Some(i) == fault_at {
                if model == "stall" {
                    futures::future::pending::<()>().await;
                }
                yield Err(ProviderError::Transport("connection reset by the mock upstream".into()));
                return;
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            yield Ok::<EventData, ProviderError>(chunk.to_string());
        }
        yield Ok("[DONE]".to_string());
    }
    .boxed()
}

/// The error a fault model rehearses, built exactly as the gateway would.
fn rehearsal(model: &str) -> Option<GatewayError> {
    let note = format!("(rehearsal: mock/{model} always answers with this error)");
    let error = match model {
        "error-400" => GatewayError::bad_request(
            "invalid_request",
            format!("The request is invalid. Fix the field named in param and resend. {note}"),
            Some("messages"),
        ),
        "error-401" => GatewayError::new(
            ErrorKind::Unauthorized,
            "invalid_api_key",
            format!("The API key is invalid. Check the key you send as Bearer token. {note}"),
        ),
        "error-402" => GatewayError::new(
            ErrorKind::InsufficientCredits,
            "insufficient_credits",
            format!("The key has no credits left. Top it up, or lower max_tokens. {note}"),
        ),
        "error-429" => GatewayError::new(
            ErrorKind::RateLimited,
            "rate_limit_exceeded",
            format!("Rate limit reached. Retry after the Retry-After delay. {note}"),
        )
        .with_retry_after(Duration::from_secs(2)),
        "error-500" => GatewayError::internal(format!("mock/{model} rehearses an internal error")),
        "error-503" => GatewayError::unavailable(
            "provider_unavailable",
            format!(
                "Provider mock is unavailable. Retry with backoff or use a fallback model. {note}"
            ),
        )
        .with_retry_after(Duration::from_secs(1)),
        _ => return None,
    };
    Some(error)
}

/// A timestamp for `created`, in seconds.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn completion_id() -> String {
    format!("chatcmpl-mock{}", ulid::Ulid::new())
}

#[cfg(test)]
mod tests {
    use super::reply::Turn;
    use super::*;
    use serde_json::json;

    #[test]
    fn every_fault_model_rehearses_its_row() {
        let rows = [
            ("error-400", ErrorKind::BadRequest),
            ("error-401", ErrorKind::Unauthorized),
            ("error-402", ErrorKind::InsufficientCredits),
            ("error-429", ErrorKind::RateLimited),
            ("error-500", ErrorKind::Internal),
            ("error-503", ErrorKind::Unavailable),
        ];
        for (model, kind) in rows {
            assert_eq!(rehearsal(model).map(|e| e.kind), Some(kind), "{model}");
        }
        assert!(rehearsal("echo").is_none());
        assert!(rehearsal("error-429").unwrap().retry_after.is_some());
    }

    #[test]
    fn turn_is_read_from_the_last_message() {
        let body = json!({"messages": [{"role": "user", "content": "hi"}]});
        assert!(matches!(Turn::of(&body), Turn::Echo(t) if t == "hi"));
    }
}
