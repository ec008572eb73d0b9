//! Anthropic's Messages API behind the Chat Completions interface: the
//! request is translated (`translate.rs`), sent to `POST {base_url}/messages`
//! with the key in `x-api-key` and the configured `anthropic-version`, and
//! the answer, streamed or not, is translated back. The rest of the gateway
//! sees an OpenAI-compatible provider.

pub mod translate;

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::Value;

use super::client::Proxies;
use super::transport::{self, KeyHeader, Transport};
use super::{ChatCall, ChatReply, Provider, ProviderError};
use crate::config::{ProviderConfig, Timeouts};
use translate::{StreamTranslator, Translated};

pub struct AnthropicProvider {
    name: String,
    transport: Transport,
    timeouts: Timeouts,
}

impl AnthropicProvider {
    pub fn new(
        config: &ProviderConfig,
        key: Option<(&str, Option<String>)>,
        proxies: &Proxies,
    ) -> Result<Self, ProviderError> {
        let version = config
            .anthropic_version
            .as_deref()
            .unwrap_or(DEFAULT_VERSION);
        Ok(Self {
            name: config.name.clone(),
            transport: Transport::new(
                config,
                "/messages",
                KeyHeader::Plain("x-api-key"),
                key,
                &[("anthropic-version", version)],
                proxies,
            )?,
            timeouts: config.timeouts,
        })
    }
}

/// The `anthropic-version` sent when the config names none.
pub const DEFAULT_VERSION: &str = "2023-06-01";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Anthropic-specific statuses in our terms: 529 (overloaded) is a 503.
fn upstream(e: ProviderError) -> ProviderError {
    match e {
        ProviderError::Upstream {
            status: 529,
            message,
            code,
            param,
            retry_after,
        } => ProviderError::Upstream {
            status: 503,
            message,
            code,
            param,
            retry_after,
        },
        other => other,
    }
}

#[async_trait]
impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    async fn chat(&self, call: ChatCall) -> Result<ChatReply, ProviderError> {
        let body: serde_json::Map<String, Value> = serde_json::from_slice(&call.body)
            .map_err(|e| ProviderError::Decode(format!("request body: {e}")))?;
        let messages = translate::request(&body, call.default_max_tokens).map_err(|e| {
            ProviderError::Upstream {
                status: 400,
                message: e.message,
                code: Some("unsupported_parameter".into()),
                param: e.param,
                retry_after: None,
            }
        })?;
        let out = serde_json::to_vec(&messages).expect("JSON serializes");
        let (response, redactor) = self
            .transport
            .post(out.into(), call.stream)
            .await
            .map_err(upstream)?;
        let created = now();
        if call.stream {
            let mut translator = StreamTranslator::new(created);
            let events = transport::events(response, redactor).flat_map(move |event| {
                let out: Vec<Result<String, ProviderError>> = match event {
                    Ok(data) => match translator.on_event(&data) {
                        Translated::Chunks(chunks) => chunks.into_iter().map(Ok).collect(),
                        // An empty event: the relay counts it as life.
                        Translated::Alive => vec![Ok(String::new())],
                        Translated::Error(message) => {
                            vec![Err(ProviderError::StreamError(message))]
                        }
                    },
                    // `event: error` carries Anthropic's JSON error.
                    Err(ProviderError::StreamError(raw)) => {
                        let message = match translator.on_event(&raw) {
                            Translated::Error(m) => m,
                            _ => raw,
                        };
                        vec![Err(ProviderError::StreamError(message))]
                    }
                    Err(e) => vec![Err(e)],
                };
                futures::stream::iter(out)
            });
            return Ok(ChatReply::Stream(events.boxed()));
        }
        let bytes = transport::body(response, &redactor).await?;
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::Decode(format!("response is not JSON: {e}")))?;
        let chat = translate::response(&answer, created);
        Ok(ChatReply::Complete(chat.to_string().into()))
    }
}
