//! `Idempotency-Key` (CR-05): one execution and one debit per key and
//! body; the stored answer replayed; 409 while in flight; 422 for the same
//! key with a different body.

use std::time::Duration;

use futures::future::join_all;
use mume_gateway::accounts::KeySpec;
use serde_json::{json, Value};

use crate::support::postgres::PgDatabase;
use crate::support::upstream::{chunk, finish_chunk, sse_response};
use crate::support::{chat_body, content_of, error_reply, keyed, Play, Sse, TestGateway, Upstream};

fn completion() -> Value {
    json!({
        "id": "chatcmpl-once", "object": "chat.completion", "created": 1, "model": "m-upstream",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "once"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    })
}

#[tokio::test]
async fn cr05_fifty_concurrent_retries_run_once_and_debit_once() {
    let upstream = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        axum::response::IntoResponse::into_response(axum::Json(completion()))
    })
    .await;
    let config = crate::support::GatewayConfig::openai(&upstream.base_url)
        .model("prompt_price", "1000")
        .model("completion_price", "1000")
        .model("max_output_tokens", 100);
    let gw = TestGateway::with(&config).await;
    let (id, key) = gw
        .key(KeySpec {
            name: "idem".into(),
            credits: Some(1_000_000_000),
            ..Default::default()
        })
        .await;
    let client = keyed(&key);
    let body = chat_body("up/m", false);
    let send = |body: Value| {
        client
            .post(gw.url("/api/v1/chat/completions"))
            .header("Idempotency-Key", "order-42")
            .json(&body)
            .send()
    };
    let replies = join_all((0..50).map(|_| send(body.clone()))).await;
    let mut ok = 0;
    for reply in replies {
        let reply = reply.unwrap();
        match reply.status().as_u16() {
            200 => {
                ok += 1;
                let got: Value = reply.json().await.unwrap();
                assert_eq!(got["id"], "chatcmpl-once");
            }
            409 => assert_eq!(
                error_reply(reply).await.error["code"],
                "idempotency_in_flight"
            ),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(ok >= 1);
    assert_eq!(upstream.seen().len(), 1, "exactly one upstream call");
    gw.holds_drain().await;
    // After completion, a retry gets the stored answer, byte for byte.
    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), 200);
    let replayed: Value = first.json().await.unwrap();
    assert_eq!(replayed["id"], "chatcmpl-once");
    assert_eq!(upstream.seen().len(), 1);
    let settles = gw
        .store
        .credits
        .ledger(&id)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == "settle")
        .count();
    assert_eq!(settles, 1, "exactly one debit");
    assert_eq!(gw.balance(&id).await, 1_000_000_000 - 10 * 1_000_000);

    let mut other = body.clone();
    other["messages"][0]["content"] = json!("something else");
    let e = error_reply(send(other).await.unwrap()).await;
    assert_eq!(e.status, 422);
    assert_eq!(e.error["code"], "idempotency_key_reused");
}

#[tokio::test]
async fn a_failed_attempt_frees_its_idempotency_key() {
    let upstream = Upstream::json(500, json!({"error": {"message": "down"}})).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let send = || {
        crate::support::client()
            .post(gw.url("/api/v1/chat/completions"))
            .header("Idempotency-Key", "retry-me")
            .json(&chat_body("up/m", false))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 503);
    gw.holds_drain().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(send().await.unwrap().status(), 503, "retried, not refused");
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test]
async fn a_stream_left_before_its_first_content_frees_its_idempotency_key() {
    // The first call never answers; the client gives up while the gateway
    // still holds the 200. Nothing was delivered or billed, so a retry
    // with the same key runs again.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let upstream = Upstream::start(move |_| {
        let first = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        async move {
            let script = match first {
                true => vec![Play::Hang],
                false => vec![
                    Play::Data(chunk("again")),
                    Play::Data(finish_chunk("stop")),
                    Play::Data("[DONE]".into()),
                ],
            };
            sse_response(script, None)
        }
    })
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let send = |timeout: Duration| {
        crate::support::client()
            .post(gw.url("/api/v1/chat/completions"))
            .header("Idempotency-Key", "left-early")
            .timeout(timeout)
            .json(&chat_body("up/m", true))
            .send()
    };
    assert!(send(Duration::from_millis(300)).await.is_err(), "gave up");
    // The gateway notices the client left, drops the upstream call and
    // settles.
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.holds_drain().await;
    let retry = send(Duration::from_secs(10)).await.unwrap();
    assert_eq!(retry.status(), 200, "retried, not refused");
    let frames = Sse::new(retry).rest().await;
    assert_eq!(content_of(&frames), "again");
    assert_eq!(upstream.seen().len(), 2);
}

/// A client that leaves while its hold waits (here, for the key's balance
/// row, which another transaction has locked) gives up its claim of the
/// Idempotency-Key: a retry runs, rather than being told for 24 h that the
/// key is still in flight.
#[tokio::test]
async fn a_request_left_while_its_hold_waits_frees_its_idempotency_key() {
    let db = PgDatabase::create().await;
    let upstream = Upstream::json(200, completion()).await;
    let config = crate::support::GatewayConfig::openai(&upstream.base_url)
        .model("prompt_price", "1000")
        .model("completion_price", "1000")
        .model("max_output_tokens", 100)
        .store("url", db.url.as_str());
    let gw = TestGateway::with(&config).await;
    let (id, key) = gw
        .key(KeySpec {
            name: "waiting".into(),
            credits: Some(1_000_000_000),
            ..Default::default()
        })
        .await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut locked = pool.begin().await.unwrap();
    sqlx::query("SELECT balance FROM api_keys WHERE id = $1 FOR UPDATE")
        .bind(&id)
        .fetch_one(&mut *locked)
        .await
        .unwrap();
    let send = |timeout: Duration| {
        keyed(&key)
            .post(gw.url("/api/v1/chat/completions"))
            .header("Idempotency-Key", "left-waiting")
            .timeout(timeout)
            .json(&chat_body("up/m", false))
            .send()
    };
    assert!(send(Duration::from_millis(500)).await.is_err(), "gave up");
    tokio::time::sleep(Duration::from_millis(200)).await;
    locked.rollback().await.unwrap();
    let started = std::time::Instant::now();
    loop {
        let reply = send(Duration::from_secs(10)).await.unwrap();
        match reply.status().as_u16() {
            200 => break,
            409 => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "the key is still claimed by the request that left"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("unexpected {other}"),
        }
    }
}
