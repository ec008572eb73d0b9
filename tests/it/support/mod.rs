//! Shared test support: the in-process gateway, in-process upstreams, and
//! client-side helpers for JSON errors and SSE streams.

pub mod gateway;
pub mod mcp_server;
pub mod postgres;
pub mod redis;
pub mod upstream;

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};

pub use gateway::{test_key, GatewayConfig, TestGateway, UP_KEY};
pub use upstream::{DropSignal, Play, RawUpstream, Upstream};

/// Upper bound for anything a test waits on; generous for a noisy box.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A test client: no proxies, never waits forever, and sends the test
/// gateway's unlimited key.
pub fn client() -> reqwest::Client {
    keyed(test_key().reveal())
}

/// A test client that sends `key`.
pub fn keyed(key: &str) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header value"),
    );
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .expect("test client")
}

/// A test client that sends no key.
pub fn anonymous() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("test client")
}

/// A minimal Chat Completions request body.
pub fn chat_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
    })
}

/// POSTs `body` as JSON to the gateway's chat completions route.
pub async fn post_chat(gw: &TestGateway, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url("/api/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .expect("request reaches the gateway")
}

/// The value of `x-request-id`, which every response must carry.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .expect("every response carries x-request-id")
        .to_str()
        .expect("x-request-id is ASCII")
        .to_string()
}

/// True for a gateway-generated id: `req_` and a 26-character ULID.
pub fn is_generated_id(id: &str) -> bool {
    id.strip_prefix("req_")
        .is_some_and(|u| u.len() == 26 && ulid::Ulid::from_string(u).is_ok())
}

/// An error response, read whole.
pub struct ErrorReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The raw body text.
    pub text: String,
    /// The `error` object of the envelope.
    pub error: Value,
}

/// Posts `body` as-is (JSON, or not) to the chat endpoint.
pub async fn post_chat_bytes(
    gw: &TestGateway,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client()
        .post(gw.url("/api/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request reaches the gateway")
}

/// Posts `body` as-is to the chat endpoint and reads the error reply.
pub async fn post_chat_raw(gw: &TestGateway, body: impl Into<reqwest::Body>) -> ErrorReply {
    error_reply(post_chat_bytes(gw, body).await).await
}

/// Reads an error response and checks the envelope's shape:
/// `{"error": {"message", "type", "code", "param", "reqId"}}`, JSON
/// content type, and `reqId` equal to the `x-request-id` header.
pub async fn error_reply(response: reqwest::Response) -> ErrorReply {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("error body");
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "error responses are JSON, got content-type {content_type:?} for {status}: {text}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let error = assert_error_object(&body["error"], &request_id(&headers));
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(1),
        "the envelope holds only `error`: {text}"
    );
    ErrorReply {
        status,
        headers,
        text,
        error,
    }
}

/// Checks one error object (HTTP envelope or stream error event) and
/// returns it.
pub fn assert_error_object(error: &Value, request_id: &str) -> Value {
    let object = error
        .as_object()
        .unwrap_or_else(|| panic!("`error` must be an object: {error}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["code", "message", "param", "reqId", "type"],
        "error object keys: {error}"
    );
    for key in ["message", "type", "code"] {
        assert!(
            error[key].as_str().is_some_and(|s| !s.is_empty()),
            "error.{key} must be a non-empty string: {error}"
        );
    }
    assert!(
        error["param"].is_null() || error["param"].is_string(),
        "error.param is a string or null: {error}"
    );
    assert_eq!(error["reqId"], request_id, "error.reqId == x-request-id");
    error.clone()
}

/// Reads a server-sent-events body frame by frame (frames end in a blank
/// line, as the gateway writes them).
pub struct Sse {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    buf: Vec<u8>,
    ended: bool,
}

impl Sse {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buf: Vec::new(),
            ended: false,
        }
    }

    /// The next frame without its trailing blank line, or None at the end
    /// of the body (a transport error also ends it).
    pub async fn next_frame(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(frame[..end].to_vec()).expect("frames are UTF-8");
                return Some(text);
            }
            if self.ended {
                assert!(
                    self.buf.is_empty(),
                    "the stream ended inside a frame: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(_)) | None => self.ended = true,
            }
        }
    }

    /// The next frame, failing the test if none comes within `within`.
    pub async fn expect_frame(&mut self, within: Duration) -> String {
        tokio::time::timeout(within, self.next_frame())
            .await
            .unwrap_or_else(|_| panic!("no SSE frame within {within:?}"))
            .expect("the stream ended early")
    }

    /// Every remaining frame, up to the end of the body.
    pub async fn rest(&mut self) -> Vec<String> {
        let mut frames = Vec::new();
        let all = async {
            while let Some(f) = self.next_frame().await {
                frames.push(f);
            }
        };
        tokio::time::timeout(PATIENCE, all)
            .await
            .expect("the stream ended in time");
        frames
    }
}

/// The JSON of a `data: {...}` frame; None for `[DONE]` and comments.
pub fn data_json(frame: &str) -> Option<Value> {
    let data = frame.strip_prefix("data: ")?;
    if data == "[DONE]" {
        return None;
    }
    Some(serde_json::from_str(data).unwrap_or_else(|e| panic!("malformed frame ({e}): {frame}")))
}

/// The `delta.content` texts of a stream's frames, concatenated.
pub fn content_of(frames: &[String]) -> String {
    frames
        .iter()
        .filter_map(|f| data_json(f))
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

/// Checks that a stream failed the documented way and returns the error
/// object of its final event: the last frame is a chunk with
/// `finish_reason: "error"` carrying `error` and `reqId` (both equal to
/// `x-request-id`), and no frame is `[DONE]`.
pub fn assert_stream_failed(frames: &[String], request_id: &str) -> Value {
    assert!(
        !frames.iter().any(|f| f == "data: [DONE]"),
        "a failed stream must not end with [DONE]: {frames:#?}"
    );
    let last = frames.last().expect("at least the error event");
    let event = data_json(last).unwrap_or_else(|| panic!("last frame is not data: {last}"));
    assert_eq!(event["object"], "chat.completion.chunk", "{event}");
    assert_eq!(
        event["choices"],
        json!([{"index": 0, "delta": {}, "finish_reason": "error"}]),
        "{event}"
    );
    assert_eq!(event["reqId"], request_id, "{event}");
    for f in &frames[..frames.len() - 1] {
        if let Some(v) = data_json(f) {
            assert!(v.get("error").is_none(), "only the last event is an error");
            assert_ne!(
                v.pointer("/choices/0/finish_reason"),
                Some(&json!("stop")),
                "a failed stream never claims to have finished: {f}"
            );
        }
    }
    assert_error_object(&event["error"], request_id)
}

/// Asserts the response is a 200 SSE stream with anti-buffering headers.
pub fn assert_sse_headers(response: &reqwest::Response) {
    assert_eq!(response.status(), StatusCode::OK);
    let h = response.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
}
