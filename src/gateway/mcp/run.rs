//! The rounds of a request with MCP tools (see `super`): the servers
//! resolved for the key, their tools listed and offered, the model called
//! round by round, and each call it makes run on its server.

use std::collections::HashSet;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::{
    fenced, function_name, new_id, shape, unique_name, Decision, Item, McpRequest, Progress,
    ToolSpec,
};
use crate::accounts::model_allowed;
use crate::billing::Charge;
use crate::config::usd_string;
use crate::config::McpConfig;
use crate::gateway::error::{ErrorKind, GatewayError};
use crate::gateway::finished::keep_calls;
use crate::gateway::record::Outcome;
use crate::gateway::record::{RequestContext, Usage};
use crate::gateway::request::ChatRequest;
use crate::gateway::router::Candidate;
use crate::gateway::Gateway;
use crate::gateway::Reply;
use crate::mcp::{ClientLimits, Guard, McpClient, McpError, McpServer};
use crate::store::KeyRecord;

/// A server the operator registered, its header values read from the
/// environment.
pub struct Registered {
    pub label: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Headers whose variables were unset when the gateway started
    /// (name, variable).
    pub missing: Vec<(String, String)>,
    pub keys: Vec<String>,
}

/// What the gateway needs to run MCP tools.
pub struct McpSetup {
    pub client: McpClient,
    pub config: McpConfig,
    pub registered: Vec<Registered>,
}

impl McpSetup {
    /// The client and the registered servers; `env` looks up the header
    /// variables.
    pub fn build(config: &McpConfig, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let guard = Guard {
            allow_private: config.allow_private,
            allowed_hosts: config.allowed_hosts.clone(),
            ..Guard::default()
        };
        let registered = config
            .servers
            .iter()
            .map(|s| {
                let mut headers = Vec::new();
                let mut missing = Vec::new();
                for (name, var) in &s.headers {
                    match env(var) {
                        Some(value) => headers.push((name.clone(), value)),
                        None => missing.push((name.clone(), var.clone())),
                    }
                }
                if !missing.is_empty() {
                    let variables: Vec<&str> = missing.iter().map(|(_, v)| v.as_str()).collect();
                    tracing::warn!(server = %s.label, ?variables, "an MCP server's header variables are unset; requests for it will get 503");
                }
                Registered {
                    label: s.label.clone(),
                    url: s.url.clone(),
                    headers,
                    missing,
                    keys: s.keys.clone(),
                }
            })
            .collect();
        Self {
            client: McpClient::new(
                guard,
                ClientLimits {
                    timeout: config.timeout,
                    ttl: config.cache_ttl,
                    max_response_bytes: config.max_response_bytes,
                },
            ),
            config: config.clone(),
            registered,
        }
    }

    /// The request's servers for `key`: a registered one by its label
    /// (403 if the key may not use it), any other by its URL, checked
    /// before the request holds credit or connects anywhere.
    pub async fn resolve(
        &self,
        request: McpRequest,
        key: &KeyRecord,
    ) -> Result<McpRun, GatewayError> {
        let mut servers = Vec::new();
        for (i, spec) in request.tools.into_iter().enumerate() {
            let param = format!("tools[{i}]");
            let server = match &spec.url {
                None => {
                    let Some(reg) = self.registered.iter().find(|r| r.label == spec.label) else {
                        return Err(GatewayError::bad_request(
                            "mcp_server_unknown",
                            format!("The mcp tool {:?} has no server_url, and this gateway registers no MCP server by that label. Send server_url, or use a registered label.", spec.label),
                            Some(&param),
                        ));
                    };
                    if !model_allowed(&reg.keys, &key.id) {
                        return Err(GatewayError::new(
                            ErrorKind::Forbidden,
                            "permission_denied",
                            format!("This API key may not use the MCP server {:?}. Ask the operator to add the key to the server's `keys`.", spec.label),
                        ));
                    }
                    if !reg.missing.is_empty() {
                        let variables: Vec<&str> =
                            reg.missing.iter().map(|(_, v)| v.as_str()).collect();
                        return Err(GatewayError::unavailable(
                            "mcp_server_unavailable",
                            format!("The MCP server {:?} is not usable: the gateway was started without the environment variable(s) {} its headers come from. The operator sets them and restarts.", spec.label, variables.join(", ")),
                        ));
                    }
                    // The operator's headers are not the request's to change.
                    if let Some((name, _)) = spec.headers.iter().find(|(name, _)| {
                        reg.headers
                            .iter()
                            .chain(reg.missing.iter())
                            .any(|(own, _)| own.eq_ignore_ascii_case(name))
                    }) {
                        return Err(GatewayError::bad_request(
                            "invalid_request",
                            format!("The header {name} of the MCP server {:?} is set by the gateway; leave it out of `headers`.", spec.label),
                            Some(&format!("{param}.headers")),
                        ));
                    }
                    let mut headers = reg.headers.clone();
                    headers.extend(spec.headers.iter().cloned());
                    McpServer {
                        url: reg.url.clone(),
                        authorization: spec.authorization.clone(),
                        headers,
                        trusted: true,
                    }
                }
                Some(url) => {
                    if !self.config.allow_request_servers {
                        return Err(GatewayError::new(
                            ErrorKind::Forbidden,
                            "permission_denied",
                            "This gateway lets requests use only the MCP servers its operator registered: name one by server_label, without server_url.",
                        ));
                    }
                    if let Err(e) = self.client.guard().check(url).await {
                        return Err(GatewayError::bad_request(
                            "mcp_server_refused",
                            format!("{e}. MCP servers must be public http(s) URLs."),
                            Some(&format!("{param}.server_url")),
                        ));
                    }
                    McpServer {
                        url: url.clone(),
                        authorization: spec.authorization.clone(),
                        headers: spec.headers.clone(),
                        trusted: false,
                    }
                }
            };
            servers.push((spec, server));
        }
        for d in &request.decisions {
            let label = d.request["server_label"].as_str().unwrap_or_default();
            if !servers.iter().any(|(s, _)| s.label == label) {
                return Err(GatewayError::bad_request(
                    "mcp_server_missing",
                    format!("An mcp_approval_response answers a call on the MCP server {label:?}, but the request has no mcp tool with that server_label. Send the mcp tool again with the approval."),
                    Some("tools"),
                ));
            }
        }
        Ok(McpRun {
            servers,
            decisions: request.decisions,
            max_tool_calls: request.max_tool_calls,
        })
    }

    /// The most model rounds a request may run: the configured cap, and no
    /// more than its tool calls allow.
    pub fn max_rounds(&self, run: &McpRun) -> u32 {
        let by_calls = run.max_tool_calls.map_or(u64::MAX, |n| n.saturating_add(1));
        (self.config.max_rounds as u64).min(by_calls) as u32
    }
}

/// A request's MCP servers, resolved.
pub struct McpRun {
    servers: Vec<(ToolSpec, McpServer)>,
    decisions: Vec<Decision>,
    max_tool_calls: Option<u64>,
}

impl McpRun {
    /// The approved calls that run before the first round (within
    /// `max_tool_calls`).
    pub fn approved_calls(&self) -> u64 {
        let approved = self.decisions.iter().filter(|d| d.approve).count() as u64;
        self.max_tool_calls.map_or(approved, |m| approved.min(m))
    }
}

/// What the rounds produced.
pub struct McpDone {
    /// The last round's `chat.completion`, without calls of MCP tools.
    pub completion: Value,
    pub items: Vec<Item>,
    pub tokens: Usage,
    /// Why the gateway stopped short: `max_tool_calls`, `max_rounds` or
    /// `max_cost`.
    pub incomplete: Option<&'static str>,
}

/// A function offered to the model for one server tool.
struct Offer {
    function: String,
    server: usize,
    tool: String,
}

/// The request's functions' names.
fn function_names(body: &Map<String, Value>) -> HashSet<String> {
    body.get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// The error object of a call that failed before the tool answered.
fn call_error(e: &McpError) -> Value {
    match e {
        McpError::Refused(m) => json!({"type": "http_error", "code": 403, "message": m}),
        McpError::Timeout(_) => {
            json!({"type": "mcp_protocol_error", "code": -32001, "message": e.to_string()})
        }
        McpError::Failed(m) => json!({"type": "mcp_protocol_error", "code": -32603, "message": m}),
    }
}

/// Sends progress; a listener that has gone is no reason to stop.
fn report(tx: &UnboundedSender<Progress>, p: Progress) {
    let _ = tx.send(p);
}

/// Everything one call needs to run and be reported.
struct CallJob<'a> {
    label: &'a str,
    server: &'a McpServer,
    tool: &'a str,
    arguments: String,
    approval_request_id: Option<String>,
}

impl Gateway {
    /// Runs the MCP work and model rounds of a request, reporting each item
    /// on `tx` as it starts and ends.
    /// All of it within `server.max_stream_duration` (shorter than a
    /// hold's life, so the sweeper never settles a request still running).
    pub(in crate::gateway) async fn mcp_rounds(
        &self,
        inner: &mut ChatRequest,
        run: &McpRun,
        plan: &[Candidate],
        ctx: &RequestContext,
        charge: &mut Charge,
        tx: &UnboundedSender<Progress>,
    ) -> Result<McpDone, GatewayError> {
        let limit = self.max_stream_duration;
        tokio::time::timeout(limit, self.mcp_work(inner, run, plan, ctx, charge, tx))
            .await
            .unwrap_or_else(|_| {
                Err(GatewayError::unavailable(
                    "request_too_long",
                    format!("The request's MCP calls and model rounds reached the gateway's limit of {limit:?} and were stopped."),
                ))
            })
    }

    async fn mcp_work(
        &self,
        inner: &mut ChatRequest,
        run: &McpRun,
        plan: &[Candidate],
        ctx: &RequestContext,
        charge: &mut Charge,
        tx: &UnboundedSender<Progress>,
    ) -> Result<McpDone, GatewayError> {
        let setup = &self.mcp;
        let deadline = Instant::now() + setup.config.request_timeout;
        let max_rounds = setup.max_rounds(run);
        let mut done = McpDone {
            // What the response says if no round can run: no text.
            completion: json!({"id": format!("chatcmpl-{}", ctx.request_id),
                "object": "chat.completion", "created": crate::accounts::now_ms() / 1000,
                "model": plan[0].model.id, "choices": [{"index": 0,
                "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]}),
            items: Vec::new(),
            tokens: Usage::default(),
            incomplete: None,
        };

        // 1. Each server's tools, offered as functions.
        let mut taken = function_names(inner.body());
        let mut offers: Vec<Offer> = Vec::new();
        let mut functions: Vec<Value> = Vec::new();
        for (i, (spec, server)) in run.servers.iter().enumerate() {
            let id = new_id("mcpl");
            report(
                tx,
                Progress::Listing(Item::ListTools {
                    id: id.clone(),
                    label: spec.label.clone(),
                    tools: Vec::new(),
                    error: None,
                }),
            );
            let listed = tokio::time::timeout_at(deadline, setup.client.list_tools(server))
                .await
                .unwrap_or(Err(McpError::Timeout(setup.config.request_timeout)));
            let (tools, error) = match listed {
                Ok(tools) => {
                    crate::metrics::mcp("list", "ok");
                    let allowed: Vec<_> = tools
                        .into_iter()
                        .filter(|t| spec.allowed.as_ref().is_none_or(|a| a.contains(&t.name)))
                        .collect();
                    (allowed, None)
                }
                Err(e) => {
                    crate::metrics::mcp("list", "error");
                    (Vec::new(), Some(e.to_string()))
                }
            };
            for tool in &tools {
                let name = unique_name(function_name(&spec.label, &tool.name), &mut taken);
                let description = match &tool.description {
                    Some(d) => format!("{d} (a tool of the MCP server {})", spec.label),
                    None => format!("A tool of the MCP server {}", spec.label),
                };
                functions.push(json!({"type": "function", "function": {
                    "name": name, "description": description, "parameters": tool.input_schema}}));
                offers.push(Offer {
                    function: name,
                    server: i,
                    tool: tool.name.clone(),
                });
            }
            let item = Item::ListTools {
                id,
                label: spec.label.clone(),
                tools,
                error,
            };
            report(tx, Progress::Done(item.clone()));
            done.items.push(item);
        }

        // 2. The calls the client decided on since the last response.
        let mut calls_run: u64 = 0;
        for decision in &run.decisions {
            let r = &decision.request;
            let label = r["server_label"].as_str().unwrap_or_default();
            let name = r["name"].as_str().unwrap_or_default();
            let arguments = r["arguments"].as_str().unwrap_or("{}").to_string();
            let call_id = r["id"].as_str().unwrap_or_default().to_string();
            let Some((_, server)) = run.servers.iter().find(|(s, _)| s.label == label) else {
                continue;
            };
            let capped = run.max_tool_calls.is_some_and(|m| calls_run >= m);
            let answer = if decision.approve && capped {
                "This approved call was not run: the request's max_tool_calls was reached."
                    .to_string()
            } else if decision.approve {
                calls_run += 1;
                let job = CallJob {
                    label,
                    server,
                    tool: name,
                    arguments: arguments.clone(),
                    approval_request_id: Some(call_id.clone()),
                };
                self.mcp_call(job, deadline, charge, tx, &mut done).await
            } else {
                match &decision.reason {
                    Some(reason) => format!("The user did not approve this call: {reason}"),
                    None => "The user did not approve this call.".to_string(),
                }
            };
            if let Some(Value::Array(messages)) = inner.body_mut().get_mut("messages") {
                messages.push(json!({"role": "assistant", "content": null, "tool_calls": [{"id": call_id, "type": "function",
                    "function": {"name": function_name(label, name), "arguments": arguments}}]}));
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": answer}));
            }
        }

        // 3. The rounds.
        let client_tools: Vec<Value> = match inner.body().get("tools") {
            Some(Value::Array(t)) => t.clone(),
            _ => Vec::new(),
        };
        let mut choice = inner.body().get("tool_choice").cloned();
        let output_max = super::super::max_output_tokens(inner.max_tokens, &plan[0].model);
        let mut rounds = 0;
        loop {
            let mut tools = client_tools.clone();
            tools.extend(functions.iter().cloned());
            inner.offer(tools, choice.as_ref());
            // Every round must fit in what is left of the hold, tools
            // offered: the servers may list more than the hold foresaw,
            // and a call may answer more.
            let prompt = crate::billing::estimate_prompt_tokens(inner.body());
            if !charge.can_afford(prompt, output_max) {
                done.incomplete = Some("max_cost");
                return Ok(done);
            }
            let completion = self
                .round(inner, plan, ctx, charge, &mut done.tokens)
                .await?;
            rounds += 1;
            // A forced tool ("required", or a named one) forces the first
            // round only: later ones may answer.
            if choice
                .as_ref()
                .is_some_and(|c| *c != "none" && *c != "auto")
            {
                choice = Some(json!("auto"));
            }
            let message = completion["choices"][0]["message"].clone();
            let calls: Vec<Value> = message
                .get("tool_calls")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let offer_of = |call: &Value| {
                let name = call.pointer("/function/name").and_then(Value::as_str);
                offers.iter().find(|o| Some(o.function.as_str()) == name)
            };
            let (ours, theirs): (Vec<Value>, Vec<Value>) =
                calls.into_iter().partition(|c| offer_of(c).is_some());
            if ours.is_empty() || !theirs.is_empty() {
                // The answer, or calls of the client's own tools for it to
                // run (the MCP calls of that turn are left for later).
                done.completion = keep_calls(completion, theirs);
                return Ok(done);
            }
            if rounds >= max_rounds {
                done.incomplete = Some(if run.max_tool_calls.is_some_and(|m| calls_run >= m) {
                    "max_tool_calls"
                } else {
                    "max_rounds"
                });
                done.completion = keep_calls(completion, Vec::new());
                return Ok(done);
            }
            let mut turn = json!({"role": "assistant", "content": message.get("content").cloned().unwrap_or(Value::Null), "tool_calls": ours});
            let mut answers = Vec::new();
            let mut paused = false;
            for call in ours.iter() {
                let offer = offer_of(call).expect("partitioned on it");
                let (spec, server) = &run.servers[offer.server];
                let arguments = call
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("{}")
                    .to_string();
                if spec.approval.needed(&offer.tool) {
                    let item = Item::ApprovalRequest {
                        id: new_id("mcpr"),
                        label: spec.label.clone(),
                        name: offer.tool.clone(),
                        arguments,
                    };
                    report(tx, Progress::Done(item.clone()));
                    done.items.push(item);
                    paused = true;
                    continue;
                }
                if run.max_tool_calls.is_some_and(|m| calls_run >= m) {
                    done.incomplete = Some("max_tool_calls");
                    done.completion = keep_calls(completion, Vec::new());
                    return Ok(done);
                }
                calls_run += 1;
                let job = CallJob {
                    label: &spec.label,
                    server,
                    tool: &offer.tool,
                    arguments,
                    approval_request_id: None,
                };
                let text = self.mcp_call(job, deadline, charge, tx, &mut done).await;
                answers.push(json!({"role": "tool", "tool_call_id": call.get("id").cloned().unwrap_or(Value::Null), "content": text}));
            }
            if paused {
                // The response ends with its approval requests; the client
                // answers them in the next request.
                done.completion = keep_calls(completion, Vec::new());
                return Ok(done);
            }
            if turn["content"].is_null() {
                turn["content"] = json!("");
            }
            if let Some(Value::Array(messages)) = inner.body_mut().get_mut("messages") {
                messages.push(turn);
                messages.extend(answers);
            }
            // What the response says if no later round can run.
            done.completion = keep_calls(completion, Vec::new());
        }
    }

    /// Runs one tool call (an `mcp_call` item, reported as it starts and
    /// ends) and returns what the model is told.
    async fn mcp_call(
        &self,
        job: CallJob<'_>,
        deadline: Instant,
        charge: &mut Charge,
        tx: &UnboundedSender<Progress>,
        done: &mut McpDone,
    ) -> String {
        let setup = &self.mcp;
        let max_chars = setup.config.max_output_chars;
        let mut output = None;
        let mut error = None;
        let id = new_id("mcp");
        let item = |output: Option<String>, error: Option<Value>| Item::Call {
            id: id.clone(),
            label: job.label.to_string(),
            name: job.tool.to_string(),
            arguments: job.arguments.clone(),
            output,
            error,
            approval_request_id: job.approval_request_id.clone(),
        };
        report(tx, Progress::Calling(item(None, None)));
        let text = match serde_json::from_str::<Value>(&job.arguments) {
            Ok(Value::Object(arguments)) => {
                charge.add_mcp_call();
                let called = tokio::time::timeout_at(
                    deadline,
                    setup.client.call(job.server, job.tool, arguments),
                )
                .await
                .unwrap_or(Err(McpError::Timeout(setup.config.request_timeout)));
                match called {
                    Ok(out) if !out.is_error => {
                        crate::metrics::mcp("call", "ok");
                        let text = fenced(job.label, job.tool, &out.text, max_chars);
                        output = Some(out.text);
                        text
                    }
                    Ok(out) => {
                        crate::metrics::mcp("call", "error");
                        error = Some(
                            json!({"type": "mcp_tool_execution_error", "content": out.content}),
                        );
                        format!(
                            "The tool reported an error.\n{}",
                            fenced(job.label, job.tool, &out.text, max_chars)
                        )
                    }
                    Err(e) => {
                        crate::metrics::mcp("call", "error");
                        error = Some(call_error(&e));
                        // The server wrote the error's text: data, fenced
                        // and cut like any output.
                        format!(
                            "The tool call failed.\n{}",
                            fenced(job.label, job.tool, &e.to_string(), max_chars)
                        )
                    }
                }
            }
            _ => {
                error = Some(json!({"type": "mcp_protocol_error", "code": -32602,
                    "message": "the arguments are not a JSON object"}));
                "The tool was not called: its arguments must be a JSON object.".to_string()
            }
        };
        let finished = item(output, error);
        report(tx, Progress::Done(finished.clone()));
        done.items.push(finished);
        text
    }
}

impl Gateway {
    /// A request with MCP tools: the rounds, then the answer in its API's
    /// shape. A stream starts at once and shows the work as it happens.
    pub(in crate::gateway) async fn mcp_reply(
        &self,
        request: &ChatRequest,
        run: McpRun,
        plan: &[Candidate],
        ctx: &RequestContext,
        charge: &mut Charge,
    ) -> Result<Reply, GatewayError> {
        // A continuation may hold nothing but the approved calls, whose
        // messages the rounds add.
        let mut inner = request.for_rounds(run.decisions.is_empty())?;
        if request.stream {
            let gateway = self
                .me
                .upgrade()
                .ok_or_else(|| GatewayError::internal("the gateway is shutting down"))?;
            let live = shape::Live {
                gateway,
                inner,
                run,
                plan: plan.to_vec(),
                ctx: ctx.clone(),
                job: request.responses.clone(),
                wants_usage: request.client_wants_usage,
                keepalive: self.keepalive,
            };
            return Ok(Reply::Stream(Box::new(move |charge| {
                shape::live(live, charge)
            })));
        }
        // Nobody follows the progress of a complete answer.
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let done = self
            .mcp_rounds(&mut inner, &run, plan, ctx, charge, &tx)
            .await?;
        ctx.record.update(|r| {
            r.usage = Some(done.tokens);
            r.outcome = Outcome::Completed;
        });
        let cost = usd_string(charge.cost_so_far());
        let body = match &request.responses {
            None => shape::chat_body(&done, &cost),
            Some(job) => shape::response(&done, job, &plan[0].model.id),
        };
        let bytes = serde_json::to_vec(&body).expect("JSON serializes");
        Ok(Reply::Complete(bytes.into()))
    }
}
