//! What the mock `echo` model answers, as OpenAI-shaped JSON: a complete
//! response, or the chunks of a stream. Pure functions of the request.

use serde_json::{json, Map, Value};

use super::{completion_id, now_secs};

/// What the last message asks of the mock.
#[derive(Debug)]
pub enum Turn {
    /// Repeat this text.
    Echo(String),
    /// Call this tool with these JSON arguments.
    CallTool { name: String, arguments: String },
}

impl Turn {
    pub fn of(body: &Value) -> Turn {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some(last) = messages.last() else {
            return Turn::Echo(String::new());
        };
        let role = last.get("role").and_then(Value::as_str).unwrap_or_default();
        let text = content_text(last.get("content"));
        if role == "tool" {
            return Turn::Echo(format!("The tool returned: {text}"));
        }
        let tools_allowed = body.get("tool_choice").and_then(Value::as_str) != Some("none");
        let first_tool = body
            .get("tools")
            .and_then(Value::as_array)
            .and_then(|t| t.first())
            .and_then(|t| t.get("function"));
        match first_tool {
            Some(function) if tools_allowed && role == "user" => Turn::CallTool {
                name: function
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("tool")
                    .to_string(),
                arguments: arguments_for(function.get("parameters"), &text),
            },
            _ => Turn::Echo(text),
        }
    }
}

/// The text of a message's `content`: a string, or the text parts of a list.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Fills every property of a JSON-schema object with a plausible value:
/// strings get the user's text, numbers 1, booleans true.
fn arguments_for(schema: Option<&Value>, text: &str) -> String {
    let mut args = Map::new();
    let properties = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object);
    for (name, prop) in properties.into_iter().flatten() {
        let value = match prop.get("type").and_then(Value::as_str) {
            Some("integer") | Some("number") => json!(1),
            Some("boolean") => json!(true),
            Some("array") => json!([]),
            Some("object") => json!({}),
            _ => match prop
                .get("enum")
                .and_then(Value::as_array)
                .and_then(|e| e.first())
            {
                Some(first) => first.clone(),
                None => json!(text),
            },
        };
        args.insert(name.clone(), value);
    }
    Value::Object(args).to_string()
}

/// Whitespace-separated words: the mock's notion of a token.
fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

pub struct MockReply {
    id: String,
    created: u64,
    model: String,
    turn: Turn,
    prompt_tokens: u64,
}

impl MockReply {
    pub fn answer(body: &Value) -> Self {
        let prompt_tokens = body
            .get("messages")
            .and_then(Value::as_array)
            .map(|m| {
                m.iter()
                    .map(|m| count_words(&content_text(m.get("content"))))
                    .sum()
            })
            .unwrap_or(0);
        Self {
            id: completion_id(),
            created: now_secs(),
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            turn: Turn::of(body),
            prompt_tokens,
        }
    }

    fn completion_tokens(&self) -> u64 {
        match &self.turn {
            Turn::Echo(text) => count_words(text),
            Turn::CallTool { arguments, .. } => count_words(arguments).max(1),
        }
    }

    fn usage(&self) -> Value {
        let completion = self.completion_tokens();
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }

    fn tool_call_id(&self) -> String {
        format!("call_{}", &self.id[self.id.len() - 12..])
    }

    /// The complete, non-streaming response.
    pub fn completion(&self) -> Value {
        let (message, finish) = match &self.turn {
            Turn::Echo(text) => (
                json!({"role": "assistant", "content": text, "refusal": null}),
                "stop",
            ),
            Turn::CallTool { name, arguments } => (
                json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [{
                    "id": self.tool_call_id(), "type": "function",
                    "function": {"name": name, "arguments": arguments}
                }]}),
                "tool_calls",
            ),
        };
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": self.usage(),
        })
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    }

    /// The chunks of the streamed answer, usage chunk last when asked for.
    pub fn chunks(&self, include_usage: bool) -> Vec<Value> {
        let mut chunks = vec![self.chunk(json!({"role": "assistant", "content": ""}), None)];
        let finish = match &self.turn {
            Turn::Echo(text) => {
                let words: Vec<&str> = text.split_inclusive(char::is_whitespace).collect();
                chunks.extend(
                    words
                        .iter()
                        .map(|w| self.chunk(json!({"content": w}), None)),
                );
                "stop"
            }
            Turn::CallTool { name, arguments } => {
                let (head, tail) = arguments.split_at(arguments.len() / 2);
                chunks.push(self.chunk(
                    json!({"tool_calls": [{"index": 0, "id": self.tool_call_id(), "type": "function",
                        "function": {"name": name, "arguments": head}}]}),
                    None,
                ));
                chunks.push(self.chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": tail}}]}),
                    None,
                ));
                "tool_calls"
            }
        };
        chunks.push(self.chunk(json!({}), Some(finish)));
        if include_usage {
            let mut usage = self.chunk(json!({}), None);
            usage["choices"] = json!([]);
            usage["usage"] = self.usage();
            chunks.push(usage);
        }
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(messages: Value) -> Value {
        json!({"model": "echo", "messages": messages})
    }

    #[test]
    fn echo_streams_word_by_word_and_reassembles() {
        let reply = MockReply::answer(&body(
            json!([{"role": "user", "content": "one two  three"}]),
        ));
        let chunks = reply.chunks(true);
        let text: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(text, "one two  three");
        assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 3);
        assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    }

    #[test]
    fn calls_the_first_tool_with_schema_shaped_arguments() {
        let mut b = body(json!([{"role": "user", "content": "Paris"}]));
        b["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]);
        let done = MockReply::answer(&b).completion();
        let call = &done["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris", "days": 1}));
        assert_eq!(done["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn tool_results_are_echoed_and_tool_choice_none_is_respected() {
        let b = body(
            json!([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c", "content": "18C"}]),
        );
        assert!(matches!(Turn::of(&b), Turn::Echo(t) if t == "The tool returned: 18C"));
        let mut b = body(json!([{"role": "user", "content": "x"}]));
        b["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
        b["tool_choice"] = json!("none");
        assert!(matches!(Turn::of(&b), Turn::Echo(_)));
    }
}
