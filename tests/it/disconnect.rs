//! A client that goes away takes its upstream request with it (CD-01..03):
//! the upstream sees its connection dropped, so nobody keeps paying for
//! tokens no one will read. Each upstream holds a guard that fires when its
//! handler or response body is dropped; the client is a raw socket we close.

use std::time::Duration;

use axum::response::IntoResponse;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::gateway::{UP_KEY, UP_KEY_ENV};
use crate::support::upstream::chunk;
use crate::support::{chat_body, DropSignal, Play, TestGateway, Upstream, PATIENCE};

/// Generous bound for the upstream to notice (RELIABILITY asks 100 ms on
/// an idle machine).
const NOTICE: Duration = Duration::from_secs(3);

async fn raw_post(gw: &TestGateway, body: &Value) -> TcpStream {
    let body = body.to_string();
    let mut socket = TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "POST /api/v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        crate::support::test_key().reveal(),
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    socket
}

async fn read_until(socket: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed before sending {needle:?}");
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| panic!("never received {needle:?}"));
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn client_closing_mid_stream_closes_the_upstream_stream() {
    let (upstream, dropped) =
        Upstream::sse_watched(vec![Play::Data(chunk("first")), Play::Hang]).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;

    let mut socket = raw_post(&gw, &chat_body("up/m", true)).await;
    let head = read_until(&mut socket, "\"first\"").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !dropped.fired_within(Duration::from_millis(300)).await,
        "the upstream stream stays open while the client reads"
    );

    drop(socket);
    assert!(
        dropped.fired_within(NOTICE).await,
        "the upstream still streams {NOTICE:?} after the client left"
    );
}

#[tokio::test]
async fn client_closing_while_waiting_for_the_first_token_closes_the_upstream_request() {
    // The upstream has answered 200 and is "thinking": no event yet.
    let (upstream, dropped) = Upstream::sse_watched(vec![Play::Hang]).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;

    let socket = raw_post(&gw, &chat_body("up/m", true)).await;
    upstream.wait_for_requests(1).await;
    assert!(
        !dropped.fired_within(Duration::from_millis(300)).await,
        "the upstream request stays open while the client waits"
    );

    drop(socket);
    assert!(
        dropped.fired_within(NOTICE).await,
        "the upstream request survived the client by {NOTICE:?}"
    );
}

#[tokio::test]
async fn client_closing_a_slow_non_streaming_request_closes_the_upstream_request() {
    let dropped = DropSignal::default();
    let signal = dropped.clone();
    let upstream = Upstream::start(move |_| {
        let guard = signal.guard();
        async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(60)).await;
            "too late".into_response()
        }
    })
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;

    let socket = raw_post(&gw, &chat_body("up/m", false)).await;
    upstream.wait_for_requests(1).await;
    assert!(
        !dropped.fired_within(Duration::from_millis(300)).await,
        "the upstream request stays open while the client waits"
    );

    drop(socket);
    assert!(
        dropped.fired_within(NOTICE).await,
        "the upstream request survived the client by {NOTICE:?}"
    );
}

/// A client that leaves while the gateway still waits for the answer
/// (before any response exists) still gets its access line and metric:
/// status 499, outcome client_closed.
#[tokio::test]
async fn a_request_left_before_its_response_is_logged_and_counted() {
    const ADMIN: &str = "admin-secret-for-tests-0499";
    let upstream = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        axum::Json(serde_json::json!({})).into_response()
    })
    .await;
    let config = crate::support::GatewayConfig::openai(&upstream.base_url).model("id", "up/left");
    let gw = TestGateway::start_with_env(
        &config.toml(),
        &[(UP_KEY_ENV, UP_KEY), ("MUME_ADMIN_KEY", ADMIN)],
    )
    .await;
    let sent = crate::support::client()
        .post(gw.url("/api/v1/chat/completions"))
        .timeout(Duration::from_millis(300))
        .json(&chat_body("up/left", false))
        .send()
        .await;
    assert!(sent.is_err(), "the client gave up");
    let counted = r#"mume_requests_total{model="up/left",provider="up",status="499"} 1"#;
    let started = std::time::Instant::now();
    loop {
        let metrics = crate::support::keyed(ADMIN)
            .get(gw.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains(counted) {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no 499 counted for the request the client left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
