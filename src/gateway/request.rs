//! Reading a Chat Completions request: a typed view of the few fields the
//! gateway acts on, while the whole body travels on as JSON, untouched
//! except for the changes `upstream_body` makes. The routing fields
//! `models` and `provider` are read here and never sent upstream.
//!
//! A client's request that nothing else changes goes upstream as the
//! client's own bytes with only those top-level changes made
//! (`json::RawObject`): every other value byte for byte, and no cost of
//! writing a long conversation out again.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::error::GatewayError;
use super::json::RawObject;
use super::router::ProviderPrefs;

/// The most fallback models a request may list in `models`.
pub const MAX_FALLBACKS: usize = 8;

/// Body fields that would let a client redirect the gateway or swap its
/// credentials (SEC-06). They are removed, never honoured.
const REFUSED_FIELDS: &[&str] = &["api_base", "base_url", "api_key"];
/// The fields `from_map` takes out of the body: the routing fields, and
/// `REFUSED_FIELDS`.
pub(crate) const TAKEN_FIELDS: &[&str] = &["models", "provider", "api_base", "base_url", "api_key"];

#[derive(Debug)]
pub struct ChatRequest {
    /// The client's body, minus `TAKEN_FIELDS`.
    body: Map<String, Value>,
    /// A copy of the client's bytes while `body` is what they say minus
    /// `TAKEN_FIELDS`: dropped by `body_mut`. Owned, so that it never pins
    /// the connection's read buffer.
    raw: Option<Bytes>,
    pub model: String,
    pub stream: bool,
    /// Whether the client itself asked for the usage chunk.
    pub client_wants_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// `models`: tried in order after `model` (OpenRouter's fallbacks).
    pub fallbacks: Vec<String>,
    /// `provider`: which providers may serve it, in which order.
    pub prefs: ProviderPrefs,
    /// Where the first image of the request is (`messages[0].content[1]`),
    /// if it has one; `previous_response_id` when it is in the stored
    /// conversation a Responses request continues.
    pub image_at: Option<String>,
    /// Web search the request asks for (`gateway::websearch`).
    pub web_search: Option<super::websearch::WebSearch>,
    /// MCP tools the gateway runs for it (`gateway::mcp`).
    pub mcp: Option<super::mcp::McpRequest>,
    /// A Responses API request: `body` is in the Responses shape, and this
    /// says how to serve it (`responses::Job`).
    pub responses: Option<std::sync::Arc<super::responses::Job>>,
}

/// A request body as a JSON object, minus `REFUSED_FIELDS`.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, GatewayError> {
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
    Ok(body)
}

impl ChatRequest {
    pub fn parse(bytes: &[u8]) -> Result<Self, GatewayError> {
        let mut request = Self::from_map(parse_object(bytes)?, true)?;
        request.raw = Some(Bytes::copy_from_slice(bytes));
        Ok(request)
    }

    /// The body, minus `TAKEN_FIELDS`.
    pub fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    /// The body, to change it: from then on `upstream_body` writes it out
    /// from the map.
    pub fn body_mut(&mut self) -> &mut Map<String, Value> {
        self.raw = None;
        &mut self.body
    }

    /// `body_mut` and the model, for an edit that may change both.
    pub fn body_and_model_mut(&mut self) -> (&mut Map<String, Value>, &mut String) {
        self.raw = None;
        (&mut self.body, &mut self.model)
    }

    /// What a loop the gateway runs itself (web search, MCP) sends for each
    /// of its model rounds: this request as Chat Completions (a Responses
    /// request translated), not streamed. `chat`: as for `from_map`.
    pub fn for_rounds(&self, chat: bool) -> Result<Self, GatewayError> {
        let body = match &self.responses {
            Some(job) => job.chat_map()?,
            None => self.body.clone(),
        };
        let mut inner = Self::from_map(body, chat)?;
        inner.body.remove("stream");
        inner.body.remove("stream_options");
        inner.stream = false;
        Ok(inner)
    }

    /// The typed view of a body already parsed: Chat Completions
    /// (`messages` checked), or a Responses request whose input the caller
    /// has checked.
    pub fn from_map(mut body: Map<String, Value>, chat: bool) -> Result<Self, GatewayError> {
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
            Some(Value::String(_)) | None => {
                return Err(missing("model", "Set model to a provider/model id, e.g. \"openai/gpt-4.1-mini\"; GET /api/v1/models lists them."))
            }
            Some(_) => return Err(wrong_type("model", "a string such as \"openai/gpt-4.1-mini\"")),
        };
        if chat {
            check_messages(body.get("messages"))?;
        }
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
        // Routing fields are the gateway's; they never go upstream.
        let fallbacks = fallbacks(body.remove("models"), &model)?;
        let prefs = provider_prefs(body.remove("provider"))?;
        Ok(Self {
            image_at: first_image(&body),
            body,
            raw: None,
            model,
            stream,
            client_wants_usage,
            max_tokens,
            fallbacks,
            prefs,
            web_search: None,
            mcp: None,
            responses: None,
        })
    }

    /// Offers `tools` for the next round of a request the gateway answers
    /// in rounds, with the client's `choice` (none: no tools at all).
    pub fn offer(&mut self, tools: Vec<Value>, choice: Option<&Value>) {
        self.raw = None;
        if tools.is_empty() {
            self.body.remove("tools");
            self.body.remove("tool_choice");
        } else {
            self.body.insert("tools".into(), Value::Array(tools));
            if let Some(choice) = choice {
                self.body.insert("tool_choice".into(), choice.clone());
            }
        }
    }

    /// The body for one upstream attempt: the endpoint's model name, and
    /// with `usage_chunk` (Chat Completions streams) a request for the
    /// usage chunk (the gateway always needs the usage).
    pub fn upstream_body(&mut self, upstream_model: &str, usage_chunk: bool) -> Bytes {
        self.body
            .insert("model".into(), Value::String(upstream_model.to_string()));
        if usage_chunk {
            let options = self
                .body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            options["include_usage"] = Value::Bool(true);
        }
        // A key the client repeated is sent once, as the gateway read it:
        // an upstream that takes the first of two would otherwise see
        // another request than the one checked and held for.
        if let Some(raw) = self
            .raw
            .as_deref()
            .and_then(|raw| RawObject::parse(raw).ok())
            .filter(|raw| !raw.has_repeated_keys())
        {
            let model = serde_json::to_string(upstream_model).expect("a string always serializes");
            let mut edits = vec![("model", model.as_str())];
            let options = match usage_chunk {
                true => self.body.get("stream_options").map(Value::to_string),
                false => None,
            };
            if let Some(options) = &options {
                edits.push(("stream_options", options));
            }
            return raw.to_vec_edited(&edits, TAKEN_FIELDS).into();
        }
        serde_json::to_vec(&self.body)
            .expect("a JSON map always serializes")
            .into()
    }
}

/// The path of the first image part: `image_url` in Chat Completions
/// `messages`, `input_image` in Responses `input`.
fn first_image(body: &Map<String, Value>) -> Option<String> {
    for (list, kind) in [("messages", "image_url"), ("input", "input_image")] {
        let Some(Value::Array(items)) = body.get(list) else {
            continue;
        };
        if let Some((i, j)) = image_part(items, kind) {
            return Some(format!("{list}[{i}].content[{j}]"));
        }
    }
    None
}

/// The item and part indices of the first content part of type `kind`.
pub fn image_part(items: &[Value], kind: &str) -> Option<(usize, usize)> {
    items.iter().enumerate().find_map(|(i, item)| {
        let Some(Value::Array(parts)) = item.get("content") else {
            return None;
        };
        parts
            .iter()
            .position(|p| p.get("type").and_then(Value::as_str) == Some(kind))
            .map(|j| (i, j))
    })
}

fn strings(value: &Value, field: &str) -> Result<Vec<String>, GatewayError> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                _ => Err(wrong_type(field, "an array of non-empty strings")),
            })
            .collect(),
        _ => Err(wrong_type(field, "an array of strings")),
    }
}

fn fallbacks(value: Option<Value>, model: &str) -> Result<Vec<String>, GatewayError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = value else {
        return Err(wrong_type("models", "an array of strings"));
    };
    // The list stops at the first id past the limit, so that its length
    // (the client's choice) never multiplies the work of the check for
    // repeats.
    let mut out: Vec<String> = Vec::new();
    for item in items {
        let id = match item {
            Value::String(s) if !s.trim().is_empty() => s,
            _ => return Err(wrong_type("models", "an array of non-empty strings")),
        };
        if id == model || out.contains(&id) {
            continue;
        }
        if out.len() == MAX_FALLBACKS {
            return Err(GatewayError::bad_request(
                "too_many_models",
                format!("`models` lists more than {MAX_FALLBACKS} fallback models, and at most {MAX_FALLBACKS} are tried. Shorten the list."),
                Some("models"),
            ));
        }
        out.push(id);
    }
    Ok(out)
}

fn provider_prefs(value: Option<Value>) -> Result<ProviderPrefs, GatewayError> {
    let mut prefs = ProviderPrefs::any();
    let object = match value {
        None | Some(Value::Null) => return Ok(prefs),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(wrong_type(
                "provider",
                "an object such as {\"order\": [\"openai\"], \"allow_fallbacks\": false}",
            ))
        }
    };
    // Other preference fields OpenRouter knows (sort, data_collection, …)
    // have no meaning for a self-hosted catalog and are ignored.
    if let Some(order) = object.get("order").filter(|v| !v.is_null()) {
        prefs.order = strings(order, "provider.order")?;
    }
    if let Some(only) = object.get("only").filter(|v| !v.is_null()) {
        prefs.only = Some(strings(only, "provider.only")?);
    }
    if let Some(ignore) = object.get("ignore").filter(|v| !v.is_null()) {
        prefs.ignore = strings(ignore, "provider.ignore")?;
    }
    match object.get("allow_fallbacks") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => prefs.allow_fallbacks = *b,
        Some(_) => return Err(wrong_type("provider.allow_fallbacks", "true or false")),
    }
    Ok(prefs)
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

pub fn wrong_type(field: &str, expected: &str) -> GatewayError {
    GatewayError::bad_request(
        "invalid_type",
        format!("`{field}` must be {expected}."),
        Some(field),
    )
}

pub fn optional_bool(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, GatewayError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(wrong_type(field, "true or false")),
    }
}

pub fn optional_count(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, GatewayError> {
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
    fn fallback_models_are_capped_and_deduplicated() {
        let models: Vec<String> = (0..8).map(|i| format!("p/m{i}")).collect();
        let mut listed = models.clone();
        listed.extend(["p/main".to_string(), "p/m0".to_string()]);
        let ok = parse(
            json!({"model": "p/main", "messages": [{"role": "user", "content": "x"}],
            "models": listed}),
        )
        .unwrap();
        assert_eq!(
            ok.fallbacks, models,
            "the model itself and repeats are left out"
        );
        // A list of any length costs no more than its first nine ids: the
        // ninth distinct one is refused (it once took N² comparisons).
        let many: Vec<String> = (0..200_000).map(|i| format!("p/m{i}")).collect();
        let e = parse(
            json!({"model": "p/main", "messages": [{"role": "user", "content": "x"}],
            "models": many}),
        )
        .err()
        .unwrap();
        assert_eq!(e.code, "too_many_models");
        assert_eq!(e.param.as_deref(), Some("models"));
        // Wrong types are still named.
        let e = parse(
            json!({"model": "p/main", "messages": [{"role": "user", "content": "x"}],
            "models": ["p/a", 3]}),
        )
        .err()
        .unwrap();
        assert_eq!(e.param.as_deref(), Some("models"));
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
        let mut req = parse(json!({"model": "p/m", "messages": [{"role": "user"}], "stream": true,
            "seed": 7, "logprobs": true, "x_vendor": {"a": [1, 2]}, "api_base": "http://evil", "api_key": "k",
            "models": ["p/m", "q/m", "q/m"], "provider": {"order": ["q"], "sort": "price"}}))
        .unwrap();
        assert!(!req.client_wants_usage);
        assert_eq!(req.fallbacks, ["q/m"]);
        assert_eq!(req.prefs.order, ["q"]);
        assert!(req.prefs.allow_fallbacks);
        let up: Value = serde_json::from_slice(&req.upstream_body("m-up", true)).unwrap();
        assert!(up.get("models").is_none() && up.get("provider").is_none());
        assert_eq!(up["model"], "m-up");
        assert_eq!(up["seed"], 7);
        assert_eq!(up["x_vendor"], json!({"a": [1, 2]}));
        assert_eq!(up["stream_options"]["include_usage"], true);
        assert!(up.get("api_base").is_none() && up.get("api_key").is_none());
    }

    #[test]
    fn the_client_bytes_go_upstream_with_only_the_gateway_changes() {
        let body =
            br#"{"model":"p/m", "models":["q/m"],"messages":[{"role":"user","content":"h\u00e9"}],
            "seed":123456789012345678901234567890,"temperature":1.50,"api_key":"k","stream":true,
            "stream_options":{"x":1},"provider":{"order":["q"]}}"#;
        let mut req = ChatRequest::parse(body).unwrap();
        let up = req.upstream_body("m-up", true);
        let expected = concat!(
            r#"{"model":"m-up","messages":[{"role":"user","content":"h\u00e9"}],"#,
            r#""seed":123456789012345678901234567890,"temperature":1.50,"stream":true,"#,
            r#""stream_options":{"x":1,"include_usage":true}}"#
        );
        assert_eq!(std::str::from_utf8(&up).unwrap(), expected);
        // A second attempt at another model writes the body afresh.
        let again: Value = serde_json::from_slice(&req.upstream_body("m2", false)).unwrap();
        assert_eq!(again["model"], "m2");
        assert_eq!(again["stream_options"], json!({"x": 1}));
    }

    #[test]
    fn a_repeated_key_goes_upstream_once_as_read() {
        let body =
            br#"{"model":"p/m","messages":[{"role":"user"}],"max_tokens":9999,"max_tokens":5,
            "api_key":"k","api_key":"k2","model":"p/m"}"#;
        let mut req = ChatRequest::parse(body).unwrap();
        assert_eq!(req.max_tokens, Some(5));
        let up = req.upstream_body("m-up", false);
        assert_eq!(
            std::str::from_utf8(&up).unwrap(),
            r#"{"model":"m-up","messages":[{"role":"user"}],"max_tokens":5}"#
        );
    }

    #[test]
    fn both_ways_of_writing_the_upstream_body_agree() {
        let bodies = [
            json!({"model": "p/m", "messages": [{"role": "user"}]}),
            json!({"model": "p/m", "messages": [{"role": "user"}], "stream": true,
                "stream_options": null, "base_url": "http://evil", "models": ["q/m"], "n": 2}),
            json!({"model": "p/m", "messages": [{"role": "user"}], "stream_options": {"include_usage": false},
                "provider": {"sort": "price"}, "tools": [{"type": "function", "function": {"name": "f"}}]}),
        ];
        for body in bodies {
            for usage_chunk in [false, true] {
                let bytes = serde_json::to_vec(&body).unwrap();
                let mut raw = ChatRequest::parse(&bytes).unwrap();
                let mut map = ChatRequest::from_map(parse_object(&bytes).unwrap(), true).unwrap();
                let from_raw: Value =
                    serde_json::from_slice(&raw.upstream_body("up", usage_chunk)).unwrap();
                let from_map: Value =
                    serde_json::from_slice(&map.upstream_body("up", usage_chunk)).unwrap();
                assert_eq!(from_raw, from_map, "{body} usage_chunk={usage_chunk}");
            }
        }
    }

    #[test]
    fn a_changed_body_is_written_from_the_map() {
        let mut req =
            ChatRequest::parse(br#"{"model":"p/m","messages":[{"role":"user"}],"n":1}"#).unwrap();
        req.body_mut().insert("n".into(), json!(2));
        let up: Value = serde_json::from_slice(&req.upstream_body("up", false)).unwrap();
        assert_eq!(
            up,
            json!({"model": "up", "messages": [{"role": "user"}], "n": 2})
        );
        let mut offered =
            ChatRequest::parse(br#"{"model":"p/m","messages":[{"role":"user"}]}"#).unwrap();
        offered.offer(vec![json!({"type": "function"})], None);
        let up: Value = serde_json::from_slice(&offered.upstream_body("up", false)).unwrap();
        assert_eq!(up["tools"], json!([{"type": "function"}]));
    }

    #[test]
    fn every_refused_field_is_taken() {
        assert!(REFUSED_FIELDS.iter().all(|f| TAKEN_FIELDS.contains(f)));
    }

    #[test]
    fn routing_fields_are_checked() {
        let bad = |extra: Value| {
            let mut body = json!({"model": "p/m", "messages": [{"role": "user", "content": "x"}]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            parse(body).unwrap_err().param
        };
        assert_eq!(bad(json!({"models": "q/m"})).as_deref(), Some("models"));
        assert_eq!(bad(json!({"models": [1]})).as_deref(), Some("models"));
        assert_eq!(
            bad(json!({"provider": {"order": "q"}})).as_deref(),
            Some("provider.order")
        );
        assert_eq!(
            bad(json!({"provider": {"allow_fallbacks": "no"}})).as_deref(),
            Some("provider.allow_fallbacks")
        );
        let many: Vec<String> = (0..9).map(|i| format!("p/m{i}")).collect();
        assert_eq!(bad(json!({"models": many})).as_deref(), Some("models"));
    }
}
