//! Relaying a Chat Completions stream, one upstream event at a time.
//!
//! `ChunkRelay` is the pure part: it turns one upstream event into what the
//! client gets (the chunk with the public model id, tool-call indexes made
//! 0-based and contiguous, the usage chunk dropped when the client did not
//! ask for it) and decides when the stream has ended well or badly.
//! `relay` is the timed part: keep-alives during silence, the idle and
//! total limits, and the final error event. Nothing is buffered: each
//! event becomes one frame as soon as it arrives.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::time::{sleep_until, Instant};

use super::error::GatewayError;
use super::json::RawObject;
use super::record::{Outcome, RequestContext, Usage};
use super::upstream_error;
use crate::billing::{Charge, Pricing};
use crate::config::usd_string;
use crate::providers::{EventStream, ProviderError};

pub const DONE_FRAME: &[u8] = b"data: [DONE]\n\n";
pub const KEEPALIVE_FRAME: &[u8] = b": keep-alive\n\n";
/// Choices whose tool calls are renumbered (OpenAI allows `n` up to 128).
const MAX_CHOICES: usize = 128;
/// Tool calls per choice whose index is renumbered.
const MAX_TOOL_CALLS: usize = 1024;

/// Timing limits of one relayed stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub keepalive: Duration,
    pub idle: Duration,
    pub max_duration: Duration,
}

/// What to do with one upstream event.
#[derive(Debug)]
pub enum Step {
    /// Send this frame to the client.
    Send(Bytes),
    /// Nothing to send (e.g. a usage chunk the client did not ask for).
    Skip,
    /// The stream ended well: send `[DONE]` and stop.
    Done,
    /// The stream failed: send the error event and stop.
    Fail(GatewayError),
}

/// Maps upstream tool-call positions to the 0-based, contiguous `index`
/// clients rely on, for one choice.
#[derive(Debug, Default)]
struct ToolCalls {
    /// Each call seen: the upstream's `index` (None when it sent none) and
    /// the call's `id`.
    seen: Vec<(Option<u64>, Option<String>)>,
}

impl ToolCalls {
    fn normalize(&mut self, call: &mut Map<String, Value>) {
        let upstream_index = call.get("index").and_then(Value::as_u64);
        let id = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty());
        // The latest call at the upstream's index (or, with no index, the
        // latest call) continues, unless the delta names another call: some
        // servers number each chunk's calls from 0, or repeat the id on
        // every delta of a call.
        let latest = match upstream_index {
            Some(i) => self.seen.iter().rposition(|(s, _)| *s == Some(i)),
            None => self.seen.len().checked_sub(1),
        };
        let known = latest.filter(|&n| match (id, &self.seen[n].1) {
            (Some(new), Some(old)) => new == old,
            (Some(_), None) => upstream_index.is_some(),
            (None, _) => true,
        });
        if known.is_none() && self.seen.len() >= MAX_TOOL_CALLS {
            // Past any real answer's size: pass the delta on untouched
            // rather than let the upstream grow our state.
            return;
        }
        let index = match known {
            Some(n) => {
                if self.seen[n].1.is_none() {
                    self.seen[n].1 = id.map(str::to_string);
                }
                n
            }
            None => {
                self.seen.push((upstream_index, id.map(str::to_string)));
                if call.get("type").is_none_or(Value::is_null) {
                    call.insert("type".into(), json!("function"));
                }
                self.seen.len() - 1
            }
        };
        call.insert("index".into(), json!(index));
    }
}

pub struct ChunkRelay {
    provider: Arc<str>,
    public_model: Arc<str>,
    client_wants_usage: bool,
    /// The choices seen (bit `i` for choice `i`, below `MAX_CHOICES`).
    choices: u128,
    /// The choices that have reported their `finish_reason`.
    finished: u128,
    id: Option<String>,
    created: Option<Value>,
    usage: Option<Usage>,
    tool_calls: Vec<ToolCalls>,
    /// Prices the usage chunk's `cost`.
    pricing: Pricing,
    /// Text delivered so far (content, refusal, tool arguments): bytes, and
    /// chunks that carried any.
    delivered: Delivered,
}

/// Generated text counted as it passes, to estimate tokens when the
/// upstream reports no usage.
#[derive(Debug, Default, Clone, Copy)]
struct Delivered {
    bytes: u64,
    pieces: u64,
}

impl Delivered {
    fn add_choice(&mut self, part: &Value) {
        let mut bytes = 0;
        for field in ["content", "refusal", "reasoning_content", "reasoning"] {
            if let Some(Value::String(text)) = part.get(field) {
                bytes += text.len() as u64;
            }
        }
        if let Some(Value::Array(calls)) = part.get("tool_calls") {
            for call in calls {
                if let Some(Value::String(args)) = call.pointer("/function/arguments") {
                    bytes += args.len() as u64;
                }
                if let Some(Value::String(name)) = call.pointer("/function/name") {
                    bytes += name.len() as u64;
                }
            }
        }
        if bytes > 0 {
            self.bytes += bytes;
            self.pieces += 1;
        }
    }

    /// At least one token per piece of text, and at least one per 4 bytes.
    fn tokens(&self) -> u64 {
        self.pieces.max(self.bytes.div_ceil(4))
    }
}

/// Completion tokens in a complete response's `choices`, estimated.
pub fn estimate_delivered(choices: &Value) -> u64 {
    let mut delivered = Delivered::default();
    if let Value::Array(choices) = choices {
        for choice in choices {
            if let Some(message) = choice.get("message") {
                delivered.add_choice(message);
            }
        }
    }
    delivered.tokens()
}

impl ChunkRelay {
    pub fn new(provider: &str, public_model: &str, client_wants_usage: bool) -> Self {
        Self {
            provider: provider.into(),
            public_model: public_model.into(),
            client_wants_usage,
            choices: 0,
            finished: 0,
            id: None,
            created: None,
            usage: None,
            tool_calls: Vec::new(),
            pricing: Pricing {
                prompt: 0,
                completion: 0,
                cap: None,
            },
            delivered: Delivered::default(),
        }
    }

    /// Sets the prices the usage chunk's `cost` is computed from.
    pub fn priced(mut self, pricing: Pricing) -> Self {
        self.pricing = pricing;
        self
    }

    /// Whether the client has been given real content (text, a tool
    /// call) or the answer's end: from then on the answer is committed.
    pub fn has_content(&self) -> bool {
        self.delivered.pieces > 0 || self.finished != 0
    }

    /// Reads one upstream event: the chunk with the public model id (its
    /// tool calls renumbered, usage recorded), or how the stream ended.
    pub fn read(&mut self, data: &str) -> Read {
        if data.trim() == "[DONE]" {
            return Read::Done;
        }
        // A provider's own keep-alive (Anthropic's `ping`), passed on as
        // ours.
        if data.is_empty() {
            return Read::Keepalive;
        }
        let mut chunk = match serde_json::from_str::<Value>(data) {
            Ok(Value::Object(chunk)) => chunk,
            _ => {
                return Read::Fail(upstream_error(
                    &self.provider,
                    ProviderError::Decode("a stream event is not a JSON object".into()),
                ))
            }
        };
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| error.to_string());
            return Read::Fail(upstream_error(
                &self.provider,
                ProviderError::StreamError(message),
            ));
        }
        // Not a chunk: an event of the upstream's own (a named `ping`, say,
        // whose name the parser drops) carries nothing a chunk could, and
        // has no `choices` for a client to read. It shows the upstream is
        // alive.
        if !chunk.contains_key("choices") && !chunk.contains_key("usage") {
            return Read::Keepalive;
        }
        if let Some(id) = chunk.get("id").and_then(Value::as_str) {
            if self.id.is_none() {
                self.id = Some(id.to_string());
            }
        }
        if self.created.is_none() {
            self.created = chunk.get("created").cloned();
        }
        if let Some(usage) = Usage::from_json(chunk.get("usage")) {
            self.usage = Some(usage);
        }
        if let Some(Value::Array(choices)) = chunk.get_mut("choices") {
            for choice in choices.iter_mut() {
                self.inspect_choice(choice);
            }
        }
        chunk.insert("model".into(), Value::String(self.public_model.to_string()));
        Read::Chunk(chunk)
    }

    fn frame_chunk(&self, mut chunk: Map<String, Value>) -> Step {
        if !self.client_wants_usage {
            let has_choices =
                matches!(chunk.get("choices"), Some(Value::Array(c)) if !c.is_empty());
            if !has_choices && chunk.contains_key("usage") {
                return Step::Skip;
            }
            chunk.remove("usage");
        }
        match (chunk.remove("usage"), self.usage) {
            (Some(usage @ Value::Object(_)), Some(counted)) => {
                let cost = usd_string(self.pricing.cost(&counted));
                Step::Send(frame_with_usage(chunk, &usage, &cost))
            }
            (Some(other), _) => {
                chunk.insert("usage".into(), other);
                Step::Send(frame(&Value::Object(chunk)))
            }
            (None, _) => Step::Send(frame(&Value::Object(chunk))),
        }
    }

    fn inspect_choice(&mut self, choice: &mut Value) {
        if let Some(delta) = choice.get("delta") {
            self.delivered.add_choice(delta);
        }
        let slot = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
        // The index comes from the upstream: never let it size an allocation.
        let Some(slot) = usize::try_from(slot).ok().filter(|s| *s < MAX_CHOICES) else {
            return;
        };
        self.choices |= 1 << slot;
        if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
            self.finished |= 1 << slot;
        }
        let Some(Value::Array(calls)) = choice.pointer_mut("/delta/tool_calls") else {
            return;
        };
        if self.tool_calls.len() <= slot {
            self.tool_calls.resize_with(slot + 1, ToolCalls::default);
        }
        for call in calls.iter_mut().filter_map(Value::as_object_mut) {
            self.tool_calls[slot].normalize(call);
        }
    }

    /// The upstream closed its stream: fine only if the answer had
    /// finished, every choice of it (`n` > 1 streams them side by side).
    pub fn eof(&self) -> Step {
        if self.finished != 0 && self.finished == self.choices {
            Step::Done
        } else {
            Step::Fail(upstream_error(
                &self.provider,
                ProviderError::Transport("the stream ended before the answer finished".into()),
            ))
        }
    }

    /// The last event of a failed stream: a chunk with `finish_reason:
    /// "error"` that carries the error and the request id.
    pub fn error_frame(&self, error: &GatewayError, request_id: &str) -> Bytes {
        let id = self
            .id
            .clone()
            .unwrap_or_else(|| format!("chatcmpl-{request_id}"));
        let created = self.created.clone().unwrap_or(json!(0));
        error_chunk(&id, &created, &self.public_model, error, request_id)
    }
}

/// The last event of a failed Chat Completions stream: a chunk with
/// `finish_reason: "error"` that carries the error and the request id.
pub fn error_chunk(
    id: &str,
    created: &Value,
    model: &str,
    error: &GatewayError,
    request_id: &str,
) -> Bytes {
    frame(&json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}],
        "error": error.error_object(request_id),
        "reqId": request_id,
    }))
}

/// What one upstream event became, before it is framed.
#[derive(Debug)]
pub enum Read {
    /// A chunk for the client (already carrying the public model id).
    Chunk(Map<String, Value>),
    /// The upstream's keep-alive.
    Keepalive,
    /// `[DONE]`.
    Done,
    Fail(GatewayError),
}

/// Turns one API's upstream events into the client's frames: Chat
/// Completions chunks (`ChunkRelay`), or Responses events, translated or
/// native (`responses::relay`). `relay` and the gateway's hold-until-content
/// loop drive any of them.
pub trait EventRelay: Send + 'static {
    fn provider(&self) -> &str;
    fn on_event(&mut self, data: &str) -> Step;
    /// The upstream closed its stream.
    fn on_eof(&mut self) -> Step;
    /// Whether real content (or the answer's end) has been seen: from then
    /// on the answer is committed.
    fn has_content(&self) -> bool;
    fn usage(&self) -> Option<Usage>;
    /// Completion tokens delivered so far, estimated from the text.
    fn delivered_tokens(&self) -> u64;
    /// The last frames of the stream: after success (`failure` is None),
    /// or the error event of a failure.
    fn end<'a>(
        &'a mut self,
        failure: Option<&'a GatewayError>,
        request_id: &'a str,
    ) -> BoxFuture<'a, Bytes>;
}

impl EventRelay for ChunkRelay {
    fn provider(&self) -> &str {
        &self.provider
    }

    fn on_event(&mut self, data: &str) -> Step {
        match self.read(data) {
            Read::Chunk(chunk) => self.frame_chunk(chunk),
            Read::Keepalive => Step::Send(Bytes::from_static(KEEPALIVE_FRAME)),
            Read::Done => Step::Done,
            Read::Fail(e) => Step::Fail(e),
        }
    }

    fn on_eof(&mut self) -> Step {
        self.eof()
    }

    fn has_content(&self) -> bool {
        ChunkRelay::has_content(self)
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn delivered_tokens(&self) -> u64 {
        self.delivered.tokens()
    }

    fn end<'a>(
        &'a mut self,
        failure: Option<&'a GatewayError>,
        request_id: &'a str,
    ) -> BoxFuture<'a, Bytes> {
        let frame = match failure {
            None => Bytes::from_static(DONE_FRAME),
            Some(error) => self.error_frame(error, request_id),
        };
        futures::future::ready(frame).boxed()
    }
}

/// A chunk frame whose `usage` (last) carries `cost`, written as an exact
/// decimal rather than through a float.
fn frame_with_usage(chunk: Map<String, Value>, usage: &Value, cost: &str) -> Bytes {
    let usage = serde_json::to_vec(usage).expect("a JSON value always serializes");
    let chunk = serde_json::to_vec(&chunk).expect("a JSON value always serializes");
    let with_cost = RawObject::parse(&usage)
        .expect("serialized from an object")
        .to_vec_with(&[("cost", cost)]);
    let with_cost = std::str::from_utf8(&with_cost).expect("JSON is UTF-8");
    let body = RawObject::parse(&chunk)
        .expect("serialized from an object")
        .to_vec_with(&[("usage", with_cost)]);
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\n\n");
    out.into()
}

pub fn frame(value: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut out, value).expect("a JSON value always serializes");
    out.extend_from_slice(b"\n\n");
    out.into()
}

/// The last frame of a relayed stream, once the charge is settled: the
/// closing frames after success, or the error event of a failure.
async fn close<R: EventRelay>(
    mut relay: R,
    mut charge: Charge,
    step: Step,
    ctx: RequestContext,
) -> Bytes {
    let usage = relay.usage();
    charge.set_usage(usage);
    charge.set_delivered(relay.delivered_tokens());
    let failure = match step {
        Step::Fail(error) => Some(error),
        _ => None,
    };
    let (outcome, code) = match &failure {
        Some(error) => {
            tracing::warn!(request_id = %ctx.request_id, code = error.code, detail = ?error.detail, "stream failed: {}", error.message);
            (Outcome::Failed(error.code), error.code)
        }
        None => (Outcome::Completed, "ok"),
    };
    ctx.record.update(|r| {
        r.usage = usage;
        r.outcome = outcome;
    });
    charge.finish(200, code, None).await;
    relay.end(failure.as_ref(), &ctx.request_id).await
}

/// Relays the rest of an upstream stream after its first frames (held
/// until the first content) were sent.
/// Ends with `[DONE]` on success, or with one error event on failure; the
/// charge is settled before that last frame goes out. If the client leaves
/// first, dropping the stream drops the charge, which settles from what
/// had been delivered.
pub fn relay<R: EventRelay>(
    mut relay: R,
    first_frames: Bytes,
    mut events: EventStream,
    limits: StreamLimits,
    ctx: RequestContext,
    mut charge: Charge,
) -> BoxStream<'static, Bytes> {
    async_stream::stream! {
        charge.set_usage(relay.usage());
        charge.set_delivered(relay.delivered_tokens());
        yield first_frames;
        let deadline = Instant::now() + limits.max_duration;
        let mut last_event = Instant::now();
        let mut last_write = last_event;
        let step = loop {
            let idle_at = last_event + limits.idle;
            let wake = (last_write + limits.keepalive).min(idle_at).min(deadline);
            tokio::select! {
                biased;
                event = events.next() => {
                    last_event = Instant::now();
                    // Checked here too: while events keep coming, the
                    // timer's branch may never run.
                    if last_event >= deadline {
                        break too_long(limits.max_duration);
                    }
                    let step = match event {
                        Some(Ok(data)) => relay.on_event(&data),
                        Some(Err(e)) => Step::Fail(upstream_error(relay.provider(), e)),
                        None => relay.on_eof(),
                    };
                    match step {
                        Step::Send(bytes) => {
                            charge.set_usage(relay.usage());
                            charge.set_delivered(relay.delivered_tokens());
                            last_write = last_event;
                            yield bytes;
                        }
                        Step::Skip => charge.set_usage(relay.usage()),
                        done_or_failed => break done_or_failed,
                    }
                }
                _ = sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break too_long(limits.max_duration);
                    }
                    if now >= idle_at {
                        break Step::Fail(upstream_error(
                            relay.provider(),
                            ProviderError::Timeout(format!("no stream event for {:?}", limits.idle)),
                        ));
                    }
                    last_write = now;
                    yield Bytes::from_static(KEEPALIVE_FRAME);
                }
            }
        };
        // Stop reading upstream before the last frame goes out.
        drop(events);
        // Boxed: the settlement's state would otherwise take room in every
        // open stream for the whole of its life.
        yield Box::pin(close(relay, charge, step, ctx)).await;
    }
    .boxed()
}

/// How a stream that reached `max_stream_duration` ends.
fn too_long(max_duration: Duration) -> Step {
    Step::Fail(GatewayError::unavailable(
        "stream_too_long",
        format!("The stream reached the gateway's limit of {max_duration:?} and was ended."),
    ))
}

/// A stream whose upstream finished (`[DONE]`) before any content: the
/// frames it did send (if any), then the relay's closing frames.
pub fn finished<R: EventRelay>(
    relay: R,
    frames: Bytes,
    ctx: RequestContext,
    charge: Charge,
) -> BoxStream<'static, Bytes> {
    async_stream::stream! {
        if !frames.is_empty() {
            yield frames;
        }
        // Nothing was delivered before the end, so `close` settles what
        // the usage says, as for any stream that ends well.
        yield close(relay, charge, Step::Done, ctx).await;
    }
    .boxed()
}

/// A finished answer sent as a stream (a searching request's): every frame
/// but the last, then the settlement (and the Responses object stored),
/// then the last frame.
pub fn replay(
    mut frames: Vec<Bytes>,
    ctx: RequestContext,
    charge: Charge,
    saver: Option<(super::responses::Saver, String, Value)>,
) -> BoxStream<'static, Bytes> {
    async_stream::stream! {
        let last = frames.pop();
        for frame in frames {
            yield frame;
        }
        ctx.record.update(|r| r.outcome = Outcome::Completed);
        charge.finish(200, "ok", None).await;
        if let Some((saver, id, response)) = saver {
            saver.save(&id, &response).await;
        }
        if let Some(last) = last {
            yield last;
        }
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(step: Step) -> Value {
        match step {
            Step::Send(b) => {
                let text = std::str::from_utf8(&b).unwrap();
                serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap()
            }
            other => panic!("expected Send, got {other:?}"),
        }
    }

    #[test]
    fn rewrites_model_and_drops_unrequested_usage() {
        let mut r = ChunkRelay::new("up", "up/public", false);
        let out = payload(r.on_event(r#"{"id":"c1","model":"internal","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}"#));
        assert_eq!(out["model"], "up/public");
        assert!(out.get("usage").is_none());
        let usage = r#"{"id":"c1","model":"internal","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":0}}"#;
        assert!(matches!(r.on_event(usage), Step::Skip));
        assert_eq!(
            r.usage(),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 0,
                cached_tokens: 0
            })
        );

        let mut wants = ChunkRelay::new("up", "up/public", true);
        assert_eq!(payload(wants.on_event(usage))["usage"]["prompt_tokens"], 3);
    }

    #[test]
    fn eof_is_a_failure_unless_the_answer_finished() {
        let mut r = ChunkRelay::new("up", "up/m", false);
        r.on_event(r#"{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#);
        assert!(matches!(r.on_eof(), Step::Fail(_)));
        r.on_event(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#);
        assert!(matches!(r.on_eof(), Step::Done));
        assert!(matches!(r.on_event("[DONE]"), Step::Done));
    }

    #[test]
    fn malformed_and_error_events_fail_the_stream() {
        let mut r = ChunkRelay::new("up", "up/m", false);
        assert!(
            matches!(r.on_event("{not json"), Step::Fail(e) if e.code == "provider_invalid_response")
        );
        match r.on_event(r#"{"error":{"message":"overloaded"}}"#) {
            Step::Fail(e) => assert!(e.message.contains("overloaded"), "{}", e.message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tool_call_indexes_become_zero_based_and_contiguous() {
        let mut r = ChunkRelay::new("up", "up/m", false);
        let deltas = [
            // An upstream that counts from 1 and omits `type`.
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"a","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{}"}}]}}]}"#,
            // An upstream that sends no index at all.
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"b","type":"function","function":{"name":"g","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":"{}"}}]}}]}"#,
        ];
        let calls: Vec<Value> = deltas
            .iter()
            .map(|d| payload(r.on_event(d))["choices"][0]["delta"]["tool_calls"][0].clone())
            .collect();
        let indexes: Vec<u64> = calls.iter().map(|c| c["index"].as_u64().unwrap()).collect();
        assert_eq!(indexes, [0, 0, 1, 1]);
        assert_eq!(calls[0]["type"], "function");
        assert!(
            calls[1].get("type").is_none(),
            "only a call's first delta gets type"
        );
    }

    #[test]
    fn a_new_call_at_a_reused_upstream_index_gets_an_index_of_its_own() {
        let mut r = ChunkRelay::new("up", "up/m", false);
        let deltas = [
            // An upstream that numbers each chunk's calls from 0.
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"a","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_2","type":null,"function":{"name":"b","arguments":""}}]}}]}"#,
            // The same id repeated on a later delta continues that call;
            // an empty id names no call.
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_2","function":{"arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"","function":{"arguments":" "}}]}}]}"#,
            // No index: an id repeated on every delta, then a null id.
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_3","function":{"name":"c","arguments":"{"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_3","function":{"arguments":"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"id":null,"function":{"arguments":""}}]}}]}"#,
        ];
        let calls: Vec<Value> = deltas
            .iter()
            .map(|d| payload(r.on_event(d))["choices"][0]["delta"]["tool_calls"][0].clone())
            .collect();
        let indexes: Vec<u64> = calls.iter().map(|c| c["index"].as_u64().unwrap()).collect();
        assert_eq!(indexes, [0, 1, 1, 1, 2, 2, 2]);
        assert_eq!(calls[1]["type"], "function", "a null type is filled in");
        assert!(calls[2].get("type").is_none());
    }

    #[test]
    fn a_stream_of_two_choices_ends_well_only_when_both_finished() {
        let first = r#"{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null},{"index":1,"delta":{"content":"b"},"finish_reason":null}]}"#;
        let one_done = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        let both_done = r#"{"choices":[{"index":1,"delta":{},"finish_reason":"stop"}]}"#;
        let mut r = ChunkRelay::new("up", "up/m", false);
        r.on_event(first);
        r.on_event(one_done);
        assert!(r.has_content());
        assert!(matches!(r.eof(), Step::Fail(_)), "choice 1 was cut");
        r.on_event(both_done);
        assert!(matches!(r.eof(), Step::Done));
    }

    #[test]
    fn an_event_that_is_not_a_chunk_is_not_forwarded_as_one() {
        let mut r = ChunkRelay::new("up", "up/m", false);
        // `event: ping` with `data: {"type":"ping"}`.
        match r.on_event(r#"{"type":"ping"}"#) {
            Step::Send(frame) => assert_eq!(&frame[..], KEEPALIVE_FRAME),
            other => panic!("{other:?}"),
        }
        assert!(!r.has_content());
    }

    #[test]
    fn a_huge_choice_index_from_the_upstream_allocates_nothing() {
        let mut r = ChunkRelay::new("up", "up/m", false);
        let chunk = r#"{"choices":[{"index":1000000000000,"delta":{"tool_calls":[{"index":0,"id":"a"}]}}]}"#;
        assert!(matches!(r.on_event(chunk), Step::Send(_)));
        assert!(r.tool_calls.is_empty());
    }

    #[test]
    fn error_frame_carries_the_request_id() {
        let mut r = ChunkRelay::new("up", "up/m", false);
        r.on_event(
            r#"{"id":"chatcmpl-9","created":5,"choices":[{"index":0,"delta":{"content":"a"}}]}"#,
        );
        let err = GatewayError::unavailable("provider_timeout", "late");
        let f = r.error_frame(&err, "req_1");
        let v: Value = serde_json::from_str(
            std::str::from_utf8(&f)
                .unwrap()
                .strip_prefix("data: ")
                .unwrap()
                .trim(),
        )
        .unwrap();
        assert_eq!(v["id"], "chatcmpl-9");
        assert_eq!(v["reqId"], "req_1");
        assert_eq!(v["error"]["reqId"], "req_1");
        assert_eq!(v["choices"][0]["finish_reason"], "error");
        assert_eq!(
            v,
            json!({"id":"chatcmpl-9","object":"chat.completion.chunk","created":5,"model":"up/m",
            "choices":[{"index":0,"delta":{},"finish_reason":"error"}],
            "error":{"message":"late","type":"service_unavailable","code":"provider_timeout","param":null,"reqId":"req_1"},
            "reqId":"req_1"})
        );
    }
}
