//! The gateway as an MCP client (issue 9, groundwork: tested, not used by
//! requests yet), on the official Rust SDK, `rmcp`, over the Streamable
//! HTTP transport (rmcp 0.11 dropped the legacy HTTP+SSE one).
//!
//! - `Guard` refuses server URLs the gateway must never reach (SSRF): not
//!   http(s), or a host that resolves to a loopback, private, link-local,
//!   shared, multicast or unspecified address, unless the operator allows
//!   private addresses.
//! - `McpClient::list_tools` lists a server's tools (every page), and
//!   `call` runs one; each within a time limit. Lists are cached per server
//!   (URL and headers) for a short TTL.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Map, Value};

/// A server a request names, with the headers it asked to send.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct McpServer {
    pub url: String,
    /// Sent as `Authorization: Bearer …`.
    pub authorization: Option<String>,
    pub headers: Vec<(String, String)>,
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

/// Which server addresses may be reached.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    /// Allow loopback and private addresses (a gateway that serves MCP
    /// servers on its own network; tests).
    pub allow_private: bool,
}

/// Whether an address is one a request must never make the gateway reach.
fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| internal(IpAddr::V4(v4)))
        }
    }
}

impl Guard {
    /// Checks a server URL: http(s), and every address its host resolves
    /// to is public (unless private ones are allowed).
    pub async fn check(&self, url: &str) -> Result<(), McpError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| McpError::Refused(format!("{url:?} is not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(McpError::Refused(format!("{url:?} is not an http(s) URL")));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(McpError::Refused(
                "credentials in the URL are not accepted; use `authorization` or `headers`".into(),
            ));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| McpError::Refused(format!("{url:?} has no host")))?
            .trim_matches(['[', ']']);
        let port = parsed.port_or_known_default().unwrap_or(443);
        if self.allow_private {
            return Ok(());
        }
        let addrs: Vec<IpAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| McpError::Refused(format!("{host} does not resolve ({e})")))?
            .map(|a| a.ip())
            .collect();
        match addrs.iter().find(|ip| internal(**ip)) {
            Some(ip) => Err(McpError::Refused(format!(
                "{host} resolves to {ip}, an internal address the gateway does not reach"
            ))),
            None if addrs.is_empty() => Err(McpError::Refused(format!("{host} does not resolve"))),
            None => Ok(()),
        }
    }
}

/// Lists cached for `ttl`, per server.
pub struct McpClient {
    guard: Guard,
    timeout: Duration,
    ttl: Duration,
    cache: Mutex<HashMap<McpServer, (Instant, Vec<McpTool>)>>,
}

type Session = rmcp::service::RunningService<rmcp::RoleClient, ()>;

impl McpClient {
    pub fn new(guard: Guard, timeout: Duration, ttl: Duration) -> Self {
        Self {
            guard,
            timeout,
            ttl,
            cache: Mutex::default(),
        }
    }

    /// Connects and runs the initialize handshake (session ids are the
    /// transport's business).
    async fn connect(&self, server: &McpServer) -> Result<Session, McpError> {
        self.guard.check(&server.url).await?;
        let mut headers = HashMap::new();
        for (name, value) in &server.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| McpError::Refused(format!("header {name:?}: {e}")))?;
            let value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|e| McpError::Refused(format!("header value: {e}")))?;
            headers.insert(name, value);
        }
        let mut config = StreamableHttpClientTransportConfig::with_uri(server.url.as_str())
            .custom_headers(headers);
        if let Some(token) = &server.authorization {
            config = config.auth_header(token.trim_start_matches("Bearer ").to_string());
        }
        let transport = StreamableHttpClientTransport::from_config(config);
        tokio::time::timeout(self.timeout, ().serve(transport))
            .await
            .map_err(|_| McpError::Timeout(self.timeout))?
            .map_err(|e| McpError::Failed(e.to_string()))
    }

    /// The server's tools, every page, from the cache when fresh.
    pub async fn list_tools(&self, server: &McpServer) -> Result<Vec<McpTool>, McpError> {
        if let Some((at, tools)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(server)
        {
            if at.elapsed() < self.ttl {
                return Ok(tools.clone());
            }
        }
        let session = self.connect(server).await?;
        let listed = tokio::time::timeout(self.timeout, session.list_all_tools()).await;
        let _ = session.cancel().await;
        let tools: Vec<McpTool> = listed
            .map_err(|_| McpError::Timeout(self.timeout))?
            .map_err(|e| McpError::Failed(e.to_string()))?
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
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(server.clone(), (Instant::now(), tools.clone()));
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
        let called = tokio::time::timeout(self.timeout, session.call_tool(params)).await;
        let _ = session.cancel().await;
        let result: CallToolResult = called
            .map_err(|_| McpError::Timeout(self.timeout))?
            .map_err(|e| McpError::Failed(e.to_string()))?;
        let text: Vec<String> = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect();
        Ok(McpOutput {
            text: text.join("\n"),
            is_error: result.is_error.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn internal_addresses_and_other_schemes_are_refused() {
        let guard = Guard {
            allow_private: false,
        };
        for url in [
            "http://127.0.0.1:8080/mcp",
            "http://10.1.2.3/mcp",
            "http://192.168.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/mcp",
            "http://[fd00::1]/mcp",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://localhost/mcp",
            "file:///etc/passwd",
            "http://user:pass@example.com/",
        ] {
            assert!(guard.check(url).await.is_err(), "{url}");
        }
        assert!(Guard {
            allow_private: true
        }
        .check("http://127.0.0.1:1/mcp")
        .await
        .is_ok());
        assert!(internal("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!internal("93.184.216.34".parse().unwrap()));
    }
}
