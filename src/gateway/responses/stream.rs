//! Chat Completions chunks → Responses streaming events, in the order the
//! official SDKs' stream helpers require: `response.created`,
//! `response.in_progress`, then per output item `output_item.added`,
//! (`content_part.added`, `output_text.delta`…, `output_text.done`,
//! `content_part.done`), for a refusal (`content_part.added`,
//! `refusal.delta`…, `refusal.done`, `content_part.done`), or
//! (`function_call_arguments.delta`…, `function_call_arguments.done`),
//! `output_item.done`, and finally
//! `response.completed` (or `response.incomplete`) carrying the whole
//! output and the usage. Every event has an increasing `sequence_number`.

use serde_json::{json, Map, Value};

use super::translate::{now_secs, skeleton, usage, ResponseMeta};

/// One event: its `type` (also the SSE event name) and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: &'static str,
    pub data: Value,
}

impl Event {
    /// The SSE frame: `event: NAME` and `data: JSON`.
    pub fn frame(&self, out: &mut Vec<u8>) {
        sse_frame(
            out,
            self.name,
            &serde_json::to_vec(&self.data).expect("JSON serializes"),
        );
    }
}

/// Writes one SSE frame with an event name.
pub fn sse_frame(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// The frames of some events, as one buffer.
pub fn frames(events: &[Event]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(256 * events.len());
    for e in events {
        e.frame(&mut out);
    }
    out.into()
}

struct TextItem {
    output_index: usize,
    id: String,
    text: String,
    annotations: Vec<Value>,
}

/// A message whose one part is a refusal (Chat Completions
/// `delta.refusal`).
struct RefusalItem {
    output_index: usize,
    id: String,
    refusal: String,
}

struct CallItem {
    /// The chat chunk's tool-call index.
    chat_index: u64,
    output_index: usize,
    id: String,
    call_id: Value,
    name: Value,
    arguments: String,
}

/// An MCP item the gateway is working on (a listing or a call).
struct McpItem {
    output_index: usize,
    id: String,
}

enum Open {
    Text(TextItem),
    Refusal(RefusalItem),
    Call(CallItem),
    Mcp(McpItem),
}

pub struct ResponseStream {
    id: String,
    created_at: u64,
    model: String,
    request: Map<String, Value>,
    seq: u64,
    open: Option<Open>,
    output: Vec<Value>,
    usage: Option<Value>,
    finish_reason: Option<String>,
    /// Why the gateway stopped the response short, if it did.
    incomplete: Option<String>,
}

impl ResponseStream {
    /// Whether `start` has run.
    pub fn started(&self) -> bool {
        self.seq > 0
    }

    pub fn new(meta: &ResponseMeta<'_>) -> Self {
        Self {
            id: meta.id.to_string(),
            created_at: meta.created_at,
            model: meta.model.to_string(),
            request: meta.request.clone(),
            seq: 0,
            open: None,
            output: Vec::new(),
            usage: None,
            finish_reason: None,
            incomplete: None,
        }
    }

    fn meta(&self) -> ResponseMeta<'_> {
        ResponseMeta {
            id: &self.id,
            created_at: self.created_at,
            model: &self.model,
            request: &self.request,
        }
    }

    fn event(&mut self, name: &'static str, data: Value) -> Event {
        let mut out = Map::new();
        out.insert("type".into(), json!(name));
        out.insert("sequence_number".into(), json!(self.seq));
        if let Value::Object(fields) = data {
            out.extend(fields);
        }
        self.seq += 1;
        Event {
            name,
            data: Value::Object(out),
        }
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self) -> Vec<Event> {
        let response = skeleton(&self.meta(), "in_progress");
        vec![
            self.event("response.created", json!({"response": response.clone()})),
            self.event("response.in_progress", json!({"response": response})),
        ]
    }

    /// The events one `chat.completion.chunk` produces.
    pub fn on_chunk(&mut self, chunk: &Value) -> Vec<Event> {
        let mut out = Vec::new();
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage(u));
        }
        let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
            return out;
        };
        let delta = &choice["delta"];
        for (field, refusal) in [("content", false), ("refusal", true)] {
            if let Some(piece) = delta
                .get(field)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                out.extend(self.message_piece(piece, refusal));
            }
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let chat_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let same = matches!(&self.open, Some(Open::Call(c)) if c.chat_index == chat_index);
            if !same {
                out.extend(self.close());
                out.extend(self.open_call(chat_index, call));
            }
            if let Some(Open::Call(item)) = &mut self.open {
                if let Some(piece) = call.pointer("/function/arguments").and_then(Value::as_str) {
                    if !piece.is_empty() {
                        item.arguments.push_str(piece);
                        let (id, index) = (item.id.clone(), item.output_index);
                        out.push(self.event(
                            "response.function_call_arguments.delta",
                            json!({"item_id": id, "output_index": index, "delta": piece}),
                        ));
                    }
                }
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_string());
        }
        out
    }

    /// A message item with one empty part: `output_text`, or `refusal`.
    /// A piece of the answer's text (or of its refusal): added to the
    /// message open for it, which is opened first (and whatever else is
    /// open closed) if need be.
    fn message_piece(&mut self, piece: &str, refusal: bool) -> Vec<Event> {
        let mut out = Vec::new();
        let open = matches!(
            (&self.open, refusal),
            (Some(Open::Text(_)), false) | (Some(Open::Refusal(_)), true)
        );
        if !open {
            out.extend(self.close());
            out.extend(self.open_message(refusal));
        }
        let (kind, item_id, output_index) = match &mut self.open {
            Some(Open::Text(item)) => {
                item.text.push_str(piece);
                (
                    "response.output_text.delta",
                    item.id.clone(),
                    item.output_index,
                )
            }
            Some(Open::Refusal(item)) => {
                item.refusal.push_str(piece);
                ("response.refusal.delta", item.id.clone(), item.output_index)
            }
            _ => return out,
        };
        let mut data = json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "delta": piece});
        if !refusal {
            data["logprobs"] = json!([]);
        }
        out.push(self.event(kind, data));
        out
    }

    fn open_message(&mut self, refusal: bool) -> Vec<Event> {
        let output_index = self.output.len();
        let id = format!("msg_{}_{output_index}", self.id.trim_start_matches("resp_"));
        let part = if refusal {
            self.open = Some(Open::Refusal(RefusalItem {
                output_index,
                id: id.clone(),
                refusal: String::new(),
            }));
            json!({"type": "refusal", "refusal": ""})
        } else {
            self.open = Some(Open::Text(TextItem {
                output_index,
                id: id.clone(),
                text: String::new(),
                annotations: Vec::new(),
            }));
            json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []})
        };
        vec![
            self.event(
                "response.output_item.added",
                json!({"output_index": output_index, "item": {"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}),
            ),
            self.event(
                "response.content_part.added",
                json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": part}),
            ),
        ]
    }

    fn open_call(&mut self, chat_index: u64, call: &Value) -> Vec<Event> {
        let output_index = self.output.len();
        let id = format!("fc_{}_{output_index}", self.id.trim_start_matches("resp_"));
        let call_id = call.get("id").cloned().unwrap_or(Value::Null);
        let name = call
            .pointer("/function/name")
            .cloned()
            .unwrap_or(Value::Null);
        self.open = Some(Open::Call(CallItem {
            chat_index,
            output_index,
            id: id.clone(),
            call_id: call_id.clone(),
            name: name.clone(),
            arguments: String::new(),
        }));
        vec![self.event(
            "response.output_item.added",
            json!({"output_index": output_index, "item": {"id": id, "type": "function_call", "status": "in_progress",
                "call_id": call_id, "name": name, "arguments": ""}}),
        )]
    }

    /// The `.done` events of the open item, which joins the output.
    fn close(&mut self) -> Vec<Event> {
        match self.open.take() {
            None => Vec::new(),
            Some(Open::Text(item)) => {
                let part = json!({"type": "output_text", "text": item.text, "annotations": item.annotations, "logprobs": []});
                let text_done = self.event(
                    "response.output_text.done",
                    json!({"item_id": item.id, "output_index": item.output_index, "content_index": 0, "text": item.text, "logprobs": []}),
                );
                self.close_message(text_done, &item.id, item.output_index, part)
            }
            Some(Open::Refusal(item)) => {
                let part = json!({"type": "refusal", "refusal": item.refusal});
                let refusal_done = self.event(
                    "response.refusal.done",
                    json!({"item_id": item.id, "output_index": item.output_index, "content_index": 0, "refusal": item.refusal}),
                );
                self.close_message(refusal_done, &item.id, item.output_index, part)
            }
            // An MCP item ends only with `mcp_done`.
            Some(Open::Mcp(_)) => Vec::new(),
            Some(Open::Call(item)) => {
                let done = json!({"id": item.id, "type": "function_call", "status": "completed",
                    "call_id": item.call_id, "name": item.name, "arguments": item.arguments});
                self.output.push(done.clone());
                vec![
                    self.event(
                        "response.function_call_arguments.done",
                        json!({"item_id": item.id, "output_index": item.output_index, "name": item.name, "arguments": item.arguments}),
                    ),
                    self.event(
                        "response.output_item.done",
                        json!({"output_index": item.output_index, "item": done}),
                    ),
                ]
            }
        }
    }

    /// The end of a message item whose one part is `part`: the part's own
    /// `.done` event (`part_done`), `content_part.done`, `output_item.done`;
    /// the message joins the output.
    fn close_message(
        &mut self,
        part_done: Event,
        id: &str,
        output_index: usize,
        part: Value,
    ) -> Vec<Event> {
        let done = json!({"id": id, "type": "message", "status": "completed", "role": "assistant", "content": [part]});
        self.output.push(done.clone());
        vec![
            part_done,
            self.event(
                "response.content_part.done",
                json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": part}),
            ),
            self.event(
                "response.output_item.done",
                json!({"output_index": output_index, "item": done}),
            ),
        ]
    }

    /// A web search the gateway ran, as a finished `web_search_call` item:
    /// `output_item.added`, `web_search_call.in_progress`, `.searching`,
    /// `.completed`, `output_item.done`.
    pub fn web_search_call(&mut self, query: &str, urls: &[String]) -> Vec<Event> {
        let mut out = self.close();
        let output_index = self.output.len();
        let id = format!("ws_{}_{output_index}", self.id.trim_start_matches("resp_"));
        let sources: Vec<Value> = urls
            .iter()
            .map(|u| json!({"type": "url", "url": u}))
            .collect();
        let action =
            json!({"type": "search", "query": query, "queries": [query], "sources": sources});
        let item = |status: &str| json!({"id": id, "type": "web_search_call", "status": status, "action": action});
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": output_index, "item": item("in_progress")}),
        ));
        for name in [
            "response.web_search_call.in_progress",
            "response.web_search_call.searching",
            "response.web_search_call.completed",
        ] {
            out.push(self.event(name, json!({"output_index": output_index, "item_id": id})));
        }
        let done = item("completed");
        self.output.push(done.clone());
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": output_index, "item": done}),
        ));
        out
    }

    /// An MCP item the gateway starts: `output_item.added`, then
    /// `mcp_list_tools.in_progress`, or for a call `mcp_call.in_progress`
    /// and its arguments (`mcp_call_arguments.delta`, `.done`).
    pub fn mcp_started(&mut self, item: &Value) -> Vec<Event> {
        let mut out = self.close();
        let output_index = self.output.len();
        let id = item["id"].as_str().unwrap_or_default().to_string();
        let call = item["type"] == "mcp_call";
        let mut added = item.clone();
        if call {
            added["arguments"] = json!("");
        }
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": output_index, "item": added}),
        ));
        let at = json!({"output_index": output_index, "item_id": id});
        if call {
            out.push(self.event("response.mcp_call.in_progress", at.clone()));
            let arguments = item["arguments"].clone();
            let mut delta = at.clone();
            delta["delta"] = arguments.clone();
            out.push(self.event("response.mcp_call_arguments.delta", delta));
            let mut done = at;
            done["arguments"] = arguments;
            out.push(self.event("response.mcp_call_arguments.done", done));
        } else {
            out.push(self.event("response.mcp_list_tools.in_progress", at));
        }
        self.open = Some(Open::Mcp(McpItem { output_index, id }));
        out
    }

    /// An MCP item is finished: `mcp_list_tools.completed` / `.failed` or
    /// `mcp_call.completed` / `.failed`, then `output_item.done`. An item
    /// that never started (an approval request) is added and done at once.
    pub fn mcp_done(&mut self, item: &Value) -> Vec<Event> {
        let id = item["id"].as_str().unwrap_or_default();
        let mut out = Vec::new();
        let output_index = match &self.open {
            Some(Open::Mcp(open)) if open.id == id => open.output_index,
            _ => {
                out.extend(self.close());
                let output_index = self.output.len();
                out.push(self.event(
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": item}),
                ));
                output_index
            }
        };
        self.open = None;
        let failed = item.get("error").is_some_and(|e| !e.is_null());
        let name = match (item["type"].as_str(), failed) {
            (Some("mcp_list_tools"), false) => Some("response.mcp_list_tools.completed"),
            (Some("mcp_list_tools"), true) => Some("response.mcp_list_tools.failed"),
            (Some("mcp_call"), false) => Some("response.mcp_call.completed"),
            (Some("mcp_call"), true) => Some("response.mcp_call.failed"),
            _ => None,
        };
        if let Some(name) = name {
            out.push(self.event(name, json!({"output_index": output_index, "item_id": id})));
        }
        self.output.push(item.clone());
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": output_index, "item": item}),
        ));
        out
    }

    /// The gateway stopped the response short: it ends `incomplete`, with
    /// `reason` in `incomplete_details`.
    pub fn set_incomplete(&mut self, reason: &str) {
        self.incomplete = Some(reason.to_string());
    }

    /// Adds annotations to the open text: one `output_text.annotation.added`
    /// each.
    pub fn annotate(&mut self, annotations: Vec<Value>) -> Vec<Event> {
        let mut out = Vec::new();
        for annotation in annotations {
            let Some(Open::Text(item)) = &mut self.open else {
                break;
            };
            item.annotations.push(annotation.clone());
            let data = json!({"item_id": item.id, "output_index": item.output_index, "content_index": 0,
                "annotation_index": item.annotations.len() - 1, "annotation": annotation});
            out.push(self.event("response.output_text.annotation.added", data));
        }
        out
    }

    /// The upstream finished: close the open item, then
    /// `response.completed` (or `response.incomplete` when the output was
    /// cut by `max_output_tokens` or a content filter).
    pub fn finish(&mut self) -> (Vec<Event>, Value) {
        let mut out = self.close();
        let (status, incomplete, name) = match self.finish_reason.as_deref() {
            _ if self.incomplete.is_some() => (
                "incomplete",
                json!({"reason": self.incomplete}),
                "response.incomplete",
            ),
            Some("length") => (
                "incomplete",
                json!({"reason": "max_output_tokens"}),
                "response.incomplete",
            ),
            Some("content_filter") => (
                "incomplete",
                json!({"reason": "content_filter"}),
                "response.incomplete",
            ),
            _ => ("completed", Value::Null, "response.completed"),
        };
        let mut response = skeleton(&self.meta(), status);
        response["output"] = Value::Array(self.output.clone());
        response["incomplete_details"] = incomplete;
        if status == "completed" {
            response["completed_at"] = json!(now_secs());
        }
        if let Some(usage) = &self.usage {
            response["usage"] = usage.clone();
        }
        out.push(self.event(name, json!({"response": response.clone()})));
        (out, response)
    }

    /// A failure after the stream began: an `error` event carrying the
    /// error object and `reqId`, then `response.failed` with the output
    /// completed so far (the open item is dropped).
    pub fn fail(&mut self, error: &Value, request_id: &str) -> (Vec<Event>, Value) {
        self.open = None;
        let mut response = skeleton(&self.meta(), "failed");
        response["output"] = Value::Array(self.output.clone());
        let events = failure_events(&mut self.seq, response, error, request_id);
        let response = events[1].data["response"].clone();
        (events, response)
    }
}

/// The closing events of a failed stream, numbered from `*seq`: `error`
/// (the error object with `reqId`), then `response.failed` carrying
/// `response` with its `error` set.
pub fn failure_events(
    seq: &mut u64,
    mut response: Value,
    error: &Value,
    request_id: &str,
) -> Vec<Event> {
    let code = error.get("code").cloned().unwrap_or(Value::Null);
    let message = error.get("message").cloned().unwrap_or(Value::Null);
    response["status"] = json!("failed");
    let kind = match error.get("type").and_then(Value::as_str) {
        Some("rate_limit_error") => "rate_limit_exceeded",
        _ => "server_error",
    };
    response["error"] = json!({"code": kind, "message": message});
    let param = error.get("param").cloned().unwrap_or(Value::Null);
    let first = *seq;
    *seq += 2;
    vec![
        Event {
            name: "error",
            data: json!({"type": "error", "code": code, "message": message, "param": param,
                "sequence_number": first, "error": error, "reqId": request_id}),
        },
        Event {
            name: "response.failed",
            data: json!({"type": "response.failed", "sequence_number": first + 1, "response": response}),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(delta: Value, finish: Option<&str>) -> Value {
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    #[test]
    fn text_then_two_tool_calls_come_out_in_sdk_order() {
        let request = json!({"model": "p/m", "input": "hi"});
        let meta = ResponseMeta::for_test("resp_1", request.as_object().unwrap());
        let mut s = ResponseStream::new(&meta);
        let mut events = s.start();
        for c in [
            chunk(json!({"role": "assistant", "content": ""}), None),
            chunk(json!({"content": "Let me "}), None),
            chunk(json!({"content": "check."}), None),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "get", "arguments": ""}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":"}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "get", "arguments": "{}"}}]}),
                None,
            ),
            chunk(json!({}), Some("tool_calls")),
            json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}}),
        ] {
            events.extend(s.on_chunk(&c));
        }
        let before = now_secs();
        let (last, response) = s.finish();
        events.extend(last);
        let completed_at = response["completed_at"].as_u64().unwrap();
        assert!(
            (before..=now_secs()).contains(&completed_at),
            "when it completed, not when it was created: {completed_at}"
        );
        let names: Vec<&str> = events.iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (n, e) in events.iter().enumerate() {
            assert_eq!(e.data["sequence_number"], n as u64);
            assert_eq!(e.data["type"], e.name);
        }
        assert_eq!(events[0].data["response"]["status"], "in_progress");
        assert_eq!(events[6].data["text"], "Let me check.");
        assert_eq!(events[12].data["arguments"], "{\"q\":1}");
        assert_eq!(response["status"], "completed");
        assert_eq!(response["output"][0]["content"][0]["text"], "Let me check.");
        assert_eq!(response["output"][1]["call_id"], "call_a");
        assert_eq!(response["output"][2]["call_id"], "call_b");
        assert_eq!(response["output"][2]["arguments"], "{}");
        assert_eq!(response["usage"]["total_tokens"], 10);
        assert_eq!(events.last().unwrap().data["response"], response);
    }

    #[test]
    fn a_refusal_is_a_message_with_a_refusal_part() {
        let request = json!({"model": "p/m", "input": "hi"});
        let meta = ResponseMeta::for_test("resp_4", request.as_object().unwrap());
        let mut s = ResponseStream::new(&meta);
        let mut events = s.start();
        for c in [
            chunk(
                json!({"role": "assistant", "content": null, "refusal": ""}),
                None,
            ),
            chunk(json!({"refusal": "I can't "}), None),
            chunk(json!({"refusal": "help with that."}), None),
            chunk(json!({}), Some("stop")),
        ] {
            events.extend(s.on_chunk(&c));
        }
        let (last, response) = s.finish();
        events.extend(last);
        let names: Vec<&str> = events.iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.refusal.delta",
                "response.refusal.delta",
                "response.refusal.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (n, e) in events.iter().enumerate() {
            assert_eq!(e.data["sequence_number"], n as u64);
            assert_eq!(e.data["type"], e.name);
        }
        let part = json!({"type": "refusal", "refusal": "I can't help with that."});
        assert_eq!(
            events[3].data["part"],
            json!({"type": "refusal", "refusal": ""})
        );
        assert_eq!(events[4].data["delta"], "I can't ");
        assert_eq!(events[6].data["refusal"], "I can't help with that.");
        assert_eq!(events[7].data["part"], part);
        assert_eq!(response["output"][0]["type"], "message");
        assert_eq!(response["output"][0]["content"], json!([part]));
        assert_eq!(events[8].data["item"], response["output"][0]);
    }

    #[test]
    fn a_failure_is_an_error_event_then_response_failed() {
        let request = json!({"model": "p/m", "input": "hi"});
        let meta = ResponseMeta::for_test("resp_2", request.as_object().unwrap());
        let mut s = ResponseStream::new(&meta);
        let mut events = s.start();
        events.extend(s.on_chunk(&chunk(json!({"content": "par"}), None)));
        let error = json!({"message": "cut", "type": "service_unavailable", "code": "provider_unreachable", "param": null});
        let (failed, response) = s.fail(&error, "req_9");
        events.extend(failed);
        assert_eq!(response["status"], "failed");
        assert_eq!(response["error"]["code"], "server_error");
        let last_two: Vec<&str> = events[events.len() - 2..].iter().map(|e| e.name).collect();
        assert_eq!(last_two, ["error", "response.failed"]);
        let e = &events[events.len() - 2].data;
        assert_eq!(e["code"], "provider_unreachable");
        assert_eq!(e["reqId"], "req_9");
        assert_eq!(e["error"]["message"], "cut");
        for (n, e) in events.iter().enumerate() {
            assert_eq!(e.data["sequence_number"], n as u64);
            assert_eq!(e.data["type"], e.name);
        }
        assert_eq!(events.last().unwrap().data["response"]["status"], "failed");
    }

    #[test]
    fn a_cut_answer_is_incomplete() {
        let request = json!({"model": "p/m", "input": "hi", "max_output_tokens": 3});
        let meta = ResponseMeta::for_test("resp_3", request.as_object().unwrap());
        let mut s = ResponseStream::new(&meta);
        s.start();
        s.on_chunk(&chunk(json!({"content": "abc"}), Some("length")));
        let (events, response) = s.finish();
        assert_eq!(events.last().unwrap().name, "response.incomplete");
        assert_eq!(response["completed_at"], Value::Null, "not completed");
        assert_eq!(
            response["incomplete_details"]["reason"],
            "max_output_tokens"
        );
    }
}
