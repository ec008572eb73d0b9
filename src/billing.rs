//! Credits: hold the worst case before a request goes upstream, settle the
//! real cost when it ends, on every path.
//!
//! `Billing::open` places the hold (or refuses with 402) and returns a
//! `Charge`. The request's code feeds the charge what it learns (usage,
//! tokens delivered) and calls `finish` when the client has its answer. If
//! the charge is dropped without that (client gone, handler panicked), its
//! `Drop` settles it in the background from what it had seen. A hold that
//! outlives even that (the process was killed) is resolved by the sweeper
//! when its TTL ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio_util::task::TaskTracker;

use crate::accounts::{now_ms, store_unavailable};
use crate::config::{usd_string, NanoUsd};
use crate::gateway::error::{ErrorKind, GatewayError};
use crate::gateway::record::Usage;
use crate::ratelimit::{Permit, RateLimiter};
use crate::store::{HoldRequest, HoldResult, KeyRecord, Store, UsageRecord};

/// A model's prices, nano-USD per million tokens, and the most one request
/// may be charged (its hold; `None` for unlimited keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pricing {
    pub prompt: NanoUsd,
    pub completion: NanoUsd,
    pub cap: Option<NanoUsd>,
}

impl Pricing {
    /// The cost of `prompt` and `completion` tokens, rounded up to the
    /// nano-dollar, before the cap.
    pub fn raw_cost(&self, prompt: u64, completion: u64) -> NanoUsd {
        let total = i128::from(prompt) * i128::from(self.prompt)
            + i128::from(completion) * i128::from(self.completion);
        let nanos = (total + 999_999) / 1_000_000;
        i64::try_from(nanos).unwrap_or(i64::MAX)
    }

    /// What a request with this usage is charged: never more than its hold.
    pub fn cost(&self, usage: &Usage) -> NanoUsd {
        let cost = self.raw_cost(usage.prompt_tokens, usage.completion_tokens);
        match self.cap {
            Some(cap) => cost.min(cap),
            None => cost,
        }
    }
}

/// Tokens in a request's prompt, estimated from its text at ~4 characters
/// per token, plus a few per message. Only the hold uses it, and when the
/// upstream reports no usage, the settlement.
pub fn estimate_prompt_tokens(body: &Map<String, Value>) -> u64 {
    fn text_len(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.len() as u64,
            Value::Array(items) => items.iter().map(text_len).sum(),
            // Image and audio parts: their data is not text tokens; the
            // provider's usage says what they cost.
            Value::Object(o) if o.contains_key("image_url") || o.contains_key("input_audio") => 0,
            Value::Object(o) => o.values().map(text_len).sum(),
            _ => 0,
        }
    }
    // A chat body's `messages`; a Responses body's `input` (a string, or
    // items, with any stored conversation it continues in front) and
    // `instructions`.
    let mut turns = 0;
    let mut chars = body.get("tools").map_or(0, |t| t.to_string().len() as u64);
    for field in ["messages", "input", "instructions"] {
        match body.get(field) {
            Some(Value::Array(items)) => {
                turns += items.len() as u64;
                chars += items.iter().map(text_len).sum::<u64>();
            }
            Some(text @ Value::String(_)) => {
                turns += 1;
                chars += text_len(text);
            }
            _ => {}
        }
    }
    chars.div_ceil(4) + turns * 4 + 3
}

/// What a request asks for, to price its hold.
pub struct ChargeSpec {
    pub key: Arc<KeyRecord>,
    pub request_id: Arc<str>,
    pub model: String,
    pub provider: String,
    pub prompt: NanoUsd,
    pub completion: NanoUsd,
    pub prompt_estimate: u64,
    pub max_output_tokens: u64,
    pub streamed: bool,
    /// The request's `Idempotency-Key`, already claimed.
    pub idempotency_key: Option<String>,
    /// Held on top of the tokens' worst case: what a request may spend
    /// besides its one model call (further model rounds, web searches).
    pub extra_hold: NanoUsd,
}

pub struct Billing {
    store: Store,
    limiter: Arc<dyn RateLimiter>,
    hold_ttl: Duration,
    /// Every settlement task, so that shutdown can wait for them.
    settlements: TaskTracker,
}

impl Billing {
    pub fn new(store: Store, limiter: Arc<dyn RateLimiter>, hold_ttl: Duration) -> Self {
        Self {
            store,
            limiter,
            hold_ttl,
            settlements: TaskTracker::new(),
        }
    }

    /// The settlement tasks: the server waits for them (`TaskTracker::wait`
    /// once closed) after it has ended the last requests, before it stops
    /// the runtimes they run on.
    pub fn settlements(&self) -> TaskTracker {
        self.settlements.clone()
    }

    /// Holds the worst-case cost of the request, or refuses it with 402.
    pub async fn open(
        self: &Arc<Self>,
        spec: ChargeSpec,
        permit: Permit,
    ) -> Result<Charge, GatewayError> {
        let mut pricing = Pricing {
            prompt: spec.prompt,
            completion: spec.completion,
            cap: None,
        };
        let worst = pricing
            .raw_cost(spec.prompt_estimate, spec.max_output_tokens)
            .saturating_add(spec.extra_hold.max(0));
        let hold_id = format!("hold_{}", ulid::Ulid::new());
        let limited = spec.key.balance.is_some();
        if limited {
            pricing.cap = Some(worst);
            let now = now_ms();
            let result = self
                .store
                .credits
                .hold(&HoldRequest {
                    hold_id: hold_id.clone(),
                    request_id: spec.request_id.to_string(),
                    key_id: spec.key.id.clone(),
                    amount: worst,
                    // The request goes upstream right after this, with
                    // nothing in between that can fail or wait.
                    sent: true,
                    now,
                    expires_at: now + self.hold_ttl.as_millis() as i64,
                })
                .await;
            let refused = match result {
                Ok(HoldResult::Held | HoldResult::Unlimited) => None,
                Ok(HoldResult::Insufficient { balance }) => {
                    crate::metrics::rejected("credits");
                    Some(insufficient(&spec, worst, balance))
                }
                Ok(HoldResult::NoKey) => Some(GatewayError::new(
                    ErrorKind::Unauthorized,
                    "invalid_api_key",
                    "The API key was deleted.",
                )),
                Err(e) => Some(store_unavailable(e)),
            };
            if let Some(error) = refused {
                self.abandon_idempotency(&spec).await;
                return Err(error);
            }
        }
        Ok(Charge {
            billing: self.clone(),
            hold_id,
            pricing,
            spec,
            started: Instant::now(),
            usage: None,
            delivered_tokens: 0,
            banked: Usage::default(),
            banked_cost: 0,
            searches: 0,
            search_cost: 0,
            mcp_calls: 0,
            answered: false,
            _permit: permit,
            settled: false,
        })
    }

    async fn abandon_idempotency(&self, spec: &ChargeSpec) {
        if let Some(idem) = &spec.idempotency_key {
            let abandoned = self
                .store
                .idempotency
                .abandon(&spec.key.id, idem, &spec.request_id);
            if let Err(e) = abandoned.await {
                tracing::warn!(error = %e, "could not release an idempotency key");
            }
        }
    }
}

fn insufficient(spec: &ChargeSpec, needed: NanoUsd, balance: NanoUsd) -> GatewayError {
    let rounds = if spec.extra_hold > 0 {
        format!(
            ", and {} USD for the further model rounds and tool calls or searches it may run (a lower max_tool_calls needs less)",
            usd_string(spec.extra_hold)
        )
    } else {
        String::new()
    };
    GatewayError::new(
        ErrorKind::InsufficientCredits,
        "insufficient_credits",
        format!(
            "This request may cost up to {} USD ({} prompt tokens, estimated, plus up to {} output tokens of {}{rounds}), but the key has {} USD available. Top up the key, or lower max_tokens to need less.",
            usd_string(needed),
            spec.prompt_estimate,
            spec.max_output_tokens,
            spec.model,
            usd_string(balance)
        ),
    )
}

/// One request's open charge. Settles exactly once: by `finish`, or else
/// when dropped.
pub struct Charge {
    billing: Arc<Billing>,
    hold_id: String,
    pricing: Pricing,
    spec: ChargeSpec,
    started: Instant,
    usage: Option<Usage>,
    delivered_tokens: u64,
    /// Earlier model calls of this request (`bank_round`): their tokens,
    /// and their cost at the prices of the model that served them.
    banked: Usage,
    banked_cost: NanoUsd,
    /// Web searches run for the request, and what they cost.
    searches: u32,
    search_cost: NanoUsd,
    /// MCP tool calls run for the request.
    mcp_calls: u32,
    /// The client has its 200: a stream's first frames are going out.
    answered: bool,
    /// The key's concurrency slot, given back when the charge goes.
    _permit: Permit,
    settled: bool,
}

impl Charge {
    pub fn pricing(&self) -> Pricing {
        self.pricing
    }

    /// When the hold was placed (just before).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The model and endpoint now trying to answer: the usage is priced
    /// at this model's rates (never above the hold) and recorded under it.
    pub fn serve(&mut self, model: &str, provider: &str, prompt: NanoUsd, completion: NanoUsd) {
        self.pricing.prompt = prompt;
        self.pricing.completion = completion;
        if self.spec.model != model {
            self.spec.model = model.to_string();
        }
        if self.spec.provider != provider {
            self.spec.provider = provider.to_string();
        }
    }

    /// Records that a stream's 200 and first frames are going out: from
    /// then on, a client that leaves was answered (and a dropped charge is
    /// settled as a 200 that ran as a stream), where before it was not.
    pub fn mark_answered(&mut self) {
        self.answered = true;
    }

    /// The usage the upstream reported (an explicit zero counts).
    pub fn set_usage(&mut self, usage: Option<Usage>) {
        if usage.is_some() {
            self.usage = usage;
        }
    }

    /// Completion tokens delivered to the client so far (an estimate, used
    /// only if the upstream reports no usage).
    pub fn set_delivered(&mut self, tokens: u64) {
        self.delivered_tokens = tokens;
    }

    /// One model call of a request that makes several (a web search loop)
    /// has ended: its usage is billed with the request's, and the next
    /// call's usage starts from zero.
    pub fn bank_round(&mut self) {
        if let Some(u) = self.billable() {
            self.banked_cost = self
                .banked_cost
                .saturating_add(self.pricing.raw_cost(u.prompt_tokens, u.completion_tokens));
            self.banked.prompt_tokens += u.prompt_tokens;
            self.banked.completion_tokens += u.completion_tokens;
            self.banked.cached_tokens += u.cached_tokens;
        }
        self.usage = None;
        self.delivered_tokens = 0;
    }

    /// The usage the current model call reported, if any.
    pub fn current_usage(&self) -> Option<Usage> {
        self.usage
    }

    /// What the request costs so far: earlier calls, searches and the
    /// current call, never more than the hold.
    pub fn cost_so_far(&self) -> NanoUsd {
        let current = self.billable().map_or(0, |u| {
            self.pricing.raw_cost(u.prompt_tokens, u.completion_tokens)
        });
        let raw = current
            .saturating_add(self.banked_cost)
            .saturating_add(self.search_cost);
        self.pricing.cap.map_or(raw, |cap| raw.min(cap))
    }

    /// An MCP tool call ran for the request.
    pub fn add_mcp_call(&mut self) {
        self.mcp_calls += 1;
    }

    /// Whether one more model call of `prompt` tokens and up to `output`
    /// tokens fits in what is left of the hold (always, for an unlimited
    /// key).
    pub fn can_afford(&self, prompt: u64, output: u64) -> bool {
        self.pricing.cap.is_none_or(|cap| {
            self.cost_so_far()
                .saturating_add(self.pricing.raw_cost(prompt, output))
                <= cap
        })
    }

    /// A web search ran for the request, at `price`.
    pub fn add_search(&mut self, price: NanoUsd) {
        self.searches += 1;
        self.search_cost = self.search_cost.saturating_add(price.max(0));
    }

    /// What is billed: the reported usage, else the estimate of what was
    /// delivered; nothing if nothing was delivered.
    fn billable(&self) -> Option<Usage> {
        self.usage.or_else(|| {
            (self.delivered_tokens > 0).then_some(Usage {
                prompt_tokens: self.spec.prompt_estimate,
                completion_tokens: self.delivered_tokens,
                cached_tokens: 0,
            })
        })
    }

    /// Settles now. `status` is what the client got, `outcome` "ok" or the
    /// error code; `response` a complete body to keep for idempotent replay.
    pub async fn finish(mut self, status: u16, outcome: &str, response: Option<&[u8]>) {
        self.settled = true;
        let settlement = self.settlement(status, outcome, false, response);
        // A task of its own: if the client leaves while this is awaited (a
        // stream's last frame), the settlement still runs to the end.
        if let Err(e) = self.billing.settlements.spawn(settlement.run()).await {
            tracing::error!(error = %e, "settlement task failed; the sweeper will resolve the hold");
        }
    }

    fn settlement(
        &self,
        status: u16,
        outcome: &str,
        cancelled: bool,
        response: Option<&[u8]>,
    ) -> Settlement {
        // A model call that never produced an answer is never billed;
        // earlier calls and searches of the request were, and are.
        let usage = if status == 200 || self.delivered_tokens > 0 {
            self.billable()
        } else {
            None
        };
        let raw = usage
            .map_or(0, |u| {
                self.pricing.raw_cost(u.prompt_tokens, u.completion_tokens)
            })
            .saturating_add(self.banked_cost)
            .saturating_add(self.search_cost);
        let cost = match self.pricing.cap {
            Some(cap) if raw > cap => {
                tracing::warn!(request_id = %self.spec.request_id, "usage exceeded the hold; charged the hold");
                cap
            }
            _ => raw,
        };
        let current = usage.unwrap_or_default();
        let u = Usage {
            prompt_tokens: current.prompt_tokens + self.banked.prompt_tokens,
            completion_tokens: current.completion_tokens + self.banked.completion_tokens,
            cached_tokens: current.cached_tokens + self.banked.cached_tokens,
        };
        let spec = &self.spec;
        let billed = status == 200 || cost > 0;
        Settlement {
            billing: self.billing.clone(),
            record: UsageRecord {
                hold_id: self.hold_id.clone(),
                request_id: spec.request_id.to_string(),
                key_id: spec.key.id.clone(),
                model: spec.model.clone(),
                provider: spec.provider.clone(),
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                cached_tokens: u.cached_tokens,
                cost,
                status,
                outcome: outcome.to_string(),
                latency_ms: self.started.elapsed().as_millis() as u64,
                streamed: spec.streamed,
                cancelled,
                created_at: now_ms(),
                searches: self.searches,
                mcp_calls: self.mcp_calls,
            },
            key: spec.key.clone(),
            tokens: u.prompt_tokens + u.completion_tokens,
            idempotency: spec
                .idempotency_key
                .clone()
                .map(|k| (k, billed, response.map(<[u8]>::to_vec))),
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let status = if self.spec.streamed && self.answered {
            200
        } else {
            499
        };
        let settlement = self.settlement(status, "client_closed", true, None);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.billing
                    .settlements
                    .spawn_on(settlement.run(), &runtime);
            }
            Err(_) => tracing::error!(
                request_id = %self.spec.request_id,
                "no runtime to settle a dropped charge; the sweeper will resolve its hold"
            ),
        }
    }
}

/// Everything needed to settle, owned, so it can run after the request.
struct Settlement {
    billing: Arc<Billing>,
    record: UsageRecord,
    key: Arc<KeyRecord>,
    tokens: u64,
    /// (Idempotency-Key, billed, stored response).
    idempotency: Option<(String, bool, Option<Vec<u8>>)>,
}

impl Settlement {
    async fn run(self) {
        let billing = &self.billing;
        let r = &self.record;
        crate::metrics::settled(&r.model, r.prompt_tokens, r.completion_tokens, r.cost);
        // Queued where the store can: the answer need not wait for the
        // commit, and whatever the store does next sees it. A request with
        // an Idempotency-Key waits, so that its outcome below is recorded
        // only once its money has moved.
        let queued = self.idempotency.is_none() && billing.store.credits.settle_queued(r);
        if !queued {
            if let Err(e) = billing.store.credits.settle(r).await {
                // The hold stays open; the sweeper resolves it at its TTL.
                tracing::error!(request_id = %r.request_id, error = %e, "settlement failed; the hold is left to the sweeper");
            }
        }
        billing
            .limiter
            .charge_tokens(&self.key.id, self.key.limits, self.tokens)
            .await;
        if let Some((idem, billed, response)) = &self.idempotency {
            let store = &billing.store.idempotency;
            let done = if *billed {
                store
                    .complete(&self.key.id, idem, response.as_deref())
                    .await
            } else {
                store
                    .abandon(&self.key.id, idem, &self.record.request_id)
                    .await
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "could not record an idempotency outcome");
            }
        }
    }
}

/// Resolves holds left by a crashed process once their TTL has passed.
/// Runs once at start and then every `every`.
pub async fn sweep_forever(store: Store, every: Duration) {
    loop {
        match store.credits.sweep_expired(now_ms()).await {
            Ok(s) if s.released + s.settled > 0 => {
                tracing::info!(
                    released = s.released,
                    settled = s.settled,
                    "resolved expired holds"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not sweep expired holds"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cost_rounds_up_to_the_nano_dollar_and_respects_the_cap() {
        let p = Pricing {
            prompt: 100_000_000,     // $0.10 per Mtok
            completion: 200_000_000, // $0.20 per Mtok
            cap: None,
        };
        let usage = |p, c| Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: 0,
        };
        assert_eq!(p.cost(&usage(0, 0)), 0);
        assert_eq!(p.cost(&usage(1, 0)), 100);
        assert_eq!(p.cost(&usage(10, 5)), 2000);
        let odd = Pricing {
            prompt: 1,
            completion: 0,
            cap: None,
        };
        assert_eq!(
            odd.cost(&usage(1, 0)),
            1,
            "a fraction of a nano-dollar rounds up"
        );
        let capped = Pricing {
            cap: Some(1500),
            ..p
        };
        assert_eq!(capped.cost(&usage(10, 5)), 1500);
    }

    #[test]
    fn prompt_estimate_counts_a_responses_input_and_instructions() {
        let text = "x".repeat(4000);
        let chat = json!({"messages": [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": text}]});
        let as_string = json!({"instructions": "Be brief.", "input": text});
        let as_items = json!({"instructions": "Be brief.",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}]});
        let chat = estimate_prompt_tokens(chat.as_object().unwrap());
        assert!(chat > 1000, "{chat}");
        for body in [as_string, as_items] {
            let n = estimate_prompt_tokens(body.as_object().unwrap());
            assert!(n.abs_diff(chat) < 20, "{n} against {chat} for {body}");
        }
    }

    #[test]
    fn prompt_estimate_counts_text_not_image_data() {
        let text = json!({"messages": [{"role": "user", "content": "x".repeat(400)}]});
        let image = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "A".repeat(100_000))}}
        ]}]});
        let t = estimate_prompt_tokens(text.as_object().unwrap());
        assert!((100..120).contains(&t), "{t}");
        assert!(estimate_prompt_tokens(image.as_object().unwrap()) < 20);
    }
}
