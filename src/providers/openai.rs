//! Any OpenAI-compatible Chat Completions server (OpenAI, vLLM, Ollama,
//! Groq, Together, ...), and the Responses API of those that have it
//! (`native_responses`). The body goes out as the domain built it, with the
//! gateway's own key (`transport.rs`); no client header is ever copied.

use async_trait::async_trait;

use super::client::Proxies;
use super::transport::{self, KeyHeader, Transport};
use super::{Api, ChatCall, ChatReply, Provider, ProviderError};
use crate::config::{ProviderConfig, Timeouts};

pub struct OpenAiProvider {
    name: String,
    transport: Transport,
    /// `{base_url}/responses`, when the server has the Responses API.
    responses_url: Option<http::Uri>,
    timeouts: Timeouts,
}

impl OpenAiProvider {
    /// `key` is `(variable name, value if set)` when the provider needs one.
    pub fn new(
        config: &ProviderConfig,
        key: Option<(&str, Option<String>)>,
        proxies: &Proxies,
    ) -> Result<Self, ProviderError> {
        let transport = Transport::new(
            config,
            "/chat/completions",
            KeyHeader::Bearer,
            key,
            &[],
            proxies,
        )?;
        let responses_url = match config.native_responses {
            true => Some(Transport::url_at(config, "/responses")?),
            false => None,
        };
        Ok(Self {
            name: config.name.clone(),
            transport,
            responses_url,
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

    fn native_responses(&self) -> bool {
        self.responses_url.is_some()
    }

    async fn chat(&self, call: ChatCall) -> Result<ChatReply, ProviderError> {
        let url = match (call.api, &self.responses_url) {
            (Api::ChatCompletions, _) => None,
            (Api::Responses, Some(url)) => Some(url),
            (Api::Responses, None) => {
                return Err(ProviderError::NotConfigured(format!(
                    "provider {:?} does not serve the Responses API",
                    self.name
                )))
            }
        };
        let (response, redactor) = self.transport.post_to(url, call.body, call.stream).await?;
        if call.stream {
            return Ok(ChatReply::Stream(transport::events(response, redactor)));
        }
        transport::body(response, &redactor)
            .await
            .map(ChatReply::Complete)
    }
}
