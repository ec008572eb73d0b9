//! Configuration: load a TOML file (or the embedded default), validate it
//! into typed settings, and report *every* problem at once.
//!
//! `raw` holds the serde view of the file; this module turns it into
//! `Config`. Secrets are never in the file: a provider names the environment
//! variable holding its key, and the key is read when providers are built.

mod mcp;
mod money;
mod raw;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use mcp::{McpConfig, McpServerConfig};
pub use money::{parse_signed_usd, parse_usd, per_token_usd_string, usd_string, NanoUsd};
use raw::{
    RawConfig, RawEndpoint, RawKeys, RawModel, RawProvider, RawRateLimit, RawRouting, RawServer,
    RawStore, RawWebSearch,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The default configuration, compiled into the binary.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/gateway.toml");
const EMBEDDED_NAME: &str = "<embedded config/gateway.toml>";

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from (a path, or the embedded default).
    pub source: String,
    pub server: ServerConfig,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelConfig>,
    pub store: StoreConfig,
    pub keys: KeysConfig,
    pub routing: RoutingConfig,
    pub rate_limit: RateLimitConfig,
    /// The search backend for `web_search`; `None`: web search is off.
    pub web_search: Option<crate::search::SearchConfig>,
    /// MCP tools run by the gateway.
    pub mcp: McpConfig,
}

/// Where rate limits live.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// A Redis URL: limits shared by every instance. `None`: in-process.
    /// `MUME_REDIS_URL` overrides it.
    pub url: Option<String>,
    /// How many instances share the limits: while Redis is unreachable
    /// each enforces limit ÷ instances on its own.
    pub instances: u32,
    /// Prefix of every Redis key the limiter writes.
    pub key_prefix: String,
}

/// Health and retry rules shared by every endpoint.
#[derive(Debug, Clone, Copy)]
pub struct RoutingConfig {
    /// Consecutive failures that open an endpoint's circuit.
    pub circuit_failures: u32,
    /// How long a circuit first stays open; it doubles each time it opens
    /// again without a success in between, up to `circuit_open_max`.
    pub circuit_open: Duration,
    pub circuit_open_max: Duration,
    /// Retries allowed, as a percentage of requests (the retry budget).
    pub retry_budget_percent: u32,
    /// Retries always allowed, whatever the traffic.
    pub retry_budget_min: u32,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// A Postgres URL: the shared store of several instances. `None`: the
    /// embedded SQLite file. `MUME_DATABASE_URL` overrides it.
    pub url: Option<String>,
    /// The SQLite database file, created on first start.
    pub path: std::path::PathBuf,
    pub busy_timeout: Duration,
    /// A hold still open this long after it was placed belongs to a
    /// process that died; the sweeper resolves it.
    pub hold_ttl: Duration,
    pub sweep_interval: Duration,
    /// How long stored responses are kept.
    pub responses_retention: Duration,
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    /// Credit of the key created on first start.
    pub starter_credit: NanoUsd,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub body_limit_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
    pub keepalive_interval: Duration,
    pub max_stream_duration: Duration,
    pub shutdown_grace: Duration,
    /// Serving threads, each with a single-threaded runtime of its own.
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Mock,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// Name of the environment variable holding the key, never the key.
    pub api_key_env: Option<String>,
    pub headers: Vec<(String, String)>,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    /// The `anthropic-version` header (kind anthropic only).
    pub anthropic_version: Option<String>,
    /// The server serves the Responses API itself (kind openai only).
    pub native_responses: bool,
    /// Certificate authorities trusted for this provider's TLS besides the
    /// public roots (`ca_file`, read at start).
    pub ca_certificates: Vec<CertificateDer<'static>>,
}

/// How an endpoint of this provider is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts on one endpoint within one request, the first included.
    pub max_attempts: u32,
    /// Backoff before retry n: a uniform random delay in
    /// [0, min(cap, base × 2^(n-1))] ("full jitter").
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// An upstream `Retry-After` up to this long is waited out; a longer
    /// one moves the request to another endpoint.
    pub retry_after_cap: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub id: String,
    /// The provider of the first endpoint (shown as `owned_by`).
    pub provider: String,
    /// Who serves the model; at least one.
    pub endpoints: Vec<EndpointConfig>,
    pub name: String,
    /// Nano-USD per million prompt tokens.
    pub prompt_price: NanoUsd,
    /// Nano-USD per million completion tokens.
    pub completion_price: NanoUsd,
    pub context_length: Option<u64>,
    pub max_output_tokens: Option<u64>,
    /// The model reads images as well as text.
    pub takes_images: bool,
    /// The model can call functions (tools). Web search offers such a model
    /// a search function; any other model gets the results in its prompt.
    pub calls_tools: bool,
}

/// One provider serving a model under its own model name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    pub provider: String,
    pub upstream: String,
    /// Lower is tried first.
    pub priority: u32,
    /// Share of traffic among endpoints of the same priority.
    pub weight: u32,
}

/// One thing wrong in a config file, phrased so that a person can fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub problem: String,
    pub fix: String,
}

/// Every problem found in one config file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {n} problem{} found",
            self.source_name,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(
                f,
                "  {}: {}: {} ({})",
                self.source_name, p.key, p.problem, p.fix
            )?;
        }
        Ok(())
    }
}

/// Loads the file at `path`, or the embedded default when `path` is `None`.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        None => parse(EMBEDDED_DEFAULT, EMBEDDED_NAME),
        Some(path) => {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                source_name: name.clone(),
                problems: vec![ConfigProblem {
                    key: "(file)".into(),
                    problem: format!("cannot be read: {e}"),
                    fix: "check the path given by --config or MUME_CONFIG".into(),
                }],
            })?;
            parse(&text, &name)
        }
    }
}

/// Parses and validates config text. `source_name` only labels messages.
pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
    let fail = |problems| ConfigError {
        source_name: source_name.to_string(),
        problems,
    };
    let mut problems = Vec::new();
    let deserializer = toml::Deserializer::new(text);
    let raw: RawConfig = serde_ignored::deserialize(deserializer, |path| {
        problems.push(ConfigProblem {
            key: path.to_string(),
            problem: "unknown key".into(),
            fix: "remove it or correct its spelling; config/gateway.toml lists every key".into(),
        });
    })
    .map_err(|e| {
        fail(vec![ConfigProblem {
            key: "(syntax)".into(),
            problem: e.to_string().trim().replace('\n', " "),
            fix: "fix the TOML at the position shown".into(),
        }])
    })?;
    let config = validate(raw, source_name, &mut problems);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(fail(problems))
    }
}

/// The longest any duration may be: 10 years (humantime's, 365.25 days
/// each). Longer ones overflow the millisecond clock arithmetic of holds
/// and retention, and `Instant` deadlines.
const MAX_DURATION: Duration = Duration::from_secs(10 * 31_557_600);

/// The longest `store.busy_timeout`: SQLite takes it in milliseconds as an
/// `i32` (about 24 days), and a writer should never wait anywhere near that.
const MAX_BUSY_TIMEOUT: Duration = Duration::from_secs(3600);

struct Checker<'a> {
    problems: &'a mut Vec<ConfigProblem>,
}

impl Checker<'_> {
    fn report(
        &mut self,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.problems.push(ConfigProblem {
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        self.duration_within(key, value, default, MAX_DURATION)
    }

    /// A duration longer than zero and at most `max`.
    fn duration_within(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: Duration,
        max: Duration,
    ) -> Duration {
        let Some(text) = value else { return default };
        match humantime::parse_duration(text) {
            Ok(d) if d > max => {
                let max = humantime::format_duration(max);
                self.report(
                    key,
                    format!("{text:?} is longer than the most allowed, {max}"),
                    format!("use a value of at most \"{max}\""),
                );
                default
            }
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.report(
                    key,
                    "must be longer than zero",
                    "use a value such as \"10s\"",
                );
                default
            }
            Err(e) => {
                self.report(
                    key,
                    format!("{text:?} is not a duration ({e})"),
                    "write a duration such as \"500ms\", \"10s\" or \"2m\"",
                );
                default
            }
        }
    }

    /// A key that names the environment variable holding a secret. The
    /// value is never repeated in the message: what does not look like a
    /// variable's name is most likely the secret itself. `example` shows
    /// the key written right.
    fn variable_name(&mut self, key: &str, name: &str, example: &str) {
        if !is_variable_name(name) {
            self.report(
                key,
                "must be the NAME of an environment variable (upper-case letters, digits and '_', not starting with a digit, at most 64 characters), not a secret; the value is not shown",
                format!("write e.g. {example} and export the secret in that variable"),
            );
        }
    }

    fn bounded(&mut self, key: &str, value: Option<u64>, default: u64, min: u64, max: u64) -> u64 {
        match value {
            None => default,
            Some(v) if (min..=max).contains(&v) => v,
            Some(v) => {
                self.report(
                    key,
                    format!("{v} is out of range"),
                    format!("use a value from {min} to {max}"),
                );
                default
            }
        }
    }

    /// A USD amount (not a price): "1.00".
    fn amount(&mut self, key: &str, value: &toml::Value) -> NanoUsd {
        self.usd(key, value, "USD, e.g. \"1.00\"")
    }

    fn price(&mut self, key: &str, value: Option<&toml::Value>) -> NanoUsd {
        value.map_or(0, |v| {
            self.usd(key, v, "USD per million tokens, e.g. \"0.40\"")
        })
    }

    /// A decimal USD value written as a string (or a whole number), kept
    /// exact; `what` names the unit in the fix.
    fn usd(&mut self, key: &str, value: &toml::Value, what: &str) -> NanoUsd {
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            _ => {
                self.report(
                    key,
                    "must be a string or a whole number",
                    format!("write {what} as a string, so it stays exact"),
                );
                return 0;
            }
        };
        parse_usd(&text).unwrap_or_else(|e| {
            self.report(key, e, format!("write {what}"));
            0
        })
    }
}

/// Whether `name` is a conventional environment variable name, as
/// `^[A-Z_][A-Z0-9_]{0,63}$`. Provider keys (`gsk_…`, hex, mixed-case
/// tokens) are not, so a key pasted where its variable's name belongs is
/// refused before it can be repeated in a log or an error message.
fn is_variable_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=64).contains(&bytes.len())
        && !bytes[0].is_ascii_digit()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn validate(raw: RawConfig, source_name: &str, problems: &mut Vec<ConfigProblem>) -> Config {
    let mut check = Checker { problems };
    let server = validate_server(&raw.server, &mut check);
    let providers: Vec<ProviderConfig> = raw
        .providers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| validate_provider(i, p, &mut check))
        .collect();
    let mut seen = HashSet::new();
    for p in &providers {
        if !seen.insert(p.name.clone()) {
            check.report(
                "providers.name",
                format!("provider {:?} is defined twice", p.name),
                "give each provider a unique name",
            );
        }
    }
    let kinds: BTreeMap<&str, ProviderKind> = providers
        .iter()
        .map(|p| (p.name.as_str(), p.kind))
        .collect();
    let mut model_ids = HashSet::new();
    let mut models = Vec::new();
    for (i, raw_model) in raw.models.iter().enumerate() {
        let Some(model) = validate_model(i, raw_model, &kinds, &mut check) else {
            continue;
        };
        if model_ids.insert(model.id.clone()) {
            models.push(model);
        } else {
            check.report(
                format!("models[{i}].id"),
                format!("model {:?} is defined twice", model.id),
                "give each model a unique id",
            );
        }
    }
    let store = validate_store(&raw.store, &server, &providers, &mut check);
    let keys = validate_keys(&raw.keys, &mut check);
    let routing = validate_routing(&raw.routing, &mut check);
    let rate_limit = validate_rate_limit(&raw.rate_limit, &mut check);
    let web_search = raw
        .web_search
        .as_ref()
        .map(|w| validate_web_search(w, &mut check));
    Config {
        source: source_name.to_string(),
        server,
        providers,
        models,
        store,
        keys,
        routing,
        rate_limit,
        web_search,
        mcp: mcp::validate(&raw.mcp, &mut check),
    }
}

fn validate_web_search(raw: &RawWebSearch, check: &mut Checker<'_>) -> crate::search::SearchConfig {
    use crate::search::SearchBackendKind as Kind;
    let (backend, default_url) = match raw.backend.as_deref().unwrap_or("searxng") {
        "searxng" => (Kind::Searxng, None),
        "brave" => (Kind::Brave, Some("https://api.search.brave.com")),
        "tavily" => (Kind::Tavily, Some("https://api.tavily.com")),
        "exa" => (Kind::Exa, Some("https://api.exa.ai")),
        other => {
            check.report(
                "web_search.backend",
                format!("{other:?} is not a search backend"),
                "use \"searxng\", \"brave\", \"tavily\" or \"exa\"",
            );
            (Kind::Searxng, None)
        }
    };
    let url = match (raw.url.as_deref(), default_url) {
        (Some(u), _) => u.trim_end_matches('/').to_string(),
        (None, Some(d)) => d.to_string(),
        (None, None) => {
            check.report(
                "web_search.url",
                "is required for SearXNG",
                "set it to your SearXNG instance, e.g. \"http://127.0.0.1:8888\" (its JSON format must be enabled)",
            );
            String::new()
        }
    };
    if !url.is_empty()
        && reqwest::Url::parse(&url).map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
    {
        check.report(
            "web_search.url",
            "is not an http(s) URL",
            "write it like \"https://api.tavily.com\"",
        );
    }
    if let Some(var) = &raw.api_key_env {
        check.variable_name(
            "web_search.api_key_env",
            var,
            "api_key_env = \"BRAVE_API_KEY\"",
        );
    }
    if backend != Kind::Searxng && raw.api_key_env.is_none() {
        check.report(
            "web_search.api_key_env",
            "is required for this backend",
            "name the environment variable that holds the backend's API key",
        );
    }
    crate::search::SearchConfig {
        backend,
        url,
        api_key_env: raw.api_key_env.clone(),
        timeout: check.duration(
            "web_search.timeout",
            raw.timeout.as_deref(),
            Duration::from_secs(10),
        ),
        max_results: check.bounded("web_search.max_results", raw.max_results, 5, 1, 20) as usize,
        price: raw.price.as_ref().map_or(0, |v| {
            check.usd("web_search.price", v, "USD per search, e.g. \"0.005\"")
        }),
        max_searches: check.bounded("web_search.max_searches", raw.max_searches, 3, 1, 10) as u32,
    }
}

fn validate_rate_limit(raw: &RawRateLimit, check: &mut Checker<'_>) -> RateLimitConfig {
    let url = raw.url.clone().filter(|u| !u.is_empty());
    if let Some(u) = &url {
        if !u.starts_with("redis://") && !u.starts_with("rediss://") {
            check.report(
                "rate_limit.url",
                "is not a Redis URL",
                "write it as redis://HOST:6379, or remove it to keep limits in-process",
            );
        } else if u.contains('#') {
            check.report(
                "rate_limit.url",
                "has a #fragment (such as #insecure, which would skip the certificate check); none is supported",
                "remove it: a rediss:// server's certificate is checked against the public roots",
            );
        }
    }
    RateLimitConfig {
        url,
        instances: check.bounded("rate_limit.instances", raw.instances, 1, 1, 1000) as u32,
        key_prefix: raw.key_prefix.clone().unwrap_or_else(|| "mume:rl:".into()),
    }
}

fn validate_routing(raw: &RawRouting, check: &mut Checker<'_>) -> RoutingConfig {
    let circuit_open = check.duration(
        "routing.circuit_open",
        raw.circuit_open.as_deref(),
        Duration::from_secs(30),
    );
    let circuit_open_max = check.duration(
        "routing.circuit_open_max",
        raw.circuit_open_max.as_deref(),
        Duration::from_secs(600),
    );
    if circuit_open_max < circuit_open {
        check.report(
            "routing.circuit_open_max",
            "is shorter than circuit_open",
            "make it at least circuit_open",
        );
    }
    RoutingConfig {
        circuit_failures: check.bounded(
            "routing.circuit_failures",
            raw.circuit_failures,
            5,
            1,
            1000,
        ) as u32,
        circuit_open,
        circuit_open_max,
        retry_budget_percent: check.bounded(
            "routing.retry_budget_percent",
            raw.retry_budget_percent,
            20,
            0,
            100,
        ) as u32,
        retry_budget_min: check.bounded(
            "routing.retry_budget_min",
            raw.retry_budget_min,
            10,
            0,
            100_000,
        ) as u32,
    }
}

fn validate_store(
    raw: &RawStore,
    server: &ServerConfig,
    providers: &[ProviderConfig],
    check: &mut Checker<'_>,
) -> StoreConfig {
    let path = raw.path.clone().unwrap_or_else(|| "mume-gateway.db".into());
    if path.trim().is_empty() {
        check.report(
            "store.path",
            "is empty",
            "set a file path such as \"mume-gateway.db\"",
        );
    }
    let url = raw.url.clone().filter(|u| !u.is_empty());
    if let Some(u) = &url {
        if !u.starts_with("postgres://") && !u.starts_with("postgresql://") {
            check.report(
                "store.url",
                "is not a Postgres URL",
                "write it as postgres://USER@HOST:5432/DATABASE, or remove it to use the embedded SQLite file",
            );
        }
    }
    let store = StoreConfig {
        url,
        path: path.into(),
        busy_timeout: check.duration_within(
            "store.busy_timeout",
            raw.busy_timeout.as_deref(),
            Duration::from_secs(2),
            MAX_BUSY_TIMEOUT,
        ),
        hold_ttl: check.duration(
            "store.hold_ttl",
            raw.hold_ttl.as_deref(),
            Duration::from_secs(40 * 60),
        ),
        sweep_interval: check.duration(
            "store.sweep_interval",
            raw.sweep_interval.as_deref(),
            Duration::from_secs(15),
        ),
        responses_retention: check.duration(
            "store.responses_retention",
            raw.responses_retention.as_deref(),
            Duration::from_secs(30 * 24 * 3600),
        ),
    };
    // A hold must outlive the longest request, or the sweeper would settle
    // a request that is still running.
    let longest = longest_request(server, providers);
    if store.hold_ttl <= longest {
        check.report(
            "store.hold_ttl",
            format!("{:?} is not longer than the longest request ({longest:?}: max_stream_duration + first_byte_timeout, or total_timeout)", store.hold_ttl),
            "raise hold_ttl, or lower those limits",
        );
    }
    store
}

/// The longest a request may take, all its attempts, fallbacks and
/// rounds included: a stream's first content and its whole length, or a
/// complete answer. The gateway ends a request at this limit, and a hold
/// (`store.hold_ttl`) must outlive it.
pub fn longest_request(server: &ServerConfig, providers: &[ProviderConfig]) -> Duration {
    let first_byte = providers
        .iter()
        .map(|p| p.timeouts.first_byte)
        .max()
        .unwrap_or_default();
    let total = providers
        .iter()
        .map(|p| p.timeouts.total)
        .max()
        .unwrap_or_default();
    server
        .max_stream_duration
        .saturating_add(first_byte)
        .max(total)
}

fn validate_keys(raw: &RawKeys, check: &mut Checker<'_>) -> KeysConfig {
    let starter_credit = match &raw.starter_credit {
        None => 1_000_000_000,
        Some(value) => check.amount("keys.starter_credit", value),
    };
    KeysConfig { starter_credit }
}

fn validate_server(raw: &RawServer, check: &mut Checker<'_>) -> ServerConfig {
    let listen = raw.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen = listen.parse().unwrap_or_else(|_| {
        check.report(
            "server.listen",
            format!("{listen:?} is not an address"),
            "write HOST:PORT with an IP address, e.g. \"0.0.0.0:8080\"",
        );
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    ServerConfig {
        listen,
        body_limit_bytes: check.bounded(
            "server.body_limit_bytes",
            raw.body_limit_bytes,
            10 << 20,
            1024,
            1 << 30,
        ) as usize,
        max_header_bytes: check.bounded(
            "server.max_header_bytes",
            raw.max_header_bytes,
            16 << 10,
            1024,
            1 << 20,
        ) as usize,
        max_headers: check.bounded("server.max_headers", raw.max_headers, 100, 8, 1000) as usize,
        header_read_timeout: check.duration(
            "server.header_read_timeout",
            raw.header_read_timeout.as_deref(),
            Duration::from_secs(10),
        ),
        keepalive_interval: check.duration(
            "server.keepalive_interval",
            raw.keepalive_interval.as_deref(),
            Duration::from_secs(15),
        ),
        max_stream_duration: check.duration(
            "server.max_stream_duration",
            raw.max_stream_duration.as_deref(),
            Duration::from_secs(30 * 60),
        ),
        shutdown_grace: check.duration(
            "server.shutdown_grace",
            raw.shutdown_grace.as_deref(),
            Duration::from_secs(30),
        ),
        threads: check.bounded(
            "server.threads",
            raw.threads,
            std::thread::available_parallelism().map_or(1, |n| n.get().min(256)) as u64,
            1,
            256,
        ) as usize,
    }
}

fn validate_provider(
    index: usize,
    raw: &RawProvider,
    check: &mut Checker<'_>,
) -> Option<ProviderConfig> {
    let at = |key: &str| format!("providers[{index}].{key}");
    let Some(name) = raw.name.clone().filter(|n| !n.is_empty()) else {
        check.report(
            at("name"),
            "is missing",
            "give the provider a name such as \"openai\"",
        );
        return None;
    };
    if name.contains('/') || name.chars().any(char::is_whitespace) {
        check.report(
            at("name"),
            format!("{name:?} contains '/' or spaces"),
            "use a plain name such as \"openai\"",
        );
    }
    let kind = match raw.kind.as_deref() {
        Some("openai") => ProviderKind::OpenAi,
        Some("anthropic") => ProviderKind::Anthropic,
        Some("mock") => ProviderKind::Mock,
        other => {
            check.report(
                at("kind"),
                match other {
                    Some(k) => format!("{k:?} is not a provider kind"),
                    None => "is missing".into(),
                },
                "use \"openai\" (any OpenAI-compatible server), \"anthropic\" or \"mock\"",
            );
            return None;
        }
    };
    let base_url = match (kind, raw.base_url.as_deref()) {
        (ProviderKind::Mock, None) => String::new(),
        (ProviderKind::Mock, Some(_)) => {
            check.report(
                at("base_url"),
                "a mock provider has no network",
                "remove base_url",
            );
            String::new()
        }
        (ProviderKind::OpenAi, None) => {
            check.report(
                at("base_url"),
                "is missing",
                "set it, e.g. \"https://api.openai.com/v1\"",
            );
            String::new()
        }
        (ProviderKind::Anthropic, None) => {
            check.report(
                at("base_url"),
                "is missing",
                "set it, e.g. \"https://api.anthropic.com/v1\"",
            );
            String::new()
        }
        (ProviderKind::OpenAi | ProviderKind::Anthropic, Some(url)) => {
            match reqwest::Url::parse(url) {
                Ok(u) if !u.username().is_empty() || u.password().is_some() => check.report(
                    at("base_url"),
                    "carries credentials (user:password@), which are never sent",
                    "remove them; give the key in api_key_env, or other credentials in headers",
                ),
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => check.report(
                    at("base_url"),
                    format!("{url:?} is not an http(s) URL"),
                    "write it like \"https://api.openai.com/v1\"",
                ),
            }
            url.trim_end_matches('/').to_string()
        }
    };
    if let Some(var) = &raw.api_key_env {
        check.variable_name(&at("api_key_env"), var, "api_key_env = \"OPENAI_API_KEY\"");
    }
    let mut headers = Vec::new();
    for (header, value) in &raw.headers {
        let ok_name = reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_ok();
        let ok_value = reqwest::header::HeaderValue::from_str(value).is_ok();
        let reserved = [
            "authorization",
            "host",
            "content-length",
            "content-type",
            "transfer-encoding",
        ]
        .contains(&header.to_ascii_lowercase().as_str());
        if !ok_name || !ok_value || reserved {
            check.report(
                at(&format!("headers.{header}")),
                "is not a valid, non-reserved header",
                "use a plain header name and value; the key belongs in api_key_env",
            );
        } else {
            headers.push((header.clone(), value.clone()));
        }
    }
    let timeouts = Timeouts {
        connect: check.duration(
            &at("connect_timeout"),
            raw.connect_timeout.as_deref(),
            Duration::from_secs(5),
        ),
        first_byte: check.duration(
            &at("first_byte_timeout"),
            raw.first_byte_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        idle: check.duration(
            &at("idle_timeout"),
            raw.idle_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        total: check.duration(
            &at("total_timeout"),
            raw.total_timeout.as_deref(),
            Duration::from_secs(600),
        ),
    };
    let retry = RetryPolicy {
        max_attempts: check.bounded(&at("max_attempts"), raw.max_attempts, 2, 1, 10) as u32,
        backoff_base: check.duration(
            &at("backoff_base"),
            raw.backoff_base.as_deref(),
            Duration::from_millis(200),
        ),
        backoff_cap: check.duration(
            &at("backoff_cap"),
            raw.backoff_cap.as_deref(),
            Duration::from_secs(5),
        ),
        retry_after_cap: check.duration(
            &at("retry_after_cap"),
            raw.retry_after_cap.as_deref(),
            Duration::from_secs(5),
        ),
    };
    if raw.anthropic_version.is_some() && kind != ProviderKind::Anthropic {
        check.report(
            at("anthropic_version"),
            "only applies to providers of kind \"anthropic\"",
            "remove it",
        );
    }
    if let Some(v) = &raw.anthropic_version {
        if reqwest::header::HeaderValue::from_str(v).is_err() || v.is_empty() {
            check.report(
                at("anthropic_version"),
                "is not a valid header value",
                "write it like \"2023-06-01\"",
            );
        }
    }
    if raw.native_responses == Some(true) && kind != ProviderKind::OpenAi {
        check.report(
            at("native_responses"),
            "only applies to providers of kind \"openai\"",
            "remove it; other kinds are served by translating to Chat Completions",
        );
    }
    let ca_certificates = match (&raw.ca_file, kind) {
        (None, _) => Vec::new(),
        (Some(_), ProviderKind::Mock) => {
            check.report(at("ca_file"), "a mock provider has no network", "remove ca_file");
            Vec::new()
        }
        (Some(path), _) => read_certificates(path).unwrap_or_else(|problem| {
            check.report(
                at("ca_file"),
                problem,
                "name a readable PEM file of the CA certificates that sign the server's certificate",
            );
            Vec::new()
        }),
    };
    Some(ProviderConfig {
        name,
        kind,
        base_url,
        api_key_env: raw.api_key_env.clone(),
        headers,
        timeouts,
        retry,
        anthropic_version: raw.anthropic_version.clone(),
        native_responses: raw.native_responses.unwrap_or(false),
        ca_certificates,
    })
}

/// The certificates of a PEM file, each one checked to be a usable trust
/// anchor.
fn read_certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|all| all.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{path:?} cannot be read as PEM certificates: {e}"))?;
    if certificates.is_empty() {
        return Err(format!("{path:?} holds no PEM certificate"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (n, certificate) in certificates.iter().enumerate() {
        roots
            .add(certificate.clone())
            .map_err(|e| format!("certificate {} of {path:?} is not usable: {e}", n + 1))?;
    }
    Ok(certificates)
}

fn validate_model(
    index: usize,
    raw: &RawModel,
    providers: &BTreeMap<&str, ProviderKind>,
    check: &mut Checker<'_>,
) -> Option<ModelConfig> {
    let at = |key: &str| format!("models[{index}].{key}");
    let Some(id) = raw.id.clone() else {
        check.report(at("id"), "is missing", "set id = \"provider/model\"");
        return None;
    };
    let Some((prefix, suffix)) = id
        .split_once('/')
        .filter(|(p, s)| !p.is_empty() && !s.is_empty())
    else {
        check.report(
            at("id"),
            format!("{id:?} is not of the form provider/model"),
            "write it like \"openai/gpt-4.1-mini\"",
        );
        return None;
    };
    if id.ends_with(":online") {
        check.report(
            at("id"),
            format!("{id:?} ends in \":online\", the suffix with which a request asks for web search"),
            "remove the suffix: a request for \"MODEL:online\" is served by MODEL with web search, so this id could never be called",
        );
    }
    let endpoints = match &raw.endpoints {
        None => vec![RawEndpoint {
            provider: Some(raw.provider.clone().unwrap_or_else(|| prefix.to_string())),
            upstream: Some(raw.upstream.clone().unwrap_or_else(|| suffix.to_string())),
            priority: None,
            weight: None,
        }],
        Some(list) => {
            if raw.provider.is_some() || raw.upstream.is_some() {
                check.report(
                    at("endpoints"),
                    "is set together with provider/upstream",
                    "list every provider in endpoints, and remove provider and upstream",
                );
            }
            if list.is_empty() {
                check.report(
                    at("endpoints"),
                    "is empty",
                    "list at least one { provider = \"…\", upstream = \"…\" }",
                );
            }
            list.iter()
                .map(|e| RawEndpoint {
                    provider: e.provider.clone(),
                    upstream: Some(e.upstream.clone().unwrap_or_else(|| suffix.to_string())),
                    priority: e.priority,
                    weight: e.weight,
                })
                .collect()
        }
    };
    let mut checked = Vec::new();
    for (n, e) in endpoints.iter().enumerate() {
        let key = |k: &str| match &raw.endpoints {
            Some(_) => at(&format!("endpoints[{n}].{k}")),
            None => at(k),
        };
        let Some(provider) = e.provider.clone() else {
            check.report(
                key("provider"),
                "is missing",
                "name one of the [[providers]]",
            );
            continue;
        };
        let upstream = e.upstream.clone().unwrap_or_default();
        match providers.get(provider.as_str()) {
            None => check.report(
                key("provider"),
                format!("model {id:?} uses provider {provider:?}, which is not defined"),
                "add a [[providers]] table with that name, or set provider = \"…\"",
            ),
            Some(ProviderKind::Mock) if !crate::providers::mock::is_known_model(&upstream) => check
                .report(
                    key("upstream"),
                    format!("the mock provider has no model {upstream:?}"),
                    format!(
                        "use one of: {}",
                        crate::providers::mock::MODEL_NAMES.join(", ")
                    ),
                ),
            Some(_) => {}
        }
        let priority = check.bounded(&key("priority"), e.priority, 1, 0, 1000) as u32;
        let weight = check.bounded(&key("weight"), e.weight, 1, 1, 1000) as u32;
        let endpoint = EndpointConfig {
            provider,
            upstream,
            priority,
            weight,
        };
        if checked.iter().any(|c: &EndpointConfig| {
            c.provider == endpoint.provider && c.upstream == endpoint.upstream
        }) {
            check.report(
                key("provider"),
                "is listed twice",
                "list each endpoint once",
            );
        }
        checked.push(endpoint);
    }
    let endpoints = checked;
    let provider = endpoints
        .first()
        .map_or_else(|| prefix.to_string(), |e| e.provider.clone());
    let max_output_tokens = raw.max_output_tokens;
    if let (Some(ctx), Some(out)) = (raw.context_length, max_output_tokens) {
        if out > ctx {
            check.report(
                at("max_output_tokens"),
                "is larger than context_length",
                "lower it to at most context_length",
            );
        }
    }
    if raw.context_length == Some(0) || max_output_tokens == Some(0) {
        check.report(
            at("context_length"),
            "token limits must be positive",
            "remove them or set a positive number",
        );
    }
    let prompt_price = check.price(&at("prompt_price"), raw.prompt_price.as_ref());
    let completion_price = check.price(&at("completion_price"), raw.completion_price.as_ref());
    if completion_price > 0 && max_output_tokens.is_none() && raw.context_length.is_none() {
        check.report(
            at("max_output_tokens"),
            "a priced model needs a cap on output tokens: credit holds are sized by it",
            "set max_output_tokens (or context_length)",
        );
    }
    let takes_images = match &raw.input_modalities {
        None => true,
        Some(list) => {
            for m in list {
                if m != "text" && m != "image" {
                    check.report(
                        at("input_modalities"),
                        format!("{m:?} is not a modality the gateway knows"),
                        "list \"text\" and, if the model reads images, \"image\"",
                    );
                }
            }
            if !list.iter().any(|m| m == "text") {
                check.report(
                    at("input_modalities"),
                    "must include \"text\"",
                    "write [\"text\"] or [\"text\", \"image\"]",
                );
            }
            list.iter().any(|m| m == "image")
        }
    };
    Some(ModelConfig {
        takes_images,
        calls_tools: raw.tools.unwrap_or(true),
        name: raw.name.clone().unwrap_or_else(|| id.clone()),
        prompt_price,
        completion_price,
        context_length: raw.context_length,
        max_output_tokens,
        id,
        provider,
        endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let config = parse(EMBEDDED_DEFAULT, "default").expect("embedded config must validate");
        assert!(config.models.iter().any(|m| m.id == "mock/echo"));
        let echo = config.models.iter().find(|m| m.id == "mock/echo").unwrap();
        assert!(echo.prompt_price > 0, "mock models carry a nominal price");
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = r#"
            [server]
            listen = "nowhere"
            colour = "blue"
            [[providers]]
            name = "up"
            kind = "openai"
            base_url = "ftp://x"
            api_key_env = "sk-live-123"
            [[models]]
            id = "up/m"
            prompt_price = 0.4
            [[models]]
            id = "ghost/m"
        "#;
        let err = parse(text, "t.toml").unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for want in [
            "server.colour",
            "server.listen",
            "providers[0].base_url",
            "providers[0].api_key_env",
            "models[0].prompt_price",
            "models[1].provider",
        ] {
            assert!(keys.contains(&want), "missing {want} in {keys:?}");
        }
        let shown = err.to_string();
        assert!(shown.starts_with("t.toml: 6 problems found"), "{shown}");
    }

    #[test]
    fn a_base_url_with_credentials_is_refused() {
        let text = r#"
            [[providers]]
            name = "up"
            kind = "openai"
            base_url = "https://user:pw@vllm.internal/v1"
        "#;
        let err = parse(text, "t.toml").unwrap_err();
        assert_eq!(err.problems[0].key, "providers[0].base_url");
        assert!(
            err.problems[0].problem.contains("credentials"),
            "{:?}",
            err.problems
        );
        assert!(
            !err.to_string().contains("pw@"),
            "the message does not repeat the password"
        );
    }

    #[test]
    fn a_ca_file_must_hold_usable_certificates() {
        let provider = |ca_file: &str| {
            format!("[[providers]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"https://vllm.internal/v1\"\nca_file = {ca_file:?}\n")
        };
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/certs/ca.pem");
        let config = parse(&provider(ca), "t.toml").unwrap();
        assert_eq!(config.providers[0].ca_certificates.len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        for (path, says) in [
            ("/nonexistent/ca.pem", "cannot be read"),
            (garbage.to_str().unwrap(), "not usable"),
            (empty.to_str().unwrap(), "no PEM certificate"),
        ] {
            let err = parse(&provider(path), "t.toml").unwrap_err();
            assert_eq!(err.problems[0].key, "providers[0].ca_file");
            assert!(
                err.problems[0].problem.contains(says),
                "{path}: {:?}",
                err.problems
            );
        }
    }

    #[test]
    fn serving_threads_default_to_one_per_core_and_are_bounded() {
        let config = parse(EMBEDDED_DEFAULT, "default").unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(config.server.threads, cores);
        let config = parse("[server]\nthreads = 3\n", "t.toml").unwrap();
        assert_eq!(config.server.threads, 3);
        let err = parse("[server]\nthreads = 0\n", "t.toml").unwrap_err();
        assert_eq!(err.problems[0].key, "server.threads");
        assert!(
            err.problems[0].fix.contains("1 to 256"),
            "{:?}",
            err.problems
        );
    }

    /// A config whose three secret-naming keys (a provider's
    /// `api_key_env`, `web_search.api_key_env`, a registered MCP server's
    /// header) all hold `value`.
    fn naming(value: &str) -> String {
        format!(
            "[[providers]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"https://api.groq.com/openai/v1\"\napi_key_env = {value:?}\n\n\
             [web_search]\nbackend = \"brave\"\napi_key_env = {value:?}\n\n\
             [[mcp.servers]]\nlabel = \"docs\"\nurl = \"https://mcp.example.com/mcp\"\nheaders = {{ Authorization = {value:?} }}\nkeys = [\"*\"]\n"
        )
    }

    #[test]
    fn keys_naming_a_variable_refuse_anything_else_without_repeating_it() {
        let secrets = [
            "gsk_AbCdEfGh0123456789IjKlMnOp0123456789QrStUvWx01234567", // Groq
            "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY",                         // Mistral
            "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0", // Together
            "sk-live-123",
            "openai_api_key",
            "9LIVES",
            "",
        ];
        let long = "A".repeat(65);
        for value in secrets.iter().copied().chain([long.as_str()]) {
            let err = parse(&naming(value), "t.toml").unwrap_err();
            let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "providers[0].api_key_env",
                    "web_search.api_key_env",
                    "mcp.servers[0].headers.Authorization"
                ],
                "{value:?}"
            );
            assert!(
                err.problems[0]
                    .problem
                    .contains("NAME of an environment variable"),
                "{:?}",
                err.problems
            );
            if !value.is_empty() {
                assert!(
                    !err.to_string().contains(value),
                    "the value is never repeated: {err}"
                );
            }
        }
        let longest = "A".repeat(64);
        for name in ["GROQ_API_KEY", "_X", "K9", longest.as_str()] {
            let config = parse(&naming(name), "t.toml").expect(name);
            assert_eq!(config.providers[0].api_key_env.as_deref(), Some(name));
            assert_eq!(config.mcp.servers[0].headers[0].1, name);
        }
    }

    #[test]
    fn a_rediss_url_may_not_skip_the_certificate_check() {
        let config = parse("[rate_limit]\nurl = \"rediss://cache:6380\"\n", "t.toml").unwrap();
        assert_eq!(
            config.rate_limit.url.as_deref(),
            Some("rediss://cache:6380")
        );
        let err = parse(
            "[rate_limit]\nurl = \"rediss://cache:6380/#insecure\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(err.problems[0].key, "rate_limit.url");
        assert!(
            err.problems[0].problem.contains("#insecure"),
            "{:?}",
            err.problems
        );
    }

    #[test]
    fn durations_have_a_ceiling() {
        let store = |key: &str, value: &str| format!("[store]\n{key} = {value:?}\n");
        for (key, value, most) in [
            ("busy_timeout", "25d", "\"1h\""),
            ("busy_timeout", "61m", "\"1h\""),
            ("hold_ttl", "300000years", "\"10years\""),
            ("responses_retention", "11y", "\"10years\""),
        ] {
            let err = parse(&store(key, value), "t.toml").unwrap_err();
            assert_eq!(err.problems[0].key, format!("store.{key}"), "{value}");
            assert!(err.problems[0].fix.contains(most), "{:?}", err.problems);
        }
        let err = parse("[server]\nmax_stream_duration = \"400y\"\n", "t.toml").unwrap_err();
        assert_eq!(err.problems[0].key, "server.max_stream_duration");
        let err = parse("[mcp]\ntimeout = \"4000d\"\n", "t.toml").unwrap_err();
        assert_eq!(err.problems[0].key, "mcp.timeout");
        let config = parse(&store("busy_timeout", "1h"), "t.toml").unwrap();
        assert_eq!(config.store.busy_timeout, Duration::from_secs(3600));
        let config = parse(&store("responses_retention", "10y"), "t.toml").unwrap();
        let ten_years = Duration::from_secs(10 * 31_557_600);
        assert_eq!(config.store.responses_retention, ten_years);
    }

    #[test]
    fn the_longest_request_saturates() {
        let mut config = parse(EMBEDDED_DEFAULT, "default").unwrap();
        config.server.max_stream_duration = Duration::MAX;
        assert_eq!(
            longest_request(&config.server, &config.providers),
            Duration::MAX
        );
    }

    #[test]
    fn a_model_id_may_not_end_in_the_web_search_suffix() {
        let text = "[[providers]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"https://x.test/v1\"\n\n[[models]]\nid = \"up/m:online\"\n";
        let err = parse(text, "t.toml").unwrap_err();
        assert_eq!(err.problems.len(), 1, "{:?}", err.problems);
        assert_eq!(err.problems[0].key, "models[0].id");
        assert!(
            err.problems[0].problem.contains("web search"),
            "{:?}",
            err.problems
        );
        let text = text.replace("up/m:online", "up/m:free");
        assert_eq!(parse(&text, "t.toml").unwrap().models[0].id, "up/m:free");
    }

    #[test]
    fn syntax_errors_name_the_position() {
        let err = parse("[server\nlisten=1", "bad.toml").unwrap_err();
        assert_eq!(err.problems[0].key, "(syntax)");
        assert!(
            err.problems[0].problem.contains("line"),
            "{:?}",
            err.problems
        );
    }
}
