//! What the MCP rounds produced, in each API's shape: a Chat Completions
//! body (the items in the `mcp_output` extension field) or a Response
//! (the items in `output`), complete or streamed as the work happens.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Value};

use super::run::{McpDone, McpRun};
use super::{Item, Progress};
use crate::billing::Charge;
use crate::config::usd_string;
use crate::gateway::error::GatewayError;
use crate::gateway::finished::{chat_frames, chat_usage, response_events};
use crate::gateway::record::{Outcome, RequestContext};
use crate::gateway::relay::{error_chunk, frame, KEEPALIVE_FRAME};
use crate::gateway::request::ChatRequest;
use crate::gateway::responses::stream::{frames, Event, ResponseStream};
use crate::gateway::responses::Job;
use crate::gateway::router::Candidate;
use crate::gateway::Gateway;

/// The items as JSON.
fn items_json(items: &[Item]) -> Value {
    Value::Array(items.iter().map(Item::to_json).collect())
}

/// The Chat Completions usage of every round, with its cost.
fn usage_with_cost(done: &McpDone, cost: &str) -> Value {
    let mut usage = chat_usage(&done.tokens);
    if let Ok(cost) = serde_json::from_str::<Value>(cost) {
        usage["cost"] = cost;
    }
    usage
}

/// The complete Chat Completions body: the final answer, the usage of every
/// round, and the MCP items in `mcp_output` (with `mcp_incomplete` when
/// the gateway stopped short).
pub fn chat_body(done: &McpDone, cost: &str) -> Value {
    let mut c = done.completion.clone();
    c["usage"] = usage_with_cost(done, cost);
    c["mcp_output"] = items_json(&done.items);
    if let Some(reason) = done.incomplete {
        c["mcp_incomplete"] = json!(reason);
    }
    c
}

/// The final answer's events on a Response stream that already carries
/// the MCP items, then its end.
fn answer_events(stream: &mut ResponseStream, done: &McpDone) -> (Vec<Event>, Value) {
    let mut events = response_events(
        stream,
        &done.completion,
        Vec::new(),
        &chat_usage(&done.tokens),
    );
    if let Some(reason) = done.incomplete {
        stream.set_incomplete(reason);
    }
    let (last, response) = stream.finish();
    events.extend(last);
    (events, response)
}

/// The complete Response object.
pub fn response(done: &McpDone, job: &Job, model: &str) -> Value {
    let mut stream = ResponseStream::new(&job.meta(model));
    stream.start();
    for item in &done.items {
        stream.mcp_done(&item.to_json());
    }
    answer_events(&mut stream, done).1
}

/// A stream in the making: Chat Completions chunks or Responses events.
enum Shaper {
    Chat {
        id: String,
        created: u64,
        model: String,
        wants_usage: bool,
    },
    Responses {
        stream: Box<ResponseStream>,
    },
}

impl Shaper {
    fn progress(&mut self, p: Progress) -> Option<Bytes> {
        match self {
            Shaper::Chat {
                id, created, model, ..
            } => match p {
                Progress::Done(item) => {
                    Some(frame(&json!({"id": id, "object": "chat.completion.chunk",
                    "created": created, "model": model, "choices": [], "mcp_output": [item.to_json()]})))
                }
                Progress::Listing(_) | Progress::Calling(_) => None,
            },
            Shaper::Responses { stream, .. } => {
                let events = match p {
                    Progress::Listing(item) | Progress::Calling(item) => {
                        stream.mcp_started(&item.to_json())
                    }
                    Progress::Done(item) => stream.mcp_done(&item.to_json()),
                };
                Some(frames(&events))
            }
        }
    }

    /// The frames of the answer, all but the last, and the last; the
    /// Response to store, for the Responses API.
    fn answer(&mut self, done: &McpDone, cost: &str) -> (Vec<Bytes>, Option<Value>) {
        match self {
            Shaper::Chat {
                id,
                created,
                wants_usage,
                model,
            } => {
                let mut completion = done.completion.clone();
                completion["id"] = json!(id);
                completion["created"] = json!(created);
                if completion["model"].is_null() {
                    completion["model"] = json!(model);
                }
                let mut out = Vec::new();
                if let Some(reason) = done.incomplete {
                    out.push(frame(
                        &json!({"id": id, "object": "chat.completion.chunk", "created": created,
                        "model": completion["model"], "choices": [], "mcp_incomplete": reason}),
                    ));
                }
                let usage = wants_usage.then(|| usage_with_cost(done, cost));
                out.extend(chat_frames(&completion, None, usage));
                (out, None)
            }
            Shaper::Responses { stream, .. } => {
                let (events, response) = answer_events(stream, done);
                let out = events
                    .iter()
                    .map(|e| frames(std::slice::from_ref(e)))
                    .collect();
                (out, Some(response))
            }
        }
    }

    fn failure(&mut self, error: &GatewayError, request_id: &str) -> Bytes {
        match self {
            Shaper::Chat {
                id, created, model, ..
            } => error_chunk(id, &json!(created), model, error, request_id),
            Shaper::Responses { stream, .. } => {
                let (events, _) = stream.fail(&error.error_object(request_id), request_id);
                frames(&events)
            }
        }
    }
}

/// Everything the live stream owns.
pub(in crate::gateway) struct Live {
    pub gateway: Arc<Gateway>,
    pub inner: ChatRequest,
    pub run: McpRun,
    pub plan: Vec<Candidate>,
    pub ctx: RequestContext,
    /// The Responses request, or `None` for Chat Completions.
    pub job: Option<Arc<Job>>,
    pub wants_usage: bool,
    pub keepalive: Duration,
}

/// The stream of a request with MCP tools: each item as it starts and
/// ends (Responses events, or Chat Completions chunks carrying
/// `mcp_output`), keep-alive comments while a server or model works, then
/// the answer. The charge settles (and a Response is stored) before the
/// last frame; a failure ends the stream with an error event.
pub(in crate::gateway) fn live(live: Live, mut charge: Charge) -> BoxStream<'static, Bytes> {
    let Live {
        gateway,
        mut inner,
        run,
        plan,
        ctx,
        job,
        wants_usage,
        keepalive,
    } = live;
    let public_model = plan[0].model.id.clone();
    let created = crate::accounts::now_ms() as u64 / 1000;
    let mut shaper = match &job {
        Some(job) => Shaper::Responses {
            stream: Box::new(ResponseStream::new(&job.meta(&public_model))),
        },
        None => Shaper::Chat {
            id: format!("chatcmpl-{}", ctx.request_id),
            created,
            model: public_model.clone(),
            wants_usage,
        },
    };
    async_stream::stream! {
        if let Shaper::Responses { stream, .. } = &mut shaper {
            yield frames(&stream.start());
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let result = {
            let work = gateway.mcp_rounds(&mut inner, &run, &plan, &ctx, &mut charge, &tx);
            tokio::pin!(work);
            let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
            loop {
                tokio::select! {
                    biased;
                    Some(p) = rx.recv() => {
                        if let Some(bytes) = shaper.progress(p) {
                            beat.reset();
                            yield bytes;
                        }
                    }
                    result = &mut work => break result,
                    _ = beat.tick() => yield Bytes::from_static(KEEPALIVE_FRAME),
                }
            }
        };
        while let Ok(p) = rx.try_recv() {
            if let Some(bytes) = shaper.progress(p) {
                yield bytes;
            }
        }
        match result {
            Ok(done) => {
                ctx.record.update(|r| { r.usage = Some(done.tokens); r.outcome = Outcome::Completed; });
                let cost = usd_string(charge.cost_so_far());
                let (mut out, response) = shaper.answer(&done, &cost);
                let last = out.pop();
                for bytes in out {
                    yield bytes;
                }
                charge.finish(200, "ok", None).await;
                if let (Some(job), Some(response)) = (&job, response) {
                    if let Some(saver) = &job.saver {
                        saver.save(&job.id, &response).await;
                    }
                }
                if let Some(last) = last {
                    yield last;
                }
            }
            Err(error) => {
                ctx.record.update(|r| r.outcome = Outcome::Failed(error.code));
                tracing::warn!(request_id = %ctx.request_id, code = error.code, "MCP stream failed: {}", error.message);
                charge.finish(200, error.code, None).await;
                yield shaper.failure(&error, &ctx.request_id);
            }
        }
    }
    .boxed()
}
