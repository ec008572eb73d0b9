//! Chat Completions ⇄ Anthropic Messages, both ways, as pure functions:
//! `request` turns a Chat Completions body into a Messages body, `response`
//! a Messages answer into a `chat.completion`, and `StreamTranslator` the
//! Messages stream events into `chat.completion.chunk`s.

use serde_json::{json, Map, Value};

/// A request the Messages API cannot express without changing its meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untranslatable {
    pub message: String,
    pub param: Option<String>,
}

fn refuse(param: &str, message: impl Into<String>) -> Untranslatable {
    Untranslatable {
        message: message.into(),
        param: Some(param.to_string()),
    }
}

/// Chat Completions fields dropped on the way to the Messages API, which
/// has no equivalent; none of them changes what the answer says.
pub const DROPPED: &[&str] = &[
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "seed",
    "service_tier",
    "store",
    "metadata",
    "reasoning_effort",
    "prediction",
    "modalities",
    "audio",
    "stream_options",
    "parallel_tool_calls",
    "user",
];

/// The Messages body for a Chat Completions body. `default_max_tokens` is
/// used when the request names no limit (the API requires one).
pub fn request(
    body: &Map<String, Value>,
    default_max_tokens: u64,
) -> Result<Value, Untranslatable> {
    let mut out = Map::new();
    out.insert(
        "model".into(),
        body.get("model").cloned().unwrap_or(Value::Null),
    );
    let max_tokens = body
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| body.get("max_tokens").and_then(Value::as_u64))
        .unwrap_or(default_max_tokens);
    out.insert("max_tokens".into(), json!(max_tokens));

    let (system, messages) = messages(body.get("messages"))?;
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(messages));

    if let Some(t) = body.get("temperature").filter(|v| !v.is_null()) {
        match t.as_f64() {
            Some(x) if (0.0..=1.0).contains(&x) => {
                out.insert("temperature".into(), t.clone());
            }
            _ => {
                return Err(refuse(
                    "temperature",
                    "This model takes a temperature from 0 to 1. Lower it.",
                ))
            }
        }
    }
    if let Some(p) = body.get("top_p").filter(|v| !v.is_null()) {
        out.insert("top_p".into(), p.clone());
    }
    if let Some(stop) = stop_sequences(body.get("stop"))? {
        out.insert("stop_sequences".into(), stop);
    }
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(refuse(
            "n",
            "This model returns one choice per request. Set n to 1.",
        ));
    }
    if body.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return Err(refuse(
            "logprobs",
            "This model does not return logprobs. Remove logprobs.",
        ));
    }
    if let Some(format) = body.get("response_format").filter(|v| !v.is_null()) {
        if format.get("type").and_then(Value::as_str) != Some("text") {
            return Err(refuse(
                "response_format",
                "This model has no JSON mode or JSON schema output. Remove response_format, or ask for JSON in the prompt.",
            ));
        }
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    tools(body, &mut out)?;
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), Value::Bool(true));
    }
    Ok(Value::Object(out))
}

/// `stop` → `stop_sequences`. The Messages API refuses a sequence of
/// whitespace alone (such as `"\n"`), so the gateway refuses it first,
/// naming the client's own field.
fn stop_sequences(stop: Option<&Value>) -> Result<Option<Value>, Untranslatable> {
    let list = match stop {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| refuse("stop", "`stop` must be a string or an array of strings."))?,
        Some(_) => {
            return Err(refuse(
                "stop",
                "`stop` must be a string or an array of strings.",
            ))
        }
    };
    if list.iter().any(|s| s.trim().is_empty()) {
        return Err(refuse(
            "stop",
            "This model takes stop sequences that contain a character other than whitespace. Remove the empty or whitespace-only ones from stop.",
        ));
    }
    Ok((!list.is_empty()).then(|| json!(list)))
}

fn tools(body: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), Untranslatable> {
    let Some(Value::Array(list)) = body.get("tools") else {
        return Ok(());
    };
    let choice = body.get("tool_choice").filter(|v| !v.is_null());
    // "none": the model may not call a tool, so it is not offered any.
    if choice.and_then(Value::as_str) == Some("none") {
        return Ok(());
    }
    let mut tools = Vec::new();
    for tool in list {
        let Some(function) = tool.get("function") else {
            return Err(refuse(
                "tools",
                "Only function tools can be sent to this model.",
            ));
        };
        let mut t = Map::new();
        t.insert(
            "name".into(),
            function.get("name").cloned().unwrap_or(Value::Null),
        );
        if let Some(d) = function.get("description") {
            t.insert("description".into(), d.clone());
        }
        t.insert(
            "input_schema".into(),
            function
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        );
        tools.push(Value::Object(t));
    }
    out.insert("tools".into(), Value::Array(tools));
    let mut tool_choice = match choice {
        None => None,
        Some(Value::String(s)) if s == "auto" => Some(json!({"type": "auto"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
        Some(c) => match c.pointer("/function/name") {
            Some(name) => Some(json!({"type": "tool", "name": name})),
            None => return Err(refuse("tool_choice", "`tool_choice` must be \"auto\", \"required\", \"none\" or {\"type\": \"function\", \"function\": {\"name\": …}}.")),
        },
    };
    if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        let c = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
        c["disable_parallel_tool_use"] = Value::Bool(true);
    }
    if let Some(c) = tool_choice {
        out.insert("tool_choice".into(), c);
    }
    Ok(())
}

/// System texts, and the turns as content blocks with same-role turns
/// merged (the API requires user and assistant to alternate).
fn messages(messages: Option<&Value>) -> Result<(Vec<String>, Vec<Value>), Untranslatable> {
    let mut system = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, m) in messages
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let at = format!("messages[{i}]");
        let (role, blocks) = match role {
            "system" | "developer" => {
                let text = text_of(m.get("content"), &at)?;
                if !is_blank(&text) {
                    system.push(text);
                }
                continue;
            }
            "user" => ("user", user_blocks(m.get("content"), &at)?),
            "assistant" => ("assistant", assistant_blocks(m, &at)?),
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        refuse(&at, "A tool message needs the tool_call_id it answers.")
                    })?;
                let content = text_of(m.get("content"), &at)?;
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": content})],
                )
            }
            other => return Err(refuse(&at, format!("Unknown message role {other:?}."))),
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if last == role => existing.extend(blocks),
            _ => turns.push((role.to_string(), blocks)),
        }
    }
    // Tool results must come first in their user turn.
    for (role, blocks) in &mut turns {
        if role == "user" {
            blocks.sort_by_key(|b| b.get("type").and_then(Value::as_str) != Some("tool_result"));
        }
    }
    if turns.is_empty() {
        return Err(refuse(
            "messages",
            "No user or assistant message has any content. Send at least one user message with text or an image.",
        ));
    }
    let turns = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, turns))
}

/// The Messages API refuses a text block that is empty or only
/// whitespace, which Chat Completions allows (and Claude itself can
/// answer `"\n\n"` before a tool call, which clients send back). Such
/// blocks carry nothing, so they are left out.
fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

/// The text of a message whose content is a string or text parts.
fn text_of(content: Option<&Value>, at: &str) -> Result<String, Untranslatable> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                match p.get("text").and_then(Value::as_str) {
                    Some(t) => text.push_str(t),
                    None => return Err(refuse(at, "Only text parts are allowed here.")),
                }
            }
            Ok(text)
        }
        Some(_) => Err(refuse(
            at,
            "`content` must be a string or an array of parts.",
        )),
    }
}

fn user_blocks(content: Option<&Value>, at: &str) -> Result<Vec<Value>, Untranslatable> {
    match content {
        Some(Value::String(s)) if is_blank(s) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({"type": "text", "text": s})]),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| user_part(p, at).transpose())
            .collect(),
        _ => Err(refuse(
            at,
            "`content` must be a string or an array of parts.",
        )),
    }
}

/// A user content part as a block; `None` for a blank text part.
fn user_part(part: &Value, at: &str) -> Result<Option<Value>, Untranslatable> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => match part.get("text") {
            Some(Value::String(t)) if is_blank(t) => Ok(None),
            Some(Value::String(t)) => Ok(Some(json!({"type": "text", "text": t}))),
            _ => Err(refuse(at, "A text part needs its text as a string.")),
        },
        Some("image_url") => {
            let url = part
                .pointer("/image_url/url")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse(at, "An image_url part needs image_url.url."))?;
            Ok(Some(image(url, at)?))
        }
        Some(other) => Err(refuse(
            at,
            format!("This model does not take {other:?} parts. Send text or images."),
        )),
        None => Err(refuse(at, "Every content part needs a type.")),
    }
}

/// An image block: a data URL becomes a base64 source, any other URL a
/// URL source.
fn image(url: &str, at: &str) -> Result<Value, Untranslatable> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| refuse(at, "The image data URL is malformed."))?;
        let media_type = meta.strip_suffix(";base64").ok_or_else(|| {
            refuse(
                at,
                "Image data URLs must be base64 (data:image/png;base64,…).",
            )
        })?;
        return Ok(
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}),
        );
    }
    Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
}

fn assistant_blocks(m: &Value, at: &str) -> Result<Vec<Value>, Untranslatable> {
    let mut blocks = Vec::new();
    let text = text_of(m.get("content"), at)?;
    if !is_blank(&text) {
        blocks.push(json!({"type": "text", "text": text}));
    }
    for call in m
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let arguments = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        let input: Value = serde_json::from_str(if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        })
        .map_err(|_| refuse(at, "A tool call's arguments are not valid JSON."))?;
        blocks.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
            "input": input,
        }));
    }
    Ok(blocks)
}

/// `stop_reason` → `finish_reason`.
fn finish_reason(stop: Option<&str>) -> Option<&'static str> {
    match stop? {
        "end_turn" | "stop_sequence" | "pause_turn" => Some("stop"),
        // The answer was cut: by max_tokens, or by the context window
        // (which newer models report instead of failing the request).
        "max_tokens" | "model_context_window_exceeded" => Some("length"),
        "tool_use" => Some("tool_calls"),
        "refusal" => Some("content_filter"),
        _ => Some("stop"),
    }
}

/// Anthropic usage → OpenAI usage: cache reads and writes are prompt
/// tokens too; reads are the cached ones.
pub fn usage(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    let prompt = n("input_tokens") + cached + n("cache_creation_input_tokens");
    let completion = n("output_tokens");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// A Messages answer as a `chat.completion`.
pub fn response(answer: &Value, created: u64) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in answer
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": block.get("id"),
                "type": "function",
                "function": {
                    "name": block.get("name"),
                    "arguments": block.get("input").map_or("{}".to_string(), Value::to_string),
                },
            })),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }, "refusal": null});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    json!({
        "id": answer.get("id").cloned().unwrap_or(json!("msg")),
        "object": "chat.completion",
        "created": created,
        "model": answer.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(answer.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": usage(answer.get("usage").unwrap_or(&Value::Null)),
    })
}

/// What one Messages stream event becomes.
#[derive(Debug, PartialEq)]
pub enum Translated {
    /// Chunks to send, in order (JSON text of each, or `[DONE]`).
    Chunks(Vec<String>),
    /// A `ping`: nothing to send, but the upstream is alive.
    Alive,
    /// The upstream reported an error in the stream.
    Error(String),
}

/// A tool call's content block in a stream.
struct ToolBlock {
    /// The block's index among the message's content blocks.
    block: u64,
    /// The `input` its `content_block_start` carried: `{}` from the
    /// Messages API, which streams the input as `input_json_delta`s.
    input: Value,
    /// Whether a delta has sent any of the arguments yet.
    sent: bool,
    /// Whether the block has ended.
    done: bool,
}

/// Turns Messages stream events into `chat.completion.chunk`s.
pub struct StreamTranslator {
    id: String,
    model: Value,
    created: u64,
    /// Input tokens from `message_start` (cache reads and writes included).
    start_usage: Value,
    /// The content blocks that are tool calls, in tool-call order.
    tool_blocks: Vec<ToolBlock>,
    finish: Option<&'static str>,
}

impl StreamTranslator {
    pub fn new(created: u64) -> Self {
        Self {
            id: "msg".into(),
            model: Value::Null,
            created,
            start_usage: json!({}),
            tool_blocks: Vec::new(),
            finish: None,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
        .to_string()
    }

    /// Ends tool call `n`. A call whose deltas sent no arguments (the
    /// Messages API streams one empty `partial_json` for a tool without
    /// input) gets its start's `input` as its arguments, `{}` at least,
    /// as the same answer unstreamed has: an empty string is not JSON.
    fn end_tool(&mut self, n: usize) -> Option<String> {
        let tool = &mut self.tool_blocks[n];
        if tool.done {
            return None;
        }
        tool.done = true;
        if tool.sent {
            return None;
        }
        let arguments = match &tool.input {
            Value::Object(input) => Value::Object(input.clone()).to_string(),
            _ => "{}".to_string(),
        };
        let call = json!([{"index": n, "function": {"arguments": arguments}}]);
        Some(self.chunk(json!({"tool_calls": call}), None))
    }

    pub fn on_event(&mut self, data: &str) -> Translated {
        let Ok(event) = serde_json::from_str::<Value>(data) else {
            return Translated::Error(format!(
                "malformed stream event: {}",
                data.chars().take(200).collect::<String>()
            ));
        };
        match event.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                let m = &event["message"];
                if let Some(id) = m.get("id").and_then(Value::as_str) {
                    self.id = id.to_string();
                }
                self.model = m.get("model").cloned().unwrap_or(Value::Null);
                self.start_usage = m.get("usage").cloned().unwrap_or(json!({}));
                Translated::Chunks(vec![
                    self.chunk(json!({"role": "assistant", "content": ""}), None)
                ])
            }
            "content_block_start" => {
                let block = &event["content_block"];
                if block.get("type").and_then(Value::as_str) != Some("tool_use") {
                    return Translated::Chunks(Vec::new());
                }
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                self.tool_blocks.push(ToolBlock {
                    block: index,
                    input: block.get("input").cloned().unwrap_or(Value::Null),
                    sent: false,
                    done: false,
                });
                let call = json!([{
                    "index": self.tool_blocks.len() - 1,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }]);
                Translated::Chunks(vec![self.chunk(json!({"tool_calls": call}), None)])
            }
            "content_block_delta" => {
                let delta = &event["delta"];
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => Translated::Chunks(vec![self.chunk(
                        json!({"content": delta.get("text").cloned().unwrap_or(json!(""))}),
                        None,
                    )]),
                    Some("input_json_delta") => {
                        let block = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let Some(n) = self.tool_blocks.iter().position(|b| b.block == block) else {
                            return Translated::Chunks(Vec::new());
                        };
                        let part = delta
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        if part.is_empty() {
                            return Translated::Chunks(Vec::new());
                        }
                        self.tool_blocks[n].sent = true;
                        let call = json!([{"index": n, "function": {"arguments": part}}]);
                        Translated::Chunks(vec![self.chunk(json!({"tool_calls": call}), None)])
                    }
                    // Thinking and signatures have no Chat Completions form.
                    _ => Translated::Chunks(Vec::new()),
                }
            }
            "content_block_stop" => {
                let block = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                let n = self.tool_blocks.iter().position(|b| b.block == block);
                Translated::Chunks(n.and_then(|n| self.end_tool(n)).into_iter().collect())
            }
            "message_delta" => {
                // A block the stream did not end (no `content_block_stop`)
                // still needs its arguments before the finish.
                let mut chunks: Vec<String> = (0..self.tool_blocks.len())
                    .filter_map(|n| self.end_tool(n))
                    .collect();
                self.finish =
                    finish_reason(event.pointer("/delta/stop_reason").and_then(Value::as_str));
                let mut u = self.start_usage.clone();
                if let (Some(obj), Some(out)) =
                    (u.as_object_mut(), event.pointer("/usage/output_tokens"))
                {
                    obj.insert("output_tokens".into(), out.clone());
                }
                let mut usage_chunk: Value = json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [],
                });
                usage_chunk["usage"] = usage(&u);
                chunks.push(self.chunk(json!({}), Some(self.finish.unwrap_or("stop"))));
                chunks.push(usage_chunk.to_string());
                Translated::Chunks(chunks)
            }
            "message_stop" => Translated::Chunks(vec!["[DONE]".into()]),
            "ping" => Translated::Alive,
            "error" => Translated::Error(
                event
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("the provider reported an error")
                    .to_string(),
            ),
            // Event types added later.
            _ => Translated::Chunks(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: Value) -> Result<Value, Untranslatable> {
        request(body.as_object().unwrap(), 1024)
    }

    #[test]
    fn requests_translate_table() {
        let cases: Vec<(Value, Value)> = vec![
            // system and developer messages become `system`; default max_tokens.
            (
                json!({"model": "claude", "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "developer", "content": [{"type": "text", "text": "Use English."}]},
                    {"role": "user", "content": "hi"}]}),
                json!({"model": "claude", "max_tokens": 1024, "system": "Be brief.\n\nUse English.",
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
            ),
            // max_completion_tokens wins; stop becomes stop_sequences; sampling passes.
            (
                json!({"model": "c", "max_tokens": 5, "max_completion_tokens": 7, "stop": "END",
                    "temperature": 0.5, "top_p": 0.9, "seed": 3, "stream": true,
                    "messages": [{"role": "user", "content": "x"}]}),
                json!({"model": "c", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
                    "stop_sequences": ["END"], "stream": true,
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}),
            ),
            // images: URL and data URL.
            (
                json!({"model": "c", "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "what?"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}),
                json!({"model": "c", "max_tokens": 1024, "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "what?"},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}),
            ),
            // tools, tool_choice required→any, assistant tool calls → tool_use,
            // consecutive tool results merged into one user turn.
            (
                json!({"model": "c", "tool_choice": "required", "parallel_tool_calls": false,
                    "tools": [{"type": "function", "function": {"name": "get", "description": "d",
                        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
                    "messages": [
                        {"role": "user", "content": "weather?"},
                        {"role": "assistant", "content": null, "tool_calls": [
                            {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"q\":\"a\"}"}},
                            {"id": "call_2", "type": "function", "function": {"name": "get", "arguments": "{\"q\":\"b\"}"}}]},
                        {"role": "tool", "tool_call_id": "call_1", "content": "sun"},
                        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
                        {"role": "user", "content": "thanks"}]}),
                json!({"model": "c", "max_tokens": 1024,
                    "messages": [
                        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
                        {"role": "assistant", "content": [
                            {"type": "tool_use", "id": "call_1", "name": "get", "input": {"q": "a"}},
                            {"type": "tool_use", "id": "call_2", "name": "get", "input": {"q": "b"}}]},
                        {"role": "user", "content": [
                            {"type": "tool_result", "tool_use_id": "call_1", "content": "sun"},
                            {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"},
                            {"type": "text", "text": "thanks"}]}],
                    "tools": [{"name": "get", "description": "d",
                        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}],
                    "tool_choice": {"type": "any", "disable_parallel_tool_use": true}}),
            ),
            // tool_choice none: no tools offered; a named choice → tool.
            (
                json!({"model": "c", "tool_choice": "none",
                    "tools": [{"type": "function", "function": {"name": "f"}}],
                    "messages": [{"role": "user", "content": "x"}]}),
                json!({"model": "c", "max_tokens": 1024,
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}),
            ),
            (
                json!({"model": "c", "tool_choice": {"type": "function", "function": {"name": "f"}},
                    "tools": [{"type": "function", "function": {"name": "f"}}],
                    "messages": [{"role": "user", "content": "x"}]}),
                json!({"model": "c", "max_tokens": 1024,
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                    "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
                    "tool_choice": {"type": "tool", "name": "f"}}),
            ),
        ];
        for (chat, messages) in cases {
            assert_eq!(req(chat.clone()).unwrap(), messages, "from {chat}");
        }
    }

    #[test]
    fn dropped_parameters_do_not_reach_the_api() {
        let mut body = json!({"model": "c", "messages": [{"role": "user", "content": "x"}]});
        for field in DROPPED {
            body[*field] = json!(1);
        }
        let out = req(body).unwrap();
        for field in DROPPED {
            assert!(out.get(*field).is_none(), "{field} was sent");
        }
    }

    #[test]
    fn meaning_changing_parameters_are_refused() {
        for (body, param) in [
            (json!({"temperature": 1.5}), "temperature"),
            (json!({"n": 2}), "n"),
            (json!({"logprobs": true}), "logprobs"),
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
        ] {
            let mut b = body.as_object().unwrap().clone();
            b.insert("messages".into(), json!([{"role": "user", "content": "x"}]));
            let e = request(&b, 10).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param));
        }
        let audio = json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]});
        assert_eq!(
            req(audio).unwrap_err().param.as_deref(),
            Some("messages[0]")
        );
    }

    #[test]
    fn responses_translate_table() {
        let cases = vec![
            (
                json!({"id": "msg_1", "model": "claude-x", "stop_reason": "end_turn",
                    "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "!"}],
                    "usage": {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 2}}),
                json!({"id": "msg_1", "object": "chat.completion", "created": 7, "model": "claude-x",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!", "refusal": null},
                        "logprobs": null, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 17, "completion_tokens": 3, "total_tokens": 20,
                        "prompt_tokens_details": {"cached_tokens": 5}}}),
            ),
            (
                json!({"id": "msg_2", "model": "m", "stop_reason": "tool_use",
                    "content": [{"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"q": "a"}}],
                    "usage": {"input_tokens": 1, "output_tokens": 2}}),
                json!({"id": "msg_2", "object": "chat.completion", "created": 7, "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
                        "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "get", "arguments": "{\"q\":\"a\"}"}}]},
                        "logprobs": null, "finish_reason": "tool_calls"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3,
                        "prompt_tokens_details": {"cached_tokens": 0}}}),
            ),
            (
                json!({"id": "m3", "model": "m", "stop_reason": "max_tokens", "content": [{"type": "text", "text": "cut"}],
                    "usage": {"input_tokens": 0, "output_tokens": 0}}),
                json!({"id": "m3", "object": "chat.completion", "created": 7, "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "cut", "refusal": null},
                        "logprobs": null, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                        "prompt_tokens_details": {"cached_tokens": 0}}}),
            ),
        ];
        for (messages, chat) in cases {
            assert_eq!(response(&messages, 7), chat);
        }
    }

    #[test]
    fn a_stream_with_text_and_two_tool_calls() {
        let mut t = StreamTranslator::new(9);
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_s","model":"claude-x","usage":{"input_tokens":12,"output_tokens":1}}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check."}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_a","name":"get","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"q\":"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"a\"}"}}"#,
            r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_b","name":"get","input":{}}}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":30}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let mut out: Vec<Value> = Vec::new();
        let mut alive = 0;
        for e in events {
            match t.on_event(e) {
                Translated::Chunks(chunks) => out.extend(chunks.iter().map(|c| {
                    if c == "[DONE]" {
                        json!("[DONE]")
                    } else {
                        serde_json::from_str(c).unwrap()
                    }
                })),
                Translated::Alive => alive += 1,
                Translated::Error(e) => panic!("{e}"),
            }
        }
        assert_eq!(alive, 1);
        assert_eq!(
            out[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(out[0]["id"], "msg_s");
        assert_eq!(out[1]["choices"][0]["delta"]["content"], "Let me check.");
        let first_call = &out[2]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(first_call["index"], 0);
        assert_eq!(first_call["id"], "toolu_a");
        assert_eq!(first_call["type"], "function");
        assert_eq!(first_call["function"]["name"], "get");
        assert_eq!(
            out[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"q\":"
        );
        assert_eq!(out[4]["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(out[5]["choices"][0]["delta"]["tool_calls"][0]["index"], 1);
        assert_eq!(
            out[5]["choices"][0]["delta"]["tool_calls"][0]["id"],
            "toolu_b"
        );
        assert_eq!(out[6]["choices"][0]["delta"]["tool_calls"][0]["index"], 1);
        assert_eq!(out[7]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            out[8]["usage"],
            json!({"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42, "prompt_tokens_details": {"cached_tokens": 0}})
        );
        assert_eq!(out[9], json!("[DONE]"));
    }

    /// Every chunk the events give, as JSON (`[DONE]` as a string).
    fn play(events: &[&str]) -> Vec<Value> {
        let mut t = StreamTranslator::new(1);
        let mut out = Vec::new();
        for e in events {
            if let Translated::Chunks(chunks) = t.on_event(e) {
                out.extend(
                    chunks
                        .iter()
                        .map(|c| serde_json::from_str(c).unwrap_or(json!(c))),
                );
            }
        }
        out
    }

    /// The arguments each streamed tool call adds up to.
    fn arguments(chunks: &[Value]) -> Vec<String> {
        let mut calls: Vec<String> = Vec::new();
        for c in chunks {
            for call in c["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let n = call["index"].as_u64().unwrap() as usize;
                if calls.len() <= n {
                    calls.resize(n + 1, String::new());
                }
                calls[n].push_str(call["function"]["arguments"].as_str().unwrap());
            }
        }
        calls
    }

    #[test]
    fn a_streamed_tool_call_without_input_has_empty_object_arguments() {
        // What the Messages API streams for a tool that takes no input:
        // `input: {}` at the start, then one empty `partial_json`.
        let chunks = play(&[
            r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"now","input":{}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":5}}"#,
            r#"{"type":"message_stop"}"#,
        ]);
        assert_eq!(arguments(&chunks), ["{}"]);
        // The call's start (name, empty arguments), then its `{}`: the
        // empty `partial_json` makes no chunk of its own.
        let pieces: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0].get("function"))
            .map(|f| &f["arguments"])
            .collect();
        assert_eq!(pieces, [&json!(""), &json!("{}")]);
        let finish = chunks
            .iter()
            .find(|c| !c["choices"][0]["finish_reason"].is_null())
            .unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn a_tool_input_given_at_the_start_is_the_arguments() {
        // An upstream that sends the whole input in `content_block_start`
        // and no deltas, and ends without `content_block_stop`.
        let chunks = play(&[
            r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"get","input":{"q":"a"}}}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_2","name":"get","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"q\":"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"b\"}"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":5}}"#,
        ]);
        assert_eq!(arguments(&chunks), [r#"{"q":"a"}"#, r#"{"q":"b"}"#]);
        // The arguments come before the finish.
        let last = chunks.len() - 1;
        assert_eq!(
            chunks[last - 1]["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }

    #[test]
    fn blank_text_is_left_out_of_the_messages() {
        // Claude's own "\n\n" before a tool call, sent back by the client,
        // and empty user text: the Messages API refuses blank blocks.
        let out = req(json!({"messages": [
            {"role": "system", "content": " "},
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "\n\n", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sun"},
            {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "thanks"}]},
            {"role": "user", "content": ""}]}))
        .unwrap();
        assert!(out.get("system").is_none());
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sun"},
                    {"type": "text", "text": "thanks"}]},
            ])
        );
        let empty = req(json!({"messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "  "}]}));
        assert_eq!(empty.unwrap_err().param.as_deref(), Some("messages"));
    }

    #[test]
    fn stop_sequences_of_whitespace_are_refused_by_their_own_name() {
        for stop in [json!("\n"), json!(["END", " "]), json!([""]), json!([1])] {
            let e = req(json!({"stop": stop, "messages": [{"role": "user", "content": "x"}]}))
                .unwrap_err();
            assert_eq!(e.param.as_deref(), Some("stop"), "{stop}");
        }
        let out =
            req(json!({"stop": ["END", "\nQ:"], "messages": [{"role": "user", "content": "x"}]}))
                .unwrap();
        assert_eq!(out["stop_sequences"], json!(["END", "\nQ:"]));
        let out = req(json!({"stop": [], "messages": [{"role": "user", "content": "x"}]})).unwrap();
        assert!(out.get("stop_sequences").is_none());
    }

    #[test]
    fn an_answer_cut_by_the_context_window_is_length() {
        assert_eq!(
            finish_reason(Some("model_context_window_exceeded")),
            Some("length")
        );
        let chunks = play(&[
            r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":1}}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"model_context_window_exceeded"},"usage":{"output_tokens":5}}"#,
        ]);
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn a_stream_error_event_is_an_error() {
        let mut t = StreamTranslator::new(0);
        assert_eq!(
            t.on_event(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            Translated::Error("Overloaded".into())
        );
    }
}
