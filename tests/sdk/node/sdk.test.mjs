// Compatibility of the official `openai` Node SDK with Mume Gateway.
//
// The gateway must already be running with tests/sdk/gateway.toml and its API
// root exported as MUME_BASE_URL (for example http://127.0.0.1:8080/api/v1);
// tests/sdk/run.sh does both. Every model used here belongs to the built-in
// mock provider, so no network access or provider key is needed.
// Run with `node --test` in this directory.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

import OpenAI from "openai";

const BASE_URL = process.env.MUME_BASE_URL;
if (!BASE_URL) {
  throw new Error("MUME_BASE_URL is not set: run the suite through tests/sdk/run.sh");
}
// There is no API-key auth yet; the SDK only insists that some key is set.
// Created by run.sh with `mume-gateway keys create`.
const API_KEY = process.env.MUME_API_KEY ?? "";
const POOR_KEY = process.env.MUME_POOR_KEY ?? "";

const ECHO = "mock/echo";
const CUT = "mock/cut";
// Public id that gateway.toml routes to the mock's "cut" model.
const SNIPPET_MODEL = "openai/gpt-4.1-mini";

const NODE_DIR = fileURLToPath(new URL(".", import.meta.url));
const SNIPPETS_DIR = fileURLToPath(new URL("../snippets/", import.meta.url));
const SNIPPET_RESOLVER = new URL("./snippet-resolve.mjs", import.meta.url).href;

const TOOLS = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "Current weather for a city.",
      parameters: {
        type: "object",
        properties: {
          city: { type: "string" },
          days: { type: "integer" },
          offset: { type: "number" },
          metric: { type: "boolean" },
        },
        required: ["city"],
      },
    },
  },
  // Never called: the mock always calls the first tool offered.
  {
    type: "function",
    function: {
      name: "get_time",
      parameters: { type: "object", properties: { zone: { type: "string" } } },
    },
  },
];

/** Arguments the mock derives from get_weather's schema for `text`. */
const weatherArgs = (text) => ({ city: text, days: 1, offset: 1, metric: true });

/** A client that never retries unless told, so errors surface on the first answer. */
function makeClient(options = {}) {
  return new OpenAI({ apiKey: API_KEY, baseURL: BASE_URL, maxRetries: 0, timeout: 30_000, ...options });
}

const client = makeClient();
const user = (text) => [{ role: "user", content: text }];

function checkUsage(usage) {
  assert.ok(usage, "usage missing");
  assert.ok(usage.prompt_tokens > 0);
  assert.ok(usage.completion_tokens > 0);
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
}

async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

const contentOf = (chunks) => chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");

/** Runs `fn`, which must reject; returns the error. */
async function rejection(fn) {
  try {
    await fn();
  } catch (err) {
    return err;
  }
  assert.fail("expected the call to throw");
}

/** Checks an HTTP error: `.error` is the envelope's error object, tied to x-request-id. */
function checkStatusError(err, status) {
  assert.ok(err instanceof OpenAI.APIError, `not an APIError: ${err}`);
  assert.equal(err.status, status);
  const body = err.error;
  assert.equal(typeof body, "object", `error body is not the error object: ${JSON.stringify(body)}`);
  for (const key of ["message", "type", "code", "param", "reqId"]) {
    assert.ok(key in body, `error object lacks ${key}: ${JSON.stringify(body)}`);
  }
  assert.equal(typeof body.message, "string");
  assert.ok(body.message.length > 0);
  const headerId = err.headers.get("x-request-id");
  assert.ok(headerId, "error response has no x-request-id header");
  assert.equal(body.reqId, headerId);
  assert.equal(err.requestID, headerId);
  assert.ok(err.message.includes(body.message));
  return body;
}

// ---------------------------------------------------------------------------
// Chat completions
// ---------------------------------------------------------------------------

test("non-streaming chat echoes the text with usage", async () => {
  const text = "The quick brown fox jumps over the lazy dog";
  const resp = await client.chat.completions.create({ model: ECHO, messages: user(text) });
  assert.equal(resp.object, "chat.completion");
  assert.equal(resp.model, ECHO);
  assert.equal(resp.choices.length, 1);
  assert.equal(resp.choices[0].message.role, "assistant");
  assert.equal(resp.choices[0].message.content, text);
  assert.equal(resp.choices[0].finish_reason, "stop");
  checkUsage(resp.usage);
});

test("streaming deltas concatenate to the text, without usage", async () => {
  const text = "streaming one word at a time";
  const chunks = await collect(
    await client.chat.completions.create({ model: ECHO, messages: user(text), stream: true }),
  );
  assert.ok(chunks.length > 0);
  for (const chunk of chunks) {
    assert.equal(chunk.object, "chat.completion.chunk");
    assert.equal(chunk.model, ECHO);
    assert.ok(chunk.usage == null, "usage sent although include_usage was not requested");
  }
  assert.equal(contentOf(chunks), text);
  assert.ok(chunks.filter((c) => c.choices[0]?.delta?.content).length > 1, "not streamed");
  const finishes = chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean);
  assert.deepEqual(finishes, ["stop"]);
  assert.equal(chunks.at(-1).choices[0].finish_reason, "stop");
});

test("streaming with include_usage ends with a usage chunk", async () => {
  const text = "count these tokens please";
  const chunks = await collect(
    await client.chat.completions.create({
      model: ECHO,
      messages: user(text),
      stream: true,
      stream_options: { include_usage: true },
    }),
  );
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  checkUsage(last.usage);
  assert.equal(contentOf(chunks.slice(0, -1)), text);
});

test("chat.completions.stream helper gives the final completion", async () => {
  const text = "helpers assemble the final completion";
  const runner = client.chat.completions.stream({ model: ECHO, messages: user(text) });
  const deltas = [];
  runner.on("content", (delta) => deltas.push(delta));
  const final = await runner.finalChatCompletion();
  assert.equal(deltas.join(""), text);
  assert.equal(final.model, ECHO);
  assert.equal(final.choices[0].message.content, text);
  assert.equal(final.choices[0].finish_reason, "stop");
});

// ---------------------------------------------------------------------------
// Tool calls
// ---------------------------------------------------------------------------

test("streamed tool call reassembles into id, name and JSON arguments", async () => {
  const text = "Reykjavik";
  const stream = await client.chat.completions.create({
    model: ECHO,
    messages: user(text),
    tools: TOOLS,
    stream: true,
  });
  const calls = new Map();
  const finishes = [];
  let argDeltas = 0;
  for await (const chunk of stream) {
    const choice = chunk.choices[0];
    if (!choice) continue;
    if (choice.finish_reason) finishes.push(choice.finish_reason);
    for (const tc of choice.delta.tool_calls ?? []) {
      if (!calls.has(tc.index)) calls.set(tc.index, { id: null, type: null, name: null, arguments: "" });
      const entry = calls.get(tc.index);
      if (tc.id) {
        assert.equal(entry.id, null, "tool call id sent twice");
        entry.id = tc.id;
      }
      if (tc.type) entry.type = tc.type;
      if (tc.function?.name) {
        assert.equal(entry.name, null, "tool name sent twice");
        entry.name = tc.function.name;
      }
      if (tc.function?.arguments) {
        entry.arguments += tc.function.arguments;
        argDeltas += 1;
      }
    }
  }
  assert.deepEqual([...calls.keys()], [0]);
  const call = calls.get(0);
  assert.ok(call.id);
  assert.equal(call.type, "function");
  assert.equal(call.name, "get_weather");
  assert.deepEqual(JSON.parse(call.arguments), weatherArgs(text));
  assert.ok(argDeltas >= 2, "arguments were expected in several deltas");
  assert.deepEqual(finishes, ["tool_calls"]);
});

test("non-streaming tool call and round trip with the tool result", async () => {
  const messages = user("Oslo");
  const first = await client.chat.completions.create({ model: ECHO, messages, tools: TOOLS });
  assert.equal(first.choices[0].finish_reason, "tool_calls");
  const assistant = first.choices[0].message;
  assert.equal(assistant.tool_calls.length, 1);
  const call = assistant.tool_calls[0];
  assert.equal(call.function.name, "get_weather");
  assert.deepEqual(JSON.parse(call.function.arguments), weatherArgs("Oslo"));

  messages.push(assistant, { role: "tool", tool_call_id: call.id, content: "light rain, 9 C" });
  const second = await client.chat.completions.create({ model: ECHO, messages, tools: TOOLS });
  assert.equal(second.choices[0].message.content, "The tool returned: light rain, 9 C");
  assert.equal(second.choices[0].finish_reason, "stop");
});

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

const ERROR_CASES = [
  { model: "mock/error-400", status: 400, cls: OpenAI.BadRequestError },
  { model: "mock/error-401", status: 401, cls: OpenAI.AuthenticationError },
  { model: "mock/error-402", status: 402, cls: OpenAI.APIError },
  { model: "mock/error-429", status: 429, cls: OpenAI.RateLimitError },
  { model: "mock/error-500", status: 500, cls: OpenAI.InternalServerError },
  { model: "mock/error-503", status: 503, cls: OpenAI.InternalServerError },
];

for (const { model, status, cls } of ERROR_CASES) {
  for (const stream of [false, true]) {
    test(`${status} raises ${cls.name}${stream ? " (stream request)" : ""}`, async () => {
      const err = await rejection(() =>
        client.chat.completions.create({ model, messages: user("hi"), stream }),
      );
      assert.equal(err.constructor, cls, `got ${err.constructor.name}, expected ${cls.name}`);
      checkStatusError(err, status);
      if (status === 402) {
        assert.ok(!(err instanceof OpenAI.RateLimitError));
        assert.equal(err.headers.get("x-should-retry"), "false");
      }
      if (status === 429) {
        assert.equal(err.headers.get("retry-after"), "2");
      }
    });
  }
}

/** A fetch that records the status of every chat completion attempt. */
function countingFetch() {
  const statuses = [];
  const fetchFn = async (url, init) => {
    const response = await fetch(url, init);
    if (String(url).endsWith("/chat/completions")) statuses.push(response.status);
    return response;
  };
  return { statuses, fetchFn };
}

test("402 is not retried with default retries (x-should-retry: false)", async () => {
  const { statuses, fetchFn } = countingFetch();
  const c = new OpenAI({ apiKey: API_KEY, baseURL: BASE_URL, fetch: fetchFn, timeout: 30_000 });
  assert.ok(c.maxRetries > 0);
  const err = await rejection(() =>
    c.chat.completions.create({ model: "mock/error-402", messages: user("hi") }),
  );
  checkStatusError(err, 402);
  assert.ok(!(err instanceof OpenAI.RateLimitError));
  assert.deepEqual(statuses, [402]);
});

test("control: the attempt counter sees a retried 500", async () => {
  const { statuses, fetchFn } = countingFetch();
  const c = makeClient({ fetch: fetchFn, maxRetries: 1 });
  const err = await rejection(() =>
    c.chat.completions.create({ model: "mock/error-500", messages: user("hi") }),
  );
  assert.ok(err instanceof OpenAI.InternalServerError);
  assert.deepEqual(statuses, [500, 500]);
});

test("mid-stream failure: partial content, then APIError carrying message and reqId", async () => {
  const text = "one two three four five six";
  const { data: stream, response } = await client.chat.completions
    .create({ model: CUT, messages: user(text), stream: true })
    .withResponse();
  const headerId = response.headers.get("x-request-id");
  assert.ok(headerId);

  const received = [];
  const err = await rejection(async () => {
    for await (const chunk of stream) {
      assert.equal(chunk.model, CUT);
      const content = chunk.choices[0]?.delta?.content;
      if (content) received.push(content);
    }
  });

  const partial = received.join("");
  assert.ok(partial.length > 0, "no content arrived before the failure");
  assert.ok(text.startsWith(partial), `partial ${JSON.stringify(partial)} is not a prefix`);
  const words = partial.split(/\s+/).filter(Boolean).length;
  assert.ok(words >= 1 && words <= 3, `got ${words} words before the cut`);

  assert.ok(err instanceof OpenAI.APIError, `not an APIError: ${err}`);
  // openai-node v6 puts the event's `error` object on `.error`; there is no
  // HTTP status for an error that arrives inside a 200 stream.
  assert.equal(err.status, undefined);
  const body = err.error;
  assert.equal(typeof body, "object", `stream error body: ${JSON.stringify(body)}`);
  assert.equal(typeof body.message, "string");
  assert.ok(body.message.length > 0);
  assert.equal(err.message, body.message);
  assert.equal(body.reqId, headerId);
  assert.equal(err.requestID, headerId);
  assert.equal(typeof body.type, "string");
  assert.equal(typeof body.code, "string");
});

// ---------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------

test("unknown model is a BadRequestError naming param model", async () => {
  const err = await rejection(() =>
    client.chat.completions.create({ model: "nope/no-such-model", messages: user("hi") }),
  );
  assert.ok(err instanceof OpenAI.BadRequestError);
  const body = checkStatusError(err, 400);
  assert.equal(body.param, "model");
  assert.equal(err.param, "model");
});

test("models.list and models.retrieve", async () => {
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  for (const id of [ECHO, CUT, SNIPPET_MODEL]) assert.ok(ids.includes(id), `${id} not listed`);
  const echo = await client.models.retrieve(ECHO);
  assert.equal(echo.id, ECHO);
  assert.equal(echo.object, "model");
});

// ---------------------------------------------------------------------------
// Documentation snippets (tests/sdk/snippets/*.mjs)
// ---------------------------------------------------------------------------

/** Runs a snippet in a child node; returns its stdout and stderr interleaved. */
function runSnippet(name) {
  const dir = mkdtempSync(join(tmpdir(), "mume-snippet-"));
  try {
    const outPath = join(dir, "output.txt");
    const fd = openSync(outPath, "w");
    let proc;
    try {
      proc = spawnSync(
        process.execPath,
        ["--import", SNIPPET_RESOLVER, join(SNIPPETS_DIR, name)],
        { cwd: NODE_DIR, env: process.env, stdio: ["ignore", fd, fd], timeout: 60_000 },
      );
    } finally {
      closeSync(fd);
    }
    const out = readFileSync(outPath, "utf8");
    assert.equal(proc.error, undefined, `${name} could not run: ${proc.error}`);
    assert.equal(proc.status, 0, `${name} exited with ${proc.status}:\n${out}`);
    return out;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("snippet: streaming_errors.mjs prints the partial answer, then the stream error", async () => {
  const stream = await client.chat.completions.create({
    model: SNIPPET_MODEL,
    messages: user("Hello!"),
    stream: true,
  });
  const err = await rejection(() => collect(stream));
  const message = err.error.message;

  const out = runSnippet("streaming_errors.mjs");
  assert.ok(out.includes("Hello!"), out);
  assert.ok(out.includes(message), out);
  assert.ok(out.indexOf("Hello!") < out.indexOf(message), out);
});

test("snippet: standard_errors.mjs prints API error: 503", () => {
  const out = runSnippet("standard_errors.mjs");
  assert.ok(out.includes("API error: 503"), out);
  assert.ok(!out.includes("Hello!"), out);
});

test("a bad key is an AuthenticationError", async () => {
  const c = new OpenAI({ apiKey: "sk-mume-not-a-real-key", baseURL: BASE_URL, maxRetries: 0 });
  await assert.rejects(
    c.chat.completions.create({ model: "mock/echo", messages: [{ role: "user", content: "hi" }] }),
    (err) => err instanceof OpenAI.AuthenticationError && err.status === 401 && err.error?.code === "malformed_api_key",
  );
});

test("a key without credit gets one 402 and no retries", async () => {
  let attempts = 0;
  const counting = async (url, init) => {
    attempts += 1;
    return fetch(url, init);
  };
  const c = new OpenAI({ apiKey: POOR_KEY, baseURL: BASE_URL, fetch: counting, timeout: 30_000 });
  await assert.rejects(
    c.chat.completions.create({ model: "mock/echo", messages: [{ role: "user", content: "hi" }] }),
    (err) => err.status === 402 && err.error?.code === "insufficient_credits",
  );
  assert.equal(attempts, 1);
});

test("responses.stream: deltas in order, then the final response", async () => {
  const text = "one two three";
  const stream = client.responses.stream({ model: ECHO, input: text });
  const types = [];
  const deltas = [];
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === "response.output_text.delta") deltas.push(event.delta);
  }
  const final = await stream.finalResponse();
  assert.deepEqual(types.slice(0, 2), ["response.created", "response.in_progress"]);
  assert.equal(types.at(-1), "response.completed");
  assert.ok(deltas.length >= 2, "text arrives in pieces");
  assert.equal(deltas.join(""), text);
  assert.equal(final.output_text, text);
  assert.equal(final.model, ECHO);
  const stored = await client.responses.retrieve(final.id);
  assert.equal(stored.output_text, text);
});

test("responses.stream: a mid-stream failure rejects with an APIError", async () => {
  const stream = client.responses.stream({ model: CUT, input: "one two three four five six" });
  const deltas = [];
  await assert.rejects(
    (async () => {
      for await (const event of stream) {
        if (event.type === "response.output_text.delta") deltas.push(event.delta);
      }
    })(),
    (err) => err instanceof OpenAI.APIError && typeof err.message === "string" && err.message.length > 0,
  );
  assert.ok(deltas.length > 0, "content arrived before the failure");
});
