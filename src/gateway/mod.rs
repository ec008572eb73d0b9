//! The domain: what the gateway does with a request, independent of HTTP.
//!
//! `Gateway::chat` resolves the model, calls its provider within the
//! provider's time limits, and returns either a complete JSON body or a
//! stream of SSE frames. Before the first frame is committed every failure
//! is a `GatewayError` (a real HTTP status); after it, failures become the
//! stream's final error event (`relay`).

pub mod catalog;
pub mod error;
pub mod json;
pub mod record;
pub mod relay;
pub mod request;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::Value;

use crate::providers::{ChatCall, ChatReply, ProviderError, Registry};
use catalog::Catalog;
use error::{ErrorKind, GatewayError};
use json::RawObject;
use record::{Outcome, RequestContext, Usage};
use relay::{ChunkRelay, Step, StreamLimits};
use request::ChatRequest;

pub enum ChatOutcome {
    /// A complete `chat.completion` JSON body.
    Complete(Bytes),
    /// SSE frames, ending in `[DONE]` or an error event.
    Stream(BoxStream<'static, Bytes>),
}

pub struct Gateway {
    pub catalog: Catalog,
    providers: Registry,
    /// Keep-alive interval and total limit for streams; the idle limit
    /// comes from each provider.
    keepalive: Duration,
    max_stream_duration: Duration,
}

impl Gateway {
    pub fn new(
        catalog: Catalog,
        providers: Registry,
        keepalive: Duration,
        max_stream_duration: Duration,
    ) -> Self {
        Self {
            catalog,
            providers,
            keepalive,
            max_stream_duration,
        }
    }

    pub async fn chat(
        &self,
        body: &[u8],
        ctx: &RequestContext,
    ) -> Result<ChatOutcome, GatewayError> {
        let request = ChatRequest::parse(body)?;
        let model = self.catalog.resolve(&request.model)?.clone();
        ctx.record.update(|r| {
            r.model = Some(model.id.clone());
            r.provider = Some(model.provider.clone());
            r.streamed = request.stream;
        });
        let provider = self
            .providers
            .get(&model.provider)
            .ok_or_else(|| {
                GatewayError::internal(format!(
                    "no provider {:?} for model {}",
                    model.provider, model.id
                ))
            })?
            .clone();
        let timeouts = provider.timeouts();
        let (stream, client_wants_usage) = (request.stream, request.client_wants_usage);
        let call = ChatCall {
            body: request.into_upstream_body(&model.upstream),
            stream,
        };
        let started = Instant::now();
        let limit = if stream {
            timeouts.first_byte
        } else {
            timeouts.total
        };
        let reply = tokio::time::timeout(limit, provider.chat(call))
            .await
            .map_err(|_| ProviderError::Timeout(format!("no answer within {limit:?}")))
            .and_then(|r| r)
            .map_err(|e| upstream_error(provider.name(), e))?;

        match reply {
            ChatReply::Complete(bytes) => {
                let (bytes, usage) = rewrite_completion(&bytes, &model.id)
                    .map_err(|e| upstream_error(provider.name(), e))?;
                ctx.record.update(|r| {
                    r.usage = usage;
                    r.outcome = Outcome::Completed;
                });
                Ok(ChatOutcome::Complete(bytes))
            }
            ChatReply::Stream(mut events) => {
                let mut relay = ChunkRelay::new(provider.name(), &model.id, client_wants_usage);
                // Hold the 200 until the upstream has said something real,
                // so an early failure is still an honest HTTP status.
                let first_byte_deadline = started + timeouts.first_byte;
                let first_frame = loop {
                    let next = tokio::time::timeout_at(first_byte_deadline.into(), events.next())
                        .await
                        .map_err(|_| {
                            ProviderError::Timeout(format!(
                                "no first event within {:?}",
                                timeouts.first_byte
                            ))
                        });
                    let step = match next {
                        Err(e) | Ok(Some(Err(e))) => Step::Fail(upstream_error(provider.name(), e)),
                        Ok(Some(Ok(data))) => relay.on_event(&data),
                        Ok(None) => relay.on_eof(),
                    };
                    match step {
                        Step::Send(frame) => break frame,
                        Step::Skip => {}
                        Step::Fail(e) => return Err(e),
                        Step::Done => {
                            ctx.record.update(|r| {
                                r.usage = relay.usage();
                                r.outcome = Outcome::Completed;
                            });
                            return Ok(ChatOutcome::Stream(
                                futures::stream::iter([Bytes::from_static(relay::DONE_FRAME)])
                                    .boxed(),
                            ));
                        }
                    }
                };
                let limits = StreamLimits {
                    keepalive: self.keepalive,
                    idle: timeouts.idle,
                    max_duration: self.max_stream_duration,
                };
                Ok(ChatOutcome::Stream(relay::relay(
                    relay,
                    first_frame,
                    events,
                    limits,
                    ctx.clone(),
                )))
            }
        }
    }
}

/// Puts the public model id into a complete response and reads its usage.
/// Every other member goes back out exactly as the upstream wrote it.
fn rewrite_completion(
    bytes: &[u8],
    public_model: &str,
) -> Result<(Bytes, Option<Usage>), ProviderError> {
    let object = RawObject::parse(bytes)
        .map_err(|e| ProviderError::Decode(format!("response is not a JSON object: {e}")))?;
    if object.get("choices").is_none() {
        let (message, _, _) = crate::providers::openai::error_fields(bytes);
        return Err(ProviderError::StreamError(message));
    }
    let usage = match object.get("usage") {
        Some(raw) => Usage::from_json(serde_json::from_str::<Value>(raw.get()).ok().as_ref()),
        None => None,
    };
    Ok((
        object.to_vec_with_string("model", public_model).into(),
        usage,
    ))
}

/// What the client is told when a provider call fails. The one place that
/// turns `ProviderError` into a row of the error table.
pub fn upstream_error(provider: &str, error: ProviderError) -> GatewayError {
    let retry_hint = "Retry with backoff, or use another model.";
    match error {
        ProviderError::Upstream {
            status: 400 | 413 | 422,
            message,
            param,
            ..
        } => {
            let mut e = GatewayError::bad_request(
                "upstream_bad_request",
                format!("Provider {provider} rejected the request: {message}"),
                None,
            );
            e.param = param;
            e
        }
        ProviderError::Upstream {
            status: 429,
            message,
            retry_after,
            ..
        } => GatewayError::new(
            ErrorKind::RateLimited,
            "upstream_rate_limited",
            format!("Provider {provider} is rate limiting requests: {message}. Retry after the Retry-After delay."),
        )
        .with_retry_after(retry_after.unwrap_or(Duration::from_secs(1))),
        ProviderError::Upstream {
            status: status @ (401 | 403),
            message,
            ..
        } => GatewayError::unavailable(
            "provider_auth_failed",
            format!(
                "Provider {provider} refused the gateway's own credentials ({status}). Your key is fine; the gateway operator must fix the provider's key."
            ),
        )
        .with_detail(message),
        ProviderError::Upstream { status, message, .. } => {
            GatewayError::unavailable("provider_unavailable", format!("Provider {provider} answered {status}. {retry_hint}"))
                .with_detail(message)
        }
        ProviderError::Transport(detail) => GatewayError::unavailable(
            "provider_unreachable",
            format!("Provider {provider} could not be reached or dropped the connection. {retry_hint}"),
        )
        .with_detail(detail),
        ProviderError::Timeout(phase) => GatewayError::unavailable(
            "provider_timeout",
            format!("Provider {provider} did not answer in time: {phase}. {retry_hint}"),
        ),
        ProviderError::Decode(detail) => GatewayError::unavailable(
            "provider_invalid_response",
            format!("Provider {provider} sent an invalid response. {retry_hint}"),
        )
        .with_detail(detail),
        ProviderError::StreamError(message) => GatewayError::unavailable(
            "provider_error",
            format!("Provider {provider} reported an error: {message}"),
        ),
        ProviderError::NotConfigured(message) => GatewayError::unavailable("provider_not_configured", message),
        ProviderError::Rehearsal(error) => error,
    }
}
