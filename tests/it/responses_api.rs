//! `POST /api/v1/responses` and the stored responses: translated to Chat
//! Completions for an OpenAI-compatible upstream, passed through to a
//! provider with the Responses API, streamed in the SDKs' event order,
//! stored per key, chained with `previous_response_id`, purged after the
//! retention period.

use std::time::Duration;

use axum::body::Body;
use serde_json::{json, Value};

use crate::support::gateway::{GatewayConfig, UP_KEY, UP_KEY_ENV};
use crate::support::upstream::{
    chunk, completion, respond, sse_response, usage_chunk, Play, Upstream,
};
use crate::support::{client, keyed, request_id, Sse, TestGateway};

/// Prices of `up/m` in the money tests: $1000 and $2000 per million
/// tokens, i.e. 1,000,000 and 2,000,000 nano-USD per token.
fn priced(base_url: &str) -> GatewayConfig {
    GatewayConfig::openai(base_url)
        .model("prompt_price", "1000")
        .model("completion_price", "2000")
        .model("max_output_tokens", 100)
}

async fn create(gw: &TestGateway, key: Option<&str>, body: &Value) -> reqwest::Response {
    let c = key.map_or_else(client, keyed);
    c.post(gw.url("/api/v1/responses"))
        .json(body)
        .send()
        .await
        .expect("request reaches the gateway")
}

async fn get(gw: &TestGateway, key: Option<&str>, path: &str) -> reqwest::Response {
    let c = key.map_or_else(client, keyed);
    c.get(gw.url(path))
        .send()
        .await
        .expect("reaches the gateway")
}

/// (event name, data) of every frame of a Responses stream; keep-alive
/// comments are skipped.
async fn events(response: reqwest::Response) -> Vec<(String, Value)> {
    let mut sse = Sse::new(response);
    let mut out = Vec::new();
    for frame in sse.rest().await {
        if frame.starts_with(':') {
            continue;
        }
        let (head, data) = frame.split_once('\n').expect("event and data lines");
        let name = head.strip_prefix("event: ").expect("an event line");
        let data = data.strip_prefix("data: ").expect("a data line");
        out.push((
            name.to_string(),
            serde_json::from_str(data).expect("JSON data"),
        ));
    }
    out
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn a_request_is_translated_to_chat_completions_and_back_and_billed() {
    let upstream = Upstream::start(|_| async {
        let mut body = completion("Checking.");
        body["choices"][0]["message"]["tool_calls"] = json!([{"id": "call_7", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]);
        body["choices"][0]["finish_reason"] = json!("tool_calls");
        respond(200, &[], Body::from(body.to_string()))
    })
    .await;
    let gw = TestGateway::with(&priced(&upstream.base_url)).await;
    let (key_id, key) = gw.key_with_credit(1_000_000_000).await;
    let before = gw.balance(&key_id).await;

    let response = create(
        &gw,
        Some(&key),
        &json!({
            "model": "up/m",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": "Weather in Oslo?"},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            ],
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
            "max_output_tokens": 64,
            "seed": 7,
            "metadata": {"team": "a"},
        }),
    )
    .await;
    assert_eq!(response.status(), 200);
    let r: Value = response.json().await.unwrap();

    let sent = upstream.only_request().body;
    assert_eq!(sent["model"], "m-upstream");
    assert_eq!(sent["max_completion_tokens"], 64);
    assert_eq!(sent["seed"], 7, "unknown fields pass through");
    assert!(sent.get("metadata").is_none() && sent.get("store").is_none());
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool"]);
    assert_eq!(sent["messages"][3]["tool_call_id"], "call_1");
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");

    assert!(r["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["model"], "up/m");
    assert_eq!(r["metadata"], json!({"team": "a"}));
    assert_eq!(r["output"][0]["content"][0]["text"], "Checking.");
    assert_eq!(r["output"][1]["type"], "function_call");
    assert_eq!(r["output"][1]["call_id"], "call_7");
    assert_eq!(r["output"][1]["arguments"], "{\"city\":\"Oslo\"}");
    assert_eq!(r["usage"]["input_tokens"], 3);
    assert_eq!(r["usage"]["output_tokens"], 1);
    assert_eq!(r["usage"]["total_tokens"], 4);

    // 3 prompt tokens at 1,000,000 and 1 completion token at 2,000,000.
    gw.holds_drain().await;
    assert_eq!(before - gw.balance(&key_id).await, 5_000_000);

    // Stored for this key, and only for it.
    let id = r["id"].as_str().unwrap();
    let got = get(&gw, Some(&key), &format!("/api/v1/responses/{id}")).await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.json::<Value>().await.unwrap(), r);
    let other = get(&gw, None, &format!("/api/v1/responses/{id}")).await;
    assert_eq!(other.status(), 404, "another key's id is a 404, never 403");
    let items: Value = get(
        &gw,
        Some(&key),
        &format!("/api/v1/responses/{id}/input_items"),
    )
    .await
    .json()
    .await
    .unwrap();
    let types: Vec<&str> = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["function_call_output", "function_call", "message"],
        "newest first by default"
    );
    assert!(items["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["id"].is_string()));
}

#[tokio::test]
async fn routing_fields_never_reach_a_translated_upstream() {
    let upstream = Upstream::json(200, completion("Hi")).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let response = create(
        &gw,
        None,
        &json!({"model": "up/m", "input": "hi", "models": ["up/m"],
            "provider": {"order": ["up"], "allow_fallbacks": false}, "seed": 7}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let sent = upstream.only_request().body;
    assert_eq!(sent["seed"], 7, "unknown fields still pass through");
    assert!(sent.get("models").is_none(), "{sent}");
    assert!(sent.get("provider").is_none(), "{sent}");
}

#[tokio::test]
async fn a_stream_comes_in_the_sdk_order_and_is_stored_before_it_ends() {
    let mut script = vec![Play::Data(chunk("Hel")), Play::Data(chunk("lo"))];
    script.push(Play::Data(
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": "{\"a\""}}]}, "finish_reason": null}]})
        .to_string(),
    ));
    script.push(Play::Data(
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}, "finish_reason": "tool_calls"}]})
        .to_string(),
    ));
    script.push(Play::Data(usage_chunk(4, 6)));
    script.push(Play::Data("[DONE]".into()));
    let upstream = Upstream::start(move |_| {
        let script = script.clone();
        async move { sse_response(script, None) }
    })
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;

    let response = create(
        &gw,
        None,
        &json!({"model": "up/m", "input": "hi", "stream": true}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = events(response).await;
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (n, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], n as u64);
        assert_eq!(&data["type"], name);
    }
    assert_eq!(
        upstream.only_request().body["stream_options"]["include_usage"],
        true
    );
    let done = &events.last().unwrap().1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
    assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
    assert_eq!(done["usage"]["total_tokens"], 10);

    // Read at once: the response was stored before its last frame.
    let id = done["id"].as_str().unwrap();
    let stored: Value = get(&gw, None, &format!("/api/v1/responses/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(&stored, done);
}

#[tokio::test]
async fn a_streamed_refusal_is_a_refusal_part_and_is_stored() {
    let delta = |d: Value| {
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": d, "finish_reason": null}]})
        .to_string()
    };
    let script = vec![
        Play::Data(delta(
            json!({"role": "assistant", "content": null, "refusal": ""}),
        )),
        Play::Data(delta(json!({"refusal": "I can't "}))),
        Play::Data(delta(json!({"refusal": "help with that."}))),
        Play::Data(crate::support::upstream::finish_chunk("stop")),
        Play::Data(usage_chunk(4, 5)),
        Play::Data("[DONE]".into()),
    ];
    let upstream = Upstream::sse(script).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let response = create(
        &gw,
        None,
        &json!({"model": "up/m", "input": "hi", "stream": true}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let events = events(response).await;
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.refusal.delta",
            "response.refusal.delta",
            "response.refusal.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert_eq!(
        events[3].1["part"],
        json!({"type": "refusal", "refusal": ""})
    );
    assert_eq!(events[6].1["refusal"], "I can't help with that.");
    let part = json!({"type": "refusal", "refusal": "I can't help with that."});
    assert_eq!(events[7].1["part"], part);
    let done = &events.last().unwrap().1["response"];
    assert_eq!(done["output"][0]["type"], "message");
    assert_eq!(done["output"][0]["content"], json!([part]));

    let id = done["id"].as_str().unwrap();
    let stored: Value = get(&gw, None, &format!("/api/v1/responses/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(&stored, done, "stored with its refusal");
}

#[tokio::test]
async fn completed_at_is_when_the_response_completed() {
    // The answer takes over a second, streamed or not.
    let upstream = Upstream::start(|seen| async move {
        if seen.body["stream"] == true {
            let script = vec![
                Play::Data(chunk("slow")),
                Play::Sleep(Duration::from_millis(1100)),
                Play::Data(crate::support::upstream::finish_chunk("stop")),
                Play::Data("[DONE]".into()),
            ];
            sse_response(script, None)
        } else {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            respond(200, &[], Body::from(completion("slow").to_string()))
        }
    })
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let complete: Value = create(&gw, None, &json!({"model": "up/m", "input": "hi"}))
        .await
        .json()
        .await
        .unwrap();
    let streamed = events(
        create(
            &gw,
            None,
            &json!({"model": "up/m", "input": "hi", "stream": true}),
        )
        .await,
    )
    .await;
    assert_eq!(
        streamed[0].1["response"]["completed_at"],
        Value::Null,
        "not completed yet"
    );
    let done = &streamed.last().unwrap().1["response"];
    for r in [&complete, done] {
        assert_eq!(r["status"], "completed");
        let (created, completed) = (
            r["created_at"].as_u64().unwrap(),
            r["completed_at"].as_u64().unwrap(),
        );
        assert!(
            completed > created,
            "completed at {completed}, created at {created}"
        );
        assert!(completed <= mume_gateway::accounts::now_ms() as u64 / 1000);
    }
}

#[tokio::test]
async fn a_failure_mid_stream_is_an_error_event_then_response_failed() {
    let upstream = Upstream::start(|_| async {
        sse_response(
            vec![
                Play::Data(chunk("par")),
                Play::Sleep(Duration::from_millis(50)),
                Play::Abort,
            ],
            None,
        )
    })
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let response = create(
        &gw,
        None,
        &json!({"model": "up/m", "input": "hi", "stream": true}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let req_id = request_id(response.headers());
    let events = events(response).await;
    let n = events.len();
    assert_eq!(names(&events[n - 2..]), ["error", "response.failed"]);
    assert!(!names(&events).contains(&"response.completed"));
    let error = &events[n - 2].1;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "provider_unreachable");
    assert_eq!(error["reqId"], req_id);
    assert_eq!(error["error"]["reqId"], req_id);
    assert_eq!(error["error"]["type"], "service_unavailable");
    assert!(error["message"].as_str().unwrap().contains("up"));
    let failed = &events[n - 1].1["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "server_error");
    for (i, (_, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], i as u64);
    }
}

#[tokio::test]
async fn a_failure_before_the_first_event_is_a_real_status() {
    let upstream = Upstream::json(503, json!({"error": {"message": "overloaded"}})).await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let response = create(
        &gw,
        None,
        &json!({"model": "up/m", "input": "hi", "stream": true}),
    )
    .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "provider_unavailable");

    let missing = create(&gw, None, &json!({"model": "up/m"})).await;
    let e: Value = missing.json().await.unwrap();
    assert_eq!(
        (e["error"]["code"].as_str(), e["error"]["param"].as_str()),
        (Some("missing_field"), Some("input")),
        "as a missing `model` or `messages` is: {e}"
    );
    for (body, param) in [
        (json!({"model": "up/m"}), "input"),
        (
            json!({"model": "up/m", "input": "x", "store": "yes"}),
            "store",
        ),
        (
            json!({"model": "up/m", "input": "x", "tools": [{"type": "file_search"}]}),
            "tools[0]",
        ),
        (
            json!({"model": "up/m", "input": [{"type": "message", "role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
            "input[0].content[0]",
        ),
        (json!({"model": "up/m", "input": []}), "input"),
        // A tool's output reaches a chat model as text only.
        (
            json!({"model": "up/m", "input": [
                {"type": "function_call", "call_id": "c", "name": "chart", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": [
                    {"type": "input_image", "image_url": "https://example.com/chart.png"}]}]}),
            "input[1].output[0]",
        ),
        // What a Response object echoes must have its shape there.
        (
            json!({"model": "up/m", "input": "x", "metadata": "x"}),
            "metadata",
        ),
        (
            json!({"model": "up/m", "input": "x", "metadata": {"n": 1}}),
            "metadata",
        ),
        (json!({"model": "up/m", "input": "x", "text": "x"}), "text"),
        (
            json!({"model": "up/m", "input": "x", "text": {"format": "json"}}),
            "text.format",
        ),
        (
            json!({"model": "up/m", "input": "x", "reasoning": "x"}),
            "reasoning",
        ),
        (
            json!({"model": "up/m", "input": "x", "reasoning": {"effort": 3}}),
            "reasoning.effort",
        ),
    ] {
        let response = create(&gw, None, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let e: Value = response.json().await.unwrap();
        assert_eq!(e["error"]["param"], param, "{e}");
    }
}

/// An upstream that answers each request with how many messages it got.
async fn counting_upstream() -> Upstream {
    Upstream::start(|seen| async move {
        let n = seen.body["messages"].as_array().map_or(0, Vec::len);
        respond(
            200,
            &[],
            Body::from(completion(&format!("{n} messages")).to_string()),
        )
    })
    .await
}

#[tokio::test]
async fn previous_response_id_rebuilds_the_conversation_for_a_chat_provider() {
    let upstream = counting_upstream().await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let mut previous = Value::Null;
    for (turn, text) in ["one", "two", "three"].iter().enumerate() {
        let r: Value = create(
            &gw,
            None,
            &json!({"model": "up/m", "input": text, "instructions": format!("turn {turn}"),
                "previous_response_id": previous}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(r["previous_response_id"], previous);
        previous = r["id"].clone();
    }
    let seen = upstream.seen();
    let last = &seen[2].body["messages"];
    let said: Vec<(String, String)> = last
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let content = match &m["content"] {
                Value::String(s) => s.clone(),
                parts => parts[0]["text"].as_str().unwrap().to_string(),
            };
            (m["role"].as_str().unwrap().to_string(), content)
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("system", "turn 2"),
        ("user", "one"),
        ("assistant", "2 messages"),
        ("user", "two"),
        ("assistant", "4 messages"),
        ("user", "three"),
    ]
    .iter()
    .map(|(r, c)| (r.to_string(), c.to_string()))
    .collect();
    assert_eq!(said, expected, "only the latest instructions apply");

    // Another key cannot continue it, nor learn that it exists.
    let (_, other) = gw.key_with_credit(1_000_000_000).await;
    let response = create(
        &gw,
        Some(&other),
        &json!({"model": "up/m", "input": "x", "previous_response_id": previous}),
    )
    .await;
    assert_eq!(response.status(), 404);
    let e: Value = response.json().await.unwrap();
    assert_eq!(e["error"]["code"], "previous_response_not_found");
    assert_eq!(e["error"]["param"], "previous_response_id");

    // store: false keeps nothing to chain from.
    let r: Value = create(
        &gw,
        None,
        &json!({"model": "up/m", "input": "x", "store": false}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(r["store"], false);
    let id = r["id"].as_str().unwrap();
    let got = get(&gw, None, &format!("/api/v1/responses/{id}")).await;
    assert_eq!(got.status(), 404);
}

#[tokio::test]
async fn delete_removes_a_response_of_its_own_key_only() {
    let upstream = counting_upstream().await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let r: Value = create(&gw, None, &json!({"model": "up/m", "input": "x"}))
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/api/v1/responses/{}", r["id"].as_str().unwrap());
    let (_, other) = gw.key_with_credit(1_000_000_000).await;
    let denied = keyed(&other).delete(gw.url(&path)).send().await.unwrap();
    assert_eq!(denied.status(), 404);
    let deleted = client().delete(gw.url(&path)).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(
        deleted.json::<Value>().await.unwrap(),
        json!({"id": r["id"], "object": "response", "deleted": true})
    );
    assert_eq!(get(&gw, None, &path).await.status(), 404);
    let again = client().delete(gw.url(&path)).send().await.unwrap();
    assert_eq!(again.status(), 404);
}

#[tokio::test]
async fn responses_past_retention_are_gone_and_purged() {
    let upstream = counting_upstream().await;
    let gw = TestGateway::with(
        &GatewayConfig::openai(&upstream.base_url).store("responses_retention", "1s"),
    )
    .await;
    let r: Value = create(&gw, None, &json!({"model": "up/m", "input": "x"}))
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/api/v1/responses/{}", r["id"].as_str().unwrap());
    assert_eq!(get(&gw, None, &path).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&gw, None, &path).await.status(), 404);
    let chained = create(
        &gw,
        None,
        &json!({"model": "up/m", "input": "y", "previous_response_id": r["id"]}),
    )
    .await;
    assert_eq!(chained.status(), 404);
    let now = mume_gateway::accounts::now_ms();
    let purged = gw
        .store
        .responses
        .purge_responses(now - 1000)
        .await
        .unwrap();
    assert_eq!(purged, 1);
}

/// A Responses API upstream: a streamed answer in OpenAI's event format.
fn native_events(model: &str) -> Vec<Play> {
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": "resp_up", "object": "response", "created_at": 1, "status": status, "model": model,
            "output": output, "usage": usage, "store": false, "previous_response_id": null})
    };
    let message = json!({"id": "msg_up", "type": "message", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": "Hi", "annotations": []}]});
    let events = [
        json!({"type": "response.created", "sequence_number": 0, "response": response("in_progress", json!([]), Value::Null)}),
        json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0,
            "item": {"id": "msg_up", "type": "message", "status": "in_progress", "role": "assistant", "content": []}}),
        json!({"type": "response.output_text.delta", "sequence_number": 2, "item_id": "msg_up", "output_index": 0, "content_index": 0, "delta": "Hi"}),
        json!({"type": "response.output_item.done", "sequence_number": 3, "output_index": 0, "item": message}),
        json!({"type": "response.completed", "sequence_number": 4, "response": response("completed", json!([message]),
            json!({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
                "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 7}))}),
    ];
    events
        .iter()
        .map(|e| {
            Play::Raw(format!(
                "event: {}\ndata: {e}\n\n",
                e["type"].as_str().unwrap()
            ))
        })
        .collect()
}

/// OpenAI's `keepalive` events (a long request's heartbeat, before any
/// output) are not content: the 200 stays held, so a failure after them
/// is still a real status.
#[tokio::test]
async fn a_native_keepalive_is_not_content() {
    let upstream = Upstream::start_at("/v1/responses", |seen| async move {
        let response = |status: &str| {
            json!({"id": "resp_up", "object": "response", "created_at": 1, "status": status,
                "model": seen.body["model"], "output": [], "store": false,
                "error": if status == "failed" { json!({"code": "server_error", "message": "The model crashed"}) } else { Value::Null }})
        };
        let events = [
            json!({"type": "response.created", "sequence_number": 0, "response": response("in_progress")}),
            json!({"type": "keepalive", "sequence_number": 1}),
            json!({"type": "response.failed", "sequence_number": 2, "response": response("failed")}),
        ];
        let script = events
            .iter()
            .map(|e| Play::Raw(format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())))
            .collect();
        sse_response(script, None)
    })
    .await;
    let gw =
        TestGateway::with(&priced(&upstream.base_url).provider("native_responses", true)).await;
    let (_, key) = gw.key_with_credit(1_000_000_000).await;
    let reply = create(
        &gw,
        Some(&key),
        &json!({"model": "up/m", "input": "x", "stream": true}),
    )
    .await;
    let e = crate::support::error_reply(reply).await;
    assert_eq!(e.status, 503, "{}", e.error);
    assert!(
        e.error["message"]
            .as_str()
            .unwrap()
            .contains("The model crashed"),
        "{}",
        e.error
    );
}

#[tokio::test]
async fn a_native_provider_gets_the_request_passed_through_and_metered() {
    let upstream = Upstream::start_at("/v1/responses", |seen| async move {
        let model = seen.body["model"].as_str().unwrap_or("").to_string();
        sse_response(native_events(&model), None)
    })
    .await;
    let gw =
        TestGateway::with(&priced(&upstream.base_url).provider("native_responses", true)).await;
    let (key_id, key) = gw.key_with_credit(1_000_000_000).await;
    let before = gw.balance(&key_id).await;

    let first: Value = {
        let body = json!({"model": "up/m", "input": "one", "stream": true,
            "tools": [{"type": "web_search"}], "reasoning": {"effort": "low"}});
        let events = events(create(&gw, Some(&key), &body).await).await;
        assert_eq!(
            names(&events),
            [
                "response.created",
                "response.output_item.added",
                "response.output_text.delta",
                "response.output_item.done",
                "response.completed"
            ]
        );
        assert_eq!(events[2].1["delta"], "Hi");
        let done = events[4].1["response"].clone();
        assert_eq!(done["model"], "up/m", "the public model id");
        assert_eq!(done["store"], true, "the gateway stores it");
        assert!(done["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(events[0].1["response"]["id"], done["id"]);
        done
    };
    let sent = upstream.only_request().body;
    assert_eq!(sent["model"], "m-upstream");
    assert_eq!(sent["store"], false);
    assert_eq!(
        sent["tools"],
        json!([{"type": "web_search"}]),
        "passed as sent"
    );
    assert_eq!(sent["reasoning"], json!({"effort": "low"}));
    assert!(sent.get("stream_options").is_none());

    // 5 input tokens at 1,000,000 and 2 output tokens at 2,000,000.
    gw.holds_drain().await;
    assert_eq!(before - gw.balance(&key_id).await, 9_000_000);

    // The next turn carries the conversation, not an id the upstream
    // never stored.
    let second = create(
        &gw,
        Some(&key),
        &json!({"model": "up/m", "input": "two", "previous_response_id": first["id"], "stream": true}),
    )
    .await;
    assert_eq!(second.status(), 200);
    let _ = events(second).await;
    let sent = &upstream.seen()[1].body;
    assert!(sent.get("previous_response_id").is_none());
    let input = sent["input"].as_array().unwrap();
    assert_eq!(input.len(), 3, "{input:?}");
    assert_eq!(input[0]["content"][0]["text"], "one");
    assert_eq!(input[1]["content"][0]["text"], "Hi");
    assert_eq!(input[2]["content"][0]["text"], "two");
    assert!(input.iter().all(|i| i.get("id").is_none()));
}

#[tokio::test]
async fn a_native_complete_answer_is_rewritten_and_stored() {
    let upstream = Upstream::start_at("/v1/responses", |_| async {
        let body = json!({"id": "resp_up", "object": "response", "created_at": 1, "status": "completed",
            "model": "m-upstream-2025", "store": false, "previous_response_id": null,
            "output": [{"id": "msg_up", "type": "message", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi", "annotations": []}]}],
            "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}});
        respond(200, &[], Body::from(body.to_string()))
    })
    .await;
    let gw = TestGateway::with(
        &GatewayConfig::openai(&upstream.base_url).provider("native_responses", true),
    )
    .await;
    let r: Value = create(&gw, None, &json!({"model": "up/m", "input": "one"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["model"], "up/m");
    assert_eq!(r["store"], true);
    assert_eq!(r["output"][0]["content"][0]["text"], "Hi");
    let stored: Value = get(
        &gw,
        None,
        &format!("/api/v1/responses/{}", r["id"].as_str().unwrap()),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(stored, r);
}

#[tokio::test]
async fn an_image_for_a_text_only_model_is_a_400_naming_it() {
    let upstream = counting_upstream().await;
    let text_only = toml::Value::Array(vec!["text".into()]);
    let gw = TestGateway::with(
        &GatewayConfig::openai(&upstream.base_url).model("input_modalities", text_only),
    )
    .await;
    let image = json!({"type": "input_image", "image_url": "https://example.com/cat.png"});
    let response = create(
        &gw,
        None,
        &json!({"model": "up/m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "what?"}, image]}]}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let e: Value = response.json().await.unwrap();
    assert_eq!(e["error"]["code"], "image_not_supported");
    assert_eq!(e["error"]["param"], "input[0].content[1]");
    assert!(e["error"]["message"].as_str().unwrap().contains("up/m"));

    let chat = crate::support::post_chat(
        &gw,
        &json!({"model": "up/m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
    )
    .await;
    assert_eq!(chat.status(), 400);
    let e: Value = chat.json().await.unwrap();
    assert_eq!(e["error"]["param"], "messages[0].content[0]");
    assert!(upstream.seen().is_empty(), "nothing went upstream");
}

#[tokio::test]
async fn a_400_about_a_new_item_indexes_the_input_as_sent_after_a_stored_chain() {
    let upstream = counting_upstream().await;
    let text_only = toml::Value::Array(vec!["text".into()]);
    let gw = TestGateway::with(
        &GatewayConfig::openai(&upstream.base_url).model("input_modalities", text_only),
    )
    .await;
    let first: Value = create(&gw, None, &json!({"model": "up/m", "input": "one"}))
        .await
        .json()
        .await
        .unwrap();
    // The chain now holds two items (the input and the answer); the
    // client's own first item is still input[0].
    let mut named = Vec::new();
    for part in [
        json!({"type": "input_file", "file_id": "file_1"}),
        json!({"type": "input_image", "image_url": "https://example.com/cat.png"}),
    ] {
        let response = create(
            &gw,
            None,
            &json!({"model": "up/m", "previous_response_id": first["id"], "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "and this?"}, part]}]}),
        )
        .await;
        assert_eq!(response.status(), 400);
        let e: Value = response.json().await.unwrap();
        named.push((e["error"]["code"].clone(), e["error"]["param"].clone()));
    }
    assert_eq!(
        named,
        [
            (json!("invalid_request"), json!("input[0].content[1]")),
            (json!("image_not_supported"), json!("input[0].content[1]")),
        ]
    );
    assert_eq!(
        upstream.seen().len(),
        1,
        "only the first turn went upstream"
    );
}

/// A gateway with a native Responses model `nat/m` served from `native`
/// and a translated, text-only model `up/m` served from `chat`.
async fn native_and_translated(native: &str, chat: &str) -> TestGateway {
    let toml = format!(
        r#"[server]
listen = "127.0.0.1:0"

[routing]
circuit_failures = 1000

[[providers]]
name = "nat"
kind = "openai"
base_url = "{native}"
api_key_env = "{UP_KEY_ENV}"
native_responses = true
max_attempts = 1

[[providers]]
name = "up"
kind = "openai"
base_url = "{chat}"
api_key_env = "{UP_KEY_ENV}"
max_attempts = 1

[[models]]
id = "nat/m"
upstream = "m-native"

[[models]]
id = "up/m"
upstream = "m-upstream"
input_modalities = ["text"]
"#
    );
    TestGateway::start_with_env(&toml, &[(UP_KEY_ENV, UP_KEY)]).await
}

/// A Responses API upstream that answers "Hi", not streamed.
async fn native_upstream() -> Upstream {
    Upstream::start_at("/v1/responses", |_| async {
        let body = json!({"id": "resp_up", "object": "response", "created_at": 1, "status": "completed",
            "model": "m-native", "store": false, "previous_response_id": null,
            "output": [{"id": "msg_up", "type": "message", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi", "annotations": []}]}],
            "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}});
        respond(200, &[], Body::from(body.to_string()))
    })
    .await
}

#[tokio::test]
async fn a_stored_item_a_model_cannot_take_is_a_400_naming_previous_response_id() {
    let native = native_upstream().await;
    let chat = counting_upstream().await;
    let gw = native_and_translated(&native.base_url, &chat.base_url).await;
    // Turns a native model took, continued on a translated, text-only one:
    // the client sends nothing wrong in this request.
    let mut named = Vec::new();
    for part in [
        json!({"type": "input_file", "file_id": "file_1"}),
        json!({"type": "input_image", "image_url": "https://example.com/cat.png"}),
    ] {
        let first = create(
            &gw,
            None,
            &json!({"model": "nat/m", "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "look"}, part]}]}),
        )
        .await;
        assert_eq!(first.status(), 200);
        let first: Value = first.json().await.unwrap();
        let response = create(
            &gw,
            None,
            &json!({"model": "up/m", "input": "go on", "previous_response_id": first["id"]}),
        )
        .await;
        assert_eq!(response.status(), 400);
        let e: Value = response.json().await.unwrap();
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains("previous_response_id"), "{message}");
        named.push((e["error"]["code"].clone(), e["error"]["param"].clone()));
    }
    assert_eq!(
        named,
        [
            (json!("invalid_request"), json!("previous_response_id")),
            (json!("image_not_supported"), json!("previous_response_id")),
        ]
    );
    assert!(chat.seen().is_empty(), "nothing went to the chat upstream");
}

#[tokio::test]
async fn listed_input_items_carry_the_ids_and_statuses_the_spec_requires() {
    // Calls get_weather until it has the tool's answer.
    let upstream = Upstream::start(|seen| async move {
        let answered = seen.body["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
        let mut body = completion("Sunny.");
        if !answered {
            body["choices"][0]["message"] = json!({"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_7", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]});
            body["choices"][0]["finish_reason"] = json!("tool_calls");
        }
        respond(200, &[], Body::from(body.to_string()))
    })
    .await;
    let gw = TestGateway::for_upstream(&upstream.base_url).await;
    let tools =
        json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]);
    let list = |id: &Value, query: &str| {
        let path = format!(
            "/api/v1/responses/{}/input_items{query}",
            id.as_str().unwrap()
        );
        let gw = &gw;
        async move {
            let page = get(gw, None, &path).await;
            assert_eq!(page.status(), 200);
            page.json::<Value>().await.unwrap()
        }
    };

    let first: Value = create(
        &gw,
        None,
        &json!({"model": "up/m", "input": "Weather in Oslo?", "tools": tools}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(first["output"][0]["type"], "function_call");
    let second: Value = create(
        &gw,
        None,
        &json!({"model": "up/m", "previous_response_id": first["id"], "tools": tools,
            "input": [{"type": "function_call_output", "call_id": "call_7", "output": "sunny"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(second["output"][0]["content"][0]["text"], "Sunny.");
    let items = list(&second["id"], "").await;
    let output = &items["data"][0];
    assert_eq!(output["type"], "function_call_output");
    assert!(output["id"].is_string(), "{output}");
    assert_eq!(output["status"], "completed", "{output}");

    // The same conversation sent whole, the call written by hand without
    // an id or a status.
    let third: Value = create(
        &gw,
        None,
        &json!({"model": "up/m", "tools": tools, "input": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": "Let me look."},
            {"type": "function_call", "call_id": "call_7", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"},
            {"type": "function_call_output", "call_id": "call_7", "output": "sunny"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let items = list(&third["id"], "?order=asc").await;
    let data = items["data"].as_array().unwrap();
    let kinds: Vec<&str> = data.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "message",
            "message",
            "function_call",
            "function_call_output"
        ]
    );
    for item in data {
        assert!(item["id"].is_string(), "{item}");
        assert_eq!(item["status"], "completed", "{item}");
    }
    // An assistant message is an OutputMessage: its text part states its
    // annotations and logprobs.
    assert_eq!(
        data[1]["content"],
        json!([{"type": "output_text", "text": "Let me look.", "annotations": [], "logprobs": []}])
    );
    assert_eq!(items["first_id"], data[0]["id"]);
    assert_eq!(items["last_id"], data[3]["id"]);

    // A page past the last item is empty, its ids still strings.
    let last = data[3]["id"].as_str().unwrap();
    let empty = list(&third["id"], &format!("?order=asc&after={last}")).await;
    assert_eq!(
        empty,
        json!({"object": "list", "data": [], "first_id": "", "last_id": "", "has_more": false})
    );
}

/// A Responses request's hold counts its `input` and `instructions`, as a
/// chat request's counts its `messages`: a key that cannot cover a long
/// conversation is refused with 402 before any call, not served for the
/// price of a few tokens.
#[tokio::test]
async fn the_hold_of_a_responses_request_covers_its_input() {
    let upstream = Upstream::json(200, completion("ok")).await;
    let gw = TestGateway::with(&priced(&upstream.base_url)).await;
    // $0.5: 500 prompt tokens' worth, or 100 output tokens and change.
    let (key_id, key) = gw.key_with_credit(500_000_000).await;
    let long = "word ".repeat(2000);
    for input in [json!(long), json!([{"role": "user", "content": long}])] {
        let e = crate::support::error_reply(
            create(&gw, Some(&key), &json!({"model": "up/m", "input": input})).await,
        )
        .await;
        assert_eq!(e.status, 402, "{}", e.error);
        assert_eq!(e.error["code"], "insufficient_credits");
    }
    assert!(upstream.seen().is_empty(), "no call was made");
    assert_eq!(gw.balance(&key_id).await, 500_000_000);
    // A short one passes.
    let ok = create(&gw, Some(&key), &json!({"model": "up/m", "input": "hi"})).await;
    assert_eq!(ok.status(), 200);
}
