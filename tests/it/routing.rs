//! Routing and resilience: several endpoints per model, retries with
//! backoff, `models` fallbacks, provider preferences, circuit breaking,
//! the retry budget (UF-01..UF-05, UF-10..UF-13, CR-07).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::IntoResponse;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::support::upstream::{answer, chunk, completion, read_request, respond, RawUpstream};
use crate::support::{
    assert_stream_failed, chat_body, client, content_of, error_reply, keyed, post_chat, request_id,
    Play, Sse, TestGateway, Upstream,
};

const ADMIN: &str = "admin-secret-for-routing-tests";

/// A gateway config: providers `(name, base_url)` sharing `provider_settings`,
/// then `rest` (models, routing) as written. Real-time tests use backoffs
/// of at most 50 ms; the tests of the waits themselves pause tokio's clock,
/// so the gateway serves on the test's own runtime (one thread), whose
/// clock that is.
fn config(providers: &[(&str, &str)], provider_settings: &str, rest: &str) -> String {
    let mut out = String::from("[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n");
    // Short backoffs unless the test sets its own.
    let backoff = if provider_settings.contains("backoff_") {
        ""
    } else {
        "backoff_base = \"10ms\"\nbackoff_cap = \"50ms\"\n"
    };
    for (name, url) in providers {
        out.push_str(&format!(
            "\n[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"{url}\"\n{backoff}{provider_settings}\n"
        ));
    }
    out.push('\n');
    out.push_str(rest);
    out
}

/// Model `up/m` served by the named providers, in this order of priority.
fn model_on(providers: &[&str]) -> String {
    let endpoints: Vec<String> = providers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "{{ provider = \"{p}\", upstream = \"m\", priority = {} }}",
                i + 1
            )
        })
        .collect();
    format!(
        "[[models]]\nid = \"up/m\"\nendpoints = [{}]\n",
        endpoints.join(", ")
    )
}

/// Model `up/m` on one endpoint: provider `a` at `base_url`, with
/// `settings`.
async fn single(base_url: &str, settings: &str) -> TestGateway {
    gateway(&config(&[("a", base_url)], settings, &model_on(&["a"]))).await
}

/// Model `up/m` on endpoints `a` (priority 1) and `b` (priority 2), both
/// providers with `settings`, plus these `[routing]` lines.
async fn pair(a: &Upstream, b: &Upstream, settings: &str, routing: &str) -> TestGateway {
    gateway(&config(
        &[("a", &a.base_url), ("b", &b.base_url)],
        settings,
        &format!("{}\n[routing]\n{routing}\n", model_on(&["a", "b"])),
    ))
    .await
}

async fn gateway(toml: &str) -> TestGateway {
    TestGateway::start_with_env(toml, &[("MUME_ADMIN_KEY", ADMIN)]).await
}

/// One scripted answer: status, headers, JSON body.
type Reply = (u16, Vec<(String, String)>, Value);

/// An upstream answering with `replies` in turn (the last one repeats).
async fn scripted(replies: Vec<Reply>) -> Upstream {
    let calls = Arc::new(AtomicUsize::new(0));
    Upstream::start(move |_| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let (status, headers, body) = replies[n.min(replies.len() - 1)].clone();
        async move { respond(status, &headers, Body::from(body.to_string())) }
    })
    .await
}

fn ok() -> Reply {
    (200, vec![], completion("hello"))
}

fn status(code: u16) -> Reply {
    (
        code,
        vec![],
        json!({"error": {"message": format!("upstream says {code}")}}),
    )
}

/// The statuses of `n` requests for `up/m`, `concurrency` at a time.
async fn statuses(gw: &TestGateway, n: usize, concurrency: usize) -> Vec<reqwest::StatusCode> {
    futures::stream::iter(0..n)
        .map(|_| async { post_chat(gw, &chat_body("up/m", false)).await.status() })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

fn header<'a>(reply: &'a reqwest::Response, name: &str) -> &'a str {
    reply
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// An upstream answering `replies` in turn (the last one repeats) and
/// noting, on tokio's clock, when each request came.
async fn timed(replies: Vec<Reply>) -> (Upstream, Arc<Mutex<Vec<tokio::time::Instant>>>) {
    let times = Arc::new(Mutex::new(Vec::new()));
    let seen = times.clone();
    let upstream = Upstream::start(move |_| {
        let n = {
            let mut t = seen.lock().unwrap();
            t.push(tokio::time::Instant::now());
            t.len() - 1
        };
        let (status, headers, body) = replies[n.min(replies.len() - 1)].clone();
        async move { respond(status, &headers, Body::from(body.to_string())) }
    })
    .await;
    (upstream, times)
}

/// Sends one request with tokio's clock paused, so that backoff and
/// `Retry-After` waits pass in no real time. The key is authenticated
/// before the pause (its lookup waits on the store's thread, which a
/// paused clock would race) and the client has no timeout of its own.
async fn on_paused_clock(gw: &TestGateway) -> (reqwest::Response, Duration) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", crate::support::test_key().reveal())
                    .parse()
                    .unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let warm = client.get(gw.url("/api/v1/key")).send().await.unwrap();
    assert_eq!(warm.status(), 200);
    tokio::time::pause();
    let wall = Instant::now();
    let reply = client
        .post(gw.url("/api/v1/chat/completions"))
        .json(&chat_body("up/m", false))
        .send()
        .await
        .unwrap();
    let took = wall.elapsed();
    tokio::time::resume();
    (reply, took)
}

#[tokio::test]
async fn uf01_a_429_with_retry_after_is_waited_out_on_the_only_endpoint() {
    let (upstream, times) = timed(vec![
        (
            429,
            vec![("retry-after".into(), "2".into())],
            json!({"error": {"message": "slow down"}}),
        ),
        ok(),
    ])
    .await;
    let gw = single(&upstream.base_url, "").await;
    let (reply, wall) = on_paused_clock(&gw).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(header(&reply, "x-mume-attempts"), "2");
    let t = times.lock().unwrap().clone();
    assert_eq!(t.len(), 2);
    assert!(t[1] - t[0] >= Duration::from_secs(2), "{:?}", t[1] - t[0]);
    assert!(
        wall < Duration::from_secs(1),
        "the wait took no real time: {wall:?}"
    );
}

/// Backoff before retry n is uniform in [0, min(cap, base × 2^(n-1))].
#[tokio::test]
async fn retries_back_off_exponentially_with_jitter() {
    let (upstream, times) = timed(vec![status(500), status(502), status(503), ok()]).await;
    let gw = single(
        &upstream.base_url,
        "max_attempts = 4\nbackoff_base = \"1s\"\nbackoff_cap = \"3s\"",
    )
    .await;
    let (reply, wall) = on_paused_clock(&gw).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(header(&reply, "x-mume-attempts"), "4");
    let t = times.lock().unwrap().clone();
    let gaps: Vec<Duration> = t.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, ceiling) in gaps.iter().zip([1, 2, 3]) {
        assert!(*gap <= Duration::from_secs(ceiling), "{gaps:?}");
    }
    assert!(
        gaps.iter().sum::<Duration>() > Duration::from_millis(10),
        "{gaps:?}"
    );
    assert!(wall < Duration::from_secs(1), "{wall:?}");
}

#[tokio::test]
async fn uf01_a_429_moves_straight_to_another_endpoint() {
    let a = scripted(vec![(
        429,
        vec![("retry-after".into(), "2".into())],
        json!({"error": {"message": "slow down"}}),
    )])
    .await;
    let b = scripted(vec![ok()]).await;
    let gw = pair(&a, &b, "", "").await;
    let started = Instant::now();
    let reply = post_chat(&gw, &chat_body("up/m", false)).await;
    assert_eq!(reply.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(header(&reply, "x-mume-provider"), "b");
    assert_eq!(header(&reply, "x-mume-attempts"), "2");
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["model"], "up/m");
}

#[tokio::test]
async fn uf02_a_500_once_then_200_succeeds() {
    let upstream = scripted(vec![status(500), ok()]).await;
    let gw = single(&upstream.base_url, "").await;
    let reply = post_chat(&gw, &chat_body("up/m", false)).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(header(&reply, "x-mume-attempts"), "2");
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test]
async fn uf03_a_persistent_503_ends_after_the_attempts_naming_the_provider() {
    let upstream = scripted(vec![status(503)]).await;
    let gw = single(&upstream.base_url, "").await;
    let reply = post_chat(&gw, &chat_body("up/m", false)).await;
    assert_eq!(header(&reply, "x-mume-attempts"), "2");
    let e = error_reply(reply).await;
    assert_eq!(e.status, 503);
    let message = e.error["message"].as_str().unwrap();
    assert!(message.contains("Provider a answered 503"), "{message}");
    assert!(
        message.contains("Tried 2 time(s): up/m via a: 503; up/m via a: 503"),
        "{message}"
    );
    assert!(upstream.seen().len() <= 3);
}

#[tokio::test]
async fn uf04_a_connection_reset_before_headers_is_retried() {
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let upstream = RawUpstream::start(move |mut socket| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        async move {
            read_request(&mut socket).await;
            if n == 0 {
                // Close with nothing written: the gateway sees a reset.
                return;
            }
            let body = completion("hello").to_string();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
            let _ = socket.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let gw = single(&upstream.base_url, "").await;
    let reply = post_chat(&gw, &chat_body("up/m", false)).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(header(&reply, "x-mume-attempts"), "2");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn uf05_a_silent_endpoint_ends_at_its_first_byte_timeout_or_fails_over() {
    let silent = Upstream::sse(vec![Play::Hang]).await;
    let good = Upstream::sse(answer(&["hello"])).await;
    let settings = "first_byte_timeout = \"300ms\"\nmax_attempts = 3";

    // Alone: one wait of the first-byte timeout, no retry of the silence.
    let gw = single(&silent.base_url, settings).await;
    let started = Instant::now();
    let reply = post_chat(&gw, &chat_body("up/m", true)).await;
    let e = error_reply(reply).await;
    assert_eq!(e.status, 503);
    assert_eq!(e.error["code"], "provider_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(1300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(silent.seen().len(), 1);

    // With another endpoint: it answers.
    let gw = pair(&silent, &good, settings, "").await;
    let reply = post_chat(&gw, &chat_body("up/m", true)).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(header(&reply, "x-mume-provider"), "b");
    let frames = Sse::new(reply).rest().await;
    assert_eq!(content_of(&frames), "hello");
}

#[tokio::test]
async fn a_stream_that_fails_before_its_first_content_fails_over_cleanly() {
    // A role chunk, then the connection drops: no content yet.
    let role = json!({"id": "c-a", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]});
    let a = Upstream::sse(vec![
        Play::Data(role.to_string()),
        Play::Sleep(Duration::from_millis(20)),
        Play::Abort,
    ])
    .await;
    let b = Upstream::sse(answer(&["hello", " world"])).await;
    let gw = pair(&a, &b, "", "").await;
    let reply = post_chat(&gw, &chat_body("up/m", true)).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(header(&reply, "x-mume-attempts"), "2");
    let frames = Sse::new(reply).rest().await;
    assert_eq!(content_of(&frames), "hello world");
    assert_eq!(frames.last().unwrap(), "data: [DONE]");
    assert!(
        frames.iter().all(|f| !f.contains("c-a")),
        "nothing of the failed attempt reached the client: {frames:?}"
    );
}

#[tokio::test]
async fn uf10_after_content_reached_the_client_there_is_no_retry() {
    let mut script = vec![Play::Data(chunk("partial"))];
    script.push(Play::Sleep(Duration::from_millis(20)));
    script.push(Play::Abort);
    let a = Upstream::sse(script).await;
    let b = Upstream::sse(answer(&["never"])).await;
    let gw = pair(&a, &b, "max_attempts = 3", "").await;
    let reply = post_chat(&gw, &chat_body("up/m", true)).await;
    assert_eq!(reply.status(), 200);
    let id = request_id(reply.headers());
    let frames = Sse::new(reply).rest().await;
    assert_eq!(content_of(&frames), "partial");
    assert_stream_failed(&frames, &id);
    assert_eq!(a.seen().len(), 1);
    assert!(b.seen().is_empty(), "no failover after content");
}

#[tokio::test]
async fn uf11_an_upstream_400_is_tried_exactly_once() {
    let a = scripted(vec![(
        400,
        vec![],
        json!({"error": {"message": "context length exceeded", "param": "messages"}}),
    )])
    .await;
    let b = scripted(vec![ok()]).await;
    let gw = pair(&a, &b, "max_attempts = 3", "").await;
    let reply = post_chat(&gw, &chat_body("up/m", false)).await;
    let e = error_reply(reply).await;
    assert_eq!(e.status, 400);
    assert!(e.error["message"]
        .as_str()
        .unwrap()
        .contains("context length exceeded"));
    assert_eq!(a.seen().len(), 1);
    assert!(b.seen().is_empty());
}

/// UF-12, the retry budget alone (circuits kept closed): under a storm of
/// 5xx, upstream attempts stay within 1.2 × the client's requests.
#[tokio::test]
async fn uf12_a_5xx_storm_stays_within_the_retry_budget() {
    let a = scripted(vec![status(500)]).await;
    let b = scripted(vec![status(502)]).await;
    let gw = pair(&a, &b, "max_attempts = 3", "circuit_failures = 1000").await;
    let requests = 200;
    let replies = statuses(&gw, requests, 16).await;
    assert!(replies.iter().all(|s| s.as_u16() == 503));
    let attempts = a.seen().len() + b.seen().len();
    assert!(
        attempts <= requests * 12 / 10,
        "{attempts} attempts for {requests} requests"
    );
    assert!(attempts > requests, "some retries were made: {attempts}");
}

#[tokio::test]
async fn uf13_an_endpoint_that_keeps_failing_is_ejected_and_comes_back() {
    let broken = Arc::new(AtomicBool::new(true));
    let flag = broken.clone();
    let a = Upstream::start(move |_| {
        let broken = flag.load(Ordering::SeqCst);
        async move {
            if broken {
                respond(500, &[], Body::from("down"))
            } else {
                axum::Json(completion("from a")).into_response()
            }
        }
    })
    .await;
    let b = scripted(vec![ok()]).await;
    let gw = pair(&a, &b, "max_attempts = 1", "circuit_open = \"400ms\"").await;
    let ask = || async {
        let reply = post_chat(&gw, &chat_body("up/m", false)).await;
        assert_eq!(reply.status(), 200);
        header(&reply, "x-mume-provider").to_string()
    };
    for _ in 0..10 {
        assert_eq!(ask().await, "b");
    }
    assert_eq!(a.seen().len(), 5, "ejected after 5 consecutive failures");
    let a_row = endpoint_row(&gw, "a").await;
    assert_eq!(a_row["circuit"], "open");
    assert!(a_row["retry_in_seconds"].as_f64().unwrap() <= 0.4);
    assert_eq!(endpoint_row(&gw, "b").await["circuit"], "closed");

    broken.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(ask().await, "a", "the probe after the open time succeeds");
    assert_eq!(ask().await, "a");
    assert_eq!(endpoint_row(&gw, "a").await["circuit"], "closed");
}

/// The `GET /api/v1/providers` row of `provider`'s endpoint.
async fn endpoint_row(gw: &TestGateway, provider: &str) -> Value {
    let health: Value = keyed(ADMIN)
        .get(gw.url("/api/v1/providers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    health["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["provider"] == provider)
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn with_every_endpoint_paused_the_answer_is_an_immediate_503_with_retry_after() {
    let a = scripted(vec![status(500)]).await;
    let gw = gateway(&config(
        &[("a", &a.base_url)],
        "max_attempts = 1",
        &format!("{}\n[routing]\ncircuit_failures = 1\n", model_on(&["a"])),
    ))
    .await;
    let body = chat_body("up/m", false);
    assert_eq!(post_chat(&gw, &body).await.status(), 503);
    let reply = post_chat(&gw, &body).await;
    let retry_after: u64 = header(&reply, "retry-after").parse().unwrap();
    assert!((29..=30).contains(&retry_after), "{retry_after}");
    let e = error_reply(reply).await;
    assert_eq!(e.status, 503);
    assert_eq!(e.error["code"], "providers_down");
    assert!(e.error["message"]
        .as_str()
        .unwrap()
        .contains("up/m via a: circuit open"));
    assert_eq!(
        a.seen().len(),
        1,
        "no upstream call while the circuit is open"
    );
}

/// Any 5xx is the endpoint failing (a proxy's 522, say), not a final
/// answer: the next endpoint serves the request.
#[tokio::test]
async fn any_5xx_moves_on_to_the_next_endpoint() {
    let a = scripted(vec![status(522)]).await;
    let b = scripted(vec![ok()]).await;
    let gw = pair(&a, &b, "max_attempts = 1", "").await;
    let reply = post_chat(&gw, &chat_body("up/m", false)).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(header(&reply, "x-mume-provider"), "b");
    assert_eq!(a.seen().len(), 1);
}

/// A request never outlives its limit (`max_stream_duration` plus the
/// first-byte timeout, or the total timeout): its hold expires soon after,
/// and the sweeper would charge a request still running in full. Here the
/// first endpoint's total timeout uses up the request's limit, so the
/// endpoints after it are never called.
#[tokio::test]
async fn fallbacks_stop_at_the_requests_own_time_limit() {
    let hanging = || {
        Upstream::start(|_| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            respond(500, &[], Body::from("late"))
        })
    };
    let (a, b, c) = (hanging().await, hanging().await, hanging().await);
    let mut toml = config(
        &[("a", &a.base_url), ("b", &b.base_url), ("c", &c.base_url)],
        "total_timeout = \"400ms\"\nfirst_byte_timeout = \"100ms\"",
        &model_on(&["a", "b", "c"]),
    );
    toml = toml.replace(
        "threads = 1\n",
        "threads = 1\nmax_stream_duration = \"100ms\"\n",
    );
    let gw = gateway(&toml).await;
    let e = error_reply(post_chat(&gw, &chat_body("up/m", false)).await).await;
    assert_eq!(e.status, 503);
    assert_eq!(e.error["code"], "provider_timeout");
    assert!(
        e.error["message"]
            .as_str()
            .unwrap()
            .contains("the request reached its limit of 400ms"),
        "{}",
        e.error["message"]
    );
    assert_eq!(a.seen().len(), 1);
    assert_eq!(
        (b.seen().len(), c.seen().len()),
        (0, 0),
        "no attempt starts past the request's limit"
    );
}

/// A request that cannot be sent to an endpoint (a Responses tool with no
/// Chat Completions form) makes no call, so it says nothing of the
/// endpoint's health: a probe it was let through as neither closes the
/// circuit nor keeps it from probing.
#[tokio::test]
async fn a_request_that_makes_no_call_does_not_close_a_circuit() {
    let a = scripted(vec![status(500)]).await;
    let gw = gateway(&config(
        &[("a", &a.base_url)],
        "max_attempts = 1",
        &format!(
            "{}\n[routing]\ncircuit_failures = 1\ncircuit_open = \"300ms\"\n",
            model_on(&["a"])
        ),
    ))
    .await;
    assert_eq!(
        post_chat(&gw, &chat_body("up/m", false)).await.status(),
        503
    );
    assert_eq!(endpoint_row(&gw, "a").await["circuit"], "open");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let untranslatable = crate::support::client()
        .post(gw.url("/api/v1/responses"))
        .json(&json!({"model": "up/m", "input": "x", "tools": [{"type": "file_search"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(untranslatable.status(), 400);
    assert_eq!(a.seen().len(), 1, "no call was made");
    assert_ne!(
        endpoint_row(&gw, "a").await["circuit"],
        "closed",
        "no verdict, so no recovery"
    );
    // The next request probes at once, and its failure reopens the circuit.
    assert_eq!(
        post_chat(&gw, &chat_body("up/m", false)).await.status(),
        503
    );
    assert_eq!(a.seen().len(), 2, "the probe was not held back");
    assert_eq!(endpoint_row(&gw, "a").await["circuit"], "open");
}

#[tokio::test]
async fn cr07_a_fallback_model_answers_and_only_its_usage_is_billed() {
    let primary = scripted(vec![status(503)]).await;
    let fallback = scripted(vec![(
        200,
        vec![],
        json!({"id": "c", "object": "chat.completion", "created": 1, "model": "fb-up",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}}),
    )])
    .await;
    let models = "[[models]]\nid = \"up/m\"\nendpoints = [{ provider = \"a\", upstream = \"m\" }]\nprompt_price = \"5000\"\ncompletion_price = \"5000\"\nmax_output_tokens = 100\n\n[[models]]\nid = \"fb/m\"\nendpoints = [{ provider = \"b\", upstream = \"fb-up\" }]\nprompt_price = \"1000\"\ncompletion_price = \"2000\"\nmax_output_tokens = 100\n";
    let gw = gateway(&config(
        &[("a", &primary.base_url), ("b", &fallback.base_url)],
        "max_attempts = 3",
        models,
    ))
    .await;
    let (id, key) = gw.key_with_credit(1_000_000_000).await;
    let mut body = chat_body("up/m", false);
    body["models"] = json!(["fb/m"]);
    let reply = gw.chat_as(&key, &body).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(header(&reply, "x-mume-attempts"), "4");
    assert_eq!(header(&reply, "x-mume-provider"), "b");
    let answer: Value = reply.json().await.unwrap();
    assert_eq!(answer["model"], "fb/m");
    assert_eq!(primary.seen().len(), 3);
    // 10 prompt tokens at $1,000/M and 4 completion tokens at $2,000/M.
    let cost = 10 * 1_000_000 + 4 * 2_000_000;
    assert_eq!(answer["usage"]["cost"], json!(0.018));
    gw.holds_drain().await;
    assert_eq!(gw.balance(&id).await, 1_000_000_000 - cost);
    assert!(fallback.seen()[0].body.get("models").is_none());
}

#[tokio::test]
async fn unknown_fallback_models_get_a_400_naming_them() {
    let a = scripted(vec![ok()]).await;
    let gw = single(&a.base_url, "").await;
    let mut body = chat_body("up/m", false);
    body["models"] = json!(["nope/x", "up/m", "also/missing"]);
    let e = error_reply(post_chat(&gw, &body).await).await;
    assert_eq!(e.status, 400);
    assert_eq!(e.error["param"], "models");
    let message = e.error["message"].as_str().unwrap();
    assert!(message.contains(r#""nope/x", "also/missing""#), "{message}");
    assert!(a.seen().is_empty());
}

#[tokio::test]
async fn provider_preferences_pick_filter_and_can_leave_nothing() {
    let a = scripted(vec![ok()]).await;
    let b = scripted(vec![ok()]).await;
    let gw = pair(&a, &b, "", "").await;
    let served_by = |prefs: Value| {
        let mut body = chat_body("up/m", false);
        body["provider"] = prefs;
        let gw = &gw;
        async move {
            let reply = post_chat(gw, &body).await;
            (
                reply.status().as_u16(),
                header(&reply, "x-mume-provider").to_string(),
            )
        }
    };
    assert_eq!(served_by(json!({})).await, (200, "a".into()));
    assert_eq!(served_by(json!({"order": ["b"]})).await, (200, "b".into()));
    assert_eq!(served_by(json!({"ignore": ["a"]})).await, (200, "b".into()));
    assert_eq!(served_by(json!({"only": ["a"]})).await, (200, "a".into()));
    assert_eq!(served_by(json!({"only": ["zzz"]})).await.0, 400);
    assert!(a.seen().iter().all(|s| s.body.get("provider").is_none()));
}

/// Two endpoints, each answering 503 to every fifth request it gets
/// (20% of all answers): the client sees at least 99.9% success. To ride
/// out a failure rate like this the retry budget must exceed it and each
/// endpoint needs a third attempt, so this config raises the budget from
/// the default 20% to 50% and `max_attempts` from 2 to 3.
#[tokio::test]
async fn storm_twenty_percent_503_on_two_endpoints_still_serves_999_per_mille() {
    let flaky = || {
        let n = Arc::new(AtomicUsize::new(0));
        Upstream::start(move |_| {
            let fail = n.fetch_add(1, Ordering::SeqCst) % 5 == 4;
            async move {
                if fail {
                    respond(503, &[], Body::from(r#"{"error":{"message":"busy"}}"#))
                } else {
                    axum::Json(completion("ok")).into_response()
                }
            }
        })
    };
    let (a, b) = (flaky().await, flaky().await);
    let gw = pair(&a, &b, "max_attempts = 3", "retry_budget_percent = 50").await;
    let requests = 2000;
    let ok = statuses(&gw, requests, 32)
        .await
        .iter()
        .filter(|s| s.as_u16() == 200)
        .count();
    let answers = a.seen().len() + b.seen().len();
    assert!(ok * 1000 >= requests * 999, "{ok} of {requests} succeeded");
    assert!(
        answers > requests,
        "failures were retried: {answers} upstream answers"
    );
}

#[tokio::test]
async fn the_providers_route_is_for_the_admin_only() {
    let a = scripted(vec![ok()]).await;
    let gw = single(&a.base_url, "").await;
    let as_user = client()
        .get(gw.url("/api/v1/providers"))
        .send()
        .await
        .unwrap();
    assert_eq!(as_user.status(), 403);
    let as_admin = keyed(ADMIN)
        .get(gw.url("/api/v1/providers"))
        .send()
        .await
        .unwrap();
    assert_eq!(as_admin.status(), 200);
}

#[tokio::test]
async fn metrics_count_requests_attempts_retries_circuits_tokens_and_rejections() {
    let flaky = scripted(vec![status(500), ok()]).await;
    let broken = scripted(vec![status(502)]).await;
    let stream = Upstream::sse(answer(&["hi"])).await;
    let models = "[[models]]\nid = \"mx/flaky\"\nendpoints = [{ provider = \"metrics_a\", upstream = \"m\" }]\n\n[[models]]\nid = \"mx/broken\"\nendpoints = [{ provider = \"metrics_b\", upstream = \"m\" }]\n\n[[models]]\nid = \"mx/stream\"\nendpoints = [{ provider = \"metrics_c\", upstream = \"m\" }]\nprompt_price = \"1\"\ncompletion_price = \"1\"\nmax_output_tokens = 100\n\n[routing]\ncircuit_failures = 2\n";
    let gw = gateway(&config(
        &[
            ("metrics_a", &flaky.base_url),
            ("metrics_b", &broken.base_url),
            ("metrics_c", &stream.base_url),
        ],
        "",
        models,
    ))
    .await;
    assert_eq!(
        post_chat(&gw, &chat_body("mx/flaky", false)).await.status(),
        200
    );
    assert_eq!(
        post_chat(&gw, &chat_body("mx/broken", false))
            .await
            .status(),
        503
    );
    let reply = post_chat(&gw, &chat_body("mx/stream", true)).await;
    Sse::new(reply).rest().await;
    let (_, poor) = gw.key_with_credit(0).await;
    assert_eq!(
        gw.chat_as(&poor, &chat_body("mx/stream", false))
            .await
            .status(),
        402
    );
    gw.holds_drain().await;

    assert_eq!(
        client()
            .get(gw.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        403,
        "not for user keys"
    );
    let reply = keyed(ADMIN).get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    assert!(header(&reply, "content-type").starts_with("text/plain"));
    let text = reply.text().await.unwrap();
    for needle in [
        r#"mume_requests_total{model="mx/flaky",provider="metrics_a",status="200"} 1"#,
        r#"mume_retries_total{provider="metrics_a"} 1"#,
        r#"mume_upstream_attempts_total{provider="metrics_a",outcome="ok"} 1"#,
        r#"mume_upstream_attempts_total{provider="metrics_a",outcome="provider_unavailable"} 1"#,
        r#"mume_circuit_open{provider="metrics_b",upstream="m"} 1"#,
        r#"mume_time_to_first_token_seconds_bucket{model="mx/stream""#,
        r#"mume_request_duration_seconds_bucket{model="mx/broken""#,
        r#"mume_tokens_total{model="mx/stream",kind="completion"}"#,
        r#"mume_cost_nano_usd_total{model="mx/stream"}"#,
        r#"mume_rejections_total{reason="credits"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

/// The mock's fault models are rehearsals: played as configured every
/// time, never retried, never opening a circuit.
#[tokio::test]
async fn mock_faults_are_never_retried_and_never_open_a_circuit() {
    let gw = gateway(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[providers]]\nname = \"mock\"\nkind = \"mock\"\n\n[[models]]\nid = \"mock/cut\"\n",
    )
    .await;
    for _ in 0..8 {
        let reply = post_chat(&gw, &chat_body("mock/cut", false)).await;
        assert_eq!(header(&reply, "x-mume-attempts"), "1");
        let e = error_reply(reply).await;
        assert_eq!(e.error["code"], "provider_unreachable");
    }
    assert_eq!(endpoint_row(&gw, "mock").await["circuit"], "closed");
}
