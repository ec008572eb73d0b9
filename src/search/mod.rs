//! Web search backends, configured by the operator (`[web_search]`), never
//! by a request: SearXNG's JSON API (self-hosted; the documented default),
//! Brave Search, Tavily and Exa, behind one trait.
//!
//! `gateway::websearch` runs them for requests; `cite.rs` builds the
//! prompt block of results and the answer's citations.
//!
//! A backend is reached only at its configured URL, with the operator's
//! key from its configured variable; nothing of the caller (their gateway
//! key, their headers) is ever sent to it (SSRF-05).

pub mod cite;

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use crate::config::NanoUsd;

/// Which search API a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchBackendKind {
    /// SearXNG's JSON API: `GET {url}/search?q=…&format=json`.
    Searxng,
    /// Brave Search: `GET {url}/res/v1/web/search`, key in
    /// `X-Subscription-Token`.
    Brave,
    /// Tavily: `POST {url}/search`, key as a bearer token.
    Tavily,
    /// Exa: `POST {url}/search`, key in `x-api-key`.
    Exa,
}

/// One configured backend and the rules its searches follow.
#[derive(Debug, Clone)]
pub struct SearchConfig {
    pub backend: SearchBackendKind,
    /// Base URL, without a trailing slash; the only address ever contacted.
    pub url: String,
    /// Name of the variable holding the backend's key, if it needs one.
    pub api_key_env: Option<String>,
    /// Connect and total time for one search.
    pub timeout: Duration,
    pub max_results: usize,
    /// Nano-USD charged per search.
    pub price: NanoUsd,
    /// The most searches one request may run.
    pub max_searches: u32,
}

/// One search, as the gateway asks it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchQuery {
    pub query: String,
    pub max_results: usize,
    /// Only results from these domains (and their subdomains).
    pub allowed_domains: Vec<String>,
    /// Never results from these domains.
    pub excluded_domains: Vec<String>,
}

/// The most bytes of a result's title and excerpt the model is given, and
/// the longest URL a result may have (a URL is never cut: a citation
/// points at it). With its number and labels, a result is then at most
/// `RESULT_BYTES` of a prompt whatever the backend sent, which the hold of
/// a searching request counts on.
const MAX_TITLE_BYTES: usize = 150;
const MAX_SNIPPET_BYTES: usize = 1000;
const MAX_URL_BYTES: usize = 400;
pub const RESULT_BYTES: usize = 1600;
const _: () = assert!(MAX_TITLE_BYTES + MAX_URL_BYTES + MAX_SNIPPET_BYTES + 20 <= RESULT_BYTES);

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// One result: what a citation points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchResult {
    pub title: String,
    pub url: String,
    /// The backend's excerpt of the page.
    pub snippet: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error("the search backend's key variable {0} is unset")]
    NotConfigured(String),
    #[error("the search backend did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the search backend could not be reached: {0}")]
    Unreachable(String),
    #[error("the search backend answered {status}: {message}")]
    Failed { status: u16, message: String },
    #[error("the search backend sent an answer that is not a result list: {0}")]
    Invalid(String),
}

#[async_trait]
pub trait SearchBackend: Send + Sync {
    fn name(&self) -> &'static str;
    async fn search(&self, query: &SearchQuery) -> Result<Vec<SearchResult>, SearchError>;
}

/// The configured backend and the rules every search follows.
pub struct Searcher {
    backend: Box<dyn SearchBackend>,
    /// Charged to the key per search.
    pub price: NanoUsd,
    pub max_results: usize,
    /// The most searches one request may run.
    pub max_searches: u32,
}

impl Searcher {
    /// Builds the configured backend. `env` looks up the key variable.
    pub fn build(config: &SearchConfig, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let key = match &config.api_key_env {
            None => Ok(None),
            Some(var) => env(var)
                .filter(|v| !v.is_empty())
                .map(Some)
                .ok_or_else(|| SearchError::NotConfigured(var.clone())),
        };
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client with timeouts builds");
        let backend = HttpBackend {
            kind: config.backend,
            url: config.url.clone(),
            key,
            http,
            timeout: config.timeout,
        };
        Self {
            backend: Box::new(backend),
            price: config.price,
            max_results: config.max_results,
            max_searches: config.max_searches,
        }
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Runs one search; results outside the domain filters, or with a URL
    /// over `MAX_URL_BYTES`, are dropped whatever the backend did with
    /// them, at most `max_results` kept, and titles and excerpts cut to
    /// their bounds.
    pub async fn search(&self, query: &SearchQuery) -> Result<Vec<SearchResult>, SearchError> {
        let mut results = self.backend.search(query).await?;
        results.retain(|r| r.url.len() <= MAX_URL_BYTES && domain_allowed(&r.url, query));
        results.truncate(query.max_results.max(1));
        for r in &mut results {
            cut(&mut r.title, MAX_TITLE_BYTES);
            cut(&mut r.snippet, MAX_SNIPPET_BYTES);
        }
        Ok(results)
    }
}

/// The host of an http(s) URL, lowercased.
fn host_of(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    matches!(parsed.scheme(), "http" | "https")
        .then(|| parsed.host_str().map(str::to_ascii_lowercase))
        .flatten()
}

fn on_domain(host: &str, domain: &str) -> bool {
    let domain = domain.trim().trim_start_matches("*.").to_ascii_lowercase();
    host == domain || host.ends_with(&format!(".{domain}"))
}

/// Whether a result may be used: an http(s) URL, on an allowed domain when
/// there is an allow list, and on no excluded domain.
pub fn domain_allowed(url: &str, query: &SearchQuery) -> bool {
    let Some(host) = host_of(url) else {
        return false;
    };
    let allowed = query.allowed_domains.is_empty()
        || query.allowed_domains.iter().any(|d| on_domain(&host, d));
    allowed && !query.excluded_domains.iter().any(|d| on_domain(&host, d))
}

/// The four backends differ only in how they are asked and how they answer.
struct HttpBackend {
    kind: SearchBackendKind,
    url: String,
    key: Result<Option<String>, SearchError>,
    http: reqwest::Client,
    timeout: Duration,
}

impl HttpBackend {
    /// `POST {url}/search` with a JSON body.
    fn post_json(&self, headers: HeaderMap, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/search", self.url))
            .headers(headers)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
    }

    fn request(&self, q: &SearchQuery, key: Option<&str>) -> reqwest::RequestBuilder {
        let n = q.max_results.max(1);
        let mut headers = HeaderMap::new();
        let mut set = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        match self.kind {
            SearchBackendKind::Searxng => {
                // SearXNG has no domain parameter: its query language's
                // `site:` filter asks for the first allowed domain.
                let mut text = q.query.clone();
                if let Some(site) = q.allowed_domains.first() {
                    text = format!("{text} site:{site}");
                }
                if let Some(key) = key {
                    set("authorization", &format!("Bearer {key}"));
                }
                self.http
                    .get(format!("{}/search", self.url))
                    .query(&[("q", text.as_str()), ("format", "json")])
                    .headers(headers)
            }
            SearchBackendKind::Brave => {
                if let Some(key) = key {
                    set("x-subscription-token", key);
                }
                let mut text = q.query.clone();
                for site in &q.allowed_domains {
                    text.push_str(&format!(" site:{site}"));
                }
                self.http
                    .get(format!("{}/res/v1/web/search", self.url))
                    .query(&[("q", text.as_str()), ("count", &n.min(20).to_string())])
                    .header("accept", "application/json")
                    .headers(headers)
            }
            SearchBackendKind::Tavily => {
                if let Some(key) = key {
                    set("authorization", &format!("Bearer {key}"));
                }
                let body = json!({"query": q.query, "max_results": n,
                    "include_domains": q.allowed_domains, "exclude_domains": q.excluded_domains});
                self.post_json(headers, &body)
            }
            SearchBackendKind::Exa => {
                if let Some(key) = key {
                    set("x-api-key", key);
                }
                let mut body = json!({"query": q.query, "numResults": n,
                    "contents": {"text": {"maxCharacters": 1000}}});
                if !q.allowed_domains.is_empty() {
                    body["includeDomains"] = json!(q.allowed_domains);
                }
                if !q.excluded_domains.is_empty() {
                    body["excludeDomains"] = json!(q.excluded_domains);
                }
                self.post_json(headers, &body)
            }
        }
    }

    /// Where each backend's answer keeps its result list (a JSON pointer),
    /// and which field of a result is its excerpt (`title` and `url` are
    /// named alike everywhere).
    fn fields(&self) -> (&'static str, &'static str) {
        match self.kind {
            SearchBackendKind::Searxng => ("/results", "content"),
            SearchBackendKind::Brave => ("/web/results", "description"),
            SearchBackendKind::Tavily => ("/results", "content"),
            SearchBackendKind::Exa => ("/results", "text"),
        }
    }
}

#[async_trait]
impl SearchBackend for HttpBackend {
    fn name(&self) -> &'static str {
        match self.kind {
            SearchBackendKind::Searxng => "searxng",
            SearchBackendKind::Brave => "brave",
            SearchBackendKind::Tavily => "tavily",
            SearchBackendKind::Exa => "exa",
        }
    }

    async fn search(&self, query: &SearchQuery) -> Result<Vec<SearchResult>, SearchError> {
        let key = self.key.clone()?;
        let sent = self
            .request(query, key.as_deref())
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    SearchError::Timeout(self.timeout)
                } else {
                    SearchError::Unreachable(e.to_string())
                }
            })?;
        let status = sent.status().as_u16();
        let body = sent.bytes().await.map_err(|e| {
            if e.is_timeout() {
                SearchError::Timeout(self.timeout)
            } else {
                SearchError::Unreachable(e.to_string())
            }
        })?;
        if status != 200 {
            let mut text = String::from_utf8_lossy(&body).into_owned();
            // Redacted before it is cut: a key that the cut would split
            // must not leave its first characters behind.
            if let Some(k) = key.as_deref().filter(|k| !k.is_empty()) {
                text = text.replace(k, "[redacted]");
            }
            let message: String = text.chars().take(200).collect();
            return Err(SearchError::Failed { status, message });
        }
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| SearchError::Invalid(format!("not JSON ({e})")))?;
        let (list, snippet) = self.fields();
        let items = answer
            .pointer(list)
            .and_then(Value::as_array)
            .ok_or_else(|| SearchError::Invalid(format!("no {list} array")))?;
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Ok(items
            .iter()
            .filter(|r| r.get("url").and_then(Value::as_str).is_some())
            .map(|r| SearchResult {
                title: text(r, "title"),
                url: text(r, "url"),
                snippet: text(r, snippet),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_filters_match_subdomains_and_refuse_other_schemes() {
        let q = SearchQuery {
            allowed_domains: vec!["example.com".into()],
            excluded_domains: vec!["bad.example.com".into()],
            ..Default::default()
        };
        assert!(domain_allowed("https://example.com/a", &q));
        assert!(domain_allowed("https://docs.Example.com/a", &q));
        assert!(!domain_allowed("https://bad.example.com/a", &q));
        assert!(!domain_allowed("https://notexample.com/a", &q));
        assert!(!domain_allowed("javascript:alert(1)", &q));
        assert!(!domain_allowed("ftp://example.com/f", &q));
        assert!(domain_allowed("http://any.org/", &SearchQuery::default()));
    }
}
