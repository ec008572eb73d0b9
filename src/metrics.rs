//! Prometheus metrics. The `metrics` facade is process-wide, so there is
//! one recorder per process, installed the first time a gateway is built;
//! `GET /metrics` (admin only) renders it. Every metric the gateway emits
//! is named here, with the helpers the rest of the code calls.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
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

/// A request ended (its response body finished or the client left).
pub fn request_finished(model: &str, provider: &str, status: u16, took: Duration) {
    let labels = [
        ("model", model.to_string()),
        ("provider", provider.to_string()),
        ("status", status.to_string()),
    ];
    counter!("mume_requests_total", &labels).increment(1);
    histogram!("mume_request_duration_seconds", "model" => model.to_string())
        .record(took.as_secs_f64());
}

/// A stream's first content was ready to go to the client.
pub fn first_token(model: &str, took: Duration) {
    histogram!("mume_time_to_first_token_seconds", "model" => model.to_string())
        .record(took.as_secs_f64());
}

/// A request was settled: its tokens and what it cost.
pub fn settled(model: &str, prompt_tokens: u64, completion_tokens: u64, cost_nano_usd: i64) {
    let model = model.to_string();
    counter!("mume_tokens_total", "model" => model.clone(), "kind" => "prompt")
        .increment(prompt_tokens);
    counter!("mume_tokens_total", "model" => model.clone(), "kind" => "completion")
        .increment(completion_tokens);
    counter!("mume_cost_nano_usd_total", "model" => model)
        .increment(u64::try_from(cost_nano_usd).unwrap_or(0));
}

/// One upstream attempt and how it ended (`ok`, or a short reason).
pub fn attempt(provider: &str, outcome: &str) {
    counter!("mume_upstream_attempts_total", "provider" => provider.to_string(), "outcome" => outcome.to_string())
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
