//! Upstream providers behind one trait, and the registry that builds them
//! from config. Adapters translate and transport; they make no billing,
//! routing or HTTP-status decisions.
//!
//! - `openai`: any OpenAI-compatible Chat Completions server, over HTTP.
//! - `anthropic`: Anthropic's Messages API, translated.
//! - `transport` (the request, errors, redaction) over `client` (pools,
//!   TLS, proxies): the HTTP side both share.
//! - `mock`: built in, no network; echo and fault-injection models.

pub mod anthropic;
pub mod client;
pub mod error;
pub mod mock;
pub mod openai;
pub(crate) mod sse;
pub mod transport;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::config::{Config, ProviderKind, Timeouts};
pub use error::ProviderError;

/// One Chat Completions call as it goes upstream: the body already carries
/// the upstream model name and every field the client sent that we pass on.
#[derive(Debug)]
pub struct ChatCall {
    /// The JSON body, serialized.
    pub body: bytes::Bytes,
    /// The output-token limit to send when the request names none and the
    /// provider requires one (Anthropic): the model's configured cap.
    pub default_max_tokens: u64,
    pub stream: bool,
    /// Which API the body speaks.
    pub api: Api,
}

/// The API of a call: Chat Completions (every provider), or the Responses
/// API (providers with `native_responses()` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    ChatCompletions,
    Responses,
}

/// The `data` of one upstream server-sent event.
pub type EventData = String;

/// Upstream events, in order, as they arrive.
pub type EventStream = BoxStream<'static, Result<EventData, ProviderError>>;

pub enum ChatReply {
    /// A complete non-streaming response body (JSON bytes).
    Complete(bytes::Bytes),
    /// A stream of events; nothing has been read past the response headers.
    Stream(EventStream),
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> &str;
    fn timeouts(&self) -> Timeouts;
    /// Whether every failure of this provider is a deliberate rehearsal
    /// (the mock's fault models): those are never retried and never count
    /// against an endpoint's health.
    fn rehearses_faults(&self) -> bool {
        false
    }
    /// Whether the provider serves the Responses API itself: calls with
    /// `Api::Responses` go only to providers that say so.
    fn native_responses(&self) -> bool {
        false
    }
    async fn chat(&self, call: ChatCall) -> Result<ChatReply, ProviderError>;
}

/// A problem found while building providers that does not stop startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderWarning(pub String);

/// Providers by name.
#[derive(Clone, Default)]
pub struct Registry {
    providers: HashMap<String, Arc<dyn Provider>>,
}

impl Registry {
    /// Builds every configured provider. `env` looks up environment
    /// variables (tests inject their own). Missing key variables come back
    /// as warnings; those providers answer 503 naming the variable.
    pub fn build(
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<ProviderWarning>), ProviderError> {
        let mut providers: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        let mut warnings = Vec::new();
        let proxies = client::Proxies::from_env(env);
        for p in &config.providers {
            // (variable name, value if set) for providers that need a key.
            let key = p
                .api_key_env
                .as_deref()
                .map(|var| (var, env(var).filter(|v| !v.is_empty())));
            match (p.kind, &key) {
                (ProviderKind::OpenAi | ProviderKind::Anthropic, Some((var, None))) => {
                    warnings.push(ProviderWarning(format!(
                        "provider {:?}: environment variable {var} is unset; its models will answer 503 until it is set",
                        p.name
                    )))
                }
                (_, Some((var, Some(value)))) if crate::accounts::keys::is_gateway_key(value) => {
                    warnings.push(ProviderWarning(format!(
                        "provider {:?}: environment variable {var} holds a key of this gateway (sk-mume-…), not the provider's; it is never sent upstream, and the provider's models will answer 503 until {var} holds the provider's key",
                        p.name
                    )))
                }
                _ => {}
            }
            let provider: Arc<dyn Provider> = match p.kind {
                ProviderKind::Mock => Arc::new(mock::MockProvider::new(&p.name, p.timeouts)),
                ProviderKind::OpenAi => Arc::new(openai::OpenAiProvider::new(p, key, &proxies)?),
                ProviderKind::Anthropic => {
                    Arc::new(anthropic::AnthropicProvider::new(p, key, &proxies)?)
                }
            };
            providers.insert(p.name.clone(), provider);
        }
        Ok((Self { providers }, warnings))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.providers.get(name)
    }
}
