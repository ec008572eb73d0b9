//! Upstream failures before anything was sent to the client are real HTTP
//! statuses with the JSON envelope, for streams too (UF-09); the error
//! table maps upstream statuses; the provider key never shows.

use std::time::Duration;

use axum::response::IntoResponse;
use serde_json::{json, Value};

use axum::body::Body;

use crate::support::upstream::{closed_port_url, read_request, respond, sse_response};
use crate::support::{
    chat_body, error_reply, post_chat, ErrorReply, GatewayConfig, Play, RawUpstream, Sse,
    TestGateway, Upstream, UP_KEY,
};

/// Sends a chat request and checks the error envelope, the status, and
/// that the provider key appears nowhere in the answer.
async fn expect_error(gw: &TestGateway, stream: bool, status: u16) -> ErrorReply {
    let reply = error_reply(post_chat(gw, &chat_body("up/m", stream)).await).await;
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text);
    assert!(
        !reply.text.contains(UP_KEY),
        "provider key in body: {}",
        reply.text
    );
    for (name, value) in &reply.headers {
        assert!(
            !value.to_str().unwrap_or_default().contains(UP_KEY),
            "provider key in header {name}"
        );
    }
    reply
}

fn message(reply: &ErrorReply) -> &str {
    reply.error["message"].as_str().unwrap()
}

// ---- streaming requests, before the first byte -------------------------

#[tokio::test]
async fn stream_upstream_429_before_first_byte_is_a_429_with_its_retry_after() {
    let upstream = Upstream::json_with_headers(
        429,
        &[("retry-after", "7")],
        json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}}),
    )
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let reply = expect_error(&gw, true, 429).await;
    assert_eq!(reply.headers["retry-after"], "7");
    assert_eq!(reply.error["type"], "rate_limit_error");
    assert_eq!(reply.error["code"], "upstream_rate_limited");
    assert!(message(&reply).contains("Rate limit reached for requests"));
}

/// `Retry-After` may also be an HTTP-date (RFC 9110): the client gets the
/// delay it names, in seconds.
#[tokio::test]
async fn an_upstream_retry_after_given_as_a_date_reaches_the_client_as_seconds() {
    let at = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
    let upstream = Upstream::json_with_headers(
        429,
        &[("retry-after", at.as_str())],
        json!({"error": {"message": "Rate limit reached for requests"}}),
    )
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let reply = expect_error(&gw, false, 429).await;
    let seconds: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((118..=120).contains(&seconds), "{seconds}");
}

/// An error body past the 64 KiB the gateway reads still gives its
/// message, and a key it echoes is redacted wherever the message is cut.
#[tokio::test]
async fn a_long_upstream_error_keeps_its_message_and_never_its_key() {
    let long = format!("{}{UP_KEY} {}", "x".repeat(280), "y".repeat(100_000));
    let upstream = Upstream::start(move |_| {
        let long = long.clone();
        async move { respond(400, &[], Body::from(long)) }
    })
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let reply = expect_error(&gw, false, 400).await;
    let text = message(&reply);
    assert!(text.contains("xxxxxxxx"), "{text}");
    assert!(!text.contains(&UP_KEY[..8]), "a part of the key: {text}");
}

/// `connect_timeout` bounds the whole connection, the TLS handshake
/// included: an upstream that accepts TCP and never answers the handshake
/// is unreachable within it, not a timeout of the whole request.
#[tokio::test]
async fn a_tls_handshake_that_never_ends_is_bounded_by_the_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config =
        GatewayConfig::openai(&format!("https://{addr}/v1")).provider("connect_timeout", "300ms");
    let gw = TestGateway::with(&config).await;
    let reply = expect_error(&gw, false, 503).await;
    assert_eq!(
        reply.error["code"], "provider_unreachable",
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn stream_upstream_503_before_first_byte_is_a_503() {
    let upstream = Upstream::json(503, json!({"error": {"message": "overloaded"}})).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let reply = expect_error(&gw, true, 503).await;
    assert_eq!(reply.error["type"], "service_unavailable");
    assert!(message(&reply).contains("up"), "names the provider");
}

#[tokio::test]
async fn stream_upstream_that_closes_after_200_headers_is_a_503_not_a_200() {
    let upstream = RawUpstream::answer_then_close(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let reply = expect_error(&gw, true, 503).await;
    assert_eq!(reply.error["code"], "provider_unreachable");
}

#[tokio::test]
async fn stream_upstream_that_sends_headers_but_no_event_is_a_503_at_first_byte_timeout() {
    let upstream = Upstream::sse(vec![Play::Hang]).await;
    let config = GatewayConfig::openai(&upstream.base_url).provider("first_byte_timeout", "500ms");
    let gw = TestGateway::with(&config).await;
    let reply = expect_error(&gw, true, 503).await;
    assert_eq!(reply.error["code"], "provider_timeout");
}

#[tokio::test]
async fn stream_upstream_that_never_sends_headers_is_a_503_at_first_byte_timeout() {
    let upstream = RawUpstream::start(|mut socket| async move {
        read_request(&mut socket).await;
        // Hold the connection open and say nothing.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(socket);
    })
    .await;
    let config = GatewayConfig::openai(&upstream.base_url).provider("first_byte_timeout", "500ms");
    let gw = TestGateway::with(&config).await;
    let reply = expect_error(&gw, true, 503).await;
    assert_eq!(reply.error["code"], "provider_timeout");
}

// ---- non-streaming requests ---------------------------------------------

#[tokio::test]
async fn upstream_400_is_a_400_with_the_upstream_message() {
    let upstream = Upstream::json(
        400,
        json!({"error": {
            "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9001 tokens.",
            "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"
        }}),
    )
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let reply = expect_error(&gw, false, 400).await;
    assert!(message(&reply).contains("maximum context length is 8192 tokens"));
    assert_eq!(reply.error["param"], "messages");
    assert_eq!(reply.error["type"], "invalid_request_error");
    assert_eq!(upstream.seen().len(), 1, "a 400 is not retried");
}

#[tokio::test]
async fn upstream_429_is_a_429_with_retry_after() {
    let upstream = Upstream::json_with_headers(
        429,
        &[("retry-after", "3")],
        json!({"error": {"message": "slow down", "type": "requests"}}),
    )
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let reply = expect_error(&gw, false, 429).await;
    assert_eq!(reply.headers["retry-after"], "3");
    assert!(message(&reply).contains("slow down"));
}

#[tokio::test]
async fn upstream_500_is_a_503_naming_the_provider() {
    let upstream = Upstream::json(500, json!({"error": {"message": "boom at worker 17"}})).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let reply = expect_error(&gw, false, 503).await;
    assert_eq!(reply.error["code"], "provider_unavailable");
    assert!(
        message(&reply).contains("Provider up"),
        "{}",
        message(&reply)
    );
}

#[tokio::test]
async fn refused_connection_is_a_503() {
    let gw = TestGateway::for_upstream(&closed_port_url()).await;
    let reply = expect_error(&gw, false, 503).await;
    assert_eq!(reply.error["code"], "provider_unreachable");
    assert!(message(&reply).contains("Provider up"));
    let reply = expect_error(&gw, true, 503).await;
    assert_eq!(reply.error["code"], "provider_unreachable");
}

#[tokio::test]
async fn silent_upstream_is_a_503_at_the_total_timeout() {
    let upstream = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        "too late".into_response()
    })
    .await;
    let config = GatewayConfig::openai(&upstream.base_url).provider("total_timeout", "500ms");
    let gw = TestGateway::with(&config).await;
    let reply = expect_error(&gw, false, 503).await;
    assert_eq!(reply.error["code"], "provider_timeout");
}

#[tokio::test]
async fn non_json_200_body_is_a_503() {
    let upstream = Upstream::fixed(
        200,
        &[("content-type", "text/html")],
        "<html><body>Welcome to nginx!</body></html>",
    )
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let reply = expect_error(&gw, false, 503).await;
    assert_eq!(reply.error["code"], "provider_invalid_response");
    assert!(
        !reply.text.contains("nginx"),
        "upstream garbage is not relayed"
    );
}

#[tokio::test]
async fn upstream_401_is_a_503_provider_auth_failed_never_a_401() {
    let upstream = Upstream::json(
        401,
        json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}),
    )
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    for stream in [false, true] {
        let reply = expect_error(&gw, stream, 503).await;
        assert_eq!(reply.error["code"], "provider_auth_failed");
        assert_eq!(reply.error["type"], "service_unavailable");
    }
}

/// Some upstreams quote the key they were sent in their error messages.
/// Whatever the gateway relays of those messages must not carry it.
#[tokio::test]
async fn provider_key_never_reaches_the_client_even_when_the_upstream_echoes_it() {
    let upstream = Upstream::start(|request| async move {
        let auth = request.headers["authorization"]
            .to_str()
            .unwrap()
            .to_string();
        let text = format!("Incorrect API key provided: {auth}. You sent {auth}");
        let content = request.body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default();
        if content == "200-json" {
            // A 200 whose body is an error instead of a completion.
            return axum::Json(json!({"error": {"message": text}})).into_response();
        }
        let status = content.parse::<u16>().unwrap_or(200);
        if status == 200 {
            // A stream that fails mid-way with the key in its error event.
            let event = json!({"error": {"message": text}}).to_string();
            return sse_response(
                vec![
                    Play::Data(crate::support::upstream::chunk("a")),
                    Play::Data(event),
                ],
                None,
            );
        }
        let body = json!({"error": {"message": text, "param": text, "code": "x"}});
        let mut response = axum::Json(body).into_response();
        *response.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
        response
    })
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let with_content = |content: &str, stream: bool| -> Value {
        json!({"model": "up/m", "messages": [{"role": "user", "content": content}], "stream": stream})
    };
    for status in [400u16, 401, 403, 404, 422, 429, 500, 503] {
        for stream in [false, true] {
            let response = post_chat(&gw, &with_content(&status.to_string(), stream)).await;
            let text = response.text().await.unwrap();
            assert!(
                !text.contains(UP_KEY),
                "upstream {status} (stream: {stream}): the key reached the client: {text}"
            );
        }
    }
    let response = post_chat(&gw, &with_content("200-json", false)).await;
    let text = response.text().await.unwrap();
    assert!(text.contains("Incorrect API key provided"), "{text}");
    assert!(!text.contains(UP_KEY), "the key reached the client: {text}");

    let response = post_chat(&gw, &with_content("200", true)).await;
    let frames = Sse::new(response).rest().await;
    for frame in frames {
        assert!(
            !frame.contains(UP_KEY),
            "the key reached the client: {frame}"
        );
    }
}
