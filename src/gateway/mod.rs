//! The domain: what the gateway does with a request, independent of HTTP.
//!
//! `Gateway::chat` resolves the model and its fallbacks, asks the router
//! for the endpoints to try, and calls them in turn (retrying, backing off
//! and failing over) until one answers. It returns either a complete JSON
//! body or a stream of SSE frames. Before the first content is committed
//! every failure is a `GatewayError` (a real HTTP status) and may move the
//! request to the next endpoint; after it, failures become the stream's
//! final error event (`relay`).

pub mod catalog;
pub mod error;
pub mod finished;
pub mod json;
pub mod mcp;
pub mod record;
pub mod relay;
pub mod request;
pub mod responses;
pub mod router;
pub mod websearch;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::accounts::{model_allowed, now_ms, store_unavailable};
use crate::billing::{estimate_prompt_tokens, Billing, Charge, ChargeSpec, Pricing};
use crate::config::{usd_string, ModelConfig, RetryPolicy};
use crate::providers::{Api, ChatCall, ChatReply, EventStream, ProviderError, Registry};
use crate::ratelimit::{LimitKind, RateLimiter, Refusal};
use crate::store::{Claim, IdempotencyClaim, IdempotencyStore, KeyRecord, Store};
use catalog::Catalog;
use error::{ErrorKind, GatewayError};
use json::RawObject;
use record::{Outcome, RequestContext, Usage};
use relay::{ChunkRelay, EventRelay, Step, StreamLimits};
use request::ChatRequest;
use router::{backoff, Candidate, Router};
use websearch::{SearchCall, Searched, WebSearch};

use crate::search::Searcher;

/// Tokens one search result may add to a prompt (title, URL and excerpt,
/// bounded by the searcher), for the hold of a request that searches: at
/// about four bytes a token, as the prompt estimate counts them.
const SEARCH_RESULT_TOKENS: u64 = crate::search::RESULT_BYTES as u64 / 4;

/// Tokens held, per MCP round, for the tool definitions the servers list.
const MCP_TOOLS_TOKENS: u64 = 2000;

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

/// The request's `Idempotency-Key` and the SHA-256 of the body it is
/// bound to, if it has one.
fn idempotency<'a>(caller: &'a Caller, body: &[u8]) -> Option<(&'a str, [u8; 32])> {
    caller
        .idempotency_key
        .as_deref()
        .map(|idem| (idem, Sha256::digest(body).into()))
}

pub struct Gateway {
    pub catalog: Catalog,
    providers: Registry,
    pub router: Arc<Router>,
    /// Retry rules by provider name.
    retry: HashMap<String, RetryPolicy>,
    limiter: Arc<dyn RateLimiter>,
    pub billing: Arc<Billing>,
    store: Store,
    /// Keep-alive interval and total limit for streams; the idle limit
    /// comes from each provider.
    keepalive: Duration,
    max_stream_duration: Duration,
    /// The longest a request may take, all its attempts included
    /// (`config::longest_request`): a hold outlives it.
    request_limit: Duration,
    /// How long stored responses are kept.
    responses_retention: Duration,
    /// The web search backend, if the operator configured one.
    searcher: Option<Arc<Searcher>>,
    /// The MCP client and the servers the operator registered.
    mcp: Arc<mcp::run::McpSetup>,
    /// The gateway itself, for streams that outlive the call that made
    /// them and keep calling it (MCP rounds).
    me: Weak<Gateway>,
}

/// What `Gateway::new` is built from.
pub struct GatewayParts {
    pub catalog: Catalog,
    pub providers: Registry,
    pub router: Arc<Router>,
    pub retry: HashMap<String, RetryPolicy>,
    pub limiter: Arc<dyn RateLimiter>,
    pub billing: Arc<Billing>,
    pub store: Store,
    pub keepalive: Duration,
    pub max_stream_duration: Duration,
    pub request_limit: Duration,
    pub responses_retention: Duration,
    pub searcher: Option<Arc<Searcher>>,
    pub mcp: Arc<mcp::run::McpSetup>,
}

impl Gateway {
    pub fn new(parts: GatewayParts) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            catalog: parts.catalog,
            providers: parts.providers,
            router: parts.router,
            retry: parts.retry,
            limiter: parts.limiter,
            billing: parts.billing,
            store: parts.store,
            keepalive: parts.keepalive,
            max_stream_duration: parts.max_stream_duration,
            request_limit: parts.request_limit,
            responses_retention: parts.responses_retention,
            searcher: parts.searcher,
            mcp: parts.mcp,
            me: me.clone(),
        })
    }

    /// One Chat Completions request.
    ///
    /// `body` is released once read: a stream waits here for its first
    /// content, and the client connection's read buffer is not pinned
    /// meanwhile (hyper hands the body out as a slice of that buffer).
    pub async fn chat(
        &self,
        body: Bytes,
        ctx: &RequestContext,
        caller: &Caller,
    ) -> Result<ChatOutcome, GatewayError> {
        let mut request = ChatRequest::parse(&body)?;
        // Only a request that asks for them is changed here, so that any
        // other goes upstream as the client's own bytes.
        if websearch::asked_in_chat(request.body(), &request.model) {
            let (body, model) = request.body_and_model_mut();
            request.web_search = websearch::take_from_chat(body, model)?;
        }
        if mcp::has_mcp_tools(request.body()) {
            let tools = mcp::take_tools(request.body_mut(), true)?;
            if !tools.is_empty() {
                // `max_tool_calls` as in the Responses API (an extension here).
                let max_tool_calls = request::optional_count(request.body(), "max_tool_calls")?;
                request.body_mut().remove("max_tool_calls");
                request.mcp = Some(mcp::McpRequest {
                    tools,
                    max_tool_calls,
                    ..Default::default()
                });
            }
        }
        let idempotency = idempotency(caller, &body);
        drop(body);
        self.run(request, idempotency, ctx, caller).await
    }

    /// One Responses request, through the same pipeline: answered natively
    /// or translated, and stored when `store` is true (a stream stores its
    /// response before its last frame).
    pub async fn responses(
        &self,
        body: Bytes,
        ctx: &RequestContext,
        caller: &Caller,
    ) -> Result<ChatOutcome, GatewayError> {
        let request = responses::prepare(
            &body,
            &caller.key.id,
            self.store.responses.clone(),
            self.responses_retention,
        )
        .await?;
        let idempotency = idempotency(caller, &body);
        drop(body);
        let job = request.responses.clone();
        let outcome = self.run(request, idempotency, ctx, caller).await?;
        let bytes = match outcome {
            ChatOutcome::Complete(bytes) => bytes,
            stream => return Ok(stream),
        };
        // A replayed answer was stored when it was first made.
        let replayed = ctx.record.read(|r| r.replayed);
        if let (Some(job), false) = (job, replayed) {
            if let (Some(saver), Ok(response)) =
                (&job.saver, serde_json::from_slice::<Value>(&bytes))
            {
                saver.save(&job.id, &response).await;
            }
        }
        Ok(ChatOutcome::Complete(bytes))
    }

    /// A stored response of this key (404 for any other, and past
    /// retention).
    pub async fn stored_response(
        &self,
        key_id: &str,
        id: &str,
    ) -> Result<crate::store::StoredResponse, GatewayError> {
        let not_before = now_ms() - self.responses_retention.as_millis() as i64;
        self.store
            .responses
            .get_response(key_id, id, not_before)
            .await
            .map_err(store_unavailable)?
            .ok_or_else(|| responses::not_found(id))
    }

    /// Deletes a stored response of this key; 404 if there is none.
    pub async fn delete_response(&self, key_id: &str, id: &str) -> Result<Value, GatewayError> {
        self.stored_response(key_id, id).await?;
        self.store
            .responses
            .delete_response(key_id, id)
            .await
            .map_err(store_unavailable)?;
        Ok(serde_json::json!({"id": id, "object": "response", "deleted": true}))
    }

    /// Rate limits, model permission, idempotency, the credit hold, then
    /// the attempts. The charge settles on every way out.
    async fn run(
        &self,
        mut request: ChatRequest,
        idempotency: Option<(&str, [u8; 32])>,
        ctx: &RequestContext,
        caller: &Caller,
    ) -> Result<ChatOutcome, GatewayError> {
        let key = &caller.key;
        let admitted = self
            .limiter
            .admit(&key.id, key.limits, request.max_tokens)
            .await;
        let (permit, limits) = match admitted {
            Ok(admitted) => admitted,
            Err(refusal) => {
                crate::metrics::rejected("rate_limit");
                ctx.record.update(|r| r.rate_limits = Some(refusal.status));
                return Err(rate_limited(&refusal));
            }
        };
        ctx.record.update(|r| r.rate_limits = Some(limits));
        let models = self.models_of(&request, key)?;
        let plan = self.router.plan(&models, &request.prefs);
        let Some(first) = plan.first() else {
            return Err(GatewayError::bad_request(
                "no_provider_left",
                format!("The provider preferences leave no provider for {}. Its providers are: {}. Loosen provider.only / provider.ignore, or allow fallbacks.", models[0].id, provider_names(&models[0])),
                Some("provider"),
            ));
        };
        ctx.record.update(|r| {
            r.model = Some(first.model.id.clone());
            r.provider = Some(first.endpoint().provider.clone());
            r.streamed = request.stream;
        });
        // Web search the gateway runs: not when a provider with the
        // Responses API serves a Responses request (it searches itself).
        let native = request.responses.is_some()
            && self
                .providers
                .get(&first.endpoint().provider)
                .is_some_and(|p| p.native_responses());
        let search = match request.web_search.take().filter(|_| !native) {
            None => None,
            Some(ws) => match &self.searcher {
                Some(searcher) => Some((ws, searcher.clone())),
                None => {
                    return Err(GatewayError::unavailable(
                        "web_search_not_configured",
                        "This request asks for web search, but this gateway has no search backend. The operator configures one in [web_search].",
                    ))
                }
            },
        };
        let mcp_run = match request.mcp.take() {
            None => None,
            Some(_) if search.is_some() => {
                return Err(GatewayError::bad_request(
                    "invalid_request",
                    "This gateway runs web search and MCP tools in separate requests: send one or the other.",
                    Some("tools"),
                ))
            }
            Some(m) => Some(self.mcp.resolve(m, key).await?),
        };
        // If the request goes away from here until its charge exists (the
        // claim's statement, the hold's wait), its claim of the key goes
        // with it: the charge settles the key's outcome from then on.
        let mut unsettled = Unsettled(idempotency.map(|(idem, _)| Claimed {
            store: self.store.idempotency.clone(),
            key_id: key.id.clone(),
            idem: idem.to_string(),
            request_id: ctx.request_id.to_string(),
        }));
        let idempotency_key = match idempotency {
            None => None,
            Some((idem, body_hash)) => match self.claim(key, idem, body_hash, ctx).await {
                Ok(None) => Some(idem.to_string()),
                // Not this request's claim: nothing of it to give up.
                Ok(Some(replay)) => {
                    unsettled.0 = None;
                    return Ok(replay);
                }
                Err(e) => {
                    unsettled.0 = None;
                    return Err(e);
                }
            },
        };
        // The hold covers the dearest model that may answer.
        let most = |f: &dyn Fn(&ModelConfig) -> u64| models.iter().map(|m| f(m)).max().unwrap_or(0);
        let prompt_price = models.iter().map(|m| m.prompt_price).max().unwrap_or(0);
        let completion_price = models.iter().map(|m| m.completion_price).max().unwrap_or(0);
        let prompt_est = most(&|m| prompt_estimate(&request, m));
        let output_max = most(&|m| max_output_tokens(request.max_tokens, m));
        // The model rounds after the first (web search and MCP tools, never
        // both), priced like the first.
        let rounds = Pricing {
            prompt: prompt_price,
            completion: completion_price,
            cap: None,
        };
        let extra_hold = match (&search, &mcp_run) {
            // Each search may add a model round whose prompt carries every
            // search's block so far (its results, after the request's own
            // search prompt and location), and costs the backend's price.
            (Some((ws, searcher)), _) => {
                let n = u64::from(searcher.max_searches);
                let block = searcher.max_results as u64 * SEARCH_RESULT_TOKENS
                    + websearch::preamble_tokens(ws);
                let results = n * block;
                let round = rounds.raw_cost(prompt_est + results, output_max);
                (round.saturating_add(searcher.price)).saturating_mul(n as i64)
            }
            // Every MCP round, the first included, carries the servers' tool
            // definitions (an allowance: they are listed later) and the
            // outputs of the approved calls run before it; each later round
            // also every earlier round's output and tool results (one
            // call's worth per round). A call's output is held at the
            // configured cap, about four characters a token. A round that
            // would need more, the first included, stops the request
            // (`incomplete`, "max_cost") instead of overspending the hold.
            (None, Some(run)) => {
                let call = self.mcp.config.max_output_chars as u64 / 4;
                let first = MCP_TOOLS_TOKENS + run.approved_calls() * call;
                let per_round = call + output_max;
                (1..u64::from(self.mcp.max_rounds(run)))
                    .map(|r| rounds.raw_cost(prompt_est + first + r * per_round, output_max))
                    .fold(rounds.raw_cost(first, 0), i64::saturating_add)
            }
            (None, None) => 0,
        };
        let spec = ChargeSpec {
            key: key.clone(),
            request_id: ctx.request_id.clone(),
            model: first.model.id.clone(),
            provider: first.endpoint().provider.clone(),
            prompt: prompt_price,
            completion: completion_price,
            prompt_estimate: prompt_est,
            max_output_tokens: output_max,
            streamed: request.stream,
            idempotency_key,
            extra_hold,
        };
        let opened = self.billing.open(spec, permit).await;
        // The charge settles the key now, or `open` gave it up when it
        // refused the hold.
        unsettled.0 = None;
        let mut charge = opened?;
        self.router.on_request();
        // Web search and MCP rounds are boxed: their state machines are
        // several times the size of a plain request's (10 KiB for MCP),
        // and every request's future would otherwise carry, and copy, that
        // much.
        let reply = match (&search, mcp_run) {
            (Some((ws, searcher)), _) => {
                Box::pin(self.searched(&request, ws, searcher, &plan, ctx, &mut charge)).await
            }
            (None, Some(run)) => {
                Box::pin(self.mcp_reply(&request, run, &plan, ctx, &mut charge)).await
            }
            (None, None) => self.attempts(&mut request, &plan, ctx, &mut charge).await,
        };
        match reply {
            Ok(Reply::Complete(bytes)) => {
                charge.finish(200, "ok", Some(&bytes)).await;
                Ok(ChatOutcome::Complete(bytes))
            }
            Ok(Reply::Stream(frames)) => {
                charge.mark_answered();
                Ok(ChatOutcome::Stream(frames(charge)))
            }
            Err(e) => {
                charge.finish(e.kind.status(), e.code, None).await;
                Err(e)
            }
        }
    }

    /// Which rate limiter decides (shared, in-process, or fallback).
    pub fn limiter_health(&self) -> crate::ratelimit::LimiterHealth {
        self.limiter.health()
    }

    /// Every endpoint of every model and its health, for the admin.
    pub fn endpoint_health(&self) -> Value {
        self.router.snapshot(self.catalog.models())
    }

    /// The requested model and its fallbacks, each one the key may use.
    fn models_of(
        &self,
        request: &ChatRequest,
        key: &KeyRecord,
    ) -> Result<Vec<Arc<ModelConfig>>, GatewayError> {
        let mut models = vec![self.catalog.resolve(&request.model)?.clone()];
        let mut unknown: Vec<&str> = Vec::new();
        for id in &request.fallbacks {
            match self.catalog.resolve(id) {
                Ok(model) => models.push(model.clone()),
                Err(_) => unknown.push(id),
            }
        }
        if !unknown.is_empty() {
            return Err(GatewayError::bad_request(
                "model_not_found",
                format!("`models` names models this gateway does not serve: {}. Use ids from GET /api/v1/models.", unknown.iter().map(|id| catalog::shown(id)).collect::<Vec<_>>().join(", ")),
                Some("models"),
            ));
        }
        if let Some(at) = &request.image_at {
            let blind: Vec<&str> = models
                .iter()
                .filter(|m| !m.takes_images)
                .map(|m| m.id.as_str())
                .collect();
            if !blind.is_empty() {
                let what = match at.as_str() {
                    "previous_response_id" => {
                        "The conversation of previous_response_id holds an image".to_string()
                    }
                    at => format!("{at} is an image"),
                };
                return Err(GatewayError::bad_request(
                    "image_not_supported",
                    format!("{what}, and {} reads text only. Send text, or use a model whose GET /api/v1/models entry lists \"image\" in architecture.input_modalities.", blind.join(", ")),
                    Some(at),
                ));
            }
        }
        let denied: Vec<&str> = models
            .iter()
            .filter(|m| !model_allowed(&key.models, &m.id))
            .map(|m| m.id.as_str())
            .collect();
        if !denied.is_empty() {
            return Err(GatewayError::new(
                ErrorKind::Forbidden,
                "permission_denied",
                format!("This API key may not use model {}. It is limited to: {}. Ask the operator to widen the key's model patterns.", denied.join(", "), key.models.join(", ")),
            ));
        }
        Ok(models)
    }

    /// Claims an `Idempotency-Key`. `Some` is the stored answer to replay.
    async fn claim(
        &self,
        key: &KeyRecord,
        idem: &str,
        body_hash: [u8; 32],
        ctx: &RequestContext,
    ) -> Result<Option<ChatOutcome>, GatewayError> {
        let now = now_ms();
        let claim = IdempotencyClaim {
            key_id: key.id.clone(),
            idem_key: idem.to_string(),
            body_hash,
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

    /// Tries the planned endpoints until one answers, model by model: the
    /// fallback models in `models` only once every endpoint of the current
    /// model has failed. Within a model, the first pass takes each
    /// endpoint once, moving on at once after a failure; later passes retry
    /// endpoints that have attempts left, after a backoff (or the
    /// upstream's `Retry-After`). Only failures before any content reached
    /// the client get here, so a retry never repeats content (UF-10).
    async fn attempts(
        &self,
        request: &mut ChatRequest,
        plan: &[Candidate],
        ctx: &RequestContext,
        charge: &mut Charge,
    ) -> Result<Reply, GatewayError> {
        let mut run = Attempts {
            notes: Vec::new(),
            last: None,
            reopens: None,
            total: 0,
        };
        let mut rest = plan;
        while let Some(first) = rest.first() {
            if first.model.id != plan[0].model.id {
                crate::metrics::fallback(&first.model.id);
            }
            let same = rest
                .iter()
                .take_while(|c| c.model.id == first.model.id)
                .count();
            let (group, next) = rest.split_at(same);
            rest = next;
            match self.try_model(request, group, ctx, charge, &mut run).await {
                Ok(reply) => return Ok(reply),
                Err(Some(final_error)) => return Err(final_error),
                Err(None) => {}
            }
        }
        Err(run.all_failed())
    }

    /// A request with web search, run in rounds (see `websearch`), then
    /// shaped for its API: a complete body, or the finished answer as a
    /// stream.
    async fn searched(
        &self,
        request: &ChatRequest,
        ws: &WebSearch,
        searcher: &Searcher,
        plan: &[Candidate],
        ctx: &RequestContext,
        charge: &mut Charge,
    ) -> Result<Reply, GatewayError> {
        let mut inner = request.for_rounds(true)?;
        let done = self
            .search_rounds(&mut inner, ws, searcher, plan, ctx, charge)
            .await?;
        let model = done.completion["model"].as_str().unwrap_or("").to_string();
        ctx.record.update(|r| {
            r.usage = Some(done.tokens);
            r.outcome = Outcome::Completed;
        });
        let cost = usd_string(charge.cost_so_far());
        let frames: Vec<Bytes> = match (&request.responses, request.stream) {
            (None, false) => {
                let mut c = done.chat_completion();
                if let Ok(cost) = serde_json::from_str::<Value>(&cost) {
                    c["usage"]["cost"] = cost;
                }
                let bytes = serde_json::to_vec(&c).expect("JSON serializes");
                return Ok(Reply::Complete(bytes.into()));
            }
            (None, true) => done.chat_frames(request.client_wants_usage, &cost),
            (Some(job), false) => {
                let r = done.response(&job.meta(&model));
                let bytes = serde_json::to_vec(&r).expect("JSON serializes");
                return Ok(Reply::Complete(bytes.into()));
            }
            (Some(job), true) => {
                let (events, response) = done.response_events(&job.meta(&model));
                let saver = job.saver.clone().map(|s| (s, job.id.clone(), response));
                let frames = events
                    .iter()
                    .map(|e| {
                        let mut out = Vec::new();
                        e.frame(&mut out);
                        Bytes::from(out)
                    })
                    .collect();
                let ctx = ctx.clone();
                return Ok(Reply::Stream(Box::new(move |charge| {
                    relay::replay(frames, ctx, charge, saver)
                })));
            }
        };
        let ctx = ctx.clone();
        Ok(Reply::Stream(Box::new(move |charge| {
            relay::replay(frames, ctx, charge, None)
        })))
    }

    /// The rounds of a searching request; see `websearch`.
    async fn search_rounds(
        &self,
        inner: &mut ChatRequest,
        ws: &WebSearch,
        searcher: &Searcher,
        plan: &[Candidate],
        ctx: &RequestContext,
        charge: &mut Charge,
    ) -> Result<Searched, GatewayError> {
        let date = crate::dates::utc_date(now_ms());
        let mut done = Searched {
            completion: Value::Null,
            calls: Vec::new(),
            tokens: Usage::default(),
        };
        if !plan[0].model.calls_tools {
            // One search with the user's words, in the prompt.
            let call = self
                .search_once(
                    searcher,
                    ws,
                    &websearch::last_user_text(inner.body()),
                    charge,
                )
                .await?;
            let context = websearch::block(ws, &call, 1, &date);
            done.calls.push(call);
            if let Some(Value::Array(messages)) = inner.body_mut().get_mut("messages") {
                messages.insert(0, json!({"role": "system", "content": context}));
            }
            done.completion = self
                .round(inner, plan, ctx, charge, &mut done.tokens)
                .await?;
            return Ok(done);
        }
        let (name, tool) = websearch::search_function(inner.body());
        let client_tools = inner.body().get("tools").cloned();
        let client_choice = inner.body().get("tool_choice").cloned();
        let output_max = max_output_tokens(inner.max_tokens, &plan[0].model);
        let mut rounds = 0;
        loop {
            let last = done.calls.len() as u32 >= searcher.max_searches;
            let mut tools = match &client_tools {
                Some(Value::Array(t)) => t.clone(),
                _ => Vec::new(),
            };
            if !last {
                tools.push(tool.clone());
            }
            inner.offer(tools, client_choice.as_ref());
            // A later round must fit in what is left of the hold (a round
            // may have cost more than its estimate). One that does not is
            // never sent: the rounds end as when the model asks for a
            // search past the cap, with the last round's answer without
            // its searches.
            let prompt = estimate_prompt_tokens(inner.body());
            if rounds > 0 && !charge.can_afford(prompt, output_max) {
                return Ok(done);
            }
            let completion = self
                .round(inner, plan, ctx, charge, &mut done.tokens)
                .await?;
            rounds += 1;
            let message = completion["choices"][0]["message"].clone();
            let calls: Vec<Value> = message
                .get("tool_calls")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let (ours, theirs): (Vec<Value>, Vec<Value>) = calls.into_iter().partition(|c| {
                c.pointer("/function/name").and_then(Value::as_str) == Some(name.as_str())
            });
            if ours.is_empty() || !theirs.is_empty() || last {
                // The answer, or calls of the client's own tools for it to
                // run: without the gateway's searches in either case.
                done.completion = finished::keep_calls(completion, theirs);
                return Ok(done);
            }
            let mut turn = json!({"role": "assistant", "content": message.get("content").cloned().unwrap_or(Value::Null), "tool_calls": ours});
            if turn["content"].is_null() {
                turn["content"] = json!("");
            }
            let mut answers = Vec::new();
            for call in turn["tool_calls"].as_array().cloned().unwrap_or_default() {
                let text = if done.calls.len() as u32 >= searcher.max_searches {
                    "No more searches are allowed for this request: answer with the results you have.".to_string()
                } else {
                    let result = self
                        .search_once(searcher, ws, &websearch::query_of(&call), charge)
                        .await?;
                    let first = done.calls.iter().map(|c| c.results.len()).sum::<usize>() + 1;
                    let block = websearch::block(ws, &result, first, &date);
                    done.calls.push(result);
                    block
                };
                answers.push(json!({"role": "tool", "tool_call_id": call.get("id").cloned().unwrap_or(Value::Null), "content": text}));
            }
            if let Some(Value::Array(messages)) = inner.body_mut().get_mut("messages") {
                messages.push(turn);
                messages.extend(answers);
            }
            // What the response says if no later round can run.
            done.completion = finished::keep_calls(completion, Vec::new());
        }
    }

    /// One search, billed; a failure is a 503 naming the backend.
    async fn search_once(
        &self,
        searcher: &Searcher,
        ws: &WebSearch,
        text: &str,
        charge: &mut Charge,
    ) -> Result<SearchCall, GatewayError> {
        let query = websearch::query(ws, text, searcher.max_results);
        match searcher.search(&query).await {
            Ok(results) => {
                charge.add_search(searcher.price);
                crate::metrics::search(searcher.backend_name(), "ok");
                Ok(SearchCall {
                    query: query.query,
                    results,
                })
            }
            Err(e) => {
                crate::metrics::search(searcher.backend_name(), "error");
                Err(GatewayError::unavailable(
                    "search_unavailable",
                    format!("The web search backend ({}) failed: {e}. Retry later, or send the request without web search.", searcher.backend_name()),
                ))
            }
        }
    }

    /// One non-streamed model call of a request the gateway answers in
    /// rounds (web search, MCP tools), billed with the rest; its tokens join
    /// `tokens`.
    async fn round(
        &self,
        inner: &mut ChatRequest,
        plan: &[Candidate],
        ctx: &RequestContext,
        charge: &mut Charge,
        tokens: &mut Usage,
    ) -> Result<Value, GatewayError> {
        let bytes = match self.attempts(inner, plan, ctx, charge).await? {
            Reply::Complete(bytes) => bytes,
            Reply::Stream(_) => {
                return Err(GatewayError::internal(
                    "a search round streamed although it was sent with stream: false",
                ))
            }
        };
        let usage = charge.current_usage();
        charge.bank_round();
        if let Some(u) = usage {
            tokens.prompt_tokens += u.prompt_tokens;
            tokens.completion_tokens += u.completion_tokens;
            tokens.cached_tokens += u.cached_tokens;
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            GatewayError::internal(format!("a search round's answer is not JSON: {e}"))
        })
    }

    /// The endpoints of one model. `Err(None)`: all failed, the next model
    /// may try; `Err(Some(e))`: the request ends with `e`.
    async fn try_model(
        &self,
        request: &mut ChatRequest,
        group: &[Candidate],
        ctx: &RequestContext,
        charge: &mut Charge,
        run: &mut Attempts,
    ) -> Result<Reply, Option<GatewayError>> {
        let mut tries = vec![0u32; group.len()];
        let mut waits: Vec<Option<Duration>> = vec![None; group.len()];
        let deadline = self.deadline(charge);
        loop {
            let mut tried = false;
            for (i, candidate) in group.iter().enumerate() {
                let endpoint = candidate.endpoint();
                let policy = self.retry_policy(&endpoint.provider);
                if tries[i] >= policy.max_attempts {
                    continue;
                }
                if Instant::now() >= deadline {
                    return Err(Some(run.out_of_time(self.request_limit)));
                }
                if let Err(until) = self.router.admit(endpoint) {
                    run.notes.push(format!(
                        "{} via {}: circuit open",
                        candidate.model.id, endpoint.provider
                    ));
                    run.reopens = Some(run.reopens.map_or(until, |r| r.min(until)));
                    tries[i] = u32::MAX;
                    continue;
                }
                if run.total > 0 {
                    if !self.router.take_retry() {
                        run.notes.push("retry budget used up".into());
                        return Err(Some(run.all_failed()));
                    }
                    crate::metrics::retry(&endpoint.provider);
                }
                if tries[i] > 0 {
                    let delay = waits[i]
                        .take()
                        .unwrap_or_else(|| backoff(&policy, tries[i]));
                    if Instant::now() + delay >= deadline {
                        return Err(Some(run.out_of_time(self.request_limit)));
                    }
                    tokio::time::sleep(delay).await;
                }
                tries[i] += 1;
                run.total += 1;
                tried = true;
                let total = run.total;
                ctx.record.update(|r| {
                    r.model = Some(candidate.model.id.clone());
                    r.provider = Some(endpoint.provider.clone());
                    r.attempts = total;
                });
                charge.serve(
                    &candidate.model.id,
                    &endpoint.provider,
                    candidate.model.prompt_price,
                    candidate.model.completion_price,
                );
                match self.attempt(request, candidate, ctx, charge).await {
                    Ok(reply) => {
                        crate::metrics::attempt(&endpoint.provider, "ok");
                        self.router.record(endpoint, true);
                        return Ok(reply);
                    }
                    Err(failure) => {
                        crate::metrics::attempt(&endpoint.provider, failure.error.code);
                        match failure.verdict {
                            Verdict::Working => self.router.record(endpoint, true),
                            Verdict::Failing => self.router.record(endpoint, false),
                            Verdict::NotCalled => self.router.no_call(endpoint),
                        }
                        run.notes.push(format!(
                            "{} via {}: {}",
                            candidate.model.id, endpoint.provider, failure.summary
                        ));
                        match failure.retry {
                            Retry::Never => return Err(Some(failure.error)),
                            Retry::Elsewhere => tries[i] = u32::MAX,
                            Retry::After(d) if d <= policy.retry_after_cap => waits[i] = Some(d),
                            Retry::After(_) => tries[i] = u32::MAX,
                            Retry::Backoff => {}
                        }
                        run.last = Some(failure.error);
                    }
                }
            }
            if !tried {
                return Err(None);
            }
        }
    }

    /// When the request must be over: its limit from when its hold was
    /// placed, so that it ends before the hold expires (and the sweeper
    /// charges it in full) whatever its fallbacks, retries and rounds.
    fn deadline(&self, charge: &Charge) -> Instant {
        Instant::from_std(charge.started()) + self.request_limit
    }

    fn retry_policy(&self, provider: &str) -> RetryPolicy {
        self.retry.get(provider).copied().unwrap_or(RetryPolicy {
            max_attempts: 1,
            backoff_base: Duration::ZERO,
            backoff_cap: Duration::ZERO,
            retry_after_cap: Duration::ZERO,
        })
    }

    /// One call to one endpoint within its time limits. A complete answer
    /// comes back rewritten; a stream comes back once its first content is
    /// known.
    async fn attempt(
        &self,
        request: &mut ChatRequest,
        candidate: &Candidate,
        ctx: &RequestContext,
        charge: &mut Charge,
    ) -> Result<Reply, Failure> {
        let model = &candidate.model;
        let provider = self
            .providers
            .get(&candidate.endpoint().provider)
            .ok_or_else(|| Failure {
                error: GatewayError::internal(format!(
                    "no provider {:?} for model {}",
                    candidate.endpoint().provider,
                    model.id
                )),
                retry: Retry::Elsewhere,
                verdict: Verdict::NotCalled,
                summary: "not configured".into(),
            })?
            .clone();
        let timeouts = provider.timeouts();
        let (stream, client_wants_usage) = (request.stream, request.client_wants_usage);
        let upstream = &candidate.endpoint().upstream;
        let job = request.responses.clone();
        let native = job.is_some() && provider.native_responses();
        let (body, api) = match &job {
            Some(_) if native => (request.upstream_body(upstream, false), Api::Responses),
            Some(job) => match job.chat_body(upstream, stream) {
                Ok(body) => (body, Api::ChatCompletions),
                Err(error) => {
                    return Err(Failure {
                        error,
                        retry: Retry::Elsewhere,
                        verdict: Verdict::NotCalled,
                        summary: "cannot be translated for it".into(),
                    })
                }
            },
            None => (
                request.upstream_body(upstream, stream),
                Api::ChatCompletions,
            ),
        };
        let call = ChatCall {
            body,
            stream,
            // What an API that requires a limit is sent when the request
            // names none: the model's own cap on output, never its context
            // length, which such an API refuses as a limit on output.
            default_max_tokens: model.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT),
            api,
        };
        let started = Instant::now();
        let deadline = self.deadline(charge);
        let limit = if stream {
            timeouts.first_byte
        } else {
            timeouts.total
        }
        .min(deadline.saturating_duration_since(started));
        let rehearsal = provider.rehearses_faults();
        let fail = |e: ProviderError| Failure::of(provider.name(), e).rehearsed(rehearsal);
        let reply = tokio::time::timeout(limit, provider.chat(call))
            .await
            .map_err(|_| ProviderError::Timeout(format!("no answer within {limit:?}")))
            .and_then(|r| r)
            .map_err(fail)?;

        let events = match reply {
            ChatReply::Complete(bytes) => {
                let done = match &job {
                    Some(job) if native => {
                        let (body, response, usage) =
                            responses::relay::native_complete(&bytes, job, &model.id)
                                .map_err(fail)?;
                        Completion {
                            body,
                            usage,
                            delivered_tokens: responses::relay::delivered_in(&response),
                        }
                    }
                    _ => {
                        let mut done = rewrite_completion(&bytes, &model.id, charge.pricing())
                            .map_err(fail)?;
                        if let Some(job) = &job {
                            done.body =
                                responses::relay::translated_complete(&done.body, job, &model.id)
                                    .map_err(fail)?
                                    .0;
                        }
                        done
                    }
                };
                charge.set_usage(done.usage);
                charge.set_delivered(done.delivered_tokens);
                ctx.record.update(|r| {
                    r.usage = done.usage;
                    r.outcome = Outcome::Completed;
                });
                return Ok(Reply::Complete(done.body));
            }
            ChatReply::Stream(events) => events,
        };
        let open = Opening {
            events,
            started,
            deadline,
            first_byte: timeouts.first_byte,
            idle: timeouts.idle,
            rehearsal,
            model: &model.id,
            ctx,
        };
        let chat = || {
            ChunkRelay::new(provider.name(), &model.id, client_wants_usage).priced(charge.pricing())
        };
        match job {
            Some(job) if native => {
                self.open_stream(
                    responses::relay::NativeRelay::new(provider.name(), &model.id, job),
                    open,
                )
                .await
            }
            Some(job) => {
                self.open_stream(
                    responses::relay::TranslatedRelay::new(chat(), job, &model.id),
                    open,
                )
                .await
            }
            None => self.open_stream(chat(), open).await,
        }
    }

    /// Reads a stream until its first content, holding the 200 and every
    /// frame until then: a failure before that is still an honest HTTP
    /// status, or a move to the next endpoint (UF-09). Then hands the rest
    /// to `relay`.
    async fn open_stream<R: EventRelay>(
        &self,
        mut relay: R,
        open: Opening<'_>,
    ) -> Result<Reply, Failure> {
        let Opening {
            mut events,
            started,
            deadline,
            first_byte,
            idle,
            rehearsal,
            model,
            ctx,
        } = open;
        let first_byte_deadline = (started + first_byte).min(deadline);
        let mut held = BytesMut::new();
        let finished = loop {
            let next = tokio::time::timeout_at(first_byte_deadline, events.next())
                .await
                .map_err(|_| ProviderError::Timeout(format!("no content within {first_byte:?}")));
            let step = match next {
                Err(e) | Ok(Some(Err(e))) => {
                    return Err(Failure::of(relay.provider(), e).rehearsed(rehearsal))
                }
                Ok(Some(Ok(data))) => relay.on_event(&data),
                Ok(None) => relay.on_eof(),
            };
            match step {
                Step::Send(frame) => {
                    held.extend_from_slice(&frame);
                    if relay.has_content() {
                        break false;
                    }
                }
                Step::Skip => {}
                Step::Fail(e) => return Err(Failure::stream(e).rehearsed(rehearsal)),
                Step::Done => break true,
            }
        };
        let limits = StreamLimits {
            keepalive: self.keepalive,
            idle,
            // Within the request's own limit, which its attempts used up
            // some of.
            max_duration: self
                .max_stream_duration
                .min(deadline.saturating_duration_since(Instant::now())),
        };
        crate::metrics::first_token(model, started.elapsed());
        let ctx = ctx.clone();
        let held = held.freeze();
        Ok(Reply::Stream(Box::new(move |charge| {
            if finished {
                relay::finished(relay, held, ctx, charge)
            } else {
                relay::relay(relay, held, events, limits, ctx, charge)
            }
        })))
    }
}

/// The claim of an `Idempotency-Key` by a request that has no charge yet:
/// given up if dropped while still here (the request went away), and only
/// this request's own claim.
struct Unsettled(Option<Claimed>);

struct Claimed {
    store: Arc<dyn IdempotencyStore>,
    key_id: String,
    idem: String,
    request_id: String,
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        let Some(c) = self.0.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = c.store.abandon(&c.key_id, &c.idem, &c.request_id).await {
                tracing::warn!(error = %e, "could not release an idempotency key");
            }
        });
    }
}

/// A stream that has just opened, for `open_stream`.
struct Opening<'a> {
    events: EventStream,
    started: Instant,
    /// When the request must be over (`Gateway::deadline`).
    deadline: Instant,
    first_byte: Duration,
    idle: Duration,
    rehearsal: bool,
    model: &'a str,
    ctx: &'a RequestContext,
}

/// How a failed attempt may be followed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// The answer is final (an upstream 4xx): no retry, no failover (UF-11).
    Never,
    /// Not this endpoint again in this request; another one may serve it.
    Elsewhere,
    /// The upstream asked for this delay (429 `Retry-After`).
    After(Duration),
    /// This endpoint again after a backoff, or another one now.
    Backoff,
}

/// One failed attempt: the client-facing error, and what to do next.
struct Failure {
    error: GatewayError,
    retry: Retry,
    /// What it says of the endpoint's health, for its circuit.
    verdict: Verdict,
    /// How the attempt ended, for the final message ("503", "timeout").
    summary: String,
}

/// What a failed attempt says of its endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// It answered, if only with an error (4xx, 429): it works.
    Working,
    /// No connection, a timeout, a 5xx, a broken answer: counts against
    /// its circuit.
    Failing,
    /// No call was made (the request cannot be sent to it, or its key is
    /// not set): nothing is learned.
    NotCalled,
}

impl Failure {
    fn of(provider: &str, e: ProviderError) -> Self {
        use Verdict::{Failing, NotCalled, Working};
        let (retry, verdict, summary) = match &e {
            ProviderError::Upstream {
                status: 429,
                retry_after,
                ..
            } => (
                retry_after.map_or(Retry::Backoff, Retry::After),
                Working,
                "429".to_string(),
            ),
            ProviderError::Upstream {
                status: status @ (408 | 500 | 502 | 503 | 504 | 529),
                ..
            } => (Retry::Backoff, Failing, status.to_string()),
            // Any other 5xx (a proxy's 520-524, 507, 501) is the endpoint
            // failing too, not a sign of life: another endpoint or model
            // may serve the request.
            ProviderError::Upstream { status, .. } if *status >= 500 => {
                (Retry::Elsewhere, Failing, status.to_string())
            }
            ProviderError::Upstream { status, .. } => (Retry::Never, Working, status.to_string()),
            ProviderError::Transport(_) => (Retry::Backoff, Failing, "connection failed".into()),
            // A silent endpoint stays silent: move on without waiting for
            // it again (UF-05).
            ProviderError::Timeout(phase) => {
                (Retry::Elsewhere, Failing, format!("timeout ({phase})"))
            }
            ProviderError::Decode(_) => (Retry::Elsewhere, Failing, "invalid response".into()),
            ProviderError::StreamError(_) => (Retry::Elsewhere, Failing, "error event".into()),
            ProviderError::NotConfigured(_) => {
                (Retry::Elsewhere, NotCalled, "not configured".into())
            }
            ProviderError::Rehearsal(_) => (Retry::Never, Working, "mock fault".into()),
        };
        Self {
            error: upstream_error(provider, e),
            retry,
            verdict,
            summary,
        }
    }

    /// The mock's faults are played as configured: final, and no sign of
    /// ill health.
    fn rehearsed(mut self, rehearsal: bool) -> Self {
        if rehearsal {
            self.retry = Retry::Never;
            self.verdict = Verdict::Working;
        }
        self
    }

    /// A failure the relay found in a stream before its first content.
    fn stream(error: GatewayError) -> Self {
        Self {
            summary: error.code.to_string(),
            error,
            retry: Retry::Elsewhere,
            verdict: Verdict::Failing,
        }
    }
}

/// What the attempts of one request have been through so far.
struct Attempts {
    /// "model via provider: how it ended", one per attempt or skip.
    notes: Vec<String>,
    last: Option<GatewayError>,
    /// The soonest moment a circuit that kept an endpoint out reopens.
    reopens: Option<Instant>,
    total: u32,
}

impl Attempts {
    /// The answer when the request's time ran out before an endpoint
    /// answered: the last failure, or else a 503 saying so.
    fn out_of_time(&mut self, limit: Duration) -> GatewayError {
        self.notes
            .push(format!("the request reached its limit of {limit:?}"));
        if self.last.is_none() {
            self.last = Some(GatewayError::unavailable(
                "request_too_long",
                format!("The request reached the gateway's limit of {limit:?} before a provider answered. Retry later, or with fewer fallbacks."),
            ));
        }
        self.all_failed()
    }

    /// The answer when no endpoint served the request: the last failure's
    /// status and code, with every attempt listed. When circuits kept
    /// endpoints out, `Retry-After` says when the first one may be tried.
    fn all_failed(&mut self) -> GatewayError {
        let tried = self.notes.join("; ");
        let mut error = match self.last.take() {
            Some(e) if self.notes.len() <= 1 => return e,
            Some(mut e) => {
                e.message = format!("{} Tried {} time(s): {tried}.", e.message, self.total);
                e
            }
            None => GatewayError::unavailable(
                "providers_down",
                format!("Every provider of this model is failing and paused: {tried}. Retry after the Retry-After delay."),
            ),
        };
        if let Some(at) = self.reopens {
            if error.retry_after.is_none() {
                let wait = at.saturating_duration_since(Instant::now());
                error = error.with_retry_after(wait.max(Duration::from_secs(1)));
            }
        }
        error
    }
}

fn provider_names(model: &ModelConfig) -> String {
    let names: Vec<&str> = model
        .endpoints
        .iter()
        .map(|e| e.provider.as_str())
        .collect();
    names.join(", ")
}

/// What `Gateway::call` produced: a complete body, or a stream that
/// starts once it is given the charge it settles.
enum Reply {
    Complete(Bytes),
    Stream(Box<dyn FnOnce(Charge) -> BoxStream<'static, Bytes> + Send>),
}

fn prompt_estimate(request: &ChatRequest, model: &ModelConfig) -> u64 {
    let estimate = estimate_prompt_tokens(request.body());
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
        let (message, _, _) = crate::providers::transport::error_fields(bytes);
        return Err(ProviderError::StreamError(message));
    };
    let mut model = Vec::with_capacity(public_model.len() + 2);
    serde_json::to_writer(&mut model, public_model).expect("a string serializes");
    let model = String::from_utf8(model).expect("JSON is UTF-8");
    // The usage object is split once: read for its counts, then written
    // back with the cost added.
    let usage_object = object
        .get("usage")
        .filter(|u| u.get().starts_with('{'))
        .and_then(|raw| RawObject::parse(raw.get().as_bytes()).ok());
    let usage = usage_object.as_ref().map(Usage::from_raw);
    let delivered_tokens = match usage {
        Some(_) => 0,
        None => relay::estimate_delivered(
            &serde_json::from_str::<Value>(choices.get()).unwrap_or(Value::Null),
        ),
    };
    let body = match usage_object.zip(usage) {
        Some((raw, u)) => {
            let cost = usd_string(pricing.cost(&u));
            let usage_text =
                String::from_utf8(raw.to_vec_with(&[("cost", &cost)])).expect("JSON is UTF-8");
            object.to_vec_with(&[("model", &model), ("usage", &usage_text)])
        }
        None => object.to_vec_with(&[("model", &model)]),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future that `call` would return, without calling it.
    fn future_size<F: std::future::Future>(_call: impl FnOnce() -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every request's future is allocated, and moved, at the size of its
    /// largest state: the rounds of web search and MCP tools are boxed, so
    /// a plain request does not pay for them (with MCP inline, the chat
    /// future was 12.6 KiB, copied on every request).
    #[test]
    #[allow(unreachable_code)]
    fn a_plain_request_does_not_carry_the_state_of_tool_rounds() {
        let chat = future_size(|| {
            Gateway::chat(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        });
        let attempts = future_size(|| {
            Gateway::attempts(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        });
        let mcp = future_size(|| {
            Gateway::mcp_reply(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        });
        // One attempt's state, plus the request's own: far below the MCP
        // rounds' state.
        assert!(
            chat <= 3 * attempts,
            "chat {chat} bytes, attempts {attempts}"
        );
        assert!(chat < mcp, "chat {chat} bytes, MCP rounds {mcp}");
    }
}
