//! Streaming: chunks are relayed as they arrive, with SSE headers, the
//! public model id, keep-alives during silence, usage only when asked for,
//! and tool-call indexes clients can rely on.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::support::upstream::{chunk, finish_chunk, usage_chunk};
use crate::support::{
    assert_sse_headers, chat_body, content_of, data_json, post_chat, request_id, GatewayConfig,
    Play, Sse, TestGateway, Upstream, PATIENCE,
};

#[tokio::test]
async fn first_chunk_reaches_the_client_before_the_upstream_sends_the_second() {
    let second = Arc::new(Notify::new());
    let upstream = Upstream::sse(vec![
        Play::Data(chunk("Hel")),
        Play::Wait(second.clone()),
        Play::Data(chunk("lo")),
        Play::Data(finish_chunk("stop")),
        Play::Data("[DONE]".into()),
    ])
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;

    let response = post_chat(&gw, &chat_body("up/m", true)).await;
    assert_sse_headers(&response);
    assert!(request_id(response.headers()).starts_with("req_"));
    let mut sse = Sse::new(response);

    // The upstream is blocked until we fire `second`: this frame can only
    // have come through unbuffered.
    let first = sse.expect_frame(PATIENCE).await;
    let first = data_json(&first).expect("a data frame");
    assert_eq!(first["choices"][0]["delta"]["content"], "Hel");
    assert_eq!(
        first["model"], "up/m",
        "the public id replaces the upstream's"
    );
    assert_eq!(first["id"], "chatcmpl-up-1");

    second.notify_one();
    let rest = sse.rest().await;
    assert_eq!(content_of(&rest), "lo");
    assert_eq!(rest.last().map(String::as_str), Some("data: [DONE]"));
    let finish = data_json(&rest[rest.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(rest
        .iter()
        .filter_map(|f| data_json(f))
        .all(|v| v["model"] == "up/m"));
}

#[tokio::test]
async fn usage_chunk_is_dropped_unless_the_client_asked_for_it() {
    let upstream = Upstream::sse(vec![
        Play::Data(chunk("Hi")),
        Play::Data(finish_chunk("stop")),
        Play::Data(usage_chunk(11, 1)),
        Play::Data("[DONE]".into()),
    ])
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;

    // Not asked: no frame carries usage, and the stream still ends well.
    let response = post_chat(&gw, &chat_body("up/m", true)).await;
    assert_sse_headers(&response);
    let frames = Sse::new(response).rest().await;
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]"));
    assert_eq!(content_of(&frames), "Hi");
    for frame in &frames {
        if let Some(v) = data_json(frame) {
            assert!(v.get("usage").is_none(), "unrequested usage: {frame}");
            assert_ne!(v["choices"], json!([]), "the usage-only chunk is dropped");
        }
    }

    // Asked: the usage-only chunk arrives before [DONE].
    let mut body = chat_body("up/m", true);
    body["stream_options"] = json!({"include_usage": true});
    let frames = Sse::new(post_chat(&gw, &body).await).rest().await;
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]"));
    let usage: Vec<Value> = frames
        .iter()
        .filter_map(|f| data_json(f))
        .filter(|v| v["choices"] == json!([]))
        .collect();
    assert_eq!(usage.len(), 1, "{frames:#?}");
    assert_eq!(
        usage[0]["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12, "cost": 0})
    );
    assert_eq!(usage[0]["model"], "up/m");
}

#[tokio::test]
async fn keepalive_comments_arrive_during_upstream_silence() {
    let upstream = Upstream::sse(vec![
        Play::Data(chunk("one")),
        Play::Sleep(Duration::from_millis(300)),
        // The upstream's own comment is not an event; it is not relayed.
        Play::Raw(": upstream-ping\n\n".into()),
        Play::Sleep(Duration::from_millis(300)),
        Play::Data(chunk(" two")),
        Play::Data(finish_chunk("stop")),
        Play::Data("[DONE]".into()),
    ])
    .await;
    let config = GatewayConfig::openai(&upstream.base_url)
        .server("keepalive_interval", "100ms")
        .provider("idle_timeout", "10s");
    let gw = TestGateway::with(&config).await;

    let frames = Sse::new(post_chat(&gw, &chat_body("up/m", true)).await)
        .rest()
        .await;
    let position = |pred: &dyn Fn(&String) -> bool| frames.iter().position(pred);
    let one = position(&|f| f.contains("\"one\"")).expect("chunk one");
    let two = position(&|f| f.contains("\" two\"")).expect("chunk two");
    let keepalives = frames[one..two]
        .iter()
        .filter(|f| f.as_str() == ": keep-alive")
        .count();
    assert!(
        keepalives >= 1,
        "a keep-alive comment during the silence: {frames:#?}"
    );
    assert!(frames.iter().all(|f| !f.contains("upstream-ping")));
    assert_eq!(content_of(&frames), "one two");
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]"));
}

#[tokio::test]
async fn streamed_tool_calls_come_out_zero_based_contiguous_and_typed() {
    let call = |tool_call: Value| {
        Play::Data(
            json!({
                "id": "chatcmpl-up-1", "object": "chat.completion.chunk", "created": 1, "model": "m-upstream",
                "choices": [{"index": 0, "delta": {"tool_calls": [tool_call]}, "finish_reason": null}],
            })
            .to_string(),
        )
    };
    // This upstream numbers calls from 1 and never sends `type`.
    let upstream = Upstream::sse(vec![
        Play::Data(
            json!({"id": "chatcmpl-up-1", "object": "chat.completion.chunk", "created": 1, "model": "m-upstream",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": null}, "finish_reason": null}]})
            .to_string(),
        ),
        call(json!({"index": 1, "id": "call_a", "function": {"name": "get_weather", "arguments": ""}})),
        call(json!({"index": 1, "function": {"arguments": "{\"city\":"}})),
        call(json!({"index": 1, "function": {"arguments": "\"Paris\"}"}})),
        call(json!({"index": 2, "id": "call_b", "function": {"name": "get_time", "arguments": ""}})),
        call(json!({"index": 2, "function": {"arguments": "{}"}})),
        Play::Data(finish_chunk("tool_calls")),
        Play::Data("[DONE]".into()),
    ])
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;

    let frames = Sse::new(post_chat(&gw, &chat_body("up/m", true)).await)
        .rest()
        .await;
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]"));
    let deltas: Vec<Value> = frames
        .iter()
        .filter_map(|f| data_json(f))
        .filter_map(|v| v.pointer("/choices/0/delta/tool_calls/0").cloned())
        .collect();
    let indexes: Vec<u64> = deltas
        .iter()
        .map(|d| d["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 0, 0, 1, 1]);

    for (first, id, name) in [(0, "call_a", "get_weather"), (3, "call_b", "get_time")] {
        let d = &deltas[first];
        assert_eq!(d["id"], id, "{d}");
        assert_eq!(d["type"], "function", "{d}");
        assert_eq!(d["function"]["name"], name, "{d}");
    }
    let arguments = |index: u64| -> String {
        deltas
            .iter()
            .filter(|d| d["index"] == index)
            .filter_map(|d| d.pointer("/function/arguments").and_then(Value::as_str))
            .collect()
    };
    assert_eq!(arguments(0), "{\"city\":\"Paris\"}");
    assert_eq!(arguments(1), "{}");
}
