//! The HTTP edge: unknown routes and methods, body and header limits
//! (PR-02, PR-03), and the header-read timeout against slowloris (PR-01).
//! Every refusal is the JSON envelope with the request id.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::upstream::completion;
use crate::support::{client, error_reply, post_chat_raw, GatewayConfig, TestGateway, Upstream};

#[tokio::test]
async fn unknown_route_is_a_json_404() {
    let upstream = Upstream::json(200, completion("x")).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    for path in [
        "/api/v1/nope",
        "/",
        "/api/v2/chat/completions",
        "/api/v1/models/",
    ] {
        let reply = error_reply(client().get(gw.url(path)).send().await.unwrap()).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.text);
        assert_eq!(reply.error["type"], "invalid_request_error");
    }
    let reply = error_reply(
        client()
            .post(gw.url("/v1/chat/completions"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error["code"], "route_not_found");
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn wrong_method_is_a_json_405() {
    let upstream = Upstream::json(200, completion("x")).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let cases = [
        (reqwest::Method::GET, "/api/v1/chat/completions"),
        (reqwest::Method::PUT, "/api/v1/chat/completions"),
        (reqwest::Method::POST, "/api/v1/models"),
        (reqwest::Method::DELETE, "/health"),
    ];
    for (method, path) in cases {
        let response = client()
            .request(method.clone(), gw.url(path))
            .send()
            .await
            .unwrap();
        let reply = error_reply(response).await;
        assert_eq!(reply.status, 405, "{method} {path}: {}", reply.text);
        assert_eq!(reply.error["code"], "method_not_allowed");
    }
    assert!(upstream.seen().is_empty());
}

/// A valid chat request padded past 2 KiB.
fn oversized_body() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "up/m",
        "messages": [{"role": "user", "content": "x".repeat(4096)}],
    }))
    .unwrap()
}

#[tokio::test]
async fn body_over_the_limit_is_a_json_413_with_content_length() {
    let upstream = Upstream::json(200, completion("x")).await;
    let config = GatewayConfig::openai(&upstream.base_url).server("body_limit_bytes", 2048);
    let gw = TestGateway::with(&config).await;
    let body = oversized_body();
    let reply = post_chat_raw(&gw, body).await;
    assert_eq!(reply.status, 413, "{}", reply.text);
    assert_eq!(reply.error["code"], "body_too_large");
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn body_over_the_limit_is_a_json_413_when_chunked() {
    let upstream = Upstream::json(200, completion("x")).await;
    let config = GatewayConfig::openai(&upstream.base_url).server("body_limit_bytes", 2048);
    let gw = TestGateway::with(&config).await;
    let pieces: Vec<Result<Bytes, std::io::Error>> = oversized_body()
        .chunks(512)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    // A body from a stream has no Content-Length: it goes chunked.
    let body = reqwest::Body::wrap_stream(futures::stream::iter(pieces));
    let reply = post_chat_raw(&gw, body).await;
    assert_eq!(reply.status, 413, "{}", reply.text);
    assert_eq!(reply.error["code"], "body_too_large");
    assert!(upstream.seen().is_empty());

    // Under the limit, chunked bodies are fine.
    let small = serde_json::to_vec(
        &json!({"model": "up/m", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .unwrap();
    let pieces: Vec<Result<Bytes, std::io::Error>> = small
        .chunks(8)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let response = client()
        .post(gw.url("/api/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn too_many_headers_is_a_json_431() {
    let upstream = Upstream::json(200, completion("x")).await;
    let config = GatewayConfig::openai(&upstream.base_url).server("max_headers", 20);
    let gw = TestGateway::with(&config).await;
    let mut request = client().get(gw.url("/health"));
    for i in 0..40 {
        request = request.header(format!("x-filler-{i}"), "v");
    }
    let reply = error_reply(request.send().await.unwrap()).await;
    assert_eq!(reply.status, 431, "{}", reply.text);
    assert_eq!(reply.error["code"], "headers_too_large");
}

#[tokio::test]
async fn one_huge_header_is_a_json_431() {
    let upstream = Upstream::json(200, completion("x")).await;
    let config = GatewayConfig::openai(&upstream.base_url).server("max_header_bytes", 4096);
    let gw = TestGateway::with(&config).await;
    let response = client()
        .get(gw.url("/health"))
        .header("x-huge", "h".repeat(8192))
        .send()
        .await
        .unwrap();
    let reply = error_reply(response).await;
    assert_eq!(reply.status, 431, "{}", reply.text);
    assert_eq!(reply.error["code"], "headers_too_large");

    // Within the limits the same route answers.
    let ok = client()
        .get(gw.url("/health"))
        .header("x-small", "s")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn slowloris_connection_is_closed_at_the_header_read_timeout() {
    let upstream = Upstream::json(200, completion("x")).await;
    let config = GatewayConfig::openai(&upstream.base_url).server("header_read_timeout", "1s");
    let gw = TestGateway::with(&config).await;

    let socket = TcpStream::connect(gw.addr).await.unwrap();
    let (mut read, mut write) = socket.into_split();
    let started = Instant::now();
    // Headers that never end, one byte every 100 ms.
    let trickle = tokio::spawn(async move {
        let head = "GET /health HTTP/1.1\r\nHost: gw\r\nX-Slow: ";
        let bytes = head.bytes().chain(std::iter::repeat(b'a'));
        for b in bytes {
            if write.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // The server closing the connection shows up as EOF (or a reset).
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    trickle.abort();
    assert!(
        closed.is_ok(),
        "the slow connection was still open after 8 s"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed at the timeout, not at once"
    );

    // The gateway still serves everyone else.
    let ok = client().get(gw.url("/health")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}
