//! The gateway as an MCP client, on the official Rust SDK, `rmcp`.
//!
//! - `guard.rs`: which server addresses may be reached (SSRF), and the
//!   resolver and redirect policy that pin every connection to checked
//!   addresses.
//! - `legacy.rs`: the legacy HTTP+SSE transport, tried when a server does
//!   not speak Streamable HTTP.
//! - `McpClient::list_tools` lists a server's tools (every page), and
//!   `call` runs one; each within a time limit, over a fresh session (the
//!   initialize handshake; session ids are the transport's business).
//!   Lists are cached per server (URL and headers) for a short TTL,
//!   within a bound on their number and their total size.
//!   Responses are bounded in size (`max_response_bytes`).

pub mod guard;
mod legacy;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Map, Value};

pub use guard::Guard;

/// A server a request names, with the headers it asked to send.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct McpServer {
    pub url: String,
    /// Sent as `Authorization: Bearer …`.
    pub authorization: Option<String>,
    pub headers: Vec<(String, String)>,
    /// A server the operator registered: reached whatever its address.
    pub trusted: bool,
}

/// One tool as the server describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct McpTool {
    pub name: String,
    pub description: Option<String>,
    pub input_schema: Value,
    pub annotations: Value,
}

/// What a tool call returned.
#[derive(Debug, Clone, PartialEq)]
pub struct McpOutput {
    /// The text parts, joined.
    pub text: String,
    /// The server said the call failed (`isError`).
    pub is_error: bool,
    /// Every content part, as the server sent it.
    pub content: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpError {
    #[error("the MCP server URL is refused: {0}")]
    Refused(String),
    #[error("the MCP server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the MCP server failed: {0}")]
    Failed(String),
}

/// A server label as OpenAI accepts it: 1 to 64 letters, digits, `_` or
/// `-`.
pub fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 64
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The client's limits.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Per connection + list or call.
    pub timeout: Duration,
    /// How long a tool list is reused.
    pub ttl: Duration,
    /// The most bytes one server message may have.
    pub max_response_bytes: usize,
}

/// An rmcp error message without the Rust type names it carries in
/// brackets (`Transport [rmcp::…<…>] error`).
fn tidy(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut depth = 0usize;
    let mut bracketed = String::new();
    for c in message.chars() {
        match c {
            '[' => {
                depth += 1;
                if depth > 1 {
                    bracketed.push(c);
                }
            }
            ']' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    if !bracketed.contains("::") {
                        out.push('[');
                        out.push_str(&bracketed);
                        out.push(']');
                    } else if out.ends_with(' ') {
                        out.pop();
                    }
                    bracketed.clear();
                } else {
                    bracketed.push(c);
                }
            }
            _ if depth > 0 => bracketed.push(c),
            _ => out.push(c),
        }
    }
    out
}

/// The most tools one listing reads, and the most pages.
const MAX_TOOLS: usize = 256;
const MAX_PAGES: usize = 32;
/// The most tool lists kept at once (servers × header sets), and the most
/// bytes of listing (as JSON text) they hold in all: one listing alone
/// may be `MAX_PAGES` messages of `max_response_bytes`.
const MAX_CACHED: usize = 1024;
const MAX_CACHED_BYTES: usize = 16 << 20;

/// About the room a list takes: its server's URL and headers and its
/// tools' text.
fn listing_bytes(server: &McpServer, tools: &[McpTool]) -> usize {
    let server_bytes = server.url.len()
        + server.authorization.as_ref().map_or(0, String::len)
        + server
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>();
    let tool_bytes = |t: &McpTool| {
        t.name.len()
            + t.description.as_ref().map_or(0, String::len)
            + t.input_schema.to_string().len()
            + t.annotations.to_string().len()
    };
    server_bytes + tools.iter().map(tool_bytes).sum::<usize>()
}

/// A tool list kept, and when it was listed.
struct Cached {
    at: Instant,
    bytes: usize,
    tools: Vec<McpTool>,
}

/// Tool lists per server, each used for `ttl`. Expired lists go whenever
/// one is kept, or when asked for (an expired list stays only until
/// then); past `MAX_CACHED` lists or `budget` bytes the oldest go first,
/// and a list larger than the whole budget is not kept.
struct ToolCache {
    lists: HashMap<McpServer, Cached>,
    /// The bytes of every list kept.
    bytes: usize,
    budget: usize,
}

impl ToolCache {
    fn new(budget: usize) -> Self {
        Self {
            lists: HashMap::new(),
            bytes: 0,
            budget,
        }
    }

    /// The server's list if it is fresh; an expired one is dropped.
    fn get(&mut self, server: &McpServer, ttl: Duration, now: Instant) -> Option<Vec<McpTool>> {
        let cached = self.lists.get(server)?;
        if now.saturating_duration_since(cached.at) < ttl {
            return Some(cached.tools.clone());
        }
        self.remove(server);
        None
    }

    fn remove(&mut self, server: &McpServer) {
        if let Some(c) = self.lists.remove(server) {
            self.bytes -= c.bytes;
        }
    }

    fn insert(&mut self, server: McpServer, tools: Vec<McpTool>, ttl: Duration, now: Instant) {
        self.remove(&server);
        let total = &mut self.bytes;
        self.lists.retain(|_, c| {
            let fresh = now.saturating_duration_since(c.at) < ttl;
            if !fresh {
                *total -= c.bytes;
            }
            fresh
        });
        let bytes = listing_bytes(&server, &tools);
        if bytes > self.budget {
            return;
        }
        while self.lists.len() >= MAX_CACHED || self.bytes + bytes > self.budget {
            let Some(oldest) = self
                .lists
                .iter()
                .min_by_key(|(_, c)| c.at)
                .map(|(s, _)| s.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
        self.bytes += bytes;
        self.lists.insert(
            server,
            Cached {
                at: now,
                bytes,
                tools,
            },
        );
    }
}

/// Every page of a server's tool list (within `MAX_PAGES` and
/// `MAX_TOOLS`; a longer list is an error, not a silent cut).
async fn every_page(session: &Session) -> Result<Vec<rmcp::model::Tool>, McpError> {
    let mut tools = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let params = rmcp::model::PaginatedRequestParams::default().with_cursor(cursor);
        let page = session
            .list_tools(Some(params))
            .await
            .map_err(|e| McpError::Failed(tidy(&e.to_string())))?;
        tools.extend(page.tools);
        if tools.len() > MAX_TOOLS {
            return Err(McpError::Failed(format!(
                "the server lists more than {MAX_TOOLS} tools; name the ones to use in allowed_tools on a server that lists fewer"
            )));
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(tools),
        }
    }
    Err(McpError::Failed(format!(
        "the tool list runs over more than {MAX_PAGES} pages"
    )))
}

/// Lists cached for `ttl`, per server.
pub struct McpClient {
    guard: Guard,
    /// For servers that requests name: every address checked.
    http: reqwest_mcp::Client,
    /// For the servers the operator registered.
    trusted_http: reqwest_mcp::Client,
    limits: ClientLimits,
    cache: Mutex<ToolCache>,
}

type Session = rmcp::service::RunningService<rmcp::RoleClient, ()>;

/// Headers no request may set on the server: the transport's own, and
/// those that would change where or how the request goes.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-authorization",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

impl McpClient {
    pub fn new(guard: Guard, limits: ClientLimits) -> Self {
        let builder = || {
            reqwest_mcp::Client::builder()
                .no_proxy()
                .connect_timeout(limits.timeout)
                .tcp_nodelay(true)
        };
        let http = builder()
            .dns_resolver(guard::Resolver::shared(guard.clone()))
            .redirect(guard.redirects(false))
            .build()
            .expect("the MCP HTTP client builds");
        let trusted_http = builder()
            .redirect(guard.redirects(true))
            .build()
            .expect("the MCP HTTP client builds");
        Self {
            guard,
            http,
            trusted_http,
            limits,
            cache: Mutex::new(ToolCache::new(MAX_CACHED_BYTES)),
        }
    }

    /// The address rules every connection follows.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The request's headers, checked; the bearer token among them.
    fn headers(server: &McpServer) -> Result<reqwest_mcp::header::HeaderMap, McpError> {
        use reqwest_mcp::header::{HeaderName, HeaderValue};
        let mut headers = reqwest_mcp::header::HeaderMap::new();
        for (name, value) in &server.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| McpError::Refused(format!("{name:?} is not a header name")))?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(McpError::Refused(format!(
                    "the header {name} is set by the gateway, not by a request"
                )));
            }
            let value = HeaderValue::from_str(value).map_err(|_| {
                McpError::Refused(format!("the value of header {name} is not valid"))
            })?;
            headers.insert(name, value);
        }
        Ok(headers)
    }

    /// Connects and runs the initialize handshake: over Streamable HTTP,
    /// else (a server that refuses it) over the legacy HTTP+SSE transport.
    async fn connect(&self, server: &McpServer) -> Result<Session, McpError> {
        let http = if server.trusted {
            &self.trusted_http
        } else {
            self.guard.check(&server.url).await?;
            &self.http
        };
        let mut headers = Self::headers(server)?;
        let token = server
            .authorization
            .as_deref()
            .map(|t| t.trim_start_matches("Bearer ").to_string());
        let config = StreamableHttpClientTransportConfig::with_uri(server.url.as_str())
            .custom_headers(
                headers
                    .clone()
                    .into_iter()
                    .filter_map(|(k, v)| Some((k?, v)))
                    .collect(),
            )
            .max_sse_event_size(self.limits.max_response_bytes)
            .max_json_response_size(self.limits.max_response_bytes);
        let config = match &token {
            Some(t) => config.auth_header(t.clone()),
            None => config,
        };
        let transport = StreamableHttpClientTransport::with_client(http.clone(), config);
        let streamable = tokio::time::timeout(self.limits.timeout, ().serve(transport))
            .await
            .map_err(|_| McpError::Timeout(self.limits.timeout))?;
        let first_error = match streamable {
            Ok(session) => return Ok(session),
            Err(e) => tidy(&e.to_string()),
        };
        if let Some(t) = &token {
            let value = reqwest_mcp::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| {
                    McpError::Refused("the authorization token is not a valid header value".into())
                })?;
            headers.insert(reqwest_mcp::header::AUTHORIZATION, value);
        }
        let url =
            reqwest_mcp::Url::parse(&server.url).map_err(|e| McpError::Refused(e.to_string()))?;
        let legacy = async {
            let transport =
                legacy::LegacySse::open(http, &url, headers, self.limits.max_response_bytes)
                    .await?;
            ().serve(transport)
                .await
                .map_err(|e| McpError::Failed(e.to_string()))
        };
        match tokio::time::timeout(self.limits.timeout, legacy).await {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(McpError::Refused(r))) => Err(McpError::Refused(r)),
            Ok(Err(McpError::Failed(e))) => Err(McpError::Failed(format!(
                "over Streamable HTTP: {first_error}; over legacy HTTP+SSE: {e}"
            ))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(McpError::Timeout(self.limits.timeout)),
        }
    }

    /// The server's tools, every page, from the cache when fresh.
    pub async fn list_tools(&self, server: &McpServer) -> Result<Vec<McpTool>, McpError> {
        if let Some(tools) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(
            server,
            self.limits.ttl,
            Instant::now(),
        ) {
            return Ok(tools);
        }
        let session = self.connect(server).await?;
        let listed = tokio::time::timeout(self.limits.timeout, every_page(&session)).await;
        let _ = session.cancel().await;
        let tools: Vec<McpTool> = listed
            .map_err(|_| McpError::Timeout(self.limits.timeout))??
            .into_iter()
            .map(|t| McpTool {
                name: t.name.to_string(),
                description: t.description.map(|d| d.to_string()),
                input_schema: Value::Object((*t.input_schema).clone()),
                annotations: t
                    .annotations
                    .and_then(|a| serde_json::to_value(a).ok())
                    .unwrap_or(json!({})),
            })
            .collect();
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(
            server.clone(),
            tools.clone(),
            self.limits.ttl,
            Instant::now(),
        );
        Ok(tools)
    }

    /// Runs one tool with `arguments`.
    pub async fn call(
        &self,
        server: &McpServer,
        name: &str,
        arguments: Map<String, Value>,
    ) -> Result<McpOutput, McpError> {
        let session = self.connect(server).await?;
        let params = CallToolRequestParams::new(name.to_string()).with_arguments(arguments);
        let called = tokio::time::timeout(self.limits.timeout, session.call_tool(params)).await;
        let _ = session.cancel().await;
        let result: CallToolResult = called
            .map_err(|_| McpError::Timeout(self.limits.timeout))?
            .map_err(|e| McpError::Failed(e.to_string()))?;
        let text: Vec<String> = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect();
        Ok(McpOutput {
            text: text.join("\n"),
            is_error: result.is_error.unwrap_or(false),
            content: serde_json::to_value(&result.content).unwrap_or(json!([])),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn server(n: usize) -> McpServer {
        McpServer {
            url: format!("https://mcp{n}.example/mcp"),
            authorization: None,
            headers: vec![("x-team".into(), "a".into())],
            trusted: false,
        }
    }

    /// One tool with a description of `chars` characters.
    fn tools(chars: usize) -> Vec<McpTool> {
        vec![McpTool {
            name: "t".into(),
            description: Some("d".repeat(chars)),
            input_schema: json!({"type": "object"}),
            annotations: json!({}),
        }]
    }

    #[test]
    fn expired_lists_go_as_soon_as_another_is_kept() {
        let t0 = Instant::now();
        let mut cache = ToolCache::new(MAX_CACHED_BYTES);
        cache.insert(server(1), tools(100), TTL, t0);
        cache.insert(server(2), tools(100), TTL, t0 + Duration::from_secs(30));
        assert!(cache
            .get(&server(1), TTL, t0 + Duration::from_secs(59))
            .is_some());
        // Far from full, yet server 1's list is past its TTL.
        cache.insert(server(3), tools(100), TTL, t0 + Duration::from_secs(61));
        assert!(!cache.lists.contains_key(&server(1)));
        assert_eq!(cache.lists.len(), 2);
        assert_eq!(cache.bytes, 2 * listing_bytes(&server(2), &tools(100)));
        // An expired list is never served, and goes when asked for.
        assert!(cache
            .get(&server(2), TTL, t0 + Duration::from_secs(90))
            .is_none());
        assert!(!cache.lists.contains_key(&server(2)));
        assert_eq!(cache.bytes, listing_bytes(&server(3), &tools(100)));
    }

    #[test]
    fn the_oldest_lists_go_past_the_byte_budget() {
        let t0 = Instant::now();
        let each = listing_bytes(&server(0), &tools(1000));
        let mut cache = ToolCache::new(3 * each);
        for n in 0..5 {
            cache.insert(
                server(n),
                tools(1000),
                TTL,
                t0 + Duration::from_secs(n as u64),
            );
        }
        let mut kept: Vec<&str> = cache.lists.keys().map(|s| s.url.as_str()).collect();
        kept.sort();
        assert_eq!(
            kept,
            [server(2).url, server(3).url, server(4).url],
            "the newest three fit"
        );
        assert_eq!(cache.bytes, 3 * each);
        // A list larger than the whole budget is not kept, and costs the
        // others nothing.
        cache.insert(server(9), tools(4 * each), TTL, t0 + Duration::from_secs(5));
        assert!(!cache.lists.contains_key(&server(9)));
        assert_eq!(cache.lists.len(), 3);
        // Listing a server again replaces its list.
        cache.insert(server(4), tools(10), TTL, t0 + Duration::from_secs(6));
        assert_eq!(
            cache.bytes,
            2 * each + listing_bytes(&server(4), &tools(10))
        );
    }

    #[test]
    fn error_messages_lose_rust_type_names() {
        assert_eq!(
            super::tidy("Send message error Transport [rmcp::a::B<c::D>] error: HTTP 404 [x]"),
            "Send message error Transport error: HTTP 404 [x]"
        );
    }
}
