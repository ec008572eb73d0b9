//! Per-key rate limits: requests per minute and tokens per minute by GCRA,
//! and a cap on concurrent requests.
//!
//! GCRA keeps one number per limit, the theoretical arrival time (TAT). A
//! request of cost `n` is allowed when `max(TAT, now) + n·T − now` stays
//! within the one-minute window, `T` being 60 s ÷ limit; so a fresh key may
//! burst its whole minute's allowance and then gets one more every `T`.
//! Tokens are only known after the answer, so they are charged then, and
//! may push the TAT past the window (a debt): new requests wait until it is
//! paid off. `governor` cannot record such after-the-fact costs, hence this
//! small implementation; the Redis backend runs the same arithmetic.
//!
//! `RateLimiter` is the trait; `MemoryLimiter` is the in-process backend
//! (one instance), `redis::RedisLimiter` the shared one (several instances
//! behave as one; it falls back to the in-process limiter while Redis is
//! unreachable).

pub mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::HeaderName;

use crate::store::KeyLimits;

const WINDOW: Duration = Duration::from_secs(60);

/// One GCRA limit's state: its TAT in nanoseconds since the limiter began.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gcra {
    tat: u128,
}

/// A limit's state as OpenAI's headers report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub remaining: u64,
    /// Until the limit is fully replenished.
    pub reset: Duration,
}

impl Gcra {
    fn interval(limit: u32) -> u128 {
        WINDOW.as_nanos() / u128::from(limit.max(1))
    }

    /// Takes `cost` if the window allows it; otherwise says how long to wait.
    pub fn try_take(&mut self, limit: u32, cost: u64, now: u128) -> Result<Quota, Duration> {
        let window = WINDOW.as_nanos();
        let tat = self.tat.max(now) + Self::interval(limit) * u128::from(cost);
        if tat - now > window {
            return Err(nanos(tat - now - window));
        }
        self.tat = tat;
        Ok(self.quota(limit, now))
    }

    /// Takes `cost` unconditionally (debt allowed).
    pub fn charge(&mut self, limit: u32, cost: u64, now: u128) {
        self.tat = self.tat.max(now) + Self::interval(limit) * u128::from(cost);
    }

    /// How long until a request of cost 0 passes (zero when one does now).
    pub fn debt(&self, now: u128) -> Duration {
        nanos(
            self.tat
                .saturating_sub(now)
                .saturating_sub(WINDOW.as_nanos()),
        )
    }

    pub fn quota(&self, limit: u32, now: u128) -> Quota {
        let used = self.tat.saturating_sub(now);
        let free = WINDOW.as_nanos().saturating_sub(used);
        Quota {
            limit,
            remaining: (free / Self::interval(limit)) as u64,
            reset: nanos(used),
        }
    }
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    /// `max_tokens` alone is more than the key's tokens-per-minute.
    TokensTooLarge {
        max_tokens: u64,
    },
    Concurrency,
}

#[derive(Debug, Clone)]
pub struct Refusal {
    pub kind: LimitKind,
    pub limit: u32,
    pub retry_after: Duration,
    pub status: LimitStatus,
}

/// What the `x-ratelimit-*` headers say after a decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitStatus {
    pub requests: Option<Quota>,
    pub tokens: Option<Quota>,
}

impl LimitStatus {
    /// The OpenAI rate-limit headers for this status.
    pub fn headers(&self) -> Vec<(HeaderName, String)> {
        let mut out = Vec::new();
        if let Some(q) = self.requests {
            out.push((names::LIMIT_REQUESTS, q.limit.to_string()));
            out.push((names::REMAINING_REQUESTS, q.remaining.to_string()));
            out.push((names::RESET_REQUESTS, reset_string(q.reset)));
        }
        if let Some(q) = self.tokens {
            out.push((names::LIMIT_TOKENS, q.limit.to_string()));
            out.push((names::REMAINING_TOKENS, q.remaining.to_string()));
            out.push((names::RESET_TOKENS, reset_string(q.reset)));
        }
        out
    }
}

/// The header names, checked when the crate is compiled: a name given as
/// a `&str` is parsed and validated again on every insert.
mod names {
    use http::HeaderName;

    pub const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
    pub const REMAINING_REQUESTS: HeaderName =
        HeaderName::from_static("x-ratelimit-remaining-requests");
    pub const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
    pub const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
    pub const REMAINING_TOKENS: HeaderName =
        HeaderName::from_static("x-ratelimit-remaining-tokens");
    pub const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
}

/// A duration the way OpenAI writes resets: "0s", "250ms", "1.5s", "6m0s".
pub fn reset_string(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{}.{:03}", ms / 1000, ms % 1000);
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        let secs = (ms % 60_000) as f64 / 1000.0;
        format!("{}m{}s", ms / 60_000, (secs * 10.0).round() / 10.0)
    }
}

/// Holds one of a key's concurrent-request slots until dropped: an
/// in-process counter, or a shared lease (whose own `Drop` gives it back).
pub struct Permit {
    slot: Option<Arc<AtomicU32>>,
    _lease: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("slot", &self.slot.is_some())
            .field("lease", &self._lease.is_some())
            .finish()
    }
}

impl Permit {
    pub fn none() -> Self {
        Self {
            slot: None,
            _lease: None,
        }
    }

    fn counted(slot: Arc<AtomicU32>) -> Self {
        Self {
            slot: Some(slot),
            _lease: None,
        }
    }

    /// A permit whose slot is given back when `lease` is dropped.
    pub fn leased(lease: Box<dyn Send + Sync>) -> Self {
        Self {
            slot: None,
            _lease: Some(lease),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(count) = self.slot.take() {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Admits one request: its requests-per-minute and concurrency slots,
    /// and, when the key has a token limit, checks that the key is not in
    /// token debt and that `max_tokens` alone fits the limit (RL-04).
    async fn admit(
        &self,
        key_id: &str,
        limits: KeyLimits,
        max_tokens: Option<u64>,
    ) -> Result<(Permit, LimitStatus), Refusal>;

    /// Charges the tokens a finished request used.
    async fn charge_tokens(&self, key_id: &str, limits: KeyLimits, tokens: u64);

    /// Which limiter is deciding, for the health endpoint.
    fn health(&self) -> LimiterHealth {
        LimiterHealth::Memory
    }
}

/// Which limiter decides, as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimiterHealth {
    /// The in-process limiter of a single instance.
    Memory,
    /// The shared Redis limiter.
    Redis,
    /// Redis is unreachable: the in-process limiter at each limit divided
    /// by the configured instance count.
    Fallback { instances: u32 },
}

#[derive(Default)]
struct KeyState {
    requests: Gcra,
    tokens: Gcra,
    in_flight: Arc<AtomicU32>,
}

/// The in-process limiter (the default, for a single instance).
pub struct MemoryLimiter {
    epoch: Instant,
    keys: Mutex<HashMap<String, KeyState>>,
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            keys: Mutex::default(),
        }
    }
}

impl MemoryLimiter {
    fn now(&self) -> u128 {
        self.epoch.elapsed().as_nanos()
    }

    fn with_key<T>(&self, key_id: &str, f: impl FnOnce(&mut KeyState) -> T) -> T {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if !keys.contains_key(key_id) {
            keys.insert(key_id.to_string(), KeyState::default());
        }
        f(keys.get_mut(key_id).expect("inserted above"))
    }
}

#[async_trait]
impl RateLimiter for MemoryLimiter {
    async fn admit(
        &self,
        key_id: &str,
        limits: KeyLimits,
        max_tokens: Option<u64>,
    ) -> Result<(Permit, LimitStatus), Refusal> {
        if limits == KeyLimits::default() {
            return Ok((Permit::none(), LimitStatus::default()));
        }
        let now = self.now();
        self.with_key(key_id, |state| {
            let mut status = LimitStatus {
                requests: None,
                tokens: limits.tpm.map(|tpm| state.tokens.quota(tpm, now)),
            };
            if let Some(tpm) = limits.tpm {
                let refuse = |kind, retry_after| Refusal {
                    kind,
                    limit: tpm,
                    retry_after,
                    status,
                };
                if let Some(max_tokens) = max_tokens.filter(|m| *m > u64::from(tpm)) {
                    return Err(refuse(LimitKind::TokensTooLarge { max_tokens }, WINDOW));
                }
                let debt = state.tokens.debt(now);
                if !debt.is_zero() {
                    return Err(refuse(LimitKind::Tokens, debt));
                }
            }
            // Concurrency first: a request it refuses must not use up one
            // of the minute's requests. The permit taken here goes back
            // (dropped) if the rpm limit refuses.
            let permit = match limits.max_concurrent {
                None => Permit::none(),
                Some(max) => {
                    let count = state.in_flight.clone();
                    if count.fetch_add(1, Ordering::AcqRel) >= max {
                        count.fetch_sub(1, Ordering::AcqRel);
                        if let Some(rpm) = limits.rpm {
                            status.requests = Some(state.requests.quota(rpm, now));
                        }
                        return Err(Refusal {
                            kind: LimitKind::Concurrency,
                            limit: max,
                            retry_after: Duration::from_secs(1),
                            status,
                        });
                    }
                    Permit::counted(count)
                }
            };
            if let Some(rpm) = limits.rpm {
                match state.requests.try_take(rpm, 1, now) {
                    Ok(quota) => status.requests = Some(quota),
                    Err(retry_after) => {
                        status.requests = Some(state.requests.quota(rpm, now));
                        return Err(Refusal {
                            kind: LimitKind::Requests,
                            limit: rpm,
                            retry_after,
                            status,
                        });
                    }
                }
            }
            Ok((permit, status))
        })
    }

    async fn charge_tokens(&self, key_id: &str, limits: KeyLimits, tokens: u64) {
        let Some(tpm) = limits.tpm else { return };
        let now = self.now();
        self.with_key(key_id, |state| state.tokens.charge(tpm, tokens, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u128 = 1_000_000_000;

    #[test]
    fn a_fresh_key_bursts_exactly_its_limit_then_waits_one_interval() {
        let mut g = Gcra::default();
        let now = 1000 * SEC;
        for i in 0..60 {
            let q = g.try_take(60, 1, now).expect("within the burst");
            assert_eq!(q.remaining, 59 - i);
        }
        let wait = g.try_take(60, 1, now).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(g.try_take(60, 1, now + SEC).is_ok());
    }

    #[test]
    fn tokens_charged_after_the_fact_create_a_debt() {
        let mut g = Gcra::default();
        let now = 10 * SEC;
        g.charge(1000, 1500, now);
        // 1500 tokens at 1000/min: 30 s past the window.
        assert_eq!(g.debt(now), Duration::from_secs(30));
        assert_eq!(g.debt(now + 30 * SEC), Duration::ZERO);
    }

    #[test]
    fn resets_read_like_openai_headers() {
        assert_eq!(reset_string(Duration::ZERO), "0s");
        assert_eq!(reset_string(Duration::from_millis(250)), "250ms");
        assert_eq!(reset_string(Duration::from_millis(1500)), "1.5s");
        assert_eq!(reset_string(Duration::from_secs(1)), "1s");
        assert_eq!(reset_string(Duration::from_secs(360)), "6m0s");
    }

    #[tokio::test]
    async fn concurrency_slots_come_back_when_permits_drop() {
        let limiter = MemoryLimiter::default();
        let limits = KeyLimits {
            max_concurrent: Some(1),
            ..Default::default()
        };
        let (first, _) = limiter.admit("k", limits, None).await.unwrap();
        let refused = limiter.admit("k", limits, None).await.unwrap_err();
        assert_eq!(refused.kind, LimitKind::Concurrency);
        drop(first);
        assert!(limiter.admit("k", limits, None).await.is_ok());
    }
}
