//! Serving a Responses request from what one upstream attempt returned.
//!
//! - Translated (a Chat Completions provider): `TranslatedRelay` reads the
//!   chunks with `ChunkRelay` (usage, tool-call indexes, errors) and turns
//!   them into Responses events with `ResponseStream`; `translated_complete`
//!   turns a `chat.completion` into a Response object.
//! - Native (a provider with the Responses API): `NativeRelay` forwards
//!   each upstream event as it arrives, rewriting only the Response objects
//!   some events carry (the public model id, and the client's `store` and
//!   `previous_response_id`, since the gateway keeps the state);
//!   `native_complete` does the same to a complete Response.
//!
//! Either way a stream ends with `response.completed` (or `.incomplete`),
//! or with the gateway's `error` event and `response.failed`; the finished
//! response is stored before its last frame goes out, so a client may chain
//! from it as soon as it has read it.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};

use super::stream::{failure_events, frames, sse_frame, ResponseStream};
use super::translate::{skeleton, to_response};
use super::Job;
use crate::gateway::error::GatewayError;
use crate::gateway::record::Usage;
use crate::gateway::relay::{ChunkRelay, EventRelay, Read, Step, KEEPALIVE_FRAME};
use crate::gateway::upstream_error;
use crate::providers::ProviderError;

/// A Chat Completions stream served as Responses events.
pub struct TranslatedRelay {
    chat: ChunkRelay,
    events: ResponseStream,
    job: Arc<Job>,
}

impl TranslatedRelay {
    pub fn new(chat: ChunkRelay, job: Arc<Job>, public_model: &str) -> Self {
        Self {
            events: ResponseStream::new(&job.meta(public_model)),
            chat,
            job,
        }
    }

    fn opening(&mut self) -> Vec<super::stream::Event> {
        if self.events.started() {
            Vec::new()
        } else {
            self.events.start()
        }
    }
}

impl EventRelay for TranslatedRelay {
    fn provider(&self) -> &str {
        self.chat.provider()
    }

    fn on_event(&mut self, data: &str) -> Step {
        match self.chat.read(data) {
            Read::Chunk(chunk) => {
                let mut events = self.opening();
                events.extend(self.events.on_chunk(&Value::Object(chunk)));
                if events.is_empty() {
                    Step::Skip
                } else {
                    Step::Send(frames(&events))
                }
            }
            Read::Keepalive => Step::Send(Bytes::from_static(KEEPALIVE_FRAME)),
            Read::Done => Step::Done,
            Read::Fail(e) => Step::Fail(e),
        }
    }

    fn on_eof(&mut self) -> Step {
        self.chat.eof()
    }

    fn has_content(&self) -> bool {
        self.chat.has_content()
    }

    fn usage(&self) -> Option<Usage> {
        EventRelay::usage(&self.chat)
    }

    fn delivered_tokens(&self) -> u64 {
        self.chat.delivered_tokens()
    }

    fn end<'a>(
        &'a mut self,
        failure: Option<&'a GatewayError>,
        request_id: &'a str,
    ) -> BoxFuture<'a, Bytes> {
        async move {
            let mut events = self.opening();
            let response = match failure {
                None => {
                    let (last, response) = self.events.finish();
                    events.extend(last);
                    response
                }
                Some(error) => {
                    let (last, response) = self
                        .events
                        .fail(&error.error_object(request_id), request_id);
                    events.extend(last);
                    response
                }
            };
            if let Some(saver) = &self.job.saver {
                saver.save(&self.job.id, &response).await;
            }
            frames(&events)
        }
        .boxed()
    }
}

/// A complete `chat.completion` (already carrying the public model id) as
/// a Response object.
pub fn translated_complete(
    completion: &[u8],
    job: &Job,
    public_model: &str,
) -> Result<(Bytes, Value), ProviderError> {
    let completion: Value = serde_json::from_slice(completion)
        .map_err(|e| ProviderError::Decode(format!("response is not JSON: {e}")))?;
    let response = to_response(&completion, &job.meta(public_model));
    let bytes = serde_json::to_vec(&response).expect("JSON serializes");
    Ok((bytes.into(), response))
}

/// Puts what the client asked for back into a Response object that came
/// from a native provider.
fn rewrite(response: &mut Value, job: &Job, public_model: &str) {
    if let Some(r) = response.as_object_mut() {
        r.insert("id".into(), json!(job.id));
        r.insert("model".into(), json!(public_model));
        r.insert("store".into(), json!(job.saver.is_some()));
        let previous = job.request.get("previous_response_id");
        r.insert(
            "previous_response_id".into(),
            previous.cloned().unwrap_or(Value::Null),
        );
    }
}

/// Usage of a Response object.
fn usage_of(response: &Value) -> Option<Usage> {
    let usage = response.get("usage").filter(|u| u.is_object())?;
    let n = |p: &str| usage.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Some(Usage {
        prompt_tokens: n("/input_tokens"),
        completion_tokens: n("/output_tokens"),
        cached_tokens: n("/input_tokens_details/cached_tokens"),
    })
}

/// A complete Response from a native provider, rewritten for the client.
pub fn native_complete(
    body: &[u8],
    job: &Job,
    public_model: &str,
) -> Result<(Bytes, Value, Option<Usage>), ProviderError> {
    let mut response: Value = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Decode(format!("response is not JSON: {e}")))?;
    if response.get("object").and_then(Value::as_str) != Some("response") {
        let (message, _, _) = crate::providers::transport::error_fields(body);
        return Err(ProviderError::StreamError(message));
    }
    rewrite(&mut response, job, public_model);
    let usage = usage_of(&response);
    let bytes = serde_json::to_vec(&response).expect("JSON serializes");
    Ok((bytes.into(), response, usage))
}

/// A native Responses stream, forwarded event by event.
pub struct NativeRelay {
    provider: Arc<str>,
    public_model: String,
    job: Arc<Job>,
    usage: Option<Usage>,
    /// An output event has been forwarded.
    content: bool,
    /// Text delivered (bytes, pieces), to estimate tokens without usage.
    delivered: (u64, u64),
    /// The latest Response object the upstream sent (for a failure).
    latest: Option<Value>,
    /// The next `sequence_number`.
    seq: u64,
    /// The `response.completed` (or `.incomplete`) frame and its Response.
    closing: Option<(Bytes, Value)>,
}

impl NativeRelay {
    pub fn new(provider: &str, public_model: &str, job: Arc<Job>) -> Self {
        Self {
            provider: provider.into(),
            public_model: public_model.to_string(),
            job,
            usage: None,
            content: false,
            delivered: (0, 0),
            latest: None,
            seq: 0,
            closing: None,
        }
    }

    fn fail(&self, message: String) -> Step {
        Step::Fail(upstream_error(
            &self.provider,
            ProviderError::StreamError(message),
        ))
    }
}

impl EventRelay for NativeRelay {
    fn provider(&self) -> &str {
        &self.provider
    }

    fn on_event(&mut self, data: &str) -> Step {
        if data.trim() == "[DONE]" {
            return self.on_eof();
        }
        if data.is_empty() {
            return Step::Send(Bytes::from_static(KEEPALIVE_FRAME));
        }
        let Ok(Value::Object(mut event)) = serde_json::from_str::<Value>(data) else {
            return Step::Fail(upstream_error(
                &self.provider,
                ProviderError::Decode("a stream event is not a JSON object".into()),
            ));
        };
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(n) = event.get("sequence_number").and_then(Value::as_u64) {
            self.seq = self.seq.max(n + 1);
        }
        let message = |v: Option<&Value>| {
            v.and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("the upstream reported a failure")
                .to_string()
        };
        match kind.as_str() {
            "error" => {
                let m = message(event.get("error").or(Some(&Value::Object(event.clone()))));
                return self.fail(m);
            }
            "response.failed" => {
                return self.fail(message(event.get("response").and_then(|r| r.get("error"))))
            }
            _ => {}
        }
        let mut out = Vec::with_capacity(data.len() + kind.len() + 16);
        if let Some(response) = event.get_mut("response").filter(|r| r.is_object()) {
            rewrite(response, &self.job, &self.public_model);
            let response = response.clone();
            let json = serde_json::to_vec(&event).expect("JSON serializes");
            sse_frame(&mut out, &kind, &json);
            if matches!(kind.as_str(), "response.completed" | "response.incomplete") {
                self.usage = usage_of(&response);
                self.closing = Some((out.into(), response));
                return Step::Done;
            }
            self.latest = Some(response);
            return Step::Send(out.into());
        }
        // OpenAI's heartbeat on a long request, before any output: a sign
        // of life, not content (the 200 stays held), and passed on as the
        // gateway's keep-alive comment, since no SDK knows the event.
        if kind == "keepalive" {
            return Step::Send(Bytes::from_static(KEEPALIVE_FRAME));
        }
        if let Some(Value::String(delta)) = event.get("delta") {
            self.delivered.0 += delta.len() as u64;
            self.delivered.1 += 1;
        }
        self.content = true;
        sse_frame(&mut out, &kind, data.as_bytes());
        Step::Send(out.into())
    }

    fn on_eof(&mut self) -> Step {
        if self.closing.is_some() {
            Step::Done
        } else {
            Step::Fail(upstream_error(
                &self.provider,
                ProviderError::Transport("the stream ended before response.completed".into()),
            ))
        }
    }

    fn has_content(&self) -> bool {
        self.content || self.closing.is_some()
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn delivered_tokens(&self) -> u64 {
        self.delivered.1.max(self.delivered.0.div_ceil(4))
    }

    fn end<'a>(
        &'a mut self,
        failure: Option<&'a GatewayError>,
        request_id: &'a str,
    ) -> BoxFuture<'a, Bytes> {
        async move {
            let (frame, response) = match (failure, self.closing.take()) {
                (None, Some(closing)) => closing,
                (None, None) => return Bytes::new(),
                (Some(error), _) => {
                    let response = self
                        .latest
                        .take()
                        .unwrap_or_else(|| skeleton(&self.job.meta(&self.public_model), "failed"));
                    let events = failure_events(
                        &mut self.seq,
                        response,
                        &error.error_object(request_id),
                        request_id,
                    );
                    let response = events[1].data["response"].clone();
                    (frames(&events), response)
                }
            };
            if let Some(saver) = &self.job.saver {
                saver.save(&self.job.id, &response).await;
            }
            frame
        }
        .boxed()
    }
}

/// Output tokens in a Response object's text, estimated (used when it
/// reports no usage): one per 4 bytes, at least one per item.
pub fn delivered_in(response: &Value) -> u64 {
    let mut bytes = 0u64;
    let mut items = 0u64;
    for item in response
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        items += 1;
        if let Some(args) = item.get("arguments").and_then(Value::as_str) {
            bytes += args.len() as u64;
        }
        for part in item
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(text) = part.get("text").and_then(Value::as_str) {
                bytes += text.len() as u64;
            }
        }
    }
    items.max(bytes.div_ceil(4))
}
