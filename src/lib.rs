//! Mume Gateway: an OpenAI-compatible LLM gateway.
//!
//! Requests flow one way: `http` (axum only) → `gateway` (domain) →
//! `providers`. Nothing depends on `http`; the domain never sees an axum
//! type.
//!
//! - `cli`: clap structs. `main.rs` dispatches.
//! - `config`: TOML → validated `Config`, every problem reported at once.
//! - `app`: the router and its one documented layer stack.
//! - `server`: the listener loop (TCP_NODELAY, header timeout, graceful shutdown).
//! - `state`: `AppState`, built once from config.
//! - `middleware`: request id + access log, header limits.
//! - `http`: thin handlers, the error envelope, body extraction, SSE responses.
//! - `gateway`: the domain: request parsing, model catalog, the chat flow,
//!   the stream relay, the error vocabulary, the per-request record.
//! - `providers`: the `Provider` trait, the OpenAI-compatible adapter, the mock.
//! - `accounts`: API keys (format, authentication, admin operations).
//! - `billing`: credit holds and settlement; `ratelimit`: per-key limits.
//! - `store`: persistence behind one trait per concern (SQLite by default,
//!   Postgres for several instances).
//! - `search`: web search backends and citations.
//! - `mcp`: the MCP client (rmcp; the SSRF guard).
//! - `dates`: calendar dates from Unix time.
//! - `telemetry`: logging setup.

pub mod accounts;
pub mod app;
pub mod billing;
pub mod cli;
pub mod config;
pub mod dates;
pub mod gateway;
pub mod http;
pub mod keys_cli;
pub mod mcp;
pub mod metrics;
pub mod middleware;
pub mod providers;
pub mod ratelimit;
pub mod search;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;

/// Makes ring the process's default rustls crypto provider. Both ring and
/// aws-lc-rs are compiled in (ours is ring; rmcp's reqwest brings
/// aws-lc-rs), so rustls cannot choose one by itself, and a library that
/// builds its TLS config from the default (redis for `rediss://`, sqlx for
/// `sslmode=verify-ca`) would panic at its first connection. Called before
/// anything connects; later calls do nothing.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
