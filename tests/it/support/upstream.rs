//! Upstream providers for tests: real HTTP servers on 127.0.0.1:0, one per
//! test. `Upstream` is an axum server whose handler each test supplies (it
//! records every request it gets); `Play` scripts an SSE body, including
//! silence, waiting for the test, and cutting the connection; `RawUpstream`
//! hands each accepted socket to the test for byte-level misbehaviour.

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub headers: HeaderMap,
    /// The body as JSON (Null if it was not JSON).
    pub body: Value,
    /// The body as it came.
    pub raw: Bytes,
}

pub struct Upstream {
    /// `http://127.0.0.1:PORT/v1`, the provider's `base_url`.
    pub base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Serves `handler` at `POST /v1/chat/completions`.
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Seen) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        Self::start_at("/v1/chat/completions", handler).await
    }

    /// Serves `handler` at `POST path` (e.g. Anthropic's `/v1/messages`).
    pub async fn start_at<F, Fut>(path: &str, handler: F) -> Self
    where
        F: Fn(Seen) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let route = move |headers: HeaderMap, body: Bytes| {
            let handler = handler.clone();
            let record = record.clone();
            async move {
                let request = Seen {
                    headers,
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    raw: body,
                };
                record.lock().unwrap().push(request.clone());
                handler(request).await
            }
        };
        let app = Router::new().route(path, post(route));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            seen,
            task,
        }
    }

    /// Always answers `status` with this body and these headers.
    pub async fn fixed(status: u16, headers: &[(&str, &str)], body: &str) -> Self {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body = body.to_string();
        Self::start(move |_| {
            let headers = headers.clone();
            let body = body.clone();
            async move { respond(status, &headers, Body::from(body)) }
        })
        .await
    }

    /// Always answers `status` with a JSON body.
    pub async fn json(status: u16, body: Value) -> Self {
        Self::json_with_headers(status, &[], body).await
    }

    pub async fn json_with_headers(status: u16, headers: &[(&str, &str)], body: Value) -> Self {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        Self::fixed(status, &all, &body.to_string()).await
    }

    /// Answers every request with a 200 SSE body played from `script`.
    pub async fn sse(script: Vec<Play>) -> Self {
        Self::start(move |_| {
            let script = script.clone();
            async move { sse_response(script, None) }
        })
        .await
    }

    /// Like `sse`, and the returned signal fires when the upstream's
    /// response (or its handler, before it answered) is dropped: that is,
    /// when the connection to the gateway went away.
    pub async fn sse_watched(script: Vec<Play>) -> (Self, DropSignal) {
        let signal = DropSignal::default();
        let s = signal.clone();
        let upstream = Self::start(move |_| {
            let script = script.clone();
            let guard = s.guard();
            async move { sse_response(script, Some(guard)) }
        })
        .await;
        (upstream, signal)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The only request received; fails the test if there was not exactly one.
    pub fn only_request(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "the upstream got exactly one request");
        seen.into_iter().next().unwrap()
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_for_requests(&self, n: usize) {
        let wait = async {
            while self.seen.lock().unwrap().len() < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(super::PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("the upstream never got {n} request(s)"));
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn respond(status: u16, headers: &[(String, String)], body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    for (k, v) in headers {
        response.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    response
}

/// One step of a scripted SSE body.
#[derive(Clone)]
pub enum Play {
    /// Sends `data: <text>\n\n`.
    Data(String),
    /// Sends these bytes as they are.
    Raw(String),
    Sleep(Duration),
    /// Waits until the test fires this.
    Wait(Arc<Notify>),
    /// Cuts the connection: the body fails, hyper aborts without a terminator.
    Abort,
    /// Sends nothing more, ever.
    Hang,
}

/// A 200 `text/event-stream` response playing `script`; the body ends
/// cleanly after the last step. `guard` lives as long as the body.
pub fn sse_response(script: Vec<Play>, guard: Option<DropGuard>) -> Response {
    let body = async_stream::stream! {
        let _guard = guard;
        for step in script {
            match step {
                Play::Data(text) => yield Ok::<Bytes, io::Error>(Bytes::from(format!("data: {text}\n\n"))),
                Play::Raw(text) => yield Ok(Bytes::from(text)),
                Play::Sleep(d) => tokio::time::sleep(d).await,
                Play::Wait(n) => n.notified().await,
                Play::Abort => {
                    yield Err(io::Error::other("upstream cut the stream"));
                    return;
                }
                Play::Hang => futures::future::pending::<()>().await,
            }
        }
    };
    respond(
        200,
        &[("content-type".into(), "text/event-stream".into())],
        Body::from_stream(body),
    )
}

/// A streamed chunk carrying `content`, as the upstream names things.
pub fn chunk(content: &str) -> String {
    json!({
        "id": "chatcmpl-up-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "m-upstream", "system_fingerprint": "fp_up",
        "choices": [{"index": 0, "delta": {"content": content}, "logprobs": null, "finish_reason": null}],
    })
    .to_string()
}

/// The chunk that finishes choice 0.
pub fn finish_chunk(reason: &str) -> String {
    json!({
        "id": "chatcmpl-up-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "m-upstream",
        "choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason}],
    })
    .to_string()
}

/// The usage-only chunk OpenAI sends last when asked for usage.
pub fn usage_chunk(prompt: u64, completion: u64) -> String {
    json!({
        "id": "chatcmpl-up-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "m-upstream", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })
    .to_string()
}

/// A complete, well-formed stream answering `words`.
pub fn answer(words: &[&str]) -> Vec<Play> {
    let mut script: Vec<Play> = words.iter().map(|w| Play::Data(chunk(w))).collect();
    script.push(Play::Data(finish_chunk("stop")));
    script.push(Play::Data("[DONE]".into()));
    script
}

/// A minimal non-streaming completion.
pub fn completion(text: &str) -> Value {
    json!({
        "id": "chatcmpl-up-1", "object": "chat.completion", "created": 1_700_000_000,
        "model": "m-upstream",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    })
}

/// Fires when a `DropGuard` made from it is dropped (tests hand out one
/// guard per request, so: when that request's handler or body went away).
#[derive(Clone, Default)]
pub struct DropSignal(Arc<Notify>);

pub struct DropGuard(Arc<Notify>);

impl DropSignal {
    pub fn guard(&self) -> DropGuard {
        DropGuard(self.0.clone())
    }

    pub async fn fired_within(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.0.notified())
            .await
            .is_ok()
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// An upstream that hands each accepted connection to the test.
pub struct RawUpstream {
    pub base_url: String,
    task: JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start<F, Fut>(on_connection: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(on_connection(socket));
            }
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            task,
        }
    }

    /// Reads one request, writes `head` (and nothing more), then closes.
    pub async fn answer_then_close(head: &'static str) -> Self {
        Self::start(move |mut socket| async move {
            read_request(&mut socket).await;
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.flush().await;
            // Let the bytes go out before the close.
            tokio::time::sleep(Duration::from_millis(50)).await;
        })
        .await
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 request (head and Content-Length body) from `socket`.
pub async fn read_request(socket: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return buf;
            }
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A base URL on which nothing listens (connection refused).
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/v1")
}
