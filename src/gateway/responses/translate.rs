//! Responses ⇄ Chat Completions, as pure functions (but for the clock
//! that dates a completed Response, `completed_at`).
//!
//! - `to_chat`: a Responses request body as a Chat Completions body.
//!   `input` (a string, or items: messages with `input_text` /
//!   `input_image` parts, `function_call`, `function_call_output`; the
//!   gateway's own `web_search_call` and MCP items of earlier turns),
//!   after the stored conversation it continues (an error there names
//!   `previous_response_id`, one in `input` its index as sent),
//!   `instructions`, function `tools`, `tool_choice`,
//!   `parallel_tool_calls`, `max_output_tokens`, `temperature`, `top_p`,
//!   `text.format` (→ `response_format`), `reasoning.effort`. Fields the
//!   Responses API has and Chat Completions does not (`store`,
//!   `previous_response_id`, `include`, …) are the endpoint's business and
//!   are not sent, nor are the gateway's routing fields (`models`,
//!   `provider`); fields this module does not know pass through.
//! - `to_response`: a `chat.completion` as a Response object: `message`
//!   items with `output_text` parts, `function_call` items carrying
//!   `call_id`, and `usage` with its `*_details`.

use serde_json::{json, Map, Value};

use crate::gateway::error::GatewayError;
use crate::gateway::request::TAKEN_FIELDS;

/// The most characters of an earlier MCP call's output that go back to the
/// model with the conversation.
pub const HISTORY_OUTPUT_CHARS: usize = 20_000;

/// Request fields that belong to the Responses endpoint itself (storage,
/// chaining, background runs) and never reach a Chat Completions upstream.
const ENDPOINT_FIELDS: &[&str] = &[
    "store",
    "previous_response_id",
    "include",
    "truncation",
    "background",
    "metadata",
    "conversation",
    "prompt",
    "prompt_cache_key",
    "service_tier",
    "max_tool_calls",
];

/// Fields translated here; everything else passes through as it is.
const TRANSLATED: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "temperature",
    "top_p",
    "text",
    "reasoning",
    "stream",
    "user",
    "safety_identifier",
];

fn bad(param: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::bad_request("invalid_request", message.into(), Some(param))
}

/// The Chat Completions body for a Responses request whose conversation
/// so far (`previous_response_id`) is `history`, put before its `input`.
pub fn to_chat(
    req: &Map<String, Value>,
    history: &[Value],
) -> Result<Map<String, Value>, GatewayError> {
    let mut out = Map::new();
    // The routing fields are still in `req` (`ChatRequest::from_map` takes
    // them from another copy): they are the gateway's and never go upstream.
    let not_passed = [TRANSLATED, ENDPOINT_FIELDS, TAKEN_FIELDS];
    for (k, v) in req {
        if !not_passed.iter().any(|fields| fields.contains(&k.as_str())) {
            out.insert(k.clone(), v.clone());
        }
    }
    if let Some(model) = req.get("model") {
        out.insert("model".into(), model.clone());
    }
    if req.get("prompt").is_some_and(|p| !p.is_null()) {
        return Err(bad(
            "prompt",
            "Stored prompt templates exist only on OpenAI: this model cannot use `prompt`. Send the instructions and input instead.",
        ));
    }
    let mut messages = Vec::new();
    match req.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(bad("instructions", "`instructions` must be a string.")),
    }
    for item in history {
        input_item(item, "previous_response_id", &mut messages).map_err(in_history)?;
    }
    match req.get("input") {
        None | Some(Value::Null) => {
            return Err(bad(
                "input",
                "`input` is required: a string, or a list of input items.",
            ))
        }
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, &format!("input[{i}]"), &mut messages)?;
            }
        }
        Some(_) => {
            return Err(bad(
                "input",
                "`input` must be a string or a list of input items.",
            ))
        }
    }
    out.insert("messages".into(), Value::Array(messages));

    if let Some(tools) = req.get("tools").filter(|t| !t.is_null()) {
        let list = tools
            .as_array()
            .ok_or_else(|| bad("tools", "`tools` must be a list."))?;
        let mut chat_tools = Vec::new();
        for (i, tool) in list.iter().enumerate() {
            match tool.get("type").and_then(Value::as_str) {
                Some("function") => {
                    let mut function = Map::new();
                    for k in ["name", "description", "parameters", "strict"] {
                        if let Some(v) = tool.get(k) {
                            function.insert(k.into(), v.clone());
                        }
                    }
                    chat_tools.push(json!({"type": "function", "function": function}));
                }
                other => {
                    return Err(bad(
                        &format!("tools[{i}]"),
                        format!(
                            "Tool type {} cannot be used with this model. Use function tools.",
                            other.map_or("(none)".to_string(), |t| format!("{t:?}"))
                        ),
                    ))
                }
            }
        }
        out.insert("tools".into(), Value::Array(chat_tools));
    }
    match req.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("tool_choice".into(), Value::String(s.clone()));
        }
        Some(c) if c.get("type").and_then(Value::as_str) == Some("function") => {
            out.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": c.get("name")}}),
            );
        }
        Some(_) => {
            return Err(bad(
                "tool_choice",
                "`tool_choice` must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"name\": …}.",
            ))
        }
    }
    for k in ["parallel_tool_calls", "temperature", "top_p"] {
        if let Some(v) = req.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(n) = req.get("max_output_tokens").filter(|v| !v.is_null()) {
        out.insert("max_completion_tokens".into(), n.clone());
    }
    if let Some(format) = req
        .get("text")
        .and_then(|t| t.get("format"))
        .filter(|v| !v.is_null())
    {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                out.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some("json_schema") => {
                let mut schema = Map::new();
                for k in ["name", "schema", "strict", "description"] {
                    if let Some(v) = format.get(k) {
                        schema.insert(k.into(), v.clone());
                    }
                }
                out.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": schema}),
                );
            }
            _ => {
                return Err(bad(
                    "text.format",
                    "`text.format.type` must be text, json_object or json_schema.",
                ))
            }
        }
    }
    if let Some(effort) = req
        .get("reasoning")
        .and_then(|t| t.get("effort"))
        .filter(|v| !v.is_null())
    {
        out.insert("reasoning_effort".into(), effort.clone());
    }
    if let Some(user) = req.get("safety_identifier").or_else(|| req.get("user")) {
        if !user.is_null() {
            out.insert("user".into(), user.clone());
        }
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), Value::Bool(true));
    }
    Ok(out)
}

/// A stored item of the conversation this model cannot take (one a native
/// provider took in an earlier turn): the client did not send it in this
/// request, so the error names the chain, not a place in `input`.
fn in_history(mut e: GatewayError) -> GatewayError {
    e.param = Some("previous_response_id".into());
    e.message = format!(
        "The conversation of previous_response_id holds an item this model cannot take: {} Continue it on the model that answered it, or start a new conversation.",
        e.message
    );
    e
}

/// Appends the Chat Completions messages of one input item. Consecutive
/// function calls become one assistant message with several tool calls.
fn input_item(item: &Value, at: &str, messages: &mut Vec<Value>) -> Result<(), GatewayError> {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            let role = item.get("role").and_then(Value::as_str).unwrap_or("");
            if !["user", "assistant", "system", "developer"].contains(&role) {
                return Err(bad(at, format!("A message's role must be user, assistant, system or developer, not {role:?}.")));
            }
            let content = match item.get("content") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => {
                    let mut out = Vec::new();
                    for (j, part) in parts.iter().enumerate() {
                        out.push(content_part(part, &format!("{at}.content[{j}]"))?);
                    }
                    Value::Array(out)
                }
                _ => {
                    return Err(bad(
                        at,
                        "A message's content must be a string or a list of parts.",
                    ))
                }
            };
            // An assistant turn goes back as plain text: some chat servers
            // take no content parts from the assistant.
            let content = match content {
                Value::Array(parts)
                    if role == "assistant" && parts.iter().all(|p| p["type"] == "text") =>
                {
                    Value::String(parts.iter().filter_map(|p| p["text"].as_str()).collect())
                }
                other => other,
            };
            messages.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let call = json!({
                "id": item.get("call_id").cloned().ok_or_else(|| bad(at, "A function_call needs its call_id."))?,
                "type": "function",
                "function": {
                    "name": item.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": item.get("arguments").cloned().unwrap_or(json!("{}")),
                },
            });
            match messages.last_mut() {
                Some(last) if last["role"] == "assistant" => {
                    let calls = last
                        .as_object_mut()
                        .expect("messages are objects")
                        .entry("tool_calls")
                        .or_insert_with(|| json!([]));
                    if let Value::Array(calls) = calls {
                        calls.push(call);
                    }
                }
                _ => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                // A Chat Completions tool message holds text alone: an image
                // or a file would be lost, so it is refused, never dropped.
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.iter().enumerate() {
                        match part.get("type").and_then(Value::as_str) {
                            Some("input_text") | Some("output_text") | Some("text") => {
                                text.push_str(part.get("text").and_then(Value::as_str).unwrap_or(""))
                            }
                            other => {
                                return Err(bad(
                                    &format!("{at}.output[{j}]"),
                                    format!("A function_call_output part of type {} cannot be sent to this model: its tool results take text only. Use input_text parts, or an output string.", other.map_or("(none)".into(), |t| format!("{t:?}"))),
                                ))
                            }
                        }
                    }
                    text
                }
                _ => return Err(bad(
                    at,
                    "A function_call_output needs an output string or a list of input_text parts.",
                )),
            };
            messages.push(json!({
                "role": "tool",
                "tool_call_id": item.get("call_id").cloned().ok_or_else(|| bad(at, "A function_call_output needs the call_id it answers."))?,
                "content": output,
            }));
        }
        // A search the gateway ran in an earlier turn: the message after
        // it holds what the model made of the results, with its citations,
        // and the results themselves are not kept; the call adds nothing.
        "web_search_call" => {}
        other => match crate::gateway::mcp::history_messages(item, HISTORY_OUTPUT_CHARS) {
            Some(mcp) => messages.extend(mcp),
            None => {
                return Err(bad(
                    at,
                    format!("Input items of type {other:?} cannot be sent to this model."),
                ))
            }
        },
    }
    Ok(())
}

fn content_part(part: &Value, at: &str) -> Result<Value, GatewayError> {
    match part.get("type").and_then(Value::as_str) {
        Some("input_text") | Some("output_text") | Some("text") => {
            Ok(json!({"type": "text", "text": part.get("text").cloned().unwrap_or(json!(""))}))
        }
        Some("refusal") => Ok(json!({"type": "text", "text": part.get("refusal").cloned().unwrap_or(json!(""))})),
        Some("input_image") => {
            let url = part
                .get("image_url")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(at, "An input_image needs an image_url (a URL or a data: URL)."))?;
            let mut image = json!({"url": url});
            if let Some(detail) = part.get("detail").filter(|d| !d.is_null()) {
                image["detail"] = detail.clone();
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        other => Err(bad(
            at,
            format!("Content parts of type {} cannot be sent to this model. Use input_text or input_image.", other.map_or("(none)".into(), |t| format!("{t:?}"))),
        )),
    }
}

/// What a Response says about the request that made it.
pub struct ResponseMeta<'a> {
    pub id: &'a str,
    pub created_at: u64,
    /// The public model id.
    pub model: &'a str,
    pub request: &'a Map<String, Value>,
}

#[cfg(test)]
impl<'a> ResponseMeta<'a> {
    /// The metadata of Response `id` for tests: model `p/m`, created at 5.
    pub fn for_test(id: &'a str, request: &'a Map<String, Value>) -> Self {
        Self {
            id,
            created_at: 5,
            model: "p/m",
            request,
        }
    }
}

/// Responses `usage` from Chat Completions `usage`.
pub fn usage(u: &Value) -> Value {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let (input, output) = (n("/prompt_tokens"), n("/completion_tokens"));
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": n("/prompt_tokens_details/cached_tokens"), "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": n("/completion_tokens_details/reasoning_tokens")},
        "total_tokens": input + output,
    })
}

/// Unix seconds now: when a response that has just finished completed.
pub fn now_secs() -> u64 {
    (crate::accounts::now_ms() / 1000) as u64
}

/// The Response object for a finished `chat.completion`.
pub fn to_response(completion: &Value, meta: &ResponseMeta<'_>) -> Value {
    let choice = &completion["choices"][0];
    let message = &choice["message"];
    let mut output = Vec::new();
    let text = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty());
    let refusal = message.get("refusal").and_then(Value::as_str);
    if text.is_some() || refusal.is_some() {
        let part = match refusal {
            Some(r) => json!({"type": "refusal", "refusal": r}),
            None => {
                json!({"type": "output_text", "text": text.unwrap_or(""), "annotations": [], "logprobs": []})
            }
        };
        output.push(json!({
            "id": format!("msg_{}_0", meta.id.trim_start_matches("resp_")),
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        output.push(json!({
            "id": format!("fc_{}_{}", meta.id.trim_start_matches("resp_"), output.len()),
            "type": "function_call",
            "status": "completed",
            "call_id": call.get("id"),
            "name": call.pointer("/function/name"),
            "arguments": call.pointer("/function/arguments").cloned().unwrap_or(json!("{}")),
        }));
    }
    let (status, incomplete) = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    };
    let mut response = skeleton(meta, status);
    response["output"] = Value::Array(output);
    response["incomplete_details"] = incomplete;
    if status == "completed" {
        response["completed_at"] = json!(now_secs());
    }
    if let Some(u) = completion.get("usage").filter(|u| u.is_object()) {
        response["usage"] = usage(u);
    }
    response
}

/// The request's tools as a Response echoes them: a function tool always
/// states its `parameters` and `strict` (false unless asked: Chat
/// Completions enforces no schema unless told to); an mcp tool never
/// carries its `authorization` or `headers` (secrets meant for its server
/// alone, and the echo is stored).
fn echoed_tools(tools: Option<&Value>) -> Value {
    let Some(Value::Array(tools)) = tools else {
        return json!([]);
    };
    let echoed = tools.iter().map(|tool| {
        let mut tool = tool.clone();
        if let Some(t) = tool
            .as_object_mut()
            .filter(|t| t.get("type") == Some(&json!("function")))
        {
            t.entry("parameters").or_insert(Value::Null);
            t.entry("strict").or_insert(json!(false));
        }
        if let Some(t) = tool
            .as_object_mut()
            .filter(|t| t.get("type") == Some(&json!("mcp")))
        {
            t.remove("authorization");
            if t.get("headers").is_some_and(|h| !h.is_null()) {
                t.insert("headers".into(), Value::Null);
            }
        }
        tool
    });
    Value::Array(echoed.collect())
}

/// A Response object with the request's settings echoed and no output
/// yet (`response.created` sends this with status `in_progress`).
pub fn skeleton(meta: &ResponseMeta<'_>, status: &str) -> Value {
    let r = meta.request;
    let get = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
    json!({
        "id": meta.id,
        "object": "response",
        "created_at": meta.created_at,
        "status": status,
        "completed_at": null,
        "error": null,
        "incomplete_details": null,
        "instructions": get("instructions"),
        "max_output_tokens": get("max_output_tokens"),
        "max_tool_calls": get("max_tool_calls"),
        "model": meta.model,
        "output": [],
        "parallel_tool_calls": r.get("parallel_tool_calls").cloned().unwrap_or(json!(true)),
        "previous_response_id": get("previous_response_id"),
        "reasoning": {"effort": r.get("reasoning").and_then(|t| t.get("effort")).cloned().unwrap_or(Value::Null), "summary": null},
        "store": r.get("store").cloned().unwrap_or(json!(true)),
        "temperature": r.get("temperature").cloned().unwrap_or(json!(1.0)),
        "text": {"format": r.get("text").and_then(|t| t.get("format")).cloned().unwrap_or(json!({"type": "text"}))},
        "tool_choice": r.get("tool_choice").cloned().unwrap_or(json!("auto")),
        "tools": echoed_tools(r.get("tools")),
        "top_p": r.get("top_p").cloned().unwrap_or(json!(1.0)),
        "truncation": "disabled",
        "metadata": r.get("metadata").cloned().unwrap_or(json!({})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(req: Value) -> Value {
        Value::Object(to_chat(req.as_object().unwrap(), &[]).unwrap())
    }

    #[test]
    fn requests_translate_table() {
        let cases = vec![
            (
                json!({"model": "p/m", "input": "hi", "instructions": "Be brief.", "max_output_tokens": 50,
                    "temperature": 0.2, "store": true, "metadata": {"a": "b"}, "seed": 4,
                    "models": ["p/n"], "provider": {"order": ["p"]}}),
                json!({"model": "p/m", "seed": 4, "messages": [
                    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                    "temperature": 0.2, "max_completion_tokens": 50}),
            ),
            (
                json!({"model": "p/m", "stream": true, "reasoning": {"effort": "low"},
                    "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": true}},
                    "input": [
                        {"role": "user", "content": [{"type": "input_text", "text": "what is this?"},
                            {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]}]}),
                json!({"model": "p/m", "messages": [{"role": "user", "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}},
                    "reasoning_effort": "low", "stream": true}),
            ),
            (
                json!({"model": "p/m", "tool_choice": {"type": "function", "name": "get"}, "parallel_tool_calls": false,
                    "tools": [{"type": "function", "name": "get", "description": "d", "parameters": {"type": "object"}, "strict": false}],
                    "input": [
                        {"type": "message", "role": "user", "content": "weather?"},
                        {"type": "function_call", "call_id": "call_1", "name": "get", "arguments": "{\"q\":1}"},
                        {"type": "function_call", "call_id": "call_2", "name": "get", "arguments": "{\"q\":2}"},
                        {"type": "function_call_output", "call_id": "call_1", "output": "sun"},
                        {"type": "function_call_output", "call_id": "call_2", "output": [
                            {"type": "input_text", "text": "ra"}, {"type": "input_text", "text": "in"}]}]}),
                json!({"model": "p/m", "messages": [
                        {"role": "user", "content": "weather?"},
                        {"role": "assistant", "content": null, "tool_calls": [
                            {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"q\":1}"}},
                            {"id": "call_2", "type": "function", "function": {"name": "get", "arguments": "{\"q\":2}"}}]},
                        {"role": "tool", "tool_call_id": "call_1", "content": "sun"},
                        {"role": "tool", "tool_call_id": "call_2", "content": "rain"}],
                    "tools": [{"type": "function", "function": {"name": "get", "description": "d", "parameters": {"type": "object"}, "strict": false}}],
                    "tool_choice": {"type": "function", "function": {"name": "get"}},
                    "parallel_tool_calls": false}),
            ),
            (
                // A web search the gateway ran, sent back with its answer.
                json!({"model": "p/m", "input": [
                    {"role": "user", "content": "news?"},
                    {"type": "web_search_call", "id": "ws_1", "status": "completed",
                        "action": {"type": "search", "query": "news", "sources": [{"type": "url", "url": "https://x/"}]}},
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Rain [1].", "annotations": []}]},
                    {"role": "user", "content": "more?"}]}),
                json!({"model": "p/m", "messages": [
                    {"role": "user", "content": "news?"},
                    {"role": "assistant", "content": "Rain [1]."},
                    {"role": "user", "content": "more?"}]}),
            ),
        ];
        for (responses, completions) in cases {
            assert_eq!(chat(responses.clone()), completions, "from {responses}");
        }
    }

    #[test]
    fn what_cannot_be_translated_is_a_400_naming_it() {
        for (req, param) in [
            (json!({"model": "m"}), "input"),
            (
                json!({"model": "m", "input": [{"type": "reasoning", "summary": []}]}),
                "input[0]",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
                "input[0].content[0]",
            ),
            (
                json!({"model": "m", "input": [
                    {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                    {"type": "function_call_output", "call_id": "c", "output": [
                        {"type": "input_text", "text": "a chart:"},
                        {"type": "input_image", "image_url": "https://x/y.png"}]}]}),
                "input[1].output[1]",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c",
                    "output": [{"type": "input_file", "file_id": "f"}]}]}),
                "input[0].output[0]",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "file_search"}]}),
                "tools[0]",
            ),
            (
                json!({"model": "m", "input": "x", "prompt": {"id": "pmpt_1"}}),
                "prompt",
            ),
        ] {
            let e = to_chat(req.as_object().unwrap(), &[]).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{req}");
            assert_eq!(e.kind.status(), 400);
        }
    }

    #[test]
    fn the_stored_conversation_is_put_first_and_its_errors_name_the_chain() {
        let history = [
            json!({"type": "message", "role": "user", "content": "one"}),
            json!({"type": "message", "role": "assistant", "content": "two"}),
        ];
        let req = json!({"model": "m", "input": [{"role": "user", "content": "three"}]});
        let messages = to_chat(req.as_object().unwrap(), &history).unwrap()["messages"].clone();
        assert_eq!(
            messages,
            json!([{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                {"role": "user", "content": "three"}])
        );
        let bad = json!({"role": "user", "content": [{"type": "input_file", "file_id": "f"}]});
        let req = json!({"model": "m", "input": [bad]});
        let e = to_chat(req.as_object().unwrap(), &history).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].content[0]"));
        let e = to_chat(
            json!({"model": "m", "input": "x"}).as_object().unwrap(),
            &[history[0].clone(), bad],
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("previous_response_id"));
        assert!(e.message.contains("input_file"), "{}", e.message);
    }

    #[test]
    fn a_completion_becomes_a_response() {
        let request =
            json!({"model": "p/m", "input": "hi", "tools": [{"type": "function", "name": "get"}]});
        let meta = ResponseMeta {
            id: "resp_abc",
            created_at: 100,
            model: "p/m",
            request: request.as_object().unwrap(),
        };
        let completion = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Checking.",
                "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "get", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}}});
        let before = now_secs();
        let r = to_response(&completion, &meta);
        assert_eq!(r["object"], "response");
        assert_eq!(r["status"], "completed");
        let completed_at = r["completed_at"].as_u64().unwrap();
        assert!(
            (before..=now_secs()).contains(&completed_at),
            "when it completed, not when it was created: {completed_at}"
        );
        assert_eq!(r["model"], "p/m");
        assert_eq!(r["output"][0]["type"], "message");
        assert_eq!(
            r["output"][0]["content"][0],
            json!({"type": "output_text", "text": "Checking.", "annotations": [], "logprobs": []})
        );
        assert_eq!(r["output"][1]["type"], "function_call");
        assert_eq!(r["output"][1]["call_id"], "call_9");
        assert_eq!(r["output"][1]["name"], "get");
        assert_eq!(r["output"][1]["arguments"], "{}");
        assert_eq!(
            r["usage"],
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
            "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 15})
        );
        assert_eq!(
            r["tools"],
            json!([{"type": "function", "name": "get", "parameters": null, "strict": false}]),
            "a function tool states its parameters and strictness"
        );

        let cut = json!({"choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "par"}}]});
        let r = to_response(&cut, &meta);
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(r["completed_at"], Value::Null);
    }
}
