//! MCP tools run by the gateway (issue 9), end to end: a tool-calling
//! model (a real HTTP upstream that follows a script in the user's
//! message), rmcp's own MCP server in process, and the gateway between.
//! Covers listing, calls, tool errors, `allowed_tools`, approvals, the
//! caps, live streaming, Chat Completions, registered servers, billing and
//! the SSRF table with canary listeners.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::gateway::{UP_KEY, UP_KEY_ENV};
use crate::support::mcp_server::McpTestServer;
use crate::support::upstream::{respond, Upstream};
use crate::support::{data_json, keyed, request_id, GatewayConfig, Sse, TestGateway, PATIENCE};

fn completion(message: Value, finish: &str, prompt: u64, completion: u64) -> Value {
    json!({"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "m-upstream",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}})
}

/// A model that follows the script in the user's last message:
/// `call TOOL ARGS` calls the offered function for TOOL once (while the
/// last message is the user's), `loop TOOL ARGS` calls it every round,
/// `fan TOOL ARGS` fifty times at once every round.
/// Otherwise it answers `done: ` and the last tool message (or "no
/// tools"). `tool_choice: "none"` is obeyed. A call turn costs 10 + 5
/// tokens, an answer 20 + 10.
async fn model() -> Upstream {
    Upstream::start(|seen| async move {
        let messages = seen.body["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let script = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(|m| match &m["content"] {
                Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
                other => other.as_str().unwrap_or("").to_string(),
            })
            .unwrap_or_default();
        let last_is_user = messages.last().is_some_and(|m| m["role"] == "user");
        let mut words = script.splitn(3, ' ');
        let (mode, tool, args) = (
            words.next().unwrap_or(""),
            words.next().unwrap_or(""),
            words.next().unwrap_or("{}"),
        );
        let function = seen.body["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
            .find(|n| n.ends_with(&format!("__{tool}")))
            .map(str::to_string);
        let call = match mode {
            "call" => last_is_user,
            "loop" | "fan" => true,
            _ => false,
        } && seen.body["tool_choice"] != "none";
        let copies = if mode == "fan" { 50 } else { 1 };
        let body = match function.filter(|_| call) {
            Some(name) => {
                let calls: Vec<Value> = (0..copies)
                    .map(|i| {
                        json!({"id": format!("call_{}_{i}", messages.len()), "type": "function",
                        "function": {"name": name, "arguments": args}})
                    })
                    .collect();
                completion(
                    json!({"role": "assistant", "content": null, "tool_calls": calls}),
                    "tool_calls",
                    10,
                    5,
                )
            }
            None => {
                let last_tool = messages
                    .iter()
                    .rev()
                    .find(|m| m["role"] == "tool")
                    .and_then(|m| m["content"].as_str())
                    .unwrap_or("no tools");
                completion(
                    json!({"role": "assistant", "content": format!("done: {last_tool}")}),
                    "stop",
                    20,
                    10,
                )
            }
        };
        respond(200, &[], Body::from(body.to_string()))
    })
    .await
}

/// A gateway serving `up/m` from `upstream` at $1000 / $2000 per million
/// tokens, with `mcp` as its `[mcp]` section.
async fn gateway(upstream: &str, mcp: &str, env: &[(&str, &str)]) -> TestGateway {
    let mut toml = GatewayConfig::openai(upstream)
        .model("prompt_price", "1000")
        .model("completion_price", "2000")
        .model("max_output_tokens", 100)
        .toml();
    toml.push_str(&format!("\n[mcp]\n{mcp}\n"));
    let mut all = vec![(UP_KEY_ENV, UP_KEY)];
    all.extend_from_slice(env);
    TestGateway::start_with_env(&toml, &all).await
}

/// Enough for the hold of eight rounds at the test's prices.
const CREDIT: i64 = 10_000_000_000_000;

/// The loopback test servers are reached through the operator allowlist.
const LOCAL: &str = "allowed_hosts = [\"127.0.0.1\"]";

fn mcp_tool(url: &str, extra: Value) -> Value {
    let mut tool = json!({"type": "mcp", "server_label": "calc", "server_url": url});
    if let (Some(t), Value::Object(more)) = (tool.as_object_mut(), extra) {
        t.extend(more);
    }
    tool
}

/// POSTs a Responses request; (status, body, request id).
async fn create(gw: &TestGateway, key: &str, body: &Value) -> (StatusCode, Value, String) {
    let r = keyed(key)
        .post(gw.url("/api/v1/responses"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let id = request_id(r.headers());
    (status, r.json().await.unwrap(), id)
}

fn types(response: &Value) -> Vec<String> {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap().to_string())
        .collect()
}

fn item<'a>(response: &'a Value, kind: &str) -> &'a Value {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} item in {response}"))
}

fn answer_text(response: &Value) -> String {
    item(response, "message")["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_model_calls_mcp_tools_through_the_gateway_and_every_round_is_billed() {
    let server = McpTestServer::start().await;
    let upstream = model().await;
    let gw = gateway(&upstream.base_url, LOCAL, &[]).await;
    let (key_id, key) = gw.key_with_credit(CREDIT).await;
    let before = gw.balance(&key_id).await;
    let tool = mcp_tool(
        &server.url,
        json!({"require_approval": "never", "allowed_tools": ["add", "nap"],
            "headers": {"x-team": "a"}, "authorization": "tok"}),
    );
    let (status, r, rid) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "input": "call add {\"a\":2,\"b\":40}", "tools": [tool]}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(types(&r), ["mcp_list_tools", "mcp_call", "message"]);
    let listing = item(&r, "mcp_list_tools");
    let mut names: Vec<&str> = listing["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["add", "nap"], "allowed_tools filters the listing");
    assert_eq!(listing["server_label"], "calc");
    assert!(listing["error"].is_null());
    assert_eq!(
        listing["tools"][0]["input_schema"]["type"], "object",
        "{listing}"
    );
    let call = item(&r, "mcp_call");
    assert_eq!(call["name"], "add");
    assert_eq!(call["server_label"], "calc");
    assert_eq!(call["arguments"], "{\"a\":2,\"b\":40}");
    assert_eq!(call["output"], "42");
    assert_eq!(call["status"], "completed");
    assert!(call["error"].is_null());
    let text = answer_text(&r);
    assert!(text.starts_with("done: <mcp_tool_output"), "{text}");
    assert!(text.contains("\n42\n"), "{text}");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["usage"]["input_tokens"], 30, "both rounds' tokens");
    assert_eq!(r["usage"]["output_tokens"], 15);

    // The model saw the allowed tools as functions, then the fenced output.
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    let offered: Vec<&str> = seen[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(offered.len(), 2);
    assert!(offered.contains(&"calc__add") && offered.contains(&"calc__nap"));
    let tool_message = seen[1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap()
        .clone();
    assert!(tool_message["content"]
        .as_str()
        .unwrap()
        .contains("not instructions"));

    // Both rounds are billed: (10 + 20) prompt tokens at $1000/M and
    // (5 + 10) completion tokens at $2000/M.
    gw.holds_drain().await;
    assert_eq!(before - gw.balance(&key_id).await, 60_000_000);
    let generation: Value = keyed(&key)
        .get(gw.url(&format!("/api/v1/generation?id={rid}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(generation["data"]["num_mcp_calls"], 1, "{generation}");

    // The server got the request's headers and token, never the key.
    let headers = server.headers();
    assert!(headers
        .iter()
        .any(|h| h.get("x-team").is_some_and(|v| v == "a")
            && h.get("authorization").is_some_and(|v| v == "Bearer tok")));
    assert!(!headers
        .iter()
        .flat_map(|h| h.values())
        .any(|v| v.contains("sk-mume")));

    // The stored response keeps no secret of the tool.
    let stored: Value = keyed(&key)
        .get(gw.url(&format!("/api/v1/responses/{}", r["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let echoed = &stored["tools"][0];
    assert_eq!(echoed["type"], "mcp");
    assert!(echoed.get("authorization").is_none(), "{echoed}");
    assert!(echoed["headers"].is_null(), "{echoed}");
}

#[tokio::test]
async fn a_call_that_needs_approval_waits_for_the_client() {
    let server = McpTestServer::start().await;
    let upstream = model().await;
    let gw = gateway(&upstream.base_url, LOCAL, &[]).await;
    let (_, key) = gw.key_with_credit(CREDIT).await;
    let tool = mcp_tool(&server.url, json!({"allowed_tools": ["add"]}));
    let ask = json!({"model": "up/m", "input": "call add {\"a\":1,\"b\":2}", "tools": [tool]});

    // require_approval defaults to "always": the response ends asking.
    let (status, first, _) = create(&gw, &key, &ask).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(types(&first), ["mcp_list_tools", "mcp_approval_request"]);
    assert_eq!(first["status"], "completed");
    let request = item(&first, "mcp_approval_request").clone();
    assert_eq!(request["name"], "add");
    assert_eq!(request["arguments"], "{\"a\":1,\"b\":2}");

    // Approved through previous_response_id: the call runs, then the answer.
    let (status, second, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "previous_response_id": first["id"], "tools": [tool],
            "input": [{"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": true}]}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(types(&second), ["mcp_list_tools", "mcp_call", "message"]);
    let call = item(&second, "mcp_call");
    assert_eq!(call["approval_request_id"], request["id"]);
    assert_eq!(call["output"], "3");
    assert!(answer_text(&second).contains("\n3\n"));

    // An approval already acted on is not run again.
    let (_, third, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "previous_response_id": second["id"], "tools": [tool], "input": "thanks"}),
    )
    .await;
    assert!(!types(&third).contains(&"mcp_call".to_string()), "{third}");

    // Denied, with the items sent again instead of a stored chain.
    let (_, again, _) = create(&gw, &key, &json!({"model": "up/m", "store": false, "input": "call add {\"a\":1,\"b\":2}", "tools": [tool]})).await;
    let request = item(&again, "mcp_approval_request").clone();
    let (status, denied, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "tools": [tool], "input": [
            {"role": "user", "content": "call add {\"a\":1,\"b\":2}"},
            request,
            {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": false, "reason": "too risky"}]}),
    )
    .await;
    assert_eq!(status, 200, "{denied}");
    assert!(!types(&denied).contains(&"mcp_call".to_string()));
    assert_eq!(
        answer_text(&denied),
        "done: The user did not approve this call: too risky"
    );
    // The conversation goes on, without the tool, and the old answer is
    // not a decision again.
    let (status, later, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "previous_response_id": denied["id"], "input": "thanks"}),
    )
    .await;
    assert_eq!(status, 200, "{later}");
    assert_eq!(types(&later), ["message"]);

    // tool_choice "none": the tools are listed, never called.
    let (status, none, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "input": "call add {\"a\":1,\"b\":2}", "tools": [tool], "tool_choice": "none"}),
    )
    .await;
    assert_eq!(status, 200, "{none}");
    assert_eq!(types(&none), ["mcp_list_tools", "message"]);

    // An answer to a request the conversation does not hold.
    let (status, bad, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "tools": [tool], "input": [
            {"type": "mcp_approval_response", "approval_request_id": "mcpr_nope", "approve": true}]}),
    )
    .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["param"], "input[0].approval_request_id");
}

/// The SSE frames' event names and data.
fn events(frames: &[String]) -> Vec<(String, Value)> {
    frames
        .iter()
        .filter_map(|f| {
            let mut lines = f.lines();
            let name = lines.next()?.strip_prefix("event: ")?.to_string();
            let data = lines.next()?.strip_prefix("data: ")?;
            Some((name, serde_json::from_str(data).unwrap()))
        })
        .collect()
}

#[tokio::test]
async fn a_stream_shows_each_step_while_the_tool_is_still_running() {
    let server = McpTestServer::start().await;
    let upstream = model().await;
    let gw = gateway(&upstream.base_url, LOCAL, &[]).await;
    let (_, key) = gw.key_with_credit(CREDIT).await;
    let tool = mcp_tool(&server.url, json!({"require_approval": "never"}));
    let response = keyed(&key)
        .post(gw.url("/api/v1/responses"))
        .json(&json!({"model": "up/m", "stream": true, "input": "call gate {}", "tools": [tool]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut sse = Sse::new(response);
    let mut frames = Vec::new();
    // The tool blocks until the test opens it: the client must already
    // hold the call's start.
    loop {
        let frame = sse.expect_frame(PATIENCE).await;
        let started = frame.starts_with("event: response.mcp_call_arguments.done");
        frames.push(frame);
        if started {
            break;
        }
    }
    server.open();
    frames.extend(sse.rest().await);
    let events = events(&frames);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..14],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.mcp_list_tools.in_progress",
            "response.mcp_list_tools.completed",
            "response.output_item.done",
            "response.output_item.added",
            "response.mcp_call.in_progress",
            "response.mcp_call_arguments.delta",
            "response.mcp_call_arguments.done",
            "response.mcp_call.completed",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
        ]
    );
    assert!(names[14..names.len() - 4]
        .iter()
        .all(|n| *n == "response.output_text.delta"));
    assert_eq!(
        names[names.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    for (i, (_, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], i as u64);
    }
    let call_done = &events[11].1["item"];
    assert_eq!(call_done["type"], "mcp_call");
    assert_eq!(call_done["output"], "opened");
    assert_eq!(events[7].1["item_id"], call_done["id"]);
    let done = &events.last().unwrap().1["response"];
    assert_eq!(
        types(done),
        ["mcp_list_tools", "mcp_call", "message"],
        "{done}"
    );
}

#[tokio::test]
async fn caps_on_tool_calls_and_rounds_end_the_response_incomplete() {
    let server = McpTestServer::start().await;
    let upstream = model().await;
    let gw = gateway(
        &upstream.base_url,
        &format!("{LOCAL}\nmax_rounds = 3\nmax_output_chars = 100"),
        &[],
    )
    .await;
    let (key_id, key) = gw.key_with_credit(CREDIT).await;
    let tool = mcp_tool(&server.url, json!({"require_approval": "never"}));
    let looping = "loop add {\"a\":1,\"b\":1}";

    let (status, r, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "input": looping, "tools": [tool], "max_tool_calls": 1}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["incomplete_details"]["reason"], "max_tool_calls");
    assert_eq!(types(&r), ["mcp_list_tools", "mcp_call"]);
    assert_eq!(upstream.seen().len(), 2);

    let (status, r, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "input": looping, "tools": [tool]}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["incomplete_details"]["reason"], "max_rounds");
    assert_eq!(
        types(&r),
        ["mcp_list_tools", "mcp_call", "mcp_call"],
        "three rounds, two of them calling"
    );
    assert_eq!(upstream.seen().len(), 5);

    // Fifty calls at once add more to the next prompt than the hold
    // foresaw for a round: the response stops rather than overspend it.
    let (status, r, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "input": "fan big {\"bytes\":100}", "tools": [tool]}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["incomplete_details"]["reason"], "max_cost", "{r}");
    assert_eq!(
        types(&r).len(),
        101,
        "the listing and two rounds' calls: the third round would not fit"
    );
    assert_eq!(upstream.seen().len(), 7);
    gw.holds_drain().await;
    assert_eq!(
        gw.ledger_sum(&key_id).await,
        gw.balance(&key_id).await,
        "the ledger accounts for every round"
    );
}

#[tokio::test]
async fn a_first_round_the_hold_cannot_cover_is_never_sent() {
    // 64 tools of 4,000 characters each: about 64,000 prompt tokens, $64
    // at the test's prices, for a key with $3.
    let wide = crate::support::mcp_server::wide(64, 4000).await;
    let server = McpTestServer::start().await;
    let upstream = model().await;
    let gw = gateway(&upstream.base_url, LOCAL, &[]).await;
    let credit = 3_000_000_000;
    let (key_id, key) = gw.key_with_credit(credit).await;
    let tool = |url: &str| mcp_tool(url, json!({"require_approval": "never"}));

    // max_tool_calls 0: one round, no later round's hold to borrow from.
    let (status, r, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "input": "hello", "max_tool_calls": 0, "tools": [tool(&wide)]}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["incomplete_details"]["reason"], "max_cost", "{r}");
    assert_eq!(types(&r), ["mcp_list_tools"]);
    assert_eq!(
        item(&r, "mcp_list_tools")["tools"]
            .as_array()
            .unwrap()
            .len(),
        64
    );
    assert!(upstream.seen().is_empty(), "no round past the hold");

    // Chat Completions: a well-formed completion without text.
    let chat = json!({"model": "up/m", "max_tool_calls": 0, "tools": [tool(&wide)],
        "messages": [{"role": "user", "content": "hello"}]});
    let c: Value = gw.chat_as(&key, &chat).await.json().await.unwrap();
    assert_eq!(c["object"], "chat.completion", "{c}");
    assert_eq!(c["mcp_incomplete"], "max_cost");
    assert_eq!(c["choices"][0]["message"]["content"], "");
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    assert!(upstream.seen().is_empty());
    gw.holds_drain().await;
    assert_eq!(gw.balance(&key_id).await, credit, "nothing was served");

    // A server's few small tools fit in the hold's allowance for them.
    let (status, r, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "input": "hello", "max_tool_calls": 0, "tools": [tool(&server.url)]}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(answer_text(&r), "done: no tools");
}

#[tokio::test]
async fn tool_errors_and_unreachable_servers_become_items_the_model_is_told_about() {
    let server = McpTestServer::start().await;
    let upstream = model().await;
    let gw = gateway(&upstream.base_url, LOCAL, &[]).await;
    let (_, key) = gw.key_with_credit(CREDIT).await;

    let tool = mcp_tool(&server.url, json!({"require_approval": "never"}));
    let (status, r, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "input": "call broken {}", "tools": [tool]}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let call = item(&r, "mcp_call");
    assert_eq!(call["status"], "failed");
    assert!(call["output"].is_null());
    assert_eq!(call["error"]["type"], "mcp_tool_execution_error");
    assert_eq!(call["error"]["content"][0]["text"], "the disk is on fire");
    assert!(answer_text(&r).contains("The tool reported an error"));

    // A call the server refuses with a JSON-RPC error: the error's text is
    // the server's, so it reaches the model fenced, like any output, and
    // cannot close the fence.
    let (status, r, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "input": "call refuse {}", "tools": [tool]}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(item(&r, "mcp_call")["status"], "failed");
    let text = answer_text(&r);
    assert!(
        text.starts_with("done: The tool call failed.\n<mcp_tool_output"),
        "{text}"
    );
    assert_eq!(text.matches("</mcp_tool_output>").count(), 1, "{text}");

    // Nothing listens on port 1: the listing fails, the model answers
    // without those tools.
    let down = mcp_tool(
        "http://127.0.0.1:1/mcp",
        json!({"require_approval": "never"}),
    );
    let (status, r, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "input": "call add {}", "tools": [down]}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(types(&r), ["mcp_list_tools", "message"]);
    assert!(item(&r, "mcp_list_tools")["error"].is_string());
    assert_eq!(answer_text(&r), "done: no tools");
}

#[tokio::test]
async fn chat_completions_take_the_mcp_tool_as_an_extension() {
    let server = McpTestServer::start().await;
    let upstream = model().await;
    let gw = gateway(&upstream.base_url, LOCAL, &[]).await;
    let (_, key) = gw.key_with_credit(CREDIT).await;
    let tool = mcp_tool(&server.url, json!({"allowed_tools": ["add"]}));
    let body = json!({"model": "up/m", "messages": [{"role": "user", "content": "call add {\"a\":5,\"b\":5}"}], "tools": [tool]});

    let r = gw.chat_as(&key, &body).await;
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["object"], "chat.completion");
    let kinds: Vec<&str> = c["mcp_output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["mcp_list_tools", "mcp_call"]);
    assert_eq!(c["mcp_output"][1]["output"], "10");
    assert!(c["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("\n10\n"));
    assert!(c["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(c["usage"]["prompt_tokens"], 30);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = gw.chat_as(&key, &streamed).await;
    assert_eq!(r.status(), 200);
    let frames = Sse::new(r).rest().await;
    assert_eq!(frames.last().unwrap(), "data: [DONE]");
    let chunks: Vec<Value> = frames.iter().filter_map(|f| data_json(f)).collect();
    assert_eq!(chunks[0]["mcp_output"][0]["type"], "mcp_list_tools");
    assert_eq!(chunks[1]["mcp_output"][0]["output"], "10");
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    assert!(text.contains("\n10\n"), "{text}");

    let mut asking = body.clone();
    asking["tools"][0]["require_approval"] = json!("always");
    let r = gw.chat_as(&key, &asking).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "tools[0].require_approval");
}

#[tokio::test]
async fn registered_servers_are_named_by_label_for_the_keys_allowed() {
    let server = McpTestServer::start().await;
    let upstream = model().await;
    // Registered servers need no allowlisting: loopback is not allowed here.
    let mcp = format!(
        "allow_request_servers = false\n\
         [[mcp.servers]]\nlabel = \"ops\"\nurl = \"{url}\"\nheaders = {{ \"x-team\" = \"OPS_TEAM\" }}\nkeys = [\"*\"]\n\
         [[mcp.servers]]\nlabel = \"vault\"\nurl = \"{url}\"\nkeys = [\"nobody\"]\n\
         [[mcp.servers]]\nlabel = \"half\"\nurl = \"{url}\"\nheaders = {{ \"x-team\" = \"UNSET_VAR\" }}\nkeys = [\"*\"]\n",
        url = server.url
    );
    let gw = gateway(&upstream.base_url, &mcp, &[("OPS_TEAM", "blue")]).await;
    let (_, key) = gw.key_with_credit(CREDIT).await;
    let by_label = |label: &str| {
        json!({"model": "up/m", "input": "call add {\"a\":1,\"b\":1}",
            "tools": [{"type": "mcp", "server_label": label, "require_approval": "never"}]})
    };

    let (status, r, _) = create(&gw, &key, &by_label("ops")).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(item(&r, "mcp_call")["output"], "2");
    assert!(server
        .headers()
        .iter()
        .any(|h| h.get("x-team").is_some_and(|v| v == "blue")));

    let mut own_team = by_label("ops");
    own_team["tools"][0]["headers"] = json!({"X-TEAM": "red"});
    let (status, r, _) = create(&gw, &key, &own_team).await;
    assert_eq!(
        status, 400,
        "the operator's header is not the request's: {r}"
    );
    let (status, r, _) = create(&gw, &key, &by_label("vault")).await;
    assert_eq!(status, 403, "{r}");
    let (status, r, _) = create(&gw, &key, &by_label("half")).await;
    assert_eq!(status, 503, "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("UNSET_VAR"));
    let (status, r, _) = create(&gw, &key, &by_label("nowhere")).await;
    assert_eq!(status, 400, "{r}");

    // This gateway takes no server_url from requests.
    let tool = mcp_tool(&server.url, json!({"require_approval": "never"}));
    let (status, r, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "input": "hi", "tools": [tool]}),
    )
    .await;
    assert_eq!(status, 403, "{r}");
    assert_eq!(
        upstream.seen().len(),
        2,
        "only the allowed request went upstream (two rounds)"
    );
}

/// A TCP listener on `addr` that counts the connections it accepts.
async fn canary(addr: &str) -> Option<(u16, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.ok()?;
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    Some((port, hits))
}

/// An HTTP server on `127.0.0.2` that redirects every request to `to`,
/// counting them.
async fn redirector(to: String) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let to = to.clone();
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            respond(307, &[("location".into(), to)], Body::empty())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/mcp"), hits)
}

#[tokio::test]
async fn internal_server_urls_are_refused_before_any_connection() {
    let (port, v4) = canary("127.0.0.1:0").await.unwrap();
    let v6 = canary("[::1]:0").await;
    let upstream = model().await;
    // The default guard, and 127.0.0.2 allowlisted for the redirect case.
    let gw = gateway(&upstream.base_url, "allowed_hosts = [\"127.0.0.2\"]", &[]).await;
    let (_, key) = gw.key_with_credit(CREDIT).await;
    let mut urls: Vec<String> = [
        "http://127.0.0.1:{P}/mcp",
        "http://localhost:{P}/mcp",
        "http://127.1:{P}/mcp",
        "http://2130706433:{P}/mcp",
        "http://0x7f.0.0.1:{P}/mcp",
        "http://0177.0.0.1:{P}/mcp",
        "http://017700000001:{P}/mcp",
        "http://example.com@127.0.0.1:{P}/mcp",
        "gopher://127.0.0.1:{P}/_mcp",
        "http://0.0.0.0:{P}/mcp",
        "http://[::ffff:127.0.0.1]:{P}/mcp",
        "http://[::ffff:7f00:1]:{P}/mcp",
        "http://[::127.0.0.1]:{P}/mcp",
        "http://[64:ff9b::7f00:1]:{P}/mcp",
        "http://[2002:7f00:1::1]:{P}/mcp",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/mcp",
        "http://192.168.1.1/mcp",
        "http://100.64.0.1/mcp",
        "http://[fd00::1]/mcp",
        "http://[fe80::1]/mcp",
        "ftp://127.0.0.1:{P}/mcp",
        "file:///etc/passwd",
        "http://user:pass@127.0.0.1:{P}/mcp",
    ]
    .iter()
    .map(|u| u.replace("{P}", &port.to_string()))
    .collect();
    if let Some((port6, _)) = &v6 {
        urls.push(format!("http://[::1]:{port6}/mcp"));
        urls.push(format!("http://[::]:{port6}/mcp"));
    }
    for url in &urls {
        let tool = mcp_tool(url, json!({"require_approval": "never"}));
        let (status, r, _) = create(
            &gw,
            &key,
            &json!({"model": "up/m", "input": "call add {}", "tools": [tool]}),
        )
        .await;
        assert_eq!(status, 400, "{url}: {r}");
        assert_eq!(r["error"]["code"], "mcp_server_refused", "{url}");
        assert_eq!(r["error"]["param"], "tools[0].server_url");
    }

    // An allowlisted server that redirects inward: every hop is checked.
    for to in [
        format!("http://127.0.0.1:{port}/mcp"),
        format!("http://localhost:{port}/mcp"),
    ] {
        let (url, hits) = redirector(to.clone()).await;
        let tool = mcp_tool(&url, json!({"require_approval": "never"}));
        let (status, r, _) = create(
            &gw,
            &key,
            &json!({"model": "up/m", "input": "call add {}", "tools": [tool]}),
        )
        .await;
        assert_eq!(status, 200, "{to}: {r}");
        assert!(item(&r, "mcp_list_tools")["error"].is_string(), "{r}");
        assert!(hits.load(Ordering::SeqCst) > 0, "the redirector was asked");
    }
    // A redirect loop stops after three hops (per connection attempt: the
    // Streamable HTTP one, then the legacy HTTP+SSE one).
    let (looped, loop_hits) = redirector("/mcp".into()).await;
    let tool = mcp_tool(&looped, json!({"require_approval": "never"}));
    let (_, r, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "input": "call add {}", "tools": [tool]}),
    )
    .await;
    assert!(item(&r, "mcp_list_tools")["error"].is_string(), "{r}");
    assert!(loop_hits.load(Ordering::SeqCst) <= 8);

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(v4.load(Ordering::SeqCst), 0, "the IPv4 canary was reached");
    if let Some((_, hits)) = v6 {
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "the IPv6 canary was reached"
        );
    }
}

#[tokio::test]
async fn a_client_that_leaves_mid_call_releases_its_hold() {
    let server = McpTestServer::start().await;
    let upstream = model().await;
    let gw = gateway(&upstream.base_url, LOCAL, &[]).await;
    let (key_id, key) = gw.key_with_credit(CREDIT).await;
    let tool = mcp_tool(&server.url, json!({"require_approval": "never"}));
    let response = keyed(&key)
        .post(gw.url("/api/v1/responses"))
        .json(&json!({"model": "up/m", "stream": true, "tools": [tool], "input": "call gate {}"}))
        .send()
        .await
        .unwrap();
    let mut sse = Sse::new(response);
    // The call has started (so its round is over) and the tool is blocked.
    while !sse
        .expect_frame(PATIENCE)
        .await
        .starts_with("event: response.mcp_call_arguments.done")
    {}
    drop(sse);
    gw.holds_drain().await;
    // The first round (10 + 5 tokens) is billed, the rest of the hold
    // released.
    assert_eq!(CREDIT - gw.balance(&key_id).await, 20_000_000);
    assert_eq!(gw.ledger_sum(&key_id).await, gw.balance(&key_id).await);
    assert_eq!(upstream.seen().len(), 1, "no round after the client left");
}

#[tokio::test]
async fn huge_and_slow_answers_are_cut_off() {
    let server = McpTestServer::start().await;
    let upstream = model().await;
    let gw = gateway(
        &upstream.base_url,
        &format!("{LOCAL}\nmax_response_bytes = 65536\ntimeout = \"300ms\""),
        &[],
    )
    .await;
    let (_, key) = gw.key_with_credit(CREDIT).await;
    let tool = mcp_tool(&server.url, json!({"require_approval": "never"}));
    for (script, small) in [
        ("call big {\"bytes\":1000}", true),
        ("call big {\"bytes\":200000}", false),
        ("call nap {\"ms\":3000}", false),
    ] {
        let (status, r, _) = create(
            &gw,
            &key,
            &json!({"model": "up/m", "input": script, "tools": [tool]}),
        )
        .await;
        assert_eq!(status, 200, "{r}");
        let call = item(&r, "mcp_call");
        if small {
            assert_eq!(call["output"].as_str().unwrap().len(), 1000);
        } else {
            assert_eq!(call["status"], "failed", "{script}: {call}");
            assert!(call["output"].is_null());
        }
    }
}

#[tokio::test]
async fn a_native_provider_continuing_an_mcp_conversation_gets_function_items() {
    let server = McpTestServer::start().await;
    let chat = model().await;
    let chat_url = chat.base_url.clone();
    // One upstream for both APIs: Chat Completions (the MCP rounds) go to
    // the scripted model, Responses (a native follow-up) answer "ok".
    let upstream = Upstream::start_at("/v1/{*api}", move |seen| {
        let chat_url = chat_url.clone();
        async move {
            if seen.body.get("messages").is_some() {
                let r = reqwest::Client::new()
                    .post(format!("{chat_url}/chat/completions"))
                    .json(&seen.body)
                    .send()
                    .await
                    .unwrap();
                return respond(200, &[], Body::from(r.bytes().await.unwrap()));
            }
            let body = json!({"id": "resp_up", "object": "response", "created_at": 1, "status": "completed",
                "model": seen.body["model"], "output": [{"type": "message", "id": "msg_up", "status": "completed",
                "role": "assistant", "content": [{"type": "output_text", "text": "ok", "annotations": []}]}],
                "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}});
            respond(200, &[], Body::from(body.to_string()))
        }
    })
    .await;
    let mut toml = GatewayConfig::openai(&upstream.base_url)
        .provider("native_responses", true)
        .toml();
    toml.push_str(&format!("\n[mcp]\n{LOCAL}\n"));
    let gw = TestGateway::start_with_env(&toml, &[(UP_KEY_ENV, UP_KEY)]).await;
    let (_, key) = gw.key_with_credit(CREDIT).await;
    let tool = mcp_tool(&server.url, json!({"require_approval": "never"}));
    let (status, first, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "input": "call add {\"a\":2,\"b\":2}", "tools": [tool]}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(item(&first, "mcp_call")["output"], "4");

    let (status, second, _) = create(
        &gw,
        &key,
        &json!({"model": "up/m", "previous_response_id": first["id"], "input": "thanks"}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(answer_text(&second), "ok");
    let native = upstream
        .seen()
        .into_iter()
        .find(|s| s.body.get("input").is_some())
        .expect("the follow-up went to the Responses API");
    let sent: Vec<&str> = native.body["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap_or("message"))
        .collect();
    assert!(!sent.iter().any(|t| t.starts_with("mcp_")), "{sent:?}");
    assert!(sent.contains(&"function_call") && sent.contains(&"function_call_output"));
    let items = native.body["input"].as_array().unwrap();
    let call = items.iter().find(|i| i["type"] == "function_call").unwrap();
    let output = items
        .iter()
        .find(|i| i["type"] == "function_call_output")
        .unwrap();
    assert_eq!(call["call_id"], output["call_id"]);
    assert_eq!(call["name"], "calc__add");
    assert!(output["output"].as_str().unwrap().contains("\n4\n"));
}
