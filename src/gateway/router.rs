//! Which endpoint serves a request, and what is known about their health.
//!
//! - `Router::plan` orders the endpoints of the requested model and of its
//!   fallback models: by priority (lower first), then by a weighted random
//!   draw within a priority, filtered by the request's provider
//!   preferences.
//! - Every endpoint has a circuit breaker: `circuit_failures` consecutive
//!   failures open it for `circuit_open`, doubling each time it reopens
//!   (up to `circuit_open_max`); when that time is up, one request probes
//!   it (half-open) and its outcome closes or reopens the circuit.
//! - The retry budget allows retries up to a percentage of the requests of
//!   the last few seconds (or a small minimum), so a failing upstream
//!   cannot multiply the load.
//! - `backoff` is exponential with full jitter.
//!
//! Time is tokio's, so tests can pause it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngExt;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config::{EndpointConfig, ModelConfig, RetryPolicy, RoutingConfig};

/// One endpoint of one model, as the attempt loop uses it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub model: Arc<ModelConfig>,
    /// Which of `model.endpoints`.
    index: usize,
}

impl Candidate {
    pub fn endpoint(&self) -> &EndpointConfig {
        &self.model.endpoints[self.index]
    }
}

/// The request's `provider` preferences (OpenRouter's names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderPrefs {
    /// Providers to try first, in this order.
    pub order: Vec<String>,
    /// Only these providers.
    pub only: Option<Vec<String>>,
    /// Never these providers.
    pub ignore: Vec<String>,
    /// `false`: only the providers in `order` (or, without an order, only
    /// the first endpoint of each model).
    pub allow_fallbacks: bool,
}

impl ProviderPrefs {
    pub fn any() -> Self {
        Self {
            allow_fallbacks: true,
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed,
    Open {
        until: Instant,
    },
    /// The open time is up and one probe is in flight since then. A probe
    /// that never reports (its client left) is replaced after
    /// `circuit_open`.
    Probing {
        since: Instant,
    },
}

#[derive(Debug, Clone, Copy)]
struct Health {
    circuit: Circuit,
    consecutive_failures: u32,
    /// Times the circuit opened since it was last closed by a success.
    openings: u32,
    successes: u64,
    failures: u64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            circuit: Circuit::Closed,
            consecutive_failures: 0,
            openings: 0,
            successes: 0,
            failures: 0,
        }
    }
}

/// Retries allowed within a window: at most `percent`% of the window's
/// requests, or `min` if that is more. The window restarts every
/// `BUDGET_WINDOW`.
#[derive(Debug)]
struct RetryBudget {
    started: Instant,
    requests: u64,
    retries: u64,
    percent: u64,
    min: u64,
}

const BUDGET_WINDOW: Duration = Duration::from_secs(10);

impl RetryBudget {
    fn roll(&mut self) {
        if self.started.elapsed() >= BUDGET_WINDOW {
            self.started = Instant::now();
            self.requests = 0;
            self.retries = 0;
        }
    }
}

pub struct Router {
    config: RoutingConfig,
    health: Mutex<HashMap<(String, String), Health>>,
    budget: Mutex<RetryBudget>,
}

type Key = (String, String);

fn key_of(e: &EndpointConfig) -> Key {
    (e.provider.clone(), e.upstream.clone())
}

impl Router {
    pub fn new(config: RoutingConfig) -> Self {
        Self {
            config,
            health: Mutex::new(HashMap::new()),
            budget: Mutex::new(RetryBudget {
                started: Instant::now(),
                requests: 0,
                retries: 0,
                percent: u64::from(config.retry_budget_percent),
                min: u64::from(config.retry_budget_min),
            }),
        }
    }

    /// The endpoints to try, in order: the requested model's, then each
    /// fallback model's.
    pub fn plan(&self, models: &[Arc<ModelConfig>], prefs: &ProviderPrefs) -> Vec<Candidate> {
        let mut rng = rand::rng();
        let mut out = Vec::new();
        for model in models {
            let allowed = |e: &EndpointConfig| {
                prefs.only.as_ref().is_none_or(|o| o.contains(&e.provider))
                    && !prefs.ignore.contains(&e.provider)
            };
            // Priority first; within a priority, a weighted random order
            // (each endpoint draws u^(1/weight); largest first).
            let mut keyed: Vec<(u32, f64, usize)> = model
                .endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| allowed(e))
                .map(|(i, e)| {
                    let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
                    (e.priority, u.powf(1.0 / f64::from(e.weight)), i)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
            let mut ordered: Vec<usize> = keyed.into_iter().map(|k| k.2).collect();
            if !prefs.order.is_empty() {
                let rank = |i: usize| {
                    let provider = &model.endpoints[i].provider;
                    prefs
                        .order
                        .iter()
                        .position(|p| p == provider)
                        .unwrap_or(usize::MAX)
                };
                ordered.sort_by_key(|i| rank(*i));
                if !prefs.allow_fallbacks {
                    ordered.retain(|i| rank(*i) != usize::MAX);
                }
            } else if !prefs.allow_fallbacks {
                ordered.truncate(1);
            }
            out.extend(ordered.into_iter().map(|index| Candidate {
                model: model.clone(),
                index,
            }));
        }
        out
    }

    /// May this endpoint be tried now? `Err` carries when it may be again.
    pub fn admit(&self, endpoint: &EndpointConfig) -> Result<(), Instant> {
        let now = Instant::now();
        let mut health = self.health.lock().expect("health lock");
        let h = health.entry(key_of(endpoint)).or_default();
        match h.circuit {
            Circuit::Closed => Ok(()),
            Circuit::Open { until } if now >= until => {
                h.circuit = Circuit::Probing { since: now };
                Ok(())
            }
            Circuit::Open { until } => Err(until),
            Circuit::Probing { since } if now - since >= self.config.circuit_open => {
                h.circuit = Circuit::Probing { since: now };
                Ok(())
            }
            // Someone is probing; wait for the verdict.
            Circuit::Probing { since } => Err(since + self.config.circuit_open),
        }
    }

    /// An attempt that made no call (the request could not be sent to this
    /// endpoint): nothing is learned of its health, and a probe it was let
    /// through as is given back, so that the next request probes at once
    /// rather than wait for this one's verdict.
    pub fn no_call(&self, endpoint: &EndpointConfig) {
        let mut health = self.health.lock().expect("health lock");
        if let Some(h) = health.get_mut(&key_of(endpoint)) {
            if let Circuit::Probing { .. } = h.circuit {
                h.circuit = Circuit::Open {
                    until: Instant::now(),
                };
            }
        }
    }

    /// The outcome of an attempt. `healthy` is false for failures that say
    /// the endpoint is in trouble (no connection, timeout, 5xx), true for
    /// any answer that shows it working (including 4xx and 429).
    pub fn record(&self, endpoint: &EndpointConfig, healthy: bool) {
        let now = Instant::now();
        let mut health = self.health.lock().expect("health lock");
        let h = health.entry(key_of(endpoint)).or_default();
        if healthy {
            if h.circuit != Circuit::Closed {
                crate::metrics::circuit(&endpoint.provider, &endpoint.upstream, false);
            }
            h.successes += 1;
            *h = Health {
                successes: h.successes,
                failures: h.failures,
                ..Health::default()
            };
            return;
        }
        h.failures += 1;
        h.consecutive_failures += 1;
        let reopen = matches!(h.circuit, Circuit::Probing { .. });
        if reopen || h.consecutive_failures >= self.config.circuit_failures {
            let factor = 1u32 << h.openings.min(16);
            let open_for = (self.config.circuit_open * factor).min(self.config.circuit_open_max);
            h.openings += 1;
            h.circuit = Circuit::Open {
                until: now + open_for,
            };
            crate::metrics::circuit(&endpoint.provider, &endpoint.upstream, true);
            tracing::warn!(provider = %endpoint.provider, upstream = %endpoint.upstream, open_for = ?open_for, "circuit opened");
        }
    }

    /// A request arrived: it widens the retry budget.
    pub fn on_request(&self) {
        let mut b = self.budget.lock().expect("budget lock");
        b.roll();
        b.requests += 1;
    }

    /// Takes one retry from the budget, if there is one left.
    pub fn take_retry(&self) -> bool {
        let mut b = self.budget.lock().expect("budget lock");
        b.roll();
        let allowed = (b.requests * b.percent / 100).max(b.min);
        if b.retries < allowed {
            b.retries += 1;
            true
        } else {
            false
        }
    }

    /// Every endpoint the router has seen, for the admin.
    pub fn snapshot(&self, models: &[Arc<ModelConfig>]) -> Value {
        let now = Instant::now();
        let health = self.health.lock().expect("health lock");
        let mut rows = Vec::new();
        for model in models {
            for e in &model.endpoints {
                let h = health.get(&key_of(e)).copied().unwrap_or_default();
                let (state, retry_in) = match h.circuit {
                    Circuit::Closed => ("closed", None),
                    Circuit::Open { until } if until > now => {
                        ("open", Some((until - now).as_secs_f64()))
                    }
                    Circuit::Open { .. } | Circuit::Probing { .. } => ("half_open", None),
                };
                rows.push(json!({
                    "model": model.id,
                    "provider": e.provider,
                    "upstream": e.upstream,
                    "priority": e.priority,
                    "weight": e.weight,
                    "circuit": state,
                    "retry_in_seconds": retry_in,
                    "consecutive_failures": h.consecutive_failures,
                    "successes": h.successes,
                    "failures": h.failures,
                }));
            }
        }
        json!({ "data": rows })
    }
}

/// The delay before retry number `retry` (1 for the first retry) of an
/// endpoint: uniform in [0, min(cap, base × 2^(retry-1))].
pub fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let ceiling = policy
        .backoff_base
        .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
        .min(policy.backoff_cap);
    let nanos = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing() -> RoutingConfig {
        RoutingConfig {
            circuit_failures: 5,
            circuit_open: Duration::from_secs(30),
            circuit_open_max: Duration::from_secs(600),
            retry_budget_percent: 20,
            retry_budget_min: 10,
        }
    }

    fn endpoint(provider: &str, priority: u32, weight: u32) -> EndpointConfig {
        EndpointConfig {
            provider: provider.into(),
            upstream: "m".into(),
            priority,
            weight,
        }
    }

    fn model(endpoints: Vec<EndpointConfig>) -> Arc<ModelConfig> {
        Arc::new(ModelConfig {
            id: "x/m".into(),
            provider: endpoints[0].provider.clone(),
            endpoints,
            name: "m".into(),
            prompt_price: 0,
            completion_price: 0,
            context_length: None,
            max_output_tokens: None,
            takes_images: true,
            calls_tools: true,
        })
    }

    fn providers(plan: &[Candidate]) -> Vec<&str> {
        plan.iter()
            .map(|c| c.endpoint().provider.as_str())
            .collect()
    }

    #[test]
    fn priority_first_then_weight() {
        let router = Router::new(routing());
        let m = model(vec![
            endpoint("backup", 2, 1),
            endpoint("a", 1, 9),
            endpoint("b", 1, 1),
        ]);
        let mut a_first = 0;
        for _ in 0..1000 {
            let plan = router.plan(std::slice::from_ref(&m), &ProviderPrefs::any());
            assert_eq!(plan[2].endpoint().provider, "backup");
            if plan[0].endpoint().provider == "a" {
                a_first += 1;
            }
        }
        // Weight 9 against 1: "a" leads about 90% of the time.
        assert!((820..=970).contains(&a_first), "{a_first}");
    }

    #[test]
    fn provider_preferences_filter_and_order() {
        let router = Router::new(routing());
        let m = model(vec![
            endpoint("a", 1, 1),
            endpoint("b", 2, 1),
            endpoint("c", 3, 1),
        ]);
        let plan = |prefs: ProviderPrefs| {
            providers(&router.plan(std::slice::from_ref(&m), &prefs)).join(",")
        };
        assert_eq!(plan(ProviderPrefs::any()), "a,b,c");
        let order = |o: &[&str], fallbacks: bool| ProviderPrefs {
            order: o.iter().map(|s| s.to_string()).collect(),
            allow_fallbacks: fallbacks,
            ..ProviderPrefs::default()
        };
        assert_eq!(plan(order(&["c"], true)), "c,a,b");
        assert_eq!(plan(order(&["c", "b"], false)), "c,b");
        assert_eq!(
            plan(ProviderPrefs {
                ignore: vec!["a".into()],
                ..ProviderPrefs::any()
            }),
            "b,c"
        );
        assert_eq!(
            plan(ProviderPrefs {
                only: Some(vec!["b".into()]),
                ..ProviderPrefs::any()
            }),
            "b"
        );
        assert_eq!(
            plan(ProviderPrefs {
                allow_fallbacks: false,
                ..ProviderPrefs::default()
            }),
            "a"
        );
    }

    /// UF-13: five failures open the circuit for 30 s; the probe after that
    /// reopens it for twice as long if it fails, and a success closes it.
    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_made_no_call_neither_closes_nor_holds_a_circuit() {
        let router = Router::new(routing());
        let e = endpoint("a", 1, 1);
        for _ in 0..5 {
            router.record(&e, false);
        }
        assert!(router.admit(&e).is_err(), "open");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(router.admit(&e).is_ok(), "the probe");
        router.no_call(&e);
        // Not closed: the next request probes at once, and one more
        // failure reopens the circuit for twice as long.
        assert!(router.admit(&e).is_ok(), "the probe was given back");
        assert!(router.admit(&e).is_err(), "still one probe at a time");
        router.record(&e, false);
        let until = router.admit(&e).unwrap_err();
        assert_eq!(until - Instant::now(), Duration::from_secs(60));
        // On a closed circuit it changes nothing.
        let closed = endpoint("b", 1, 1);
        router.no_call(&closed);
        assert!(router.admit(&closed).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn circuit_opens_probes_doubles_and_closes() {
        let router = Router::new(routing());
        let e = endpoint("a", 1, 1);
        for _ in 0..4 {
            assert!(router.admit(&e).is_ok());
            router.record(&e, false);
        }
        assert!(router.admit(&e).is_ok(), "four failures keep it closed");
        router.record(&e, false);
        let until = router.admit(&e).unwrap_err();
        assert_eq!(until - Instant::now(), Duration::from_secs(30));

        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(router.admit(&e).is_ok(), "one probe");
        assert!(router.admit(&e).is_err(), "only one probe at a time");
        router.record(&e, false);
        let until = router.admit(&e).unwrap_err();
        assert_eq!(until - Instant::now(), Duration::from_secs(60), "doubled");

        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(router.admit(&e).is_ok());
        router.record(&e, true);
        assert!(router.admit(&e).is_ok(), "closed after a good probe");
        for _ in 0..4 {
            router.record(&e, false);
        }
        assert!(router.admit(&e).is_ok(), "the count started again");

        // A probe that never reports is replaced after circuit_open.
        router.record(&e, false);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(router.admit(&e).is_ok(), "a probe");
        assert!(router.admit(&e).is_err());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(
            router.admit(&e).is_ok(),
            "another probe: the first never reported"
        );
    }

    /// UF-12: under a storm, retries stay within 20% of requests plus the
    /// floor.
    #[test]
    fn the_retry_budget_caps_retries() {
        let router = Router::new(routing());
        let mut retries = 0;
        for _ in 0..1000 {
            router.on_request();
            if router.take_retry() {
                retries += 1;
            }
            // Every request wants two more retries.
            if router.take_retry() {
                retries += 1;
            }
        }
        assert_eq!(retries, 200);
    }

    #[test]
    fn backoff_is_jittered_under_an_exponential_cap() {
        let policy = RetryPolicy {
            max_attempts: 5,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(500),
            retry_after_cap: Duration::from_secs(5),
        };
        for (retry, ceiling) in [(1, 100), (2, 200), (3, 400), (4, 500), (9, 500)] {
            let delays: Vec<Duration> = (0..200).map(|_| backoff(&policy, retry)).collect();
            assert!(delays.iter().all(|d| *d <= Duration::from_millis(ceiling)));
            assert!(delays
                .iter()
                .any(|d| *d > Duration::from_millis(ceiling / 2)));
            assert!(delays
                .iter()
                .any(|d| *d < Duration::from_millis(ceiling / 2)));
        }
    }
}
