//! The MCP client (issue 9 groundwork) against a real MCP server: rmcp's
//! Streamable HTTP server, in process on 127.0.0.1, with two tools. Checks
//! the listing (names, schemas), calls (output, errors), the headers a
//! request asks for, the cache, the time limit, and the SSRF guard.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use mume_gateway::mcp::{Guard, McpClient, McpError, McpServer};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ServerHandler};
use serde_json::json;

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct AddArgs {
    /// The first number
    a: i64,
    b: i64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct NapArgs {
    ms: u64,
}

#[derive(Debug, Clone)]
struct Tools;

#[tool_router]
impl Tools {
    #[tool(description = "Adds two numbers")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        (a + b).to_string()
    }

    #[tool(description = "Sleeps, then answers")]
    async fn nap(&self, Parameters(NapArgs { ms }): Parameters<NapArgs>) -> String {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        "awake".into()
    }
}

#[tool_handler]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// An MCP server at `/mcp`; counts the requests that carry `x-team: a`
/// and a bearer token `tok`.
async fn server() -> (String, Arc<AtomicUsize>) {
    let service = StreamableHttpService::new(
        || Ok(Tools),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    let app = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let count = count.clone();
                async move {
                    let h = req.headers();
                    if h.get("x-team").is_some_and(|v| v == "a")
                        && h.get("authorization").is_some_and(|v| v == "Bearer tok")
                    {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    let r: Response = next.run(req).await;
                    r
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/mcp"), seen)
}

fn client(timeout: Duration) -> McpClient {
    McpClient::new(
        Guard {
            allow_private: true,
        },
        timeout,
        Duration::from_secs(60),
    )
}

fn at(url: &str) -> McpServer {
    McpServer {
        url: url.to_string(),
        authorization: Some("tok".into()),
        headers: vec![("x-team".into(), "a".into())],
    }
}

#[tokio::test]
async fn tools_are_listed_called_and_cached() {
    let (url, seen) = server().await;
    let c = client(Duration::from_secs(5));
    let tools = c.list_tools(&at(&url)).await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["add", "nap"]);
    let add = tools.iter().find(|t| t.name == "add").unwrap();
    assert_eq!(add.description.as_deref(), Some("Adds two numbers"));
    assert_eq!(add.input_schema["properties"]["a"]["type"], "integer");
    assert!(
        seen.load(Ordering::SeqCst) > 0,
        "the request's headers and token reach the server"
    );

    let before = seen.load(Ordering::SeqCst);
    let again = c.list_tools(&at(&url)).await.unwrap();
    assert_eq!(again.len(), 2);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        before,
        "the second listing came from the cache"
    );

    let args = json!({"a": 2, "b": 40}).as_object().unwrap().clone();
    let out = c.call(&at(&url), "add", args).await.unwrap();
    assert_eq!(out.text, "42");
    assert!(!out.is_error);
    let bad = c
        .call(
            &at(&url),
            "add",
            json!({"a": "x"}).as_object().unwrap().clone(),
        )
        .await;
    assert!(
        bad.is_err() || bad.unwrap().is_error,
        "invalid arguments fail"
    );
}

#[tokio::test]
async fn a_slow_tool_hits_the_time_limit() {
    let (url, _) = server().await;
    let c = client(Duration::from_millis(300));
    let slow = c
        .call(
            &at(&url),
            "nap",
            json!({"ms": 2000}).as_object().unwrap().clone(),
        )
        .await;
    assert_eq!(
        slow.unwrap_err(),
        McpError::Timeout(Duration::from_millis(300))
    );
}

#[tokio::test]
async fn the_guard_keeps_requests_off_internal_addresses() {
    let (url, _) = server().await;
    let strict = McpClient::new(
        Guard {
            allow_private: false,
        },
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    match strict.list_tools(&at(&url)).await {
        Err(McpError::Refused(why)) => assert!(why.contains("internal address"), "{why}"),
        other => panic!("{other:?}"),
    }
}
