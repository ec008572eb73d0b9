//! Web search run by the gateway, for any model.
//!
//! A request asks for it with `web_search_options`, a `web` plugin or a
//! `:online` model (Chat Completions), or a `web_search` tool (Responses,
//! when its provider has no native search). The gateway then answers it in
//! rounds of non-streamed Chat Completions calls:
//!
//! - a model that calls tools is offered a `web_search` function; each call
//!   it makes is run on the configured backend and its numbered results go
//!   back as the tool's answer, until the model answers in text or the
//!   request's search cap is reached (the last round offers no search);
//! - any other model gets one search with the user's last message, its
//!   results in a dated system message.
//!
//! Results are fenced as untrusted data (`search::cite`). The final text's
//! `[n]` markers become `url_citation` annotations. Every search is billed
//! at the backend's price and every round's tokens are billed
//! (`Charge::bank_round`). Since the gateway must read each round to know
//! whether it is the last, the answer reaches the client when the rounds
//! are over: in one body, or as a stream of the finished answer.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::error::GatewayError;
use super::finished::{chat_frames, chat_usage, response_events};
use super::record::Usage;
use super::responses::stream::{Event, ResponseStream};
use super::responses::translate::{to_response, ResponseMeta};
use crate::search::cite::{citations, results_block, Citation};
use crate::search::{SearchQuery, SearchResult};

/// A request's web search settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebSearch {
    pub max_results: Option<usize>,
    pub allowed_domains: Vec<String>,
    pub excluded_domains: Vec<String>,
    /// OpenRouter's `search_prompt`: the instruction put before results.
    pub search_prompt: Option<String>,
    /// Where the user is (`user_location`: city, region, country), told to
    /// the model with the results.
    pub location: Option<String>,
}

/// `user_location` (`{"type": "approximate", "approximate": {...}}` in Chat
/// Completions, the fields inline in Responses) as "city, region, country".
fn location(v: Option<&Value>) -> Option<String> {
    let v = v?;
    let fields = v.get("approximate").unwrap_or(v);
    let parts: Vec<&str> = ["city", "region", "country"]
        .iter()
        .filter_map(|k| fields.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Results per search for `search_context_size`.
fn context_results(size: Option<&Value>) -> Option<usize> {
    match size.and_then(Value::as_str) {
        Some("low") => Some(3),
        Some("medium") => Some(5),
        Some("high") => Some(8),
        _ => None,
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn bad(param: &str, message: &str) -> GatewayError {
    GatewayError::bad_request("invalid_request", message, Some(param))
}

/// Whether `take_from_chat` would change the request: a `:online` model,
/// or a `web_search_options` or `plugins` member (any value).
pub fn asked_in_chat(body: &Map<String, Value>, model: &str) -> bool {
    model.ends_with(":online")
        || body.contains_key("web_search_options")
        || body.contains_key("plugins")
}

/// Takes the web search fields out of a Chat Completions body (they never
/// go upstream): `web_search_options`, `plugins` (`{"id": "web", …}`), and
/// the `:online` suffix of `model`.
pub fn take_from_chat(
    body: &mut Map<String, Value>,
    model: &mut String,
) -> Result<Option<WebSearch>, GatewayError> {
    let mut found = None;
    if let Some(stripped) = model.strip_suffix(":online") {
        *model = stripped.to_string();
        body.insert("model".into(), Value::String(model.clone()));
        found = Some(WebSearch::default());
    }
    match body.remove("web_search_options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            let mut ws = found.unwrap_or_default();
            ws.max_results = context_results(o.get("search_context_size"));
            ws.location = location(o.get("user_location"));
            found = Some(ws);
        }
        Some(_) => return Err(bad(
            "web_search_options",
            "`web_search_options` must be an object such as {\"search_context_size\": \"medium\"}.",
        )),
    }
    match body.remove("plugins") {
        None | Some(Value::Null) => {}
        Some(Value::Array(plugins)) => {
            for p in plugins {
                match p.get("id").and_then(Value::as_str) {
                    Some("web") => {
                        let mut ws = found.unwrap_or_default();
                        if let Some(n) = p.get("max_results").and_then(Value::as_u64) {
                            ws.max_results = Some(n.clamp(1, 20) as usize);
                        }
                        ws.search_prompt = p
                            .get("search_prompt")
                            .and_then(Value::as_str)
                            .map(str::to_string);
                        ws.allowed_domains = strings(p.get("include_domains"));
                        ws.excluded_domains = strings(p.get("exclude_domains"));
                        found = Some(ws);
                    }
                    other => {
                        return Err(bad(
                            "plugins",
                            &format!("Plugin {other:?} is not available here; the gateway has the \"web\" plugin."),
                        ))
                    }
                }
            }
        }
        Some(_) => {
            return Err(bad(
                "plugins",
                "`plugins` must be a list such as [{\"id\": \"web\"}].",
            ))
        }
    }
    Ok(found)
}

/// The `web_search` (or `web_search_preview`) tool of a Responses request,
/// read and removed from its tools. `None` when there is none.
pub fn take_from_responses(request: &mut Map<String, Value>) -> Option<WebSearch> {
    let Some(Value::Array(tools)) = request.get_mut("tools") else {
        return None;
    };
    let at = tools.iter().position(|t| {
        matches!(
            t.get("type").and_then(Value::as_str),
            Some("web_search" | "web_search_preview" | "web_search_2025_08_26")
        )
    })?;
    let tool = tools.remove(at);
    Some(WebSearch {
        max_results: context_results(tool.get("search_context_size")),
        allowed_domains: strings(tool.pointer("/filters/allowed_domains")),
        location: location(tool.get("user_location")),
        ..Default::default()
    })
}

/// The function a tool-calling model is offered, named so as not to clash
/// with the request's own tools.
pub fn search_function(body: &Map<String, Value>) -> (String, Value) {
    let taken = |name: &str| {
        body.get("tools")
            .and_then(Value::as_array)
            .is_some_and(|tools| {
                tools
                    .iter()
                    .any(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name))
            })
    };
    let name = ["web_search", "gateway_web_search", "mume_web_search"]
        .into_iter()
        .find(|n| !taken(n))
        .unwrap_or("mume_web_search")
        .to_string();
    let tool = json!({"type": "function", "function": {
        "name": name,
        "description": "Search the web for current information. Returns numbered results; cite them as [n] right after the sentence they support.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string", "description": "What to search for"}}, "required": ["query"]}
    }});
    (name, tool)
}

/// One search the gateway ran.
#[derive(Debug, Clone)]
pub struct SearchCall {
    pub query: String,
    pub results: Vec<SearchResult>,
}

/// Everything the rounds produced.
#[derive(Debug, Clone)]
pub struct Searched {
    /// The last round's `chat.completion` (public model id).
    pub completion: Value,
    pub calls: Vec<SearchCall>,
    /// Token totals over the rounds.
    pub tokens: Usage,
}

impl Searched {
    /// Every result, numbered from 1 in the order they were given to the
    /// model.
    pub fn sources(&self) -> Vec<SearchResult> {
        self.calls
            .iter()
            .flat_map(|c| c.results.iter().cloned())
            .collect()
    }

    pub fn text(&self) -> String {
        self.completion
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }

    pub fn citations(&self) -> Vec<Citation> {
        citations(&self.text(), &self.sources())
    }

    /// The Chat Completions `usage` over every round.
    pub fn usage(&self) -> Value {
        chat_usage(&self.tokens)
    }

    /// The citations as Chat Completions annotations.
    fn chat_annotations(&self) -> Vec<Value> {
        self.citations()
            .into_iter()
            .map(|a| {
                json!({"type": "url_citation", "url_citation": {
                "start_index": a.start, "end_index": a.end, "url": a.url, "title": a.title}})
            })
            .collect()
    }

    /// The final completion with its citations as `message.annotations`
    /// and the usage of every round.
    pub fn chat_completion(&self) -> Value {
        let mut c = self.completion.clone();
        let annotations = self.chat_annotations();
        if let Some(m) = c
            .pointer_mut("/choices/0/message")
            .and_then(Value::as_object_mut)
        {
            m.insert("annotations".into(), Value::Array(annotations));
        }
        c["usage"] = self.usage();
        c
    }
}

impl Searched {
    fn url_citations(&self) -> Vec<Value> {
        self.citations()
            .into_iter()
            .map(|a| json!({"type": "url_citation", "start_index": a.start, "end_index": a.end, "url": a.url, "title": a.title}))
            .collect()
    }

    /// The finished answer as Chat Completions stream frames: the role,
    /// the text in pieces, the finish (with the citations as
    /// `delta.annotations`), the usage chunk if asked for (`cost`, exact
    /// USD), then `[DONE]`.
    pub fn chat_frames(&self, wants_usage: bool, cost: &str) -> Vec<Bytes> {
        let usage = wants_usage.then(|| {
            let mut usage = self.usage();
            if let Ok(cost) = serde_json::from_str::<Value>(cost) {
                usage["cost"] = cost;
            }
            usage
        });
        chat_frames(&self.completion, Some(self.chat_annotations()), usage)
    }

    fn completion_with_usage(&self) -> Value {
        let mut completion = self.completion.clone();
        completion["usage"] = self.usage();
        completion
    }

    /// The Response object: a `web_search_call` item per search, then the
    /// answer, its text annotated with the citations.
    pub fn response(&self, meta: &ResponseMeta<'_>) -> Value {
        let mut r = to_response(&self.completion_with_usage(), meta);
        let stem = meta.id.trim_start_matches("resp_");
        let mut output: Vec<Value> = self
            .calls
            .iter()
            .enumerate()
            .map(|(i, call)| {
                let sources: Vec<Value> = call.results.iter().map(|s| json!({"type": "url", "url": s.url})).collect();
                json!({"id": format!("ws_{stem}_{i}"), "type": "web_search_call", "status": "completed",
                    "action": {"type": "search", "query": call.query, "queries": [call.query], "sources": sources}})
            })
            .collect();
        let annotations = self.url_citations();
        if let Value::Array(items) = r["output"].take() {
            for mut item in items {
                if item["type"] == "message" {
                    if let Some(part) = item
                        .pointer_mut("/content/0")
                        .filter(|p| p["type"] == "output_text")
                    {
                        part["annotations"] = Value::Array(annotations.clone());
                    }
                }
                output.push(item);
            }
        }
        r["output"] = Value::Array(output);
        r
    }

    /// The Response as a stream of events in the SDKs' order, and the
    /// finished Response.
    pub fn response_events(&self, meta: &ResponseMeta<'_>) -> (Vec<Event>, Value) {
        let mut stream = ResponseStream::new(meta);
        let mut events = stream.start();
        for call in &self.calls {
            let urls: Vec<String> = call.results.iter().map(|r| r.url.clone()).collect();
            events.extend(stream.web_search_call(&call.query, &urls));
        }
        events.extend(response_events(
            &mut stream,
            &self.completion,
            self.url_citations(),
            &self.usage(),
        ));
        let (last, response) = stream.finish();
        events.extend(last);
        (events, response)
    }
}

/// The text of the last user message (the query when the model cannot ask
/// for one).
pub fn last_user_text(body: &Map<String, Value>) -> String {
    let messages = body.get("messages").and_then(Value::as_array);
    let Some(last) = messages.and_then(|m| m.iter().rev().find(|m| m["role"] == "user")) else {
        return String::new();
    };
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The query of a search the model asked for.
pub fn query_of(call: &Value) -> String {
    let args = call
        .pointer("/function/arguments")
        .and_then(Value::as_str)
        .unwrap_or("{}");
    serde_json::from_str::<Value>(args)
        .ok()
        .and_then(|a| a.get("query").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default()
}

/// The query sent to the backend: the request's number of results, no
/// more than the configured `max_results` the hold counts on.
pub fn query(ws: &WebSearch, text: &str, max_results: usize) -> SearchQuery {
    SearchQuery {
        query: text.chars().take(400).collect(),
        max_results: ws.max_results.map_or(max_results, |n| n.min(max_results)),
        allowed_domains: ws.allowed_domains.clone(),
        excluded_domains: ws.excluded_domains.clone(),
    }
}

/// Tokens (about four bytes each) that every results block carries
/// besides its results: the request's own search prompt and location.
pub fn preamble_tokens(ws: &WebSearch) -> u64 {
    let bytes = ws.search_prompt.as_ref().map_or(0, String::len)
        + ws.location.as_ref().map_or(0, String::len);
    bytes.div_ceil(4) as u64
}

/// A numbered results block, with the request's own search prompt first.
pub fn block(ws: &WebSearch, call: &SearchCall, first: usize, date: &str) -> String {
    let mut out = String::new();
    if let Some(p) = &ws.search_prompt {
        out.push_str(p);
        out.push('\n');
    }
    if let Some(place) = &ws.location {
        out.push_str(&format!("The user is in {place}.\n"));
    }
    out.push_str(&results_block(&call.query, &call.results, first, date));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_requests_ask_for_search_three_ways() {
        let mut model = "p/m:online".to_string();
        let mut body = json!({"model": "p/m:online"}).as_object().unwrap().clone();
        assert_eq!(
            take_from_chat(&mut body, &mut model).unwrap(),
            Some(WebSearch::default())
        );
        assert_eq!(model, "p/m");
        assert_eq!(body["model"], "p/m");

        let mut model = "p/m".to_string();
        let mut body = json!({"web_search_options": {"search_context_size": "high",
            "user_location": {"type": "approximate", "approximate": {"city": "Oslo", "country": "NO"}}}, "plugins": [
            {"id": "web", "max_results": 2, "include_domains": ["a.org"], "exclude_domains": ["b.org"], "search_prompt": "Sources:"}]})
        .as_object().unwrap().clone();
        let ws = take_from_chat(&mut body, &mut model).unwrap().unwrap();
        assert_eq!(ws.max_results, Some(2));
        assert_eq!(ws.allowed_domains, ["a.org"]);
        assert_eq!(ws.excluded_domains, ["b.org"]);
        assert_eq!(ws.search_prompt.as_deref(), Some("Sources:"));
        assert_eq!(ws.location.as_deref(), Some("Oslo, NO"));
        assert!(body.is_empty(), "nothing of it goes upstream");

        let mut body = json!({"plugins": [{"id": "pdf"}]})
            .as_object()
            .unwrap()
            .clone();
        assert!(take_from_chat(&mut body, &mut model).is_err());
        let mut body = json!({"messages": []}).as_object().unwrap().clone();
        assert_eq!(take_from_chat(&mut body, &mut model).unwrap(), None);
    }

    #[test]
    fn the_responses_tool_is_read_and_removed() {
        let mut r = json!({"tools": [{"type": "function", "name": "f"},
            {"type": "web_search", "search_context_size": "low", "filters": {"allowed_domains": ["x.org"]}}]})
        .as_object().unwrap().clone();
        let ws = take_from_responses(&mut r).unwrap();
        assert_eq!(ws.max_results, Some(3));
        assert_eq!(ws.allowed_domains, ["x.org"]);
        assert_eq!(r["tools"], json!([{"type": "function", "name": "f"}]));
        assert!(take_from_responses(&mut r).is_none());
    }

    #[test]
    fn the_search_function_never_takes_a_client_tools_name() {
        let body = json!({"tools": [{"type": "function", "function": {"name": "web_search"}}]});
        let (name, tool) = search_function(body.as_object().unwrap());
        assert_eq!(name, "gateway_web_search");
        assert_eq!(tool["function"]["name"], "gateway_web_search");
    }
}
