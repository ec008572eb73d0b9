//! `[mcp]`: the gateway as an MCP client (time limits, caps, which
//! addresses it may reach) and the MCP servers the operator registers.

use std::time::Duration;

use super::raw::RawMcp;
use super::Checker;
use crate::mcp::valid_label;

/// How the gateway runs MCP tools for requests.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// One connection and one list or call.
    pub timeout: Duration,
    /// All MCP work of one request (listing and calls, not model rounds).
    pub request_timeout: Duration,
    /// How long a server's tool list is reused.
    pub cache_ttl: Duration,
    /// The most model rounds one request may run.
    pub max_rounds: u32,
    /// The most bytes one message from a server may have.
    pub max_response_bytes: usize,
    /// The most characters of one tool output given to the model.
    pub max_output_chars: usize,
    /// Reach loopback and private addresses (every server is trusted).
    pub allow_private: bool,
    /// Hosts reached whatever they resolve to.
    pub allowed_hosts: Vec<String>,
    /// Whether requests may name servers by `server_url`, or only the
    /// registered ones by label.
    pub allow_request_servers: bool,
    pub servers: Vec<McpServerConfig>,
}

/// A server the operator registers: requests name it by label alone.
#[derive(Debug, Clone)]
pub struct McpServerConfig {
    pub label: String,
    pub url: String,
    /// Header name → the environment variable holding its value.
    pub headers: Vec<(String, String)>,
    /// Key ids (or patterns such as `*`) that may use it.
    pub keys: Vec<String>,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
            cache_ttl: Duration::from_secs(60),
            max_rounds: 8,
            max_response_bytes: 1 << 20,
            max_output_chars: 20_000,
            allow_private: false,
            allowed_hosts: Vec::new(),
            allow_request_servers: true,
            servers: Vec::new(),
        }
    }
}

pub(super) fn validate(raw: &RawMcp, check: &mut Checker<'_>) -> McpConfig {
    let d = McpConfig::default();
    let mut servers: Vec<McpServerConfig> = Vec::new();
    for (i, s) in raw.servers.iter().enumerate() {
        let at = |k: &str| format!("mcp.servers[{i}].{k}");
        let label = s.label.clone().unwrap_or_default();
        if !valid_label(&label) {
            check.report(
                at("label"),
                format!("{label:?} is not a server label"),
                "use 1 to 64 letters, digits, '_' or '-'",
            );
        } else if servers.iter().any(|o| o.label == label) {
            check.report(
                at("label"),
                format!("{label:?} is registered twice"),
                "give each server a label of its own",
            );
        }
        let url = s.url.clone().unwrap_or_default();
        if reqwest::Url::parse(&url).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
            check.report(
                at("url"),
                format!("{url:?} is not an http(s) URL"),
                "write it like \"https://mcp.example.com/mcp\"",
            );
        }
        let mut headers = Vec::new();
        for (name, env) in &s.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                check.report(
                    at("headers"),
                    format!("{name:?} is not a header name"),
                    "use a header name such as \"Authorization\"",
                );
            }
            check.variable_name(
                &at(&format!("headers.{name}")),
                env,
                "headers = { Authorization = \"DOCS_MCP_AUTHORIZATION\" }",
            );
            headers.push((name.clone(), env.clone()));
        }
        if s.keys.is_empty() {
            check.report(
                at("keys"),
                "no key may use this server",
                "list the key ids that may use it, or [\"*\"] for every key",
            );
        }
        servers.push(McpServerConfig {
            label,
            url,
            headers,
            keys: s.keys.clone(),
        });
    }
    McpConfig {
        timeout: check.duration("mcp.timeout", raw.timeout.as_deref(), d.timeout),
        request_timeout: check.duration(
            "mcp.request_timeout",
            raw.request_timeout.as_deref(),
            d.request_timeout,
        ),
        cache_ttl: check.duration("mcp.cache_ttl", raw.cache_ttl.as_deref(), d.cache_ttl),
        max_rounds: check.bounded(
            "mcp.max_rounds",
            raw.max_rounds,
            u64::from(d.max_rounds),
            1,
            64,
        ) as u32,
        max_response_bytes: check.bounded(
            "mcp.max_response_bytes",
            raw.max_response_bytes,
            d.max_response_bytes as u64,
            1024,
            64 << 20,
        ) as usize,
        max_output_chars: check.bounded(
            "mcp.max_output_chars",
            raw.max_output_chars,
            d.max_output_chars as u64,
            100,
            1_000_000,
        ) as usize,
        allow_private: raw.allow_private.unwrap_or(false),
        allowed_hosts: raw
            .allowed_hosts
            .iter()
            .map(|h| h.trim().trim_matches(['[', ']']).to_ascii_lowercase())
            .collect(),
        allow_request_servers: raw.allow_request_servers.unwrap_or(true),
        servers,
    }
}
