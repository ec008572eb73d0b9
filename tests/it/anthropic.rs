//! The Anthropic provider: Chat Completions in, Messages API out, and
//! back. The upstream is an in-process server speaking the Messages API
//! that checks every request against the API's rules (alternating roles,
//! tool results answering the previous turn's tool uses, `max_tokens`, the
//! headers) and refuses what breaks them, as the real API would.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::response::IntoResponse;
use serde_json::{json, Value};

use crate::support::upstream::{respond, sse_response, Seen};
use crate::support::{
    assert_stream_failed, chat_body, content_of, data_json, error_reply, post_chat, request_id,
    Play, Sse, TestGateway, Upstream,
};

const KEY_ENV: &str = "ANTHROPIC_TEST_KEY";
const KEY: &str = "sk-ant-test-5d1c9e";

/// What the Messages API would refuse in `req`, if anything.
fn violation(req: &Seen) -> Option<String> {
    if req.headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(KEY) {
        return Some("x-api-key is missing or wrong".into());
    }
    if req.headers.get("anthropic-version").is_none() {
        return Some("anthropic-version header is missing".into());
    }
    if req.headers.get("authorization").is_some() {
        return Some("an Authorization header was sent".into());
    }
    let b = &req.body;
    let allowed = [
        "model",
        "max_tokens",
        "messages",
        "system",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "stream",
        "tools",
        "tool_choice",
        "metadata",
    ];
    if let Some(k) = b
        .as_object()?
        .keys()
        .find(|k| !allowed.contains(&k.as_str()))
    {
        return Some(format!("{k}: Extra inputs are not permitted"));
    }
    match b["max_tokens"].as_u64().unwrap_or(0) {
        0 => return Some("max_tokens: Field required".into()),
        n if n > 64_000 => {
            return Some(format!(
                "max_tokens: {n} > 64000, which is the maximum allowed number of output tokens"
            ))
        }
        _ => {}
    }
    if let Some(stop) = b["stop_sequences"].as_array() {
        if stop
            .iter()
            .any(|s| s.as_str().is_none_or(|s| s.trim().is_empty()))
        {
            return Some("stop_sequences: each stop sequence must contain non-whitespace".into());
        }
    }
    let messages = b["messages"].as_array()?;
    if messages.first()?["role"] != "user" {
        return Some("messages: first message must use the \"user\" role".into());
    }
    let mut previous_tool_uses: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 && messages[i - 1]["role"] == m["role"] {
            return Some(
                "messages: roles must alternate between \"user\" and \"assistant\"".into(),
            );
        }
        let blocks = m["content"].as_array()?;
        let mut seen_other = false;
        let mut uses = Vec::new();
        for block in blocks {
            match block["type"].as_str()? {
                "tool_result" => {
                    if m["role"] != "user" || seen_other {
                        return Some("tool_result blocks must come first in a user turn".into());
                    }
                    let id = block["tool_use_id"].as_str()?.to_string();
                    if !previous_tool_uses.contains(&id) {
                        return Some(format!(
                            "tool_result {id} answers no tool_use of the previous turn"
                        ));
                    }
                }
                "tool_use" => {
                    if m["role"] != "assistant" {
                        return Some("tool_use blocks belong to assistant turns".into());
                    }
                    uses.push(block["id"].as_str()?.to_string());
                    seen_other = true;
                }
                "text" if block["text"].as_str()?.trim().is_empty() => {
                    return Some(
                        "messages: text content blocks must contain non-whitespace text".into(),
                    )
                }
                "text" | "image" => seen_other = true,
                other => return Some(format!("unknown block type {other}")),
            }
        }
        previous_tool_uses = uses;
    }
    None
}

fn invalid(message: &str) -> axum::response::Response {
    respond(
        400,
        &[],
        Body::from(
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}).to_string(),
        ),
    )
}

fn last_user_text(req: &Seen) -> String {
    req.body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .and_then(|blocks| blocks.iter().rev().find(|b| b["type"] == "text"))
        .and_then(|b| b["text"].as_str())
        .unwrap_or("")
        .to_string()
}

fn event(data: Value) -> Play {
    Play::Data(data.to_string())
}

/// The Messages API, checked. The last user text picks the answer:
/// "tool" → a call of the first offered tool; "overloaded" → 529 the first
/// time; "busy" → 429; "nokey" → 401; "broken" → a stream error event;
/// anything else → "Hello from Claude".
async fn messages_api() -> Upstream {
    let overloaded = Arc::new(AtomicUsize::new(0));
    Upstream::start_at("/v1/messages", move |req| {
        let overloaded = overloaded.clone();
        async move {
            if let Some(problem) = violation(&req) {
                return invalid(&problem);
            }
            let text = last_user_text(&req);
            let stream = req.body["stream"] == json!(true);
            let error = |status: u16, kind: &str, headers: &[(String, String)]| {
                respond(
                    status,
                    headers,
                    Body::from(json!({"type": "error", "error": {"type": kind, "message": format!("{kind} from the mock")}}).to_string()),
                )
            };
            match text.as_str() {
                "overloaded" if overloaded.fetch_add(1, Ordering::SeqCst) == 0 => {
                    return error(529, "overloaded_error", &[])
                }
                "always overloaded" => return error(529, "overloaded_error", &[]),
                "busy" => return error(429, "rate_limit_error", &[("retry-after".into(), "7".into())]),
                "nokey" => return error(401, "authentication_error", &[]),
                _ => {}
            }
            let tool = req.body["tools"][0]["name"].as_str().map(str::to_string);
            let usage = json!({"input_tokens": 11, "output_tokens": 4, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 2});
            if !stream {
                let content = match (&tool, text.as_str()) {
                    (Some(name), "tool") => json!([{"type": "tool_use", "id": "toolu_01", "name": name, "input": {"city": "Paris"}}]),
                    _ => json!([{"type": "text", "text": "Hello from Claude"}]),
                };
                let stop = if text == "tool" { "tool_use" } else { "end_turn" };
                return axum::Json(json!({"id": "msg_01", "type": "message", "role": "assistant",
                    "model": req.body["model"], "content": content, "stop_reason": stop, "usage": usage}))
                .into_response();
            }
            let mut script = vec![
                event(json!({"type": "message_start", "message": {"id": "msg_02", "type": "message", "role": "assistant",
                    "model": req.body["model"], "content": [], "usage": {"input_tokens": 11, "output_tokens": 1}}})),
                event(json!({"type": "ping"})),
            ];
            let stop = match (&tool, text.as_str()) {
                (Some(name), "tool") => {
                    script.push(event(json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "tool_use", "id": "toolu_02", "name": name, "input": {}}})));
                    for part in ["{\"city\":", " \"Paris\"}"] {
                        script.push(event(json!({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "input_json_delta", "partial_json": part}})));
                    }
                    script.push(event(json!({"type": "content_block_stop", "index": 0})));
                    "tool_use"
                }
                _ => {
                    script.push(event(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
                    for word in ["Hello", " from", " Claude"] {
                        script.push(event(json!({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": word}})));
                    }
                    if text == "broken" {
                        script.push(Play::Raw(format!(
                            "event: error\ndata: {}\n\n",
                            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                        )));
                        return sse_response(script, None).into_response();
                    }
                    script.push(event(json!({"type": "content_block_stop", "index": 0})));
                    "end_turn"
                }
            };
            script.push(event(json!({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 4}})));
            script.push(event(json!({"type": "message_stop"})));
            sse_response(script, None).into_response()
        }
    })
    .await
}

async fn gateway(upstream: &Upstream) -> TestGateway {
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[providers]]\nname = \"anthropic\"\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"{KEY_ENV}\"\nbackoff_base = \"10ms\"\n\n[[models]]\nid = \"anthropic/claude-sonnet-4-5\"\nupstream = \"claude-sonnet-4-5-20250929\"\nprompt_price = \"3\"\ncompletion_price = \"15\"\nmax_output_tokens = 8192\n\n[[models]]\nid = \"{LONG}\"\nupstream = \"claude-long\"\nprompt_price = \"3\"\ncompletion_price = \"15\"\ncontext_length = 200000\n",
        upstream.base_url
    );
    TestGateway::start_with_env(&toml, &[(KEY_ENV, KEY)]).await
}

const MODEL: &str = "anthropic/claude-sonnet-4-5";
/// A model configured with its context length and no cap on output.
const LONG: &str = "anthropic/claude-long";

fn ask(text: &str, stream: bool) -> Value {
    let mut body = chat_body(MODEL, stream);
    body["messages"] = json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": text}
    ]);
    body
}

fn with_tool(mut body: Value) -> Value {
    body["tools"] = json!([{"type": "function", "function": {"name": "weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    body
}

#[tokio::test]
async fn a_complete_answer_comes_back_as_a_chat_completion_and_is_billed_from_its_usage() {
    let upstream = messages_api().await;
    let gw = gateway(&upstream).await;
    let (id, key) = gw.key_with_credit(1_000_000_000).await;
    let reply = gw.chat_as(&key, &ask("hi", false)).await;
    assert_eq!(reply.status(), 200);
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from Claude"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // 11 input + 3 cache reads + 2 cache writes; 3 of them cached.
    assert_eq!(body["usage"]["prompt_tokens"], 16);
    assert_eq!(body["usage"]["completion_tokens"], 4);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
    let sent = &upstream.seen()[0].body;
    assert_eq!(sent["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(sent["system"], "You are terse.");
    assert_eq!(
        sent["max_tokens"], 8192,
        "the model's cap when the request names none"
    );
    gw.holds_drain().await;
    // $3/M prompt, $15/M completion: 16 × 3,000 + 4 × 15,000 nano-USD.
    assert_eq!(
        gw.balance(&id).await,
        1_000_000_000 - (16 * 3_000 + 4 * 15_000)
    );
}

#[tokio::test]
async fn a_stream_comes_back_as_chunks() {
    let upstream = messages_api().await;
    let gw = gateway(&upstream).await;
    let mut body = ask("hi", true);
    body["stream_options"] = json!({"include_usage": true});
    let reply = post_chat(&gw, &body).await;
    assert_eq!(reply.status(), 200);
    let frames = Sse::new(reply).rest().await;
    assert_eq!(content_of(&frames), "Hello from Claude");
    let chunks: Vec<Value> = frames.iter().filter_map(|f| data_json(f)).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["model"] == MODEL));
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let usage = chunks.iter().find(|c| c["usage"].is_object()).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], 11);
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert!(
        frames.contains(&": keep-alive".to_string()),
        "ping became a keep-alive: {frames:?}"
    );
    assert_eq!(frames.last().unwrap(), "data: [DONE]");
}

#[tokio::test]
async fn a_tool_call_round_trip_passes_the_api_rules() {
    let upstream = messages_api().await;
    let gw = gateway(&upstream).await;
    let first = post_chat(&gw, &with_tool(ask("tool", false))).await;
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["choices"][0]["finish_reason"], "tool_calls");
    let call = first["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(call["id"], "toolu_01");
    assert_eq!(call["function"]["name"], "weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"city": "Paris"})
    );
    let mut next = with_tool(ask("tool", false));
    let messages = next["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
    messages.push(json!({"role": "tool", "tool_call_id": "toolu_01", "content": "18°C, sunny"}));
    messages.push(json!({"role": "user", "content": "and tomorrow?"}));
    let second = post_chat(&gw, &next).await;
    assert_eq!(second.status(), 200, "{}", second.text().await.unwrap());
    let sent = &upstream.seen()[1].body;
    assert_eq!(sent["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(sent["messages"][2]["content"][0]["type"], "tool_result");
    assert_eq!(sent["messages"][2]["content"][1]["text"], "and tomorrow?");
}

#[tokio::test]
async fn claudes_own_blank_text_before_a_tool_call_can_be_sent_back() {
    // Claude may answer "\n\n" and a tool call; the client sends both back
    // with the tool's result, and the Messages API refuses blank text.
    let upstream = messages_api().await;
    let gw = gateway(&upstream).await;
    let mut next = with_tool(ask("tool", false));
    let messages = next["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": "\n\n", "tool_calls": [{"id": "toolu_01",
        "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]}));
    messages.push(json!({"role": "tool", "tool_call_id": "toolu_01", "content": "18°C, sunny"}));
    messages.push(json!({"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "thanks"}]}));
    let reply = post_chat(&gw, &next).await;
    assert_eq!(reply.status(), 200, "{}", reply.text().await.unwrap());
    let sent = &upstream.seen()[0].body;
    assert_eq!(
        sent["messages"][1]["content"],
        json!([{"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {"city": "Paris"}}])
    );
}

#[tokio::test]
async fn a_model_with_only_a_context_length_is_sent_a_limit_the_api_takes() {
    let upstream = messages_api().await;
    let gw = gateway(&upstream).await;
    let mut body = ask("hi", false);
    body["model"] = json!(LONG);
    let reply = post_chat(&gw, &body).await;
    assert_eq!(reply.status(), 200, "{}", reply.text().await.unwrap());
    assert_eq!(upstream.seen()[0].body["max_tokens"], 4096);
}

#[tokio::test]
async fn a_whitespace_stop_sequence_is_refused_by_its_own_name() {
    let upstream = messages_api().await;
    let gw = gateway(&upstream).await;
    let mut body = ask("hi", false);
    body["stop"] = json!(["\n"]);
    let e = error_reply(post_chat(&gw, &body).await).await;
    assert_eq!(e.status, 400);
    assert_eq!(e.error["param"], "stop");
    assert!(upstream.seen().is_empty(), "no call was made");
}

#[tokio::test]
async fn a_streamed_tool_call_has_index_id_type_and_name_first() {
    let upstream = messages_api().await;
    let gw = gateway(&upstream).await;
    let reply = post_chat(&gw, &with_tool(ask("tool", true))).await;
    let frames = Sse::new(reply).rest().await;
    let deltas: Vec<Value> = frames
        .iter()
        .filter_map(|f| data_json(f))
        .filter_map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]
                .as_object()
                .cloned()
        })
        .map(Value::Object)
        .collect();
    assert_eq!(deltas[0]["index"], 0);
    assert_eq!(deltas[0]["id"], "toolu_02");
    assert_eq!(deltas[0]["type"], "function");
    assert_eq!(deltas[0]["function"]["name"], "weather");
    let arguments: String = deltas
        .iter()
        .filter_map(|d| d["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Paris"})
    );
    let finish = frames.iter().filter_map(|f| data_json(f)).find_map(|c| {
        c["choices"][0]["finish_reason"]
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(finish.as_deref(), Some("tool_calls"));
}

#[tokio::test]
async fn errors_map_to_the_right_rows() {
    let upstream = messages_api().await;
    let gw = gateway(&upstream).await;

    // 529 once: retried, then served.
    let reply = post_chat(&gw, &ask("overloaded", false)).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.headers()["x-mume-attempts"], "2");

    // 529 every time: 503.
    let e = error_reply(post_chat(&gw, &ask("always overloaded", false)).await).await;
    assert_eq!(e.status, 503);
    assert_eq!(e.error["code"], "provider_unavailable");

    // 429: 429 with its Retry-After.
    let reply = post_chat(&gw, &ask("busy", false)).await;
    assert_eq!(reply.headers()["retry-after"], "7");
    assert_eq!(error_reply(reply).await.status, 429);

    // 401 from Anthropic is the gateway's key: 503, never 401.
    let e = error_reply(post_chat(&gw, &ask("nokey", false)).await).await;
    assert_eq!(e.status, 503);
    assert_eq!(e.error["code"], "provider_auth_failed");

    // 400 invalid_request_error: 400 with Anthropic's message.
    let mut bad = ask("hi", false);
    bad["messages"] = json!([{"role": "assistant", "content": "I go first"}]);
    let e = error_reply(post_chat(&gw, &bad).await).await;
    assert_eq!(e.status, 400);
    assert!(e.error["message"]
        .as_str()
        .unwrap()
        .contains("first message must use the \"user\" role"));
}

#[tokio::test]
async fn a_mid_stream_error_event_becomes_our_error_event() {
    let upstream = messages_api().await;
    let gw = gateway(&upstream).await;
    let reply = post_chat(&gw, &ask("broken", true)).await;
    assert_eq!(reply.status(), 200);
    let id = request_id(reply.headers());
    let frames = Sse::new(reply).rest().await;
    assert_eq!(content_of(&frames), "Hello from Claude");
    let error = assert_stream_failed(&frames, &id);
    assert!(
        error["message"].as_str().unwrap().contains("Overloaded"),
        "{error}"
    );
}

#[tokio::test]
async fn a_parameter_with_no_equivalent_is_refused_before_the_call() {
    let upstream = messages_api().await;
    let gw = gateway(&upstream).await;
    let mut body = ask("hi", false);
    body["n"] = json!(2);
    let e = error_reply(post_chat(&gw, &body).await).await;
    assert_eq!(e.status, 400);
    assert_eq!(e.error["param"], "n");
    assert!(upstream.seen().is_empty());
    // Dropped parameters do not reach the API (it refuses unknown fields).
    let mut body = ask("hi", false);
    body["seed"] = json!(1);
    body["frequency_penalty"] = json!(0.5);
    assert_eq!(post_chat(&gw, &body).await.status(), 200);
}
