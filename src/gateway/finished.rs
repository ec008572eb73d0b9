//! A finished answer sent as a stream: requests whose rounds the gateway
//! runs (web search, MCP tools) read every model call whole, then stream
//! the final answer's text in small pieces, in each API's shape.

use bytes::Bytes;
use serde_json::{json, Value};

use super::record::Usage;
use super::relay::{frame, DONE_FRAME};
use super::responses::stream::{Event, ResponseStream};

/// A finished answer's text in stream-sized pieces (a few words each).
pub fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut words = 0;
    for c in text.chars() {
        current.push(c);
        if c.is_whitespace() {
            words += 1;
            if words == 4 {
                out.push(std::mem::take(&mut current));
                words = 0;
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn text_of(completion: &Value) -> &str {
    completion
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn refusal_of(completion: &Value) -> &str {
    completion
        .pointer("/choices/0/message/refusal")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// A `chat.completion` as Chat Completions stream frames: the role, the
/// text in pieces, the refusal in pieces, the tool calls, the finish (with
/// `annotations` in its delta when given), the usage chunk when given,
/// then `[DONE]`.
pub fn chat_frames(c: &Value, annotations: Option<Vec<Value>>, usage: Option<Value>) -> Vec<Bytes> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": c["id"], "object": "chat.completion.chunk", "created": c["created"], "model": c["model"],
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    let message = &c["choices"][0]["message"];
    let mut out = vec![frame(&chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ))];
    for piece in pieces(text_of(c)) {
        out.push(frame(&chunk(json!({"content": piece}), Value::Null)));
    }
    for piece in pieces(refusal_of(c)) {
        out.push(frame(&chunk(json!({"refusal": piece}), Value::Null)));
    }
    if let Some(Value::Array(calls)) = message.get("tool_calls") {
        for (i, call) in calls.iter().enumerate() {
            let mut call = call.clone();
            call["index"] = json!(i);
            out.push(frame(&chunk(json!({"tool_calls": [call]}), Value::Null)));
        }
    }
    let finish = c["choices"][0]["finish_reason"].clone();
    let last = match annotations {
        Some(a) => json!({"annotations": a}),
        None => json!({}),
    };
    out.push(frame(&chunk(last, finish)));
    if let Some(usage) = usage {
        out.push(frame(
            &json!({"id": c["id"], "object": "chat.completion.chunk", "created": c["created"],
                "model": c["model"], "choices": [], "usage": usage}),
        ));
    }
    out.push(Bytes::from_static(DONE_FRAME));
    out
}

/// A `chat.completion`'s answer as Responses events on `stream`: the text
/// in pieces (then its `annotations`), the refusal in pieces, the tool
/// calls, and the finish with `usage` (Chat Completions shape).
/// `stream.finish()` follows.
pub fn response_events(
    stream: &mut ResponseStream,
    completion: &Value,
    annotations: Vec<Value>,
    usage: &Value,
) -> Vec<Event> {
    let chunk = |delta: Value| json!({"choices": [{"index": 0, "delta": delta}]});
    let mut events = Vec::new();
    for piece in pieces(text_of(completion)) {
        events.extend(stream.on_chunk(&chunk(json!({"content": piece}))));
    }
    events.extend(stream.annotate(annotations));
    for piece in pieces(refusal_of(completion)) {
        events.extend(stream.on_chunk(&chunk(json!({"refusal": piece}))));
    }
    let message = &completion["choices"][0]["message"];
    if let Some(Value::Array(calls)) = message.get("tool_calls") {
        for (i, call) in calls.iter().enumerate() {
            let mut call = call.clone();
            call["index"] = json!(i);
            events.extend(stream.on_chunk(&chunk(json!({"tool_calls": [call]}))));
        }
    }
    let finish = completion["choices"][0]["finish_reason"].clone();
    events.extend(stream.on_chunk(
        &json!({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}], "usage": usage}),
    ));
    events
}

/// Chat Completions `usage` for token totals.
pub fn chat_usage(u: &Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens}})
}

/// The completion with only `keep` as its tool calls (the gateway ran the
/// others); with none left, it finished with `stop`.
pub fn keep_calls(mut completion: Value, keep: Vec<Value>) -> Value {
    if let Some(m) = completion
        .pointer_mut("/choices/0/message")
        .and_then(Value::as_object_mut)
    {
        if keep.is_empty() {
            m.remove("tool_calls");
        } else {
            m.insert("tool_calls".into(), Value::Array(keep));
        }
    }
    let none_left = completion
        .pointer("/choices/0/message/tool_calls")
        .is_none();
    if none_left && completion["choices"][0]["finish_reason"] == "tool_calls" {
        completion["choices"][0]["finish_reason"] = json!("stop");
    }
    completion
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::responses::translate::ResponseMeta;

    const REFUSAL: &str = "I can't help with that request, sorry.";

    fn refusing() -> Value {
        json!({"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": null, "refusal": REFUSAL}}]})
    }

    #[test]
    fn a_refusal_goes_out_as_chat_refusal_deltas() {
        let frames = chat_frames(&refusing(), None, None);
        let refused: String = frames
            .iter()
            .filter_map(|f| std::str::from_utf8(f).ok()?.strip_prefix("data: "))
            .filter_map(|data| serde_json::from_str::<Value>(data.trim_end()).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["refusal"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(refused, REFUSAL);
    }

    #[test]
    fn a_refusal_goes_out_as_a_responses_refusal_part() {
        let request = json!({"model": "p/m", "input": "hi"});
        let meta = ResponseMeta::for_test("resp_1", request.as_object().unwrap());
        let mut stream = ResponseStream::new(&meta);
        stream.start();
        let usage = json!({"prompt_tokens": 3, "completion_tokens": 8});
        let mut events = response_events(&mut stream, &refusing(), Vec::new(), &usage);
        let (last, response) = stream.finish();
        events.extend(last);
        let deltas: String = events
            .iter()
            .filter(|e| e.name == "response.refusal.delta")
            .map(|e| e.data["delta"].as_str().unwrap())
            .collect();
        assert_eq!(deltas, REFUSAL);
        assert!(events.iter().any(|e| e.name == "response.refusal.done"));
        assert_eq!(
            response["output"][0]["content"],
            json!([{"type": "refusal", "refusal": REFUSAL}])
        );
    }
}
