//! Reading a Chat Completions request: a typed view of the few fields the
//! gateway acts on, while the whole body travels on as JSON, untouched
//! except for the changes `into_upstream_body` makes.

use serde_json::{Map, Value};

use super::error::GatewayError;

/// Body fields that would let a client redirect the gateway or swap its
/// credentials (SEC-06). They are removed, never honoured.
const REFUSED_FIELDS: &[&str] = &["api_base", "base_url", "api_key"];

#[derive(Debug)]
pub struct ChatRequest {
    /// The client's body, minus `REFUSED_FIELDS`.
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// Whether the client itself asked for the usage chunk.
    pub client_wants_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
}

impl ChatRequest {
    pub fn parse(bytes: &[u8]) -> Result<Self, GatewayError> {
        let value: Value = serde_json::from_slice(bytes).map_err(json_error)?;
        let Value::Object(mut body) = value else {
            return Err(GatewayError::bad_request(
                "invalid_type",
                "The request body must be a JSON object such as {\"model\": \"mock/echo\", \"messages\": [...]}.",
                None,
            ));
        };
        for field in REFUSED_FIELDS {
            body.remove(*field);
        }
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
            Some(Value::String(_)) | None => {
                return Err(missing("model", "Set model to a provider/model id, e.g. \"openai/gpt-4.1-mini\"; GET /api/v1/models lists them."))
            }
            Some(_) => return Err(wrong_type("model", "a string such as \"openai/gpt-4.1-mini\"")),
        };
        check_messages(body.get("messages"))?;
        let stream = optional_bool(&body, "stream")?.unwrap_or(false);
        let client_wants_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(wrong_type("stream_options.include_usage", "a boolean")),
            },
            Some(_) => {
                return Err(wrong_type(
                    "stream_options",
                    "an object such as {\"include_usage\": true}",
                ))
            }
        };
        let max_tokens = match optional_count(&body, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => optional_count(&body, "max_tokens")?,
        };
        match body.get("tools") {
            None | Some(Value::Null) => {}
            Some(Value::Array(tools)) if tools.iter().all(Value::is_object) => {}
            Some(_) => return Err(wrong_type("tools", "an array of tool objects")),
        }
        Ok(Self {
            body,
            model,
            stream,
            client_wants_usage,
            max_tokens,
        })
    }

    /// The body sent upstream: the upstream model name, and for streams a
    /// request for the usage chunk (the gateway always needs the usage).
    pub fn into_upstream_body(self, upstream_model: &str) -> Value {
        let mut body = self.body;
        body.insert("model".into(), Value::String(upstream_model.to_string()));
        if self.stream {
            let options = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            options["include_usage"] = Value::Bool(true);
        }
        Value::Object(body)
    }
}

fn json_error(e: serde_json::Error) -> GatewayError {
    let text = e.to_string();
    if text.contains("recursion limit") {
        return GatewayError::bad_request(
            "json_too_deep",
            "The request JSON is nested more than 128 levels deep. Flatten it.",
            None,
        );
    }
    GatewayError::bad_request(
        "invalid_json",
        format!("The request body is not valid JSON ({text}). Send a JSON object with Content-Type: application/json."),
        None,
    )
}

fn missing(field: &str, what_to_do: &str) -> GatewayError {
    GatewayError::bad_request(
        "missing_field",
        format!("`{field}` is required. {what_to_do}"),
        Some(field),
    )
}

fn wrong_type(field: &str, expected: &str) -> GatewayError {
    GatewayError::bad_request(
        "invalid_type",
        format!("`{field}` must be {expected}."),
        Some(field),
    )
}

fn optional_bool(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, GatewayError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(wrong_type(field, "true or false")),
    }
}

fn optional_count(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, GatewayError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| wrong_type(field, "a non-negative integer")),
    }
}

fn check_messages(messages: Option<&Value>) -> Result<(), GatewayError> {
    let messages =
        match messages {
            None | Some(Value::Null) => return Err(missing(
                "messages",
                "Send a non-empty array such as [{\"role\": \"user\", \"content\": \"Hello\"}].",
            )),
            Some(Value::Array(m)) => m,
            Some(_) => return Err(wrong_type("messages", "an array of message objects")),
        };
    if messages.is_empty() {
        return Err(GatewayError::bad_request(
            "empty_messages",
            "`messages` must contain at least one message.",
            Some("messages"),
        ));
    }
    for (i, message) in messages.iter().enumerate() {
        match message.get("role") {
            Some(Value::String(_)) => {}
            _ => {
                return Err(GatewayError::bad_request(
                    "invalid_message",
                    format!(
                        "`messages[{i}]` must be an object with a string `role` such as \"user\"."
                    ),
                    Some(&format!("messages[{i}].role")),
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ChatRequest, GatewayError> {
        ChatRequest::parse(v.to_string().as_bytes())
    }

    #[test]
    fn names_the_offending_field() {
        let cases = [
            (
                json!({"messages": [{"role": "user", "content": "x"}]}),
                "model",
            ),
            (json!({"model": 3, "messages": []}), "model"),
            (json!({"model": "m"}), "messages"),
            (json!({"model": "m", "messages": []}), "messages"),
            (json!({"model": "m", "messages": "hi"}), "messages"),
            (
                json!({"model": "m", "messages": [{"content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "stream": "yes"}),
                "stream",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": -1}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "tools": {}}),
                "tools",
            ),
        ];
        for (body, param) in cases {
            let err = parse(body.clone()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn malformed_and_deep_json_are_distinguished() {
        assert_eq!(
            ChatRequest::parse(b"{\"model\":").unwrap_err().code,
            "invalid_json"
        );
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            ChatRequest::parse(deep.as_bytes()).unwrap_err().code,
            "json_too_deep"
        );
        assert_eq!(
            ChatRequest::parse(b"{\"model\":\"\xff\"}")
                .unwrap_err()
                .code,
            "invalid_json"
        );
    }

    #[test]
    fn the_upstream_body_keeps_unknown_fields_and_forces_usage() {
        let req = parse(json!({"model": "p/m", "messages": [{"role": "user"}], "stream": true,
            "seed": 7, "logprobs": true, "x_vendor": {"a": [1, 2]}, "api_base": "http://evil", "api_key": "k"}))
        .unwrap();
        assert!(!req.client_wants_usage);
        let up = req.into_upstream_body("m-up");
        assert_eq!(up["model"], "m-up");
        assert_eq!(up["seed"], 7);
        assert_eq!(up["x_vendor"], json!({"a": [1, 2]}));
        assert_eq!(up["stream_options"]["include_usage"], true);
        assert!(up.get("api_base").is_none() && up.get("api_key").is_none());
    }
}
