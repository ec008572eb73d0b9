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

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::accounts::{model_allowed, now_ms, store_unavailable};
use crate::billing::{estimate_prompt_tokens, Billing, Charge, ChargeSpec, Pricing};
use crate::config::{usd_string, ModelConfig};
use crate::providers::{ChatCall, ChatReply, ProviderError, Registry};
use crate::ratelimit::{LimitKind, RateLimiter, Refusal};
use crate::store::{Claim, IdempotencyClaim, KeyRecord, Store};
use catalog::Catalog;
use error::{ErrorKind, GatewayError};
use json::RawObject;
use record::{Outcome, RequestContext, Usage};
use relay::{ChunkRelay, Step, StreamLimits};
use request::ChatRequest;

/// Output tokens held for a model with no configured cap when the request
/// names none either.
const DEFAULT_MAX_OUTPUT: u64 = 4096;
/// An `Idempotency-Key` protects a request for this long.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

pub enum ChatOutcome {
    /// A complete `chat.completion` JSON body.
    Complete(Bytes),
    /// SSE frames, ending in `[DONE]` or an error event.
    Stream(BoxStream<'static, Bytes>),
}

/// Who is asking: the authenticated key, and the request's
/// `Idempotency-Key` header if it sent one.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: Arc<KeyRecord>,
    pub idempotency_key: Option<String>,
}

pub struct Gateway {
    pub catalog: Catalog,
    providers: Registry,
    limiter: Arc<dyn RateLimiter>,
    billing: Arc<Billing>,
    store: Store,
    /// Keep-alive interval and total limit for streams; the idle limit
    /// comes from each provider.
    keepalive: Duration,
    max_stream_duration: Duration,
}

/// What `Gateway::new` is built from.
pub struct GatewayParts {
    pub catalog: Catalog,
    pub providers: Registry,
    pub limiter: Arc<dyn RateLimiter>,
    pub billing: Arc<Billing>,
    pub store: Store,
    pub keepalive: Duration,
    pub max_stream_duration: Duration,
}

impl Gateway {
    pub fn new(parts: GatewayParts) -> Self {
        Self {
            catalog: parts.catalog,
            providers: parts.providers,
            limiter: parts.limiter,
            billing: parts.billing,
            store: parts.store,
            keepalive: parts.keepalive,
            max_stream_duration: parts.max_stream_duration,
        }
    }

    /// One Chat Completions request: rate limits, model permission,
    /// idempotency, the credit hold, then the provider call. The charge
    /// settles on every way out.
    pub async fn chat(
        &self,
        body: &[u8],
        ctx: &RequestContext,
        caller: &Caller,
    ) -> Result<ChatOutcome, GatewayError> {
        let key = &caller.key;
        let request = ChatRequest::parse(body)?;
        let admitted = self
            .limiter
            .admit(&key.id, key.limits, request.max_tokens)
            .await;
        let (permit, limits) = match admitted {
            Ok(admitted) => admitted,
            Err(refusal) => {
                ctx.record.update(|r| r.rate_limits = Some(refusal.status));
                return Err(rate_limited(&refusal));
            }
        };
        ctx.record.update(|r| r.rate_limits = Some(limits));
        let model = self.catalog.resolve(&request.model)?.clone();
        if !model_allowed(&key.models, &model.id) {
            return Err(GatewayError::new(
                ErrorKind::Forbidden,
                "permission_denied",
                format!("This API key may not use model {}. It is limited to: {}. Ask the operator to widen the key's model patterns.", model.id, key.models.join(", ")),
            ));
        }
        ctx.record.update(|r| {
            r.model = Some(model.id.clone());
            r.provider = Some(model.provider.clone());
            r.streamed = request.stream;
        });
        let idempotency_key = match &caller.idempotency_key {
            None => None,
            Some(idem) => match self.claim(key, idem, body, ctx).await? {
                Some(replay) => return Ok(replay),
                None => Some(idem.clone()),
            },
        };
        let spec = ChargeSpec {
            key: key.clone(),
            request_id: ctx.request_id.clone(),
            model: model.id.clone(),
            provider: model.provider.clone(),
            prompt: model.prompt_price,
            completion: model.completion_price,
            prompt_estimate: prompt_estimate(&request, &model),
            max_output_tokens: max_output_tokens(request.max_tokens, &model),
            streamed: request.stream,
            idempotency_key,
        };
        let mut charge = self.billing.open(spec, permit).await?;
        match self.call(request, &model, ctx, &mut charge).await {
            Ok(Reply::Complete(bytes)) => {
                charge.finish(200, "ok", Some(&bytes)).await;
                Ok(ChatOutcome::Complete(bytes))
            }
            Ok(Reply::Stream(frames)) => Ok(ChatOutcome::Stream(frames(charge))),
            Err(e) => {
                charge.finish(e.kind.status(), e.code, None).await;
                Err(e)
            }
        }
    }

    /// Claims an `Idempotency-Key`. `Some` is the stored answer to replay.
    async fn claim(
        &self,
        key: &KeyRecord,
        idem: &str,
        body: &[u8],
        ctx: &RequestContext,
    ) -> Result<Option<ChatOutcome>, GatewayError> {
        let now = now_ms();
        let claim = IdempotencyClaim {
            key_id: key.id.clone(),
            idem_key: idem.to_string(),
            body_hash: Sha256::digest(body).into(),
            request_id: ctx.request_id.to_string(),
            now,
            not_before: now - IDEMPOTENCY_WINDOW.as_millis() as i64,
        };
        let found = self
            .store
            .idempotency
            .claim(&claim)
            .await
            .map_err(store_unavailable)?;
        match found {
            Claim::Claimed => Ok(None),
            Claim::InFlight { request_id } => Err(GatewayError::new(
                ErrorKind::Conflict,
                "idempotency_in_flight",
                format!("A request with this Idempotency-Key ({request_id}) is still running. Retry after it finishes to get its result."),
            )),
            Claim::Mismatch => Err(GatewayError::new(
                ErrorKind::Unprocessable,
                "idempotency_key_reused",
                "This Idempotency-Key was used with a different request body in the last 24 hours. Use a new key for a new request.",
            )),
            Claim::Done {
                response: Some(stored),
                ..
            } => {
                ctx.record.update(|r| {
                    r.replayed = true;
                    r.outcome = Outcome::Completed;
                });
                Ok(Some(ChatOutcome::Complete(stored.into())))
            }
            Claim::Done {
                response: None,
                request_id,
            } => Err(GatewayError::new(
                ErrorKind::Conflict,
                "idempotency_key_used",
                format!("This Idempotency-Key already ran as request {request_id}, a stream, which cannot be replayed. GET /api/v1/generation?id={request_id} shows what it did."),
            )),
        }
    }

    /// Calls the provider within its time limits. A complete answer comes
    /// back rewritten; a stream comes back once its first frame is known.
    async fn call(
        &self,
        request: ChatRequest,
        model: &ModelConfig,
        ctx: &RequestContext,
        charge: &mut Charge,
    ) -> Result<Reply, GatewayError> {
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
        charge.mark_sent();
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
                let done = rewrite_completion(&bytes, &model.id, charge.pricing())
                    .map_err(|e| upstream_error(provider.name(), e))?;
                charge.set_usage(done.usage);
                charge.set_delivered(done.delivered_tokens);
                ctx.record.update(|r| {
                    r.usage = done.usage;
                    r.outcome = Outcome::Completed;
                });
                Ok(Reply::Complete(done.body))
            }
            ChatReply::Stream(mut events) => {
                let mut relay = ChunkRelay::new(provider.name(), &model.id, client_wants_usage)
                    .priced(charge.pricing());
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
                        Step::Send(frame) => break Some(frame),
                        Step::Skip => {}
                        Step::Fail(e) => return Err(e),
                        Step::Done => break None,
                    }
                };
                let limits = StreamLimits {
                    keepalive: self.keepalive,
                    idle: timeouts.idle,
                    max_duration: self.max_stream_duration,
                };
                let ctx = ctx.clone();
                Ok(Reply::Stream(Box::new(move |charge| match first_frame {
                    Some(first_frame) => {
                        relay::relay(relay, first_frame, events, limits, ctx, charge)
                    }
                    None => relay::finished(relay, ctx, charge),
                })))
            }
        }
    }
}

/// What `Gateway::call` produced: a complete body, or a stream that
/// starts once it is given the charge it settles.
enum Reply {
    Complete(Bytes),
    Stream(Box<dyn FnOnce(Charge) -> BoxStream<'static, Bytes> + Send>),
}

fn prompt_estimate(request: &ChatRequest, model: &ModelConfig) -> u64 {
    let estimate = estimate_prompt_tokens(&request.body);
    match model.context_length {
        Some(ctx) => estimate.min(ctx),
        None => estimate,
    }
}

/// The output tokens a hold covers: what the request asks for, capped by
/// the model; else the model's cap.
fn max_output_tokens(requested: Option<u64>, model: &ModelConfig) -> u64 {
    let cap = model
        .max_output_tokens
        .or(model.context_length)
        .unwrap_or(DEFAULT_MAX_OUTPUT);
    requested.map_or(cap, |r| r.min(cap))
}

fn rate_limited(refusal: &Refusal) -> GatewayError {
    let (code, message) = match refusal.kind {
        LimitKind::Requests => (
            "rate_limit_requests",
            format!("This key's limit of {} requests per minute is used up. Retry after the Retry-After delay.", refusal.limit),
        ),
        LimitKind::Tokens => (
            "rate_limit_tokens",
            format!("This key's limit of {} tokens per minute is used up. Retry after the Retry-After delay.", refusal.limit),
        ),
        LimitKind::TokensTooLarge { max_tokens } => (
            "max_tokens_over_limit",
            format!("max_tokens {max_tokens} is more than this key's whole budget of {} tokens per minute, so the request can never pass. Lower max_tokens.", refusal.limit),
        ),
        LimitKind::Concurrency => (
            "rate_limit_concurrency",
            format!("This key already has {} requests in flight, its limit. Retry when one finishes.", refusal.limit),
        ),
    };
    GatewayError::new(ErrorKind::RateLimited, code, message).with_retry_after(refusal.retry_after)
}

/// A complete response as the client gets it.
struct Completion {
    body: Bytes,
    usage: Option<Usage>,
    /// Completion tokens estimated from the content (used if no usage).
    delivered_tokens: u64,
}

/// Puts the public model id into a complete response, reads its usage and
/// adds its cost (`usage.cost`, USD). Every other member goes back out
/// exactly as the upstream wrote it.
fn rewrite_completion(
    bytes: &[u8],
    public_model: &str,
    pricing: Pricing,
) -> Result<Completion, ProviderError> {
    let object = RawObject::parse(bytes)
        .map_err(|e| ProviderError::Decode(format!("response is not a JSON object: {e}")))?;
    let Some(choices) = object.get("choices") else {
        let (message, _, _) = crate::providers::openai::error_fields(bytes);
        return Err(ProviderError::StreamError(message));
    };
    let mut model = Vec::with_capacity(public_model.len() + 2);
    serde_json::to_writer(&mut model, public_model).expect("a string serializes");
    let model = String::from_utf8(model).expect("JSON is UTF-8");
    let raw_usage = object.get("usage").filter(|u| u.get().starts_with('{'));
    let usage = raw_usage
        .and_then(|raw| Usage::from_json(serde_json::from_str::<Value>(raw.get()).ok().as_ref()));
    let delivered_tokens = match usage {
        Some(_) => 0,
        None => relay::estimate_delivered(
            &serde_json::from_str::<Value>(choices.get()).unwrap_or(Value::Null),
        ),
    };
    let body = match (raw_usage, usage) {
        (Some(raw), Some(u)) => {
            let cost = usd_string(pricing.cost(&u));
            let usage_text = RawObject::parse(raw.get().as_bytes())
                .map(|o| o.to_vec_with(&[("cost", &cost)]))
                .map_err(|e| ProviderError::Decode(format!("usage is not an object: {e}")))?;
            let usage_text = String::from_utf8(usage_text).expect("JSON is UTF-8");
            object.to_vec_with(&[("model", &model), ("usage", &usage_text)])
        }
        _ => object.to_vec_with(&[("model", &model)]),
    };
    Ok(Completion {
        body: body.into(),
        usage,
        delivered_tokens,
    })
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
