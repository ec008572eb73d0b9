//! Prometheus metrics. The `metrics` facade is process-wide, so there is
//! one recorder per process, installed the first time a gateway is built;
//! `GET /metrics` (admin only) renders it. Every metric the gateway emits
//! is named here, with the helpers the rest of the code calls.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets for latencies, in seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder (once per process).
pub fn install() {
    handle();
}

fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .map_err(|e| e.to_string())
                .and_then(|b| b.install_recorder().map_err(|e| e.to_string()));
            match installed {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics are off: the recorder could not be installed");
                    None
                }
            }
        })
        .as_ref()
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    match handle() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    }
}

/// Registered handles, so that the per-request metrics cost an atomic add
/// each, not a registry lookup with its label strings. Keyed by the
/// label values; bounded (past `MAX_CACHED` label sets, handles are
/// looked up in the registry each time, as if uncached).
#[derive(Default)]
struct Handles {
    /// (model) → request duration, prompt tokens, completion tokens, cost.
    models: HashMap<String, [Handle; 4]>,
    /// model → (provider, status) → requests.
    requests: HashMap<String, Vec<(String, u16, Counter)>>,
    /// provider → outcome → upstream attempts.
    attempts: HashMap<String, Vec<(String, Counter)>>,
    /// How many handles are kept.
    kept: usize,
}

#[derive(Clone)]
enum Handle {
    Counter(Counter),
    Histogram(Histogram),
}

const MAX_CACHED: usize = 4096;

static HANDLES: OnceLock<RwLock<Handles>> = OnceLock::new();

/// The cached value for `find`, or `make`'s, cached if there is room.
fn cached<T: Clone>(
    find: impl Fn(&Handles) -> Option<T>,
    make: impl FnOnce() -> T,
    keep: impl FnOnce(&mut Handles, T),
) -> T {
    let lock = HANDLES.get_or_init(Default::default);
    if let Some(found) = find(&lock.read().unwrap_or_else(|e| e.into_inner())) {
        return found;
    }
    let made = make();
    let mut handles = lock.write().unwrap_or_else(|e| e.into_inner());
    if handles.kept < MAX_CACHED {
        handles.kept += 1;
        keep(&mut handles, made.clone());
    }
    made
}

fn model_handles(model: &str) -> [Handle; 4] {
    cached(
        |h| h.models.get(model).cloned(),
        || {
            let m = model.to_string();
            [
                Handle::Histogram(
                    histogram!("mume_request_duration_seconds", "model" => m.clone()),
                ),
                Handle::Counter(
                    counter!("mume_tokens_total", "model" => m.clone(), "kind" => "prompt"),
                ),
                Handle::Counter(
                    counter!("mume_tokens_total", "model" => m.clone(), "kind" => "completion"),
                ),
                Handle::Counter(counter!("mume_cost_nano_usd_total", "model" => m)),
            ]
        },
        |h, made| {
            h.models.insert(model.to_string(), made);
        },
    )
}

fn add(handle: &Handle, n: u64) {
    if let Handle::Counter(c) = handle {
        c.increment(n);
    }
}

/// A request ended (its response body finished or the client left).
pub fn request_finished(model: &str, provider: &str, status: u16, took: Duration) {
    let requests = cached(
        |h| {
            h.requests
                .get(model)?
                .iter()
                .find(|(p, s, _)| p == provider && *s == status)
                .map(|(_, _, c)| c.clone())
        },
        || {
            let labels = [
                ("model", model.to_string()),
                ("provider", provider.to_string()),
                ("status", status.to_string()),
            ];
            counter!("mume_requests_total", &labels)
        },
        |h, made| {
            h.requests.entry(model.to_string()).or_default().push((
                provider.to_string(),
                status,
                made,
            ));
        },
    );
    requests.increment(1);
    if let Handle::Histogram(duration) = &model_handles(model)[0] {
        duration.record(took.as_secs_f64());
    }
}

/// A stream's first content was ready to go to the client.
pub fn first_token(model: &str, took: Duration) {
    histogram!("mume_time_to_first_token_seconds", "model" => model.to_string())
        .record(took.as_secs_f64());
}

/// A request was settled: its tokens and what it cost.
pub fn settled(model: &str, prompt_tokens: u64, completion_tokens: u64, cost_nano_usd: i64) {
    let [_, prompt, completion, cost] = model_handles(model);
    add(&prompt, prompt_tokens);
    add(&completion, completion_tokens);
    add(&cost, u64::try_from(cost_nano_usd).unwrap_or(0));
}

/// One upstream attempt and how it ended (`ok`, or a short reason).
pub fn attempt(provider: &str, outcome: &str) {
    cached(
        |h| {
            h.attempts
                .get(provider)?
                .iter()
                .find(|(o, _)| o == outcome)
                .map(|(_, c)| c.clone())
        },
        || {
            counter!("mume_upstream_attempts_total", "provider" => provider.to_string(), "outcome" => outcome.to_string())
        },
        |h, made| {
            h.attempts
                .entry(provider.to_string())
                .or_default()
                .push((outcome.to_string(), made));
        },
    )
    .increment(1);
}

/// An attempt that repeated an earlier one (a retry of the same or of
/// another endpoint).
pub fn retry(provider: &str) {
    counter!("mume_retries_total", "provider" => provider.to_string()).increment(1);
}

/// A web search the gateway ran (`ok` or `error`).
pub fn search(backend: &'static str, outcome: &'static str) {
    counter!("mume_web_searches_total", "backend" => backend, "outcome" => outcome).increment(1);
}

/// An MCP operation the gateway ran (`list` or `call`; `ok` or `error`).
pub fn mcp(op: &'static str, outcome: &'static str) {
    counter!("mume_mcp_operations_total", "op" => op, "outcome" => outcome).increment(1);
}

/// A fallback model from `models` was tried.
pub fn fallback(model: &str) {
    counter!("mume_fallbacks_total", "model" => model.to_string()).increment(1);
}

/// An endpoint's circuit opened (true) or closed (false).
pub fn circuit(provider: &str, upstream: &str, open: bool) {
    gauge!("mume_circuit_open", "provider" => provider.to_string(), "upstream" => upstream.to_string())
        .set(if open { 1.0 } else { 0.0 });
}

/// A request refused before going upstream: `rate_limit` or `credits`.
pub fn rejected(reason: &'static str) {
    counter!("mume_rejections_total", "reason" => reason).increment(1);
}
