//! `x-request-id` on every response: generated (`req_` + ULID) unless the
//! client sent a sane one, and equal to the `reqId` of error bodies.

use mume_gateway::config::EMBEDDED_DEFAULT;
use serde_json::json;

use crate::support::{
    chat_body, client, error_reply, is_generated_id, post_chat, request_id, Sse, TestGateway,
};

#[tokio::test]
async fn every_response_gets_a_generated_request_id() {
    let gw = TestGateway::start(EMBEDDED_DEFAULT).await;
    let mut ids = Vec::new();

    let health = client().get(gw.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    ids.push(request_id(health.headers()));

    let models = client().get(gw.url("/api/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 200);
    ids.push(request_id(models.headers()));

    let chat = post_chat(&gw, &chat_body("mock/echo", false)).await;
    assert_eq!(chat.status(), 200);
    ids.push(request_id(chat.headers()));

    let sse = post_chat(&gw, &chat_body("mock/echo", true)).await;
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    ids.push(request_id(sse.headers()));
    let frames = Sse::new(sse).rest().await;
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]"));

    let missing = error_reply(client().get(gw.url("/nope")).send().await.unwrap()).await;
    assert_eq!(missing.status, 404);
    ids.push(request_id(&missing.headers));

    let bad = error_reply(post_chat(&gw, &json!({"model": "mock/echo"})).await).await;
    assert_eq!(bad.status, 400);
    ids.push(request_id(&bad.headers));

    for id in &ids {
        assert!(is_generated_id(id), "{id:?} is not req_ + ULID");
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "ids are unique: {ids:?}");
}

#[tokio::test]
async fn a_sane_client_request_id_is_echoed_also_in_error_bodies() {
    let gw = TestGateway::start(EMBEDDED_DEFAULT).await;
    let ok = client()
        .get(gw.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(request_id(ok.headers()), "abc-123");

    let response = client()
        .post(gw.url("/api/v1/chat/completions"))
        .header("x-request-id", "abc-123")
        .json(&json!({"model": "nope/x", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    let reply = error_reply(response).await; // also checks body reqId == header
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error["reqId"], "abc-123");

    // A failing stream's error event carries it too.
    let response = client()
        .post(gw.url("/api/v1/chat/completions"))
        .header("x-request-id", "trace.77:x_y")
        .json(&chat_body("mock/cut", true))
        .send()
        .await
        .unwrap();
    assert_eq!(request_id(response.headers()), "trace.77:x_y");
    let frames = Sse::new(response).rest().await;
    crate::support::assert_stream_failed(&frames, "trace.77:x_y");
}

#[tokio::test]
async fn an_insane_client_request_id_is_replaced() {
    let gw = TestGateway::start(EMBEDDED_DEFAULT).await;
    let long = "a".repeat(200);
    for bad in ["has spaces in it", long.as_str(), "semi;colon", "<script>"] {
        let response = client()
            .get(gw.url("/nope"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let reply = error_reply(response).await;
        let id = request_id(&reply.headers);
        assert_ne!(id, bad);
        assert!(is_generated_id(&id), "{bad:?} was replaced by {id:?}");
        assert!(!reply.text.contains(bad), "the insane id is not reflected");
    }
}
