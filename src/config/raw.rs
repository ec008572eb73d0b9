//! The config file exactly as written: serde structs with defaults and no
//! validation. `super::validate` turns a `RawConfig` into a `Config`.
//! Unknown keys are collected by the loader (`serde_ignored`), not here.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub providers: Vec<RawProvider>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub keys: RawKeys,
    #[serde(default)]
    pub routing: RawRouting,
    #[serde(default)]
    pub rate_limit: RawRateLimit,
    pub web_search: Option<RawWebSearch>,
    #[serde(default)]
    pub mcp: RawMcp,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawMcp {
    pub timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub cache_ttl: Option<String>,
    pub max_rounds: Option<u64>,
    pub max_response_bytes: Option<u64>,
    pub max_output_chars: Option<u64>,
    pub allow_private: Option<bool>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    pub allow_request_servers: Option<bool>,
    #[serde(default)]
    pub servers: Vec<RawMcpServer>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawMcpServer {
    pub label: Option<String>,
    pub url: Option<String>,
    /// Header name → the environment variable holding its value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub keys: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawWebSearch {
    pub backend: Option<String>,
    pub url: Option<String>,
    pub api_key_env: Option<String>,
    pub timeout: Option<String>,
    pub max_results: Option<u64>,
    pub price: Option<toml::Value>,
    pub max_searches: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRateLimit {
    pub url: Option<String>,
    pub instances: Option<u64>,
    pub key_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRouting {
    pub circuit_failures: Option<u64>,
    pub circuit_open: Option<String>,
    pub circuit_open_max: Option<String>,
    pub retry_budget_percent: Option<u64>,
    pub retry_budget_min: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawStore {
    pub url: Option<String>,
    pub path: Option<String>,
    pub busy_timeout: Option<String>,
    pub hold_ttl: Option<String>,
    pub sweep_interval: Option<String>,
    pub responses_retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawKeys {
    pub starter_credit: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    pub listen: Option<String>,
    pub body_limit_bytes: Option<u64>,
    pub max_header_bytes: Option<u64>,
    pub max_headers: Option<u64>,
    pub header_read_timeout: Option<String>,
    pub keepalive_interval: Option<String>,
    pub max_stream_duration: Option<String>,
    pub shutdown_grace: Option<String>,
    pub threads: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct RawProvider {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub anthropic_version: Option<String>,
    pub native_responses: Option<bool>,
    pub ca_file: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub total_timeout: Option<String>,
    pub max_attempts: Option<u64>,
    pub backoff_base: Option<String>,
    pub backoff_cap: Option<String>,
    pub retry_after_cap: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawModel {
    pub id: Option<String>,
    pub provider: Option<String>,
    pub upstream: Option<String>,
    pub name: Option<String>,
    pub prompt_price: Option<toml::Value>,
    pub completion_price: Option<toml::Value>,
    pub context_length: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub input_modalities: Option<Vec<String>>,
    pub tools: Option<bool>,
    pub endpoints: Option<Vec<RawEndpoint>>,
}

#[derive(Debug, Deserialize)]
pub struct RawEndpoint {
    pub provider: Option<String>,
    pub upstream: Option<String>,
    pub priority: Option<u64>,
    pub weight: Option<u64>,
}
