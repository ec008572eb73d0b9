//! The MCP client against a real MCP server: rmcp's Streamable HTTP
//! server, in process on 127.0.0.1. Checks the listing (names, schemas),
//! calls (output, errors), the headers a request asks for, the cache, the
//! time limit, and the SSRF guard.

use std::time::Duration;

use mume_gateway::mcp::{ClientLimits, Guard, McpClient, McpError, McpServer};
use serde_json::json;

use crate::support::mcp_server::McpTestServer;

fn limits(timeout: Duration) -> ClientLimits {
    ClientLimits {
        timeout,
        ttl: Duration::from_secs(60),
        max_response_bytes: 1 << 20,
    }
}

fn client(timeout: Duration) -> McpClient {
    McpClient::new(
        Guard {
            allow_private: true,
            ..Guard::default()
        },
        limits(timeout),
    )
}

fn at(url: &str) -> McpServer {
    McpServer {
        url: url.to_string(),
        authorization: Some("tok".into()),
        headers: vec![("x-team".into(), "a".into())],
        trusted: false,
    }
}

/// Requests that carried the test's `x-team` header and bearer token.
fn authorized(server: &McpTestServer) -> usize {
    server
        .headers()
        .iter()
        .filter(|h| {
            h.get("x-team").is_some_and(|v| v == "a")
                && h.get("authorization").is_some_and(|v| v == "Bearer tok")
        })
        .count()
}

#[tokio::test]
async fn tools_are_listed_called_and_cached() {
    let server = McpTestServer::start().await;
    let url = server.url.clone();
    let c = client(Duration::from_secs(5));
    let tools = c.list_tools(&at(&url)).await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["add", "big", "broken", "gate", "nap", "refuse"]);
    let add = tools.iter().find(|t| t.name == "add").unwrap();
    assert_eq!(add.description.as_deref(), Some("Adds two numbers"));
    assert_eq!(add.input_schema["properties"]["a"]["type"], "integer");
    assert!(
        authorized(&server) > 0,
        "the request's headers and token reach the server"
    );

    let before = server.headers().len();
    let again = c.list_tools(&at(&url)).await.unwrap();
    assert_eq!(again.len(), 6);
    assert_eq!(
        server.headers().len(),
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
async fn every_page_of_the_tool_list_is_read() {
    let url = crate::support::mcp_server::paged().await;
    let tools = client(Duration::from_secs(5))
        .list_tools(&McpServer {
            url,
            authorization: None,
            headers: Vec::new(),
            trusted: false,
        })
        .await
        .unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["one", "two"]);
}

#[tokio::test]
async fn a_slow_tool_hits_the_time_limit() {
    let url = McpTestServer::start().await.url;
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
    let url = McpTestServer::start().await.url;
    let strict = McpClient::new(Guard::default(), limits(Duration::from_secs(2)));
    match strict.list_tools(&at(&url)).await {
        Err(McpError::Refused(why)) => assert!(why.contains("internal address"), "{why}"),
        other => panic!("{other:?}"),
    }
    let allowlisted = McpClient::new(
        Guard {
            allowed_hosts: vec!["127.0.0.1".into()],
            ..Guard::default()
        },
        limits(Duration::from_secs(2)),
    );
    assert_eq!(allowlisted.list_tools(&at(&url)).await.unwrap().len(), 6);
}
