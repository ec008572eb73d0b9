//! Any OpenAI-compatible Chat Completions server (OpenAI, vLLM, Ollama,
//! Groq, Together, ...). The body goes out as the domain built it, with the
//! gateway's own key (`transport.rs`); no client header is ever copied.

use async_trait::async_trait;

use super::transport::{self, KeyHeader, Transport};
use super::{ChatCall, ChatReply, Provider, ProviderError};
use crate::config::{ProviderConfig, Timeouts};

pub struct OpenAiProvider {
    name: String,
    transport: Transport,
    timeouts: Timeouts,
}

impl OpenAiProvider {
    /// `key` is `(variable name, value if set)` when the provider needs one.
    pub fn new(
        config: &ProviderConfig,
        key: Option<(&str, Option<String>)>,
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            name: config.name.clone(),
            transport: Transport::new(config, "/chat/completions", KeyHeader::Bearer, key, &[])?,
            timeouts: config.timeouts,
        })
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    async fn chat(&self, call: ChatCall) -> Result<ChatReply, ProviderError> {
        let (response, redactor) = self.transport.post(call.body, call.stream).await?;
        if call.stream {
            return Ok(ChatReply::Stream(transport::events(response, redactor)));
        }
        transport::body(response, &redactor)
            .await
            .map(ChatReply::Complete)
    }
}
