//! The Responses API (`POST /responses`), served by the same pipeline as
//! Chat Completions.
//!
//! `prepare` reads a request into a `ChatRequest` (whose body keeps the
//! Responses shape, for providers that serve the API natively) and a `Job`:
//! the response's id, the request to echo, the Chat Completions
//! translation for every other provider, and the `Saver` that stores the
//! result when `store` is true. `previous_response_id` is resolved here:
//! the stored chain's input and output items are put before the new input,
//! for every provider, so a conversation may move between providers.
//!
//! `translate.rs`: Responses ⇄ Chat Completions (request, Response
//! object). `stream.rs`: chat chunks → Responses events. `relay.rs`: the
//! stream relays (translated, native) and the complete-answer rewrites.

pub mod relay;
pub mod stream;
pub mod translate;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::error::{ErrorKind, GatewayError};
use super::request::{
    image_part, optional_bool, optional_count, parse_object, wrong_type, ChatRequest,
};
use crate::accounts::{now_ms, store_unavailable};
use crate::store::{ResponseStore, StoredResponse};
use translate::ResponseMeta;

/// The most responses a `previous_response_id` chain may link.
const MAX_CHAIN: usize = 1000;

/// How one Responses request is served, whichever provider answers.
#[derive(Debug)]
pub struct Job {
    pub id: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The client's request, echoed in the Response object.
    pub request: Map<String, Value>,
    /// The Chat Completions body for providers without the Responses API,
    /// or why the request cannot be translated for them.
    chat: Result<Map<String, Value>, GatewayError>,
    /// Stores the result; `None` when `store` is false.
    pub saver: Option<Saver>,
}

impl Job {
    /// What the Response object says about its request, for the model that
    /// answers.
    pub fn meta<'a>(&'a self, model: &'a str) -> ResponseMeta<'a> {
        ResponseMeta {
            id: &self.id,
            created_at: self.created_at,
            model,
            request: &self.request,
        }
    }

    /// The Chat Completions translation of the request (model still the
    /// public id).
    pub fn chat_map(&self) -> Result<Map<String, Value>, GatewayError> {
        self.chat.clone()
    }

    /// The Chat Completions body for one attempt: the endpoint's model, and
    /// for streams the usage chunk requested.
    pub fn chat_body(&self, upstream_model: &str, stream: bool) -> Result<Bytes, GatewayError> {
        let mut body = self.chat.clone()?;
        body.insert("model".into(), Value::String(upstream_model.to_string()));
        if stream {
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Ok(serde_json::to_vec(&body)
            .expect("a JSON map always serializes")
            .into())
    }
}

/// Stores a finished response with the input items that made it.
#[derive(Clone)]
pub struct Saver {
    store: Arc<dyn ResponseStore>,
    key_id: String,
    previous_response_id: Option<String>,
    input: Arc<Value>,
    created_at_ms: i64,
}

impl std::fmt::Debug for Saver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saver")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl Saver {
    /// A failure is logged, never shown: the client already has its answer.
    pub async fn save(&self, id: &str, response: &Value) {
        let stored = StoredResponse {
            id: id.to_string(),
            key_id: self.key_id.clone(),
            previous_response_id: self.previous_response_id.clone(),
            input: (*self.input).clone(),
            response: response.clone(),
            created_at: self.created_at_ms,
        };
        if let Err(e) = self.store.put_response(&stored).await {
            tracing::warn!(response_id = id, error = %e, "could not store the response");
        }
    }
}

/// A new response id (also the stem of its item ids).
fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase())
}

fn bad(param: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::bad_request("invalid_request", message.into(), Some(param))
}

/// The fields a Response object echoes back must have the shapes it
/// gives them: `metadata` at most 16 string values under keys of at most
/// 64 characters (values at most 512), `text` and `reasoning` objects
/// (with an object `text.format` and a string `reasoning.effort`).
fn check_echoed(request: &Map<String, Value>) -> Result<(), GatewayError> {
    fn present<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
        object.get(key).filter(|v| !v.is_null())
    }
    if let Some(metadata) = present(request, "metadata") {
        let fits = metadata.as_object().is_some_and(|m| {
            m.len() <= 16
                && m.iter().all(|(k, v)| {
                    k.chars().count() <= 64 && v.as_str().is_some_and(|v| v.chars().count() <= 512)
                })
        });
        if !fits {
            return Err(bad(
                "metadata",
                "`metadata` must be an object of at most 16 string values, with keys of at most 64 characters and values of at most 512.",
            ));
        }
    }
    let checks = [
        (
            "text",
            "format",
            "an object",
            Value::is_object as fn(&Value) -> bool,
        ),
        ("reasoning", "effort", "a string", Value::is_string),
    ];
    for (field, inner, shape, shaped) in checks {
        let Some(value) = present(request, field) else {
            continue;
        };
        let Some(object) = value.as_object() else {
            return Err(wrong_type(field, "an object"));
        };
        if present(object, inner).is_some_and(|v| !shaped(v)) {
            return Err(wrong_type(&format!("{field}.{inner}"), shape));
        }
    }
    Ok(())
}

/// A stored response that is not there for this key: never there, past
/// retention, deleted, or another key's (404 either way, so ids cannot be
/// probed).
pub fn not_found(id: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::NotFound,
        "response_not_found",
        format!("No response with id {id:?} is stored for this API key. Responses are kept only when created with store: true, for the retention period, and only for the key that created them."),
    )
}

/// Reads a Responses request. `retention` bounds how old a chained
/// response may be.
pub async fn prepare(
    bytes: &[u8],
    key_id: &str,
    store: Arc<dyn ResponseStore>,
    retention: Duration,
) -> Result<ChatRequest, GatewayError> {
    let request = parse_object(bytes)?;
    if !request.contains_key("model") {
        return Err(GatewayError::bad_request(
            "missing_field",
            "`model` is required. Set it to a provider/model id such as \"mock/echo\"; GET /api/v1/models lists them.",
            Some("model"),
        ));
    }
    optional_bool(&request, "stream")?;
    if optional_bool(&request, "background")? == Some(true) {
        return Err(bad(
            "background",
            "Background responses are not supported by this gateway. Send the request without background, streamed if it is long.",
        ));
    }
    if request.get("conversation").is_some_and(|c| !c.is_null()) {
        return Err(bad(
            "conversation",
            "The Conversations API is not supported by this gateway. Continue a conversation with previous_response_id.",
        ));
    }
    let keep = optional_bool(&request, "store")?.unwrap_or(true);
    let previous = match request.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
        Some(_) => return Err(wrong_type("previous_response_id", "a response id string")),
    };
    let max_output = optional_count(&request, "max_output_tokens")?;
    let max_tool_calls = optional_count(&request, "max_tool_calls")?;
    check_echoed(&request)?;
    let input = input_items(request.get("input"))?;
    if input.is_empty() && previous.is_none() {
        // As OpenAI: with nothing to answer there is no request (the
        // upstream would get no messages).
        return Err(bad(
            "input",
            "`input` is empty. Send at least one input item, or continue a stored response with previous_response_id.",
        ));
    }
    let not_before = now_ms() - retention.as_millis() as i64;
    let history = match &previous {
        Some(id) => history(store.as_ref(), key_id, id, not_before).await?,
        None => Vec::new(),
    };

    // The translation sees the whole conversation (the history apart, so
    // that an error names `input` as the client sent it), and not the
    // web_search tool: the gateway runs that one itself (a native provider
    // gets it).
    let mut whole = request.clone();
    let web_search = super::websearch::take_from_responses(&mut whole);
    let mcp_tools = super::mcp::take_tools(&mut whole, false)?;
    let mut all_items = history.clone();
    all_items.extend(input.iter().cloned());
    let decisions = super::mcp::decisions(&input, &all_items)?;
    if mcp_tools.is_empty() && !decisions.is_empty() {
        return Err(bad(
            "tools",
            "The input answers an mcp_approval_request, but the request has no mcp tool: send the mcp tool again with the approval.",
        ));
    }
    let mcp = (!mcp_tools.is_empty()).then(|| super::mcp::McpRequest {
        tools: mcp_tools,
        decisions,
        max_tool_calls,
    });
    whole.insert("input".into(), Value::Array(input.clone()));
    let chat = translate::to_chat(&whole, &history);

    // A native provider gets the same conversation, the gateway keeping
    // the state: no previous_response_id, and nothing stored upstream.
    let mut native = request.clone();
    super::mcp::take_tools(&mut native, false)?;
    native.remove("previous_response_id");
    native.insert("store".into(), Value::Bool(false));
    let gateway_items = |items: &[Value]| items.iter().any(super::mcp::is_mcp_item);
    if !history.is_empty() || gateway_items(&input) {
        let mut items: Vec<Value> = history.iter().flat_map(native_item).collect();
        match request.get("input") {
            Some(Value::Array(sent)) if !gateway_items(sent) => items.extend(sent.iter().cloned()),
            _ => items.extend(input.iter().flat_map(native_item)),
        }
        native.insert("input".into(), Value::Array(items));
    }

    // The body's `input` may start with the history: the image check
    // names the client's own input, or the stored chain.
    let image_at = match (
        image_part(&input, "input_image"),
        image_part(&history, "input_image"),
    ) {
        (Some((i, j)), _) => Some(format!("input[{i}].content[{j}]")),
        (None, Some(_)) => Some("previous_response_id".to_string()),
        (None, None) => None,
    };
    let created_at_ms = now_ms();
    let id = new_id("resp");
    let saver = keep.then(|| Saver {
        store,
        key_id: key_id.to_string(),
        previous_response_id: previous,
        input: Arc::new(Value::Array(input)),
        created_at_ms,
    });
    let mut typed = ChatRequest::from_map(native, false)?;
    typed.image_at = image_at;
    typed.max_tokens = max_output;
    typed.client_wants_usage = false;
    typed.web_search = web_search;
    typed.mcp = mcp;
    typed.responses = Some(Arc::new(Job {
        id,
        created_at: (created_at_ms / 1000) as u64,
        request,
        chat,
        saver,
    }));
    Ok(typed)
}

/// `input` as items, each with an id, as `input_items` lists them: a
/// string is one user message; a message's string content becomes one
/// text part. A listed message, function call or function call output is
/// an item resource, which the spec gives a status: one sent without it
/// (or with null) is stored as completed.
fn input_items(input: Option<&Value>) -> Result<Vec<Value>, GatewayError> {
    let items = match input {
        None | Some(Value::Null) => {
            return Err(GatewayError::bad_request(
                "missing_field",
                "`input` is required: a string, or a list of input items.",
                Some("input"),
            ))
        }
        Some(Value::String(text)) => vec![json!({"role": "user", "content": text})],
        Some(Value::Array(items)) => items.clone(),
        Some(_) => {
            return Err(bad(
                "input",
                "`input` must be a string or a list of input items.",
            ))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(mut item) = item else {
            return Err(bad(
                &format!("input[{i}]"),
                "An input item must be an object.",
            ));
        };
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message")
            .to_string();
        item.insert("type".into(), json!(kind));
        if kind == "message" {
            let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
            let part = if role == "assistant" {
                "output_text"
            } else {
                "input_text"
            };
            if let Some(Value::String(text)) = item.get("content") {
                let parts = if part == "output_text" {
                    json!([{"type": part, "text": text, "annotations": [], "logprobs": []}])
                } else {
                    json!([{"type": part, "text": text}])
                };
                item.insert("content".into(), parts);
            }
        }
        let missing =
            |item: &Map<String, Value>, key: &str| item.get(key).is_none_or(Value::is_null);
        if ["message", "function_call", "function_call_output"].contains(&kind.as_str())
            && missing(&item, "status")
        {
            item.insert("status".into(), json!("completed"));
        }
        if missing(&item, "id") {
            let prefix = match kind.as_str() {
                "function_call" => "fc",
                "function_call_output" => "fco",
                "mcp_approval_response" => "mcpa",
                _ => "msg",
            };
            item.insert("id".into(), json!(new_id(prefix)));
        }
        out.push(Value::Object(item));
    }
    Ok(out)
}

/// An item as input for a provider that keeps no state: the MCP items the
/// gateway made become the function call and output they stand for (or
/// nothing), a web search is left out, and other items lose their ids.
fn native_item(item: &Value) -> Vec<Value> {
    // A web_search_call needs its id, which would name an item the
    // provider never stored (the gateway's own search, or one made with
    // `store: false`); the two cannot be told apart. As in a translated
    // turn it adds nothing: the message after it holds the answer.
    if item.get("type").and_then(Value::as_str) == Some("web_search_call") {
        return Vec::new();
    }
    if !super::mcp::is_mcp_item(item) {
        return vec![without_id(item)];
    }
    super::mcp::history_messages(item, translate::HISTORY_OUTPUT_CHARS)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|message| match message["role"].as_str() {
            Some("assistant") => message["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|call| {
                    json!({"type": "function_call", "call_id": call["id"],
                    "name": call["function"]["name"], "arguments": call["function"]["arguments"]})
                })
                .collect::<Vec<_>>(),
            _ => vec![
                json!({"type": "function_call_output", "call_id": message["tool_call_id"],
                "output": message["content"]}),
            ],
        })
        .collect()
}

/// An item as input for a provider that keeps no state: ids of items the
/// provider never stored mean nothing to it.
fn without_id(item: &Value) -> Value {
    let mut item = item.clone();
    if let Some(o) = item.as_object_mut() {
        o.remove("id");
        if o.get("type").and_then(Value::as_str) == Some("message") {
            o.remove("status");
        }
    }
    item
}

/// The conversation before `id`: every stored response of the chain,
/// oldest first, its input items then its output items. Reasoning items
/// are left out: no provider can take them back without its own state.
async fn history(
    store: &dyn ResponseStore,
    key_id: &str,
    id: &str,
    not_before: i64,
) -> Result<Vec<Value>, GatewayError> {
    let mut chain = Vec::new();
    let mut next = Some(id.to_string());
    while let Some(id) = next {
        if chain.len() >= MAX_CHAIN {
            return Err(bad(
                "previous_response_id",
                format!("The conversation links more than {MAX_CHAIN} responses. Start a new one, sending the context you need as input."),
            ));
        }
        let stored = store
            .get_response(key_id, &id, not_before)
            .await
            .map_err(store_unavailable)?
            .ok_or_else(|| {
                let mut e = not_found(&id);
                e.code = "previous_response_not_found";
                e.param = Some("previous_response_id".into());
                e
            })?;
        next = stored.previous_response_id.clone();
        chain.push(stored);
    }
    let mut items = Vec::new();
    for stored in chain.iter().rev() {
        let output = stored.response.get("output").and_then(Value::as_array);
        let input = stored.input.as_array();
        for item in input
            .into_iter()
            .flatten()
            .chain(output.into_iter().flatten())
        {
            if item.get("type").and_then(Value::as_str) != Some("reasoning") {
                items.push(item.clone());
            }
        }
    }
    Ok(items)
}

/// One page of `GET /responses/{id}/input_items`: `order` is "asc" or
/// "desc" (the default), `after` an item id, `limit` 1 to 100 (20).
pub fn input_items_page(
    items: &[Value],
    order: Option<&str>,
    after: Option<&str>,
    limit: Option<&str>,
) -> Result<Value, GatewayError> {
    let limit = match limit {
        None => 20,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => return Err(bad("limit", "`limit` must be an integer from 1 to 100.")),
        },
    };
    let mut ordered: Vec<&Value> = items.iter().collect();
    match order {
        None | Some("desc") => ordered.reverse(),
        Some("asc") => {}
        Some(_) => return Err(bad("order", "`order` must be \"asc\" or \"desc\".")),
    }
    let start = match after {
        None => 0,
        Some(after) => {
            match ordered
                .iter()
                .position(|i| i.get("id").and_then(Value::as_str) == Some(after))
            {
                Some(at) => at + 1,
                None => {
                    return Err(bad(
                        "after",
                        format!("No input item {after:?} in this response."),
                    ))
                }
            }
        }
    };
    let page: Vec<Value> = ordered
        .iter()
        .skip(start)
        .take(limit)
        .map(|v| (*v).clone())
        .collect();
    // The spec's ResponseItemList has string ids even for an empty page.
    let id_of = |v: Option<&Value>| v.and_then(|v| v.get("id")).cloned().unwrap_or(json!(""));
    Ok(json!({
        "object": "list",
        "data": page,
        "first_id": id_of(page.first()),
        "last_id": id_of(page.last()),
        "has_more": start + page.len() < ordered.len(),
    }))
}

/// Deletes stored responses past `retention`, every `every`.
pub async fn purge_forever(store: Arc<dyn ResponseStore>, retention: Duration, every: Duration) {
    loop {
        let before = now_ms() - retention.as_millis() as i64;
        match store.purge_responses(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "purged stored responses past retention"),
            Err(e) => tracing::warn!(error = %e, "could not purge stored responses"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_input_is_one_user_message_with_an_id() {
        let items = input_items(Some(&json!("hi"))).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["type"], "message");
        assert_eq!(items[0]["role"], "user");
        assert_eq!(
            items[0]["content"],
            json!([{"type": "input_text", "text": "hi"}])
        );
        assert!(items[0]["id"].as_str().unwrap().starts_with("msg_"));
        let sent = json!([
            {"type": "function_call_output", "call_id": "c", "output": "x", "id": "mine"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}", "id": null, "status": null}]);
        let items = input_items(Some(&sent)).unwrap();
        assert_eq!(items[0]["id"], "mine");
        assert!(items[1]["id"].as_str().unwrap().starts_with("fc_"));
        assert!(items.iter().all(|i| i["status"] == "completed"));
        assert!(input_items(Some(&json!([1]))).is_err());
        assert!(input_items(None).is_err());
    }

    #[test]
    fn input_item_pages_follow_order_after_and_limit() {
        let items: Vec<Value> = (0..5).map(|i| json!({"id": format!("i{i}")})).collect();
        let ids = |page: &Value| -> Vec<String> {
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["id"].as_str().unwrap().to_string())
                .collect()
        };
        let page = input_items_page(&items, None, None, Some("2")).unwrap();
        assert_eq!(ids(&page), ["i4", "i3"]);
        assert_eq!(page["has_more"], true);
        assert_eq!(page["first_id"], "i4");
        assert_eq!(page["last_id"], "i3");
        let page = input_items_page(&items, Some("asc"), Some("i2"), None).unwrap();
        assert_eq!(ids(&page), ["i3", "i4"]);
        assert_eq!(page["has_more"], false);
        let page = input_items_page(&items, Some("asc"), Some("i4"), None).unwrap();
        assert_eq!(ids(&page), [] as [&str; 0]);
        assert_eq!(
            (&page["first_id"], &page["last_id"]),
            (&json!(""), &json!(""))
        );
        for (order, after, limit) in [
            (Some("up"), None, None),
            (None, Some("nope"), None),
            (None, None, Some("0")),
            (None, None, Some("101")),
        ] {
            assert!(input_items_page(&items, order, after, limit).is_err());
        }
    }
}
