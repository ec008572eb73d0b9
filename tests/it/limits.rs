//! Per-key rate limits: requests per minute by GCRA (RL-01), tokens per
//! minute charged at settle with oversized requests refused at once
//! (RL-04), concurrent requests, and OpenAI's x-ratelimit-* headers.

use std::time::Duration;

use futures::future::join_all;
use mume_gateway::accounts::KeySpec;
use mume_gateway::store::KeyLimits;
use serde_json::json;

use crate::support::upstream::completion;
use crate::support::{chat_body, error_reply, keyed, TestGateway, Upstream};

const MOCK: &str = r#"
[[providers]]
name = "mock"
kind = "mock"
[[models]]
id = "mock/echo"
[[models]]
id = "mock/slow"
"#;

async fn key_with(gw: &TestGateway, limits: KeyLimits) -> String {
    gw.key(KeySpec {
        name: "limited".into(),
        limits,
        ..Default::default()
    })
    .await
    .1
}

#[tokio::test]
async fn rl01_sixty_rpm_lets_exactly_sixty_of_a_burst_of_two_hundred_through() {
    let gw = TestGateway::start(MOCK).await;
    let key = key_with(
        &gw,
        KeyLimits {
            rpm: Some(60),
            ..Default::default()
        },
    )
    .await;
    let client = keyed(&key);
    let replies = join_all((0..200).map(|_| {
        client
            .post(gw.url("/api/v1/chat/completions"))
            .json(&chat_body("mock/echo", false))
            .send()
    }))
    .await;
    let mut ok = 0;
    for reply in replies {
        let reply = reply.unwrap();
        if reply.status() == 200 {
            ok += 1;
            assert_eq!(reply.headers()["x-ratelimit-limit-requests"], "60");
            continue;
        }
        let retry: u64 = reply.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1);
        assert_eq!(reply.headers()["x-ratelimit-remaining-requests"], "0");
        let e = error_reply(reply).await;
        assert_eq!(e.status, 429);
        assert_eq!(e.error["code"], "rate_limit_requests");
        assert_eq!(e.error["type"], "rate_limit_error");
    }
    assert_eq!(ok, 60);
}

#[tokio::test]
async fn successful_responses_carry_the_rate_limit_headers() {
    let gw = TestGateway::start(MOCK).await;
    let key = key_with(
        &gw,
        KeyLimits {
            rpm: Some(10),
            tpm: Some(10_000),
            ..Default::default()
        },
    )
    .await;
    let reply = gw.chat_as(&key, &chat_body("mock/echo", false)).await;
    assert_eq!(reply.status(), 200);
    let h = reply.headers();
    assert_eq!(h["x-ratelimit-limit-requests"], "10");
    assert_eq!(h["x-ratelimit-remaining-requests"], "9");
    assert!(h["x-ratelimit-reset-requests"]
        .to_str()
        .unwrap()
        .ends_with('s'));
    assert_eq!(h["x-ratelimit-limit-tokens"], "10000");
    assert!(h.contains_key("x-ratelimit-remaining-tokens"));
    assert!(h.contains_key("x-ratelimit-reset-tokens"));
}

#[tokio::test]
async fn rl04_max_tokens_over_the_token_budget_is_429_at_once_without_an_upstream_call() {
    let upstream = Upstream::json(200, completion("hi")).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let key = key_with(
        &gw,
        KeyLimits {
            tpm: Some(1000),
            ..Default::default()
        },
    )
    .await;
    let mut body = chat_body("up/m", false);
    body["max_tokens"] = json!(1001);
    let e = error_reply(gw.chat_as(&key, &body).await).await;
    assert_eq!(e.status, 429);
    assert_eq!(e.error["code"], "max_tokens_over_limit");
    assert!(e.headers.contains_key("retry-after"));
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn tokens_used_are_charged_and_a_key_in_token_debt_waits() {
    // The completion reports 4 tokens; a 3-token budget is then in debt.
    let upstream = Upstream::json(200, completion("hi")).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let key = key_with(
        &gw,
        KeyLimits {
            tpm: Some(3),
            ..Default::default()
        },
    )
    .await;
    let client = keyed(&key);
    let first = client
        .post(gw.url("/api/v1/chat/completions"))
        .json(&chat_body("up/m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    first.bytes().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = error_reply(
        client
            .post(gw.url("/api/v1/chat/completions"))
            .json(&chat_body("up/m", false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e.status, 429);
    assert_eq!(e.error["code"], "rate_limit_tokens");
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test]
async fn concurrent_requests_beyond_the_cap_are_429_and_slots_come_back() {
    let gw = TestGateway::start(MOCK).await;
    let key = key_with(
        &gw,
        KeyLimits {
            max_concurrent: Some(2),
            ..Default::default()
        },
    )
    .await;
    let client = keyed(&key);
    let mut body = chat_body("mock/slow", true);
    body["messages"][0]["content"] = json!("a b c");
    let a = client
        .post(gw.url("/api/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let b = client
        .post(gw.url("/api/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (a.status(), b.status()),
        (reqwest::StatusCode::OK, reqwest::StatusCode::OK)
    );
    let e = error_reply(
        client
            .post(gw.url("/api/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e.status, 429);
    assert_eq!(e.error["code"], "rate_limit_concurrency");
    a.text().await.unwrap();
    b.text().await.unwrap();
    let again = client
        .post(gw.url("/api/v1/chat/completions"))
        .json(&chat_body("mock/echo", false))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
}
