//! Upstreams behind the proxy the environment names: an http upstream is
//! asked through HTTP_PROXY in absolute form, an https one through a
//! CONNECT tunnel of HTTPS_PROXY with TLS inside it, and NO_PROXY exempts
//! hosts. The proxies here are raw sockets on 127.0.0.1 that record what
//! they are sent; the upstream hosts do not resolve, so an answer can only
//! have come through the proxy.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::gateway::UP_KEY_ENV;
use crate::support::upstream::{completion, read_request};
use crate::support::{
    chat_body, error_reply, post_chat, GatewayConfig, RawUpstream, TestGateway, Upstream, PATIENCE,
    UP_KEY,
};

/// What a test proxy was sent, one entry per connection.
type Log = Arc<Mutex<Vec<Vec<u8>>>>;

/// `proxy_url` with `user:secret@` credentials, from a RawUpstream's base URL.
fn with_credentials(proxy: &RawUpstream) -> String {
    let authority = proxy
        .base_url
        .trim_start_matches("http://")
        .trim_end_matches("/v1");
    format!("http://user:secret@{authority}")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A forward proxy that answers every request itself with a completion.
async fn answering_proxy(log: Log) -> RawUpstream {
    RawUpstream::start(move |mut socket| {
        let log = log.clone();
        async move {
            let request = read_request(&mut socket).await;
            log.lock().unwrap().push(request);
            let body = completion("via the proxy").to_string();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(format!("{head}{body}").as_bytes()).await;
            let _ = socket.flush().await;
        }
    })
    .await
}

#[tokio::test]
async fn an_http_upstream_is_asked_through_http_proxy_in_absolute_form() {
    let log = Log::default();
    let proxy = answering_proxy(log.clone()).await;
    let config = GatewayConfig::openai("http://upstream.invalid:8000/v1");
    let proxy_url = with_credentials(&proxy);
    let gw = TestGateway::start_with_env(
        &config.toml(),
        &[(UP_KEY_ENV, UP_KEY), ("HTTP_PROXY", &proxy_url)],
    )
    .await;

    let response = post_chat(&gw, &chat_body("up/m", false)).await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "via the proxy");

    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one request reached the proxy");
    let request = text(&seen[0]);
    assert!(
        request.starts_with("POST http://upstream.invalid:8000/v1/chat/completions HTTP/1.1\r\n"),
        "the proxy is asked for the upstream's absolute URL: {request}"
    );
    let lower = request.to_ascii_lowercase();
    // base64("user:secret")
    assert!(
        lower.contains("\r\nproxy-authorization: basic dxnlcjpzzwnyzxq=\r\n"),
        "the proxy's credentials go in Proxy-Authorization: {request}"
    );
    assert!(
        request.contains(&format!("Bearer {UP_KEY}")),
        "the upstream's key goes to the upstream, through the proxy"
    );
    assert!(
        request.contains("\"model\":\"m-upstream\""),
        "the body is the upstream call: {request}"
    );
}

#[tokio::test]
async fn an_https_upstream_is_reached_through_a_connect_tunnel_with_tls_inside() {
    let log = Log::default();
    let recorder = log.clone();
    // Accepts the tunnel, records the first bytes sent inside it, then
    // closes: the TLS handshake cannot finish, so the call fails as an
    // unavailable provider.
    let proxy = RawUpstream::start(move |mut socket| {
        let log = recorder.clone();
        async move {
            let head = read_request(&mut socket).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await;
            let mut inside = vec![0u8; 4096];
            let n = tokio::time::timeout(PATIENCE, socket.read(&mut inside))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            inside.truncate(n);
            log.lock().unwrap().extend([head, inside]);
        }
    })
    .await;
    let config = GatewayConfig::openai("https://api.example.invalid/v1");
    let proxy_url = with_credentials(&proxy);
    let gw = TestGateway::start_with_env(
        &config.toml(),
        &[
            (UP_KEY_ENV, UP_KEY),
            ("https_proxy", &proxy_url),
            ("HTTP_PROXY", "http://127.0.0.1:9"),
        ],
    )
    .await;

    let response = post_chat(&gw, &chat_body("up/m", false)).await;
    let reply = error_reply(response).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(
        reply.error["code"], "provider_unreachable",
        "{}",
        reply.text
    );

    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "the CONNECT request and what followed it");
    let connect = text(&seen[0]);
    assert!(
        connect.starts_with("CONNECT api.example.invalid:443 HTTP/1.1\r\n"),
        "the proxy is asked for a tunnel to the upstream's host and port: {connect}"
    );
    assert!(
        connect
            .to_ascii_lowercase()
            .contains("\r\nproxy-authorization: basic dxnlcjpzzwnyzxq=\r\n"),
        "with the proxy's credentials: {connect}"
    );
    assert!(
        !connect.contains(UP_KEY),
        "the upstream's key is not told to the proxy"
    );
    let inside = &seen[1];
    assert_eq!(
        inside.first(),
        Some(&0x16),
        "a TLS handshake record opens the tunnel"
    );
    assert!(
        inside.windows(19).any(|w| w == b"api.example.invalid"),
        "the TLS hello names the upstream host (SNI)"
    );
    assert!(
        !inside.windows(UP_KEY.len()).any(|w| w == UP_KEY.as_bytes()),
        "nothing is sent in the clear inside the tunnel"
    );
}

#[tokio::test]
async fn no_proxy_exempts_an_upstream_and_a_cgi_environment_ignores_the_proxy() {
    let log = Log::default();
    let proxy = answering_proxy(log.clone()).await;
    let upstream = Upstream::json(200, completion("direct")).await;
    let config = GatewayConfig::openai(&upstream.base_url);
    let proxy_url = with_credentials(&proxy);
    let environments: [&[(&str, &str)]; 2] = [
        &[
            ("HTTP_PROXY", &proxy_url),
            ("NO_PROXY", "localhost, 127.0.0.0/8"),
        ],
        &[("http_proxy", &proxy_url), ("REQUEST_METHOD", "POST")],
    ];
    for extra in environments {
        let mut env = vec![(UP_KEY_ENV, UP_KEY)];
        env.extend_from_slice(extra);
        let gw = TestGateway::start_with_env(&config.toml(), &env).await;
        let response = post_chat(&gw, &chat_body("up/m", false)).await;
        assert_eq!(response.status(), 200, "{extra:?}");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            answer["choices"][0]["message"]["content"], "direct",
            "{extra:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(log.lock().unwrap().is_empty(), "the proxy was never asked");
    assert_eq!(upstream.seen().len(), 2);
}
