"""Compatibility of the official `openai` Python SDK with Mume Gateway.

The gateway must already be running with tests/sdk/gateway.toml and its API
root exported as MUME_BASE_URL (for example http://127.0.0.1:8080/api/v1);
tests/sdk/run.sh does both. Every model used here belongs to the built-in
mock provider, so no network access or provider key is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

SDK_DIR = Path(__file__).resolve().parent.parent
SNIPPETS_DIR = SDK_DIR / "snippets"

# Created by run.sh with `mume-gateway keys create`: an unlimited key, and
# one with no credit.
API_KEY = os.environ.get("MUME_API_KEY", "")
POOR_KEY = os.environ.get("MUME_POOR_KEY", "")

ECHO = "mock/echo"
CUT = "mock/cut"
# Public id that gateway.toml routes to the mock's "cut" model.
SNIPPET_MODEL = "openai/gpt-4.1-mini"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "offset": {"type": "number"},
                "metric": {"type": "boolean"},
            },
            "required": ["city"],
        },
    },
}
# Never called: the mock always calls the first tool offered.
CLOCK_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}
TOOLS = [WEATHER_TOOL, CLOCK_TOOL]


def expected_weather_args(text: str) -> dict[str, Any]:
    """Arguments the mock derives from WEATHER_TOOL's schema for `text`."""
    return {"city": text, "days": 1, "offset": 1, "metric": True}


# --------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def base_url() -> str:
    url = os.environ.get("MUME_BASE_URL")
    if not url:
        pytest.fail("MUME_BASE_URL is not set: run the suite through tests/sdk/run.sh")
    return url


def make_client(base_url: str, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("timeout", 30.0)
    return openai.OpenAI(api_key=API_KEY, base_url=base_url, **kwargs)


@pytest.fixture(scope="session")
def client(base_url: str):
    """A client that never retries, so every error surfaces on the first answer."""
    c = make_client(base_url, max_retries=0)
    yield c
    c.close()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def check_usage(usage: Any) -> None:
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def check_error_body(err: openai.APIStatusError) -> dict[str, Any]:
    """The SDK sets `body` to the envelope's `error` object; check it and return it."""
    body = err.body
    assert isinstance(body, dict), f"error body is not the error object: {body!r}"
    for key in ("message", "type", "code", "param", "reqId"):
        assert key in body, f"error object lacks {key!r}: {body!r}"
    assert isinstance(body["message"], str) and body["message"]
    header_id = err.response.headers.get("x-request-id")
    assert header_id, "error response has no x-request-id header"
    assert body["reqId"] == header_id
    assert err.request_id == header_id
    assert body["message"] in err.message
    return body


# --------------------------------------------------------------------------
# Chat completions
# --------------------------------------------------------------------------


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    text = "The quick brown fox jumps over the lazy dog"
    resp = client.chat.completions.create(model=ECHO, messages=user(text))

    assert resp.object == "chat.completion"
    assert resp.model == ECHO
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == text
    assert choice.finish_reason == "stop"
    check_usage(resp.usage)


def test_routed_model_reports_public_id(client: openai.OpenAI) -> None:
    # openai/gpt-4.1-mini is routed to the mock's cut model: chunks name the
    # public id, never the upstream one, and a non-streaming request fails.
    stream = client.chat.completions.create(model=SNIPPET_MODEL, messages=user("Hello!"), stream=True)
    models = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            models.append(chunk.model)
    assert models and set(models) == {SNIPPET_MODEL}

    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=SNIPPET_MODEL, messages=user("Hello!"))
    assert info.value.status_code == 503
    check_error_body(info.value)


def test_streaming_deltas_concatenate_to_text(client: openai.OpenAI) -> None:
    text = "streaming one word at a time"
    stream = client.chat.completions.create(model=ECHO, messages=user(text), stream=True)

    chunks = list(stream)
    assert chunks, "no chunks received"
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == ECHO
        assert chunk.usage is None, "usage sent although include_usage was not requested"
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(deltas) == text
    # More than one content delta: the answer really is streamed.
    assert sum(1 for d in deltas if d) > 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices and chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1


def test_streaming_include_usage(client: openai.OpenAI) -> None:
    text = "count these tokens please"
    stream = client.chat.completions.create(
        model=ECHO,
        messages=user(text),
        stream=True,
        stream_options={"include_usage": True},
    )

    chunks = list(stream)
    assert chunks
    last = chunks[-1]
    assert last.choices == []
    check_usage(last.usage)
    for chunk in chunks[:-1]:
        assert chunk.usage is None
        assert chunk.choices
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == text
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_stream_helper_final_completion(client: openai.OpenAI) -> None:
    text = "helpers assemble the final completion"
    with client.chat.completions.stream(
        model=ECHO,
        messages=user(text),
        stream_options={"include_usage": True},
    ) as stream:
        deltas = []
        done = []
        for event in stream:
            if event.type == "content.delta":
                deltas.append(event.delta)
            elif event.type == "content.done":
                done.append(event.content)
        final = stream.get_final_completion()

    assert "".join(deltas) == text
    assert done == [text]
    assert final.model == ECHO
    assert final.choices[0].message.content == text
    assert final.choices[0].finish_reason == "stop"
    check_usage(final.usage)


# --------------------------------------------------------------------------
# Tool calls
# --------------------------------------------------------------------------


def test_tool_call_non_streaming(client: openai.OpenAI) -> None:
    text = "Lisbon"
    resp = client.chat.completions.create(model=ECHO, messages=user(text), tools=TOOLS)

    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == expected_weather_args(text)


def collect_streamed_tool_calls(stream: Any) -> tuple[dict[int, dict[str, Any]], list[str | None], int]:
    """Reassemble streamed tool calls by index.

    Returns (calls by index, finish reasons seen, number of argument deltas).
    """
    calls: dict[int, dict[str, Any]] = {}
    finishes: list[str | None] = []
    arg_deltas = 0
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
        for tc in choice.delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": None, "type": None, "name": None, "arguments": ""})
            if tc.id:
                assert entry["id"] is None, "tool call id sent twice"
                entry["id"] = tc.id
            if tc.type:
                entry["type"] = tc.type
            if tc.function is not None:
                if tc.function.name:
                    assert entry["name"] is None, "tool name sent twice"
                    entry["name"] = tc.function.name
                if tc.function.arguments:
                    entry["arguments"] += tc.function.arguments
                    arg_deltas += 1
    return calls, finishes, arg_deltas


def test_tool_call_streaming(client: openai.OpenAI) -> None:
    text = "Reykjavik"
    stream = client.chat.completions.create(model=ECHO, messages=user(text), tools=TOOLS, stream=True)

    calls, finishes, arg_deltas = collect_streamed_tool_calls(stream)
    assert list(calls) == [0]
    call = calls[0]
    assert call["id"]
    assert call["type"] == "function"
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == expected_weather_args(text)
    assert arg_deltas >= 2, "arguments were expected in several deltas"
    assert finishes == ["tool_calls"]


@pytest.mark.parametrize("stream_answer", [False, True], ids=["plain", "streamed"])
def test_tool_round_trip(client: openai.OpenAI, stream_answer: bool) -> None:
    messages: list[dict[str, Any]] = user("Oslo")
    first = client.chat.completions.create(model=ECHO, messages=messages, tools=TOOLS)
    assistant = first.choices[0].message
    assert assistant.tool_calls
    call = assistant.tool_calls[0]

    messages.append(assistant.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "light rain, 9 C"})

    expected = "The tool returned: light rain, 9 C"
    if stream_answer:
        stream = client.chat.completions.create(model=ECHO, messages=messages, tools=TOOLS, stream=True)
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
        assert all(not (c.choices and c.choices[0].delta.tool_calls) for c in chunks)
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        second = client.chat.completions.create(model=ECHO, messages=messages, tools=TOOLS)
        assert second.choices[0].message.content == expected
        assert not second.choices[0].message.tool_calls
        assert second.choices[0].finish_reason == "stop"


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

ERROR_CASES = [
    ("mock/error-400", 400, openai.BadRequestError),
    ("mock/error-401", 401, openai.AuthenticationError),
    ("mock/error-402", 402, openai.APIStatusError),
    ("mock/error-429", 429, openai.RateLimitError),
    ("mock/error-500", 500, openai.InternalServerError),
    ("mock/error-503", 503, openai.InternalServerError),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    ("model", "status", "exc_class"),
    ERROR_CASES,
    ids=[str(status) for _, status, _ in ERROR_CASES],
)
def test_error_status_maps_to_sdk_exception(
    client: openai.OpenAI, model: str, status: int, exc_class: type, stream: bool
) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        # A stream request that fails before the stream starts must fail the
        # same way: an HTTP error status with the JSON envelope.
        client.chat.completions.create(model=model, messages=user("hi"), stream=stream)
    err = info.value

    assert type(err) is exc_class, f"got {type(err).__name__}, expected {exc_class.__name__}"
    assert err.status_code == status
    check_error_body(err)
    if status == 402:
        assert not isinstance(err, openai.RateLimitError)
        assert err.response.headers.get("x-should-retry") == "false"
    if status == 429:
        assert err.response.headers.get("retry-after") == "2"


class AttemptCounter:
    """httpx response hook counting the chat completion attempts a client makes."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    def __call__(self, response: Any) -> None:
        if response.request.url.path.endswith("/chat/completions"):
            self.statuses.append(response.status_code)


def test_402_is_not_retried_with_default_retries(base_url: str) -> None:
    counter = AttemptCounter()
    http_client = openai.DefaultHttpxClient(event_hooks={"response": [counter]})
    with make_client(base_url, http_client=http_client) as c:  # default max_retries
        assert c.max_retries > 0
        with pytest.raises(openai.APIStatusError) as info:
            c.chat.completions.create(model="mock/error-402", messages=user("hi"))
    assert info.value.status_code == 402
    assert not isinstance(info.value, openai.RateLimitError)
    # x-should-retry: false stops the SDK after the first answer.
    assert counter.statuses == [402]


def test_bad_key_is_authentication_error(base_url: str) -> None:
    for key in ("sk-mume-not-a-real-key", API_KEY[:-1] + ("a" if API_KEY[-1] != "a" else "b")):
        with openai.OpenAI(api_key=key, base_url=base_url, max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError) as info:
                c.chat.completions.create(model=ECHO, messages=user("hi"))
        body = check_error_body(info.value)
        assert body["code"] == "malformed_api_key"
        assert key not in str(info.value)


def test_real_402_without_credit_is_not_retried(base_url: str) -> None:
    counter = AttemptCounter()
    http_client = openai.DefaultHttpxClient(event_hooks={"response": [counter]})
    with openai.OpenAI(api_key=POOR_KEY, base_url=base_url, http_client=http_client) as c:
        with pytest.raises(openai.APIStatusError) as info:
            c.chat.completions.create(model=ECHO, messages=user("hi"))
    assert info.value.status_code == 402
    body = check_error_body(info.value)
    assert body["code"] == "insufficient_credits"
    assert "max_tokens" in body["message"]
    assert counter.statuses == [402], "the SDK must not retry a 402"


def test_usage_carries_cost_and_key_endpoint_answers(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=ECHO, messages=user("cost me"))
    assert completion.usage is not None
    cost = completion.usage.model_dump().get("cost")
    assert isinstance(cost, (int, float)) and cost > 0
    info = client.get("/key", cast_to=object)
    assert info["data"]["label"].startswith("sk-mume-")


def test_attempt_counter_sees_retries(base_url: str) -> None:
    # Control for the test above: a 500 (no x-should-retry) is retried, and
    # the counter sees every attempt.
    counter = AttemptCounter()
    http_client = openai.DefaultHttpxClient(event_hooks={"response": [counter]})
    with make_client(base_url, http_client=http_client, max_retries=1) as c:
        with pytest.raises(openai.InternalServerError):
            c.chat.completions.create(model="mock/error-500", messages=user("hi"))
    assert counter.statuses == [500, 500]


def test_mid_stream_failure_raises_after_partial_content(client: openai.OpenAI) -> None:
    text = "one two three four five six"
    stream = client.chat.completions.create(model=CUT, messages=user(text), stream=True)
    header_id = stream.response.headers.get("x-request-id")
    assert header_id

    received: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            assert chunk.model == CUT
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    err = info.value

    partial = "".join(received)
    assert partial, "no content arrived before the failure"
    assert text.startswith(partial)
    assert 1 <= len(partial.split()) <= 3
    assert partial.strip() != text

    # A stream error is not an HTTP status error: the status line was 200.
    assert not isinstance(err, openai.APIStatusError)
    body = err.body
    assert isinstance(body, dict), f"stream error body is not the error object: {body!r}"
    assert isinstance(body.get("message"), str) and body["message"]
    assert err.message == body["message"]
    assert body.get("reqId") == header_id
    assert isinstance(body.get("type"), str) and body["type"]
    assert isinstance(body.get("code"), str) and body["code"]


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def test_unknown_model_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="nope/no-such-model", messages=user("hi"))
    err = info.value
    assert err.status_code == 400
    body = check_error_body(err)
    assert body["param"] == "model"
    assert err.param == "model"


def test_models_list(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ECHO in ids
    for expected in (CUT, "mock/error-429", SNIPPET_MODEL):
        assert expected in ids
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("model", [ECHO, SNIPPET_MODEL])
def test_models_retrieve(client: openai.OpenAI, model: str) -> None:
    m = client.models.retrieve(model)
    assert m.id == model
    assert m.object == "model"


def test_models_retrieve_unknown(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("nope/no-such-model")
    assert info.value.status_code == 404
    check_error_body(info.value)


# --------------------------------------------------------------------------
# Documentation snippets (tests/sdk/snippets/*.py)
# --------------------------------------------------------------------------


def run_snippet(name: str) -> str:
    """Run a snippet with the current interpreter; return stdout and stderr interleaved."""
    proc = subprocess.run(
        [sys.executable, str(SNIPPETS_DIR / name)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{proc.stdout}"
    return proc.stdout


def stream_error_message(client: openai.OpenAI) -> str:
    """The message of the error that ends the snippet model's stream."""
    stream = client.chat.completions.create(model=SNIPPET_MODEL, messages=user("Hello!"), stream=True)
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    return info.value.message


def test_snippet_streaming_errors(client: openai.OpenAI) -> None:
    message = stream_error_message(client)
    out = run_snippet("streaming_errors.py")
    assert "Hello!" in out, out
    assert message in out, out
    assert out.index("Hello!") < out.index(message), out


def test_snippet_standard_errors() -> None:
    out = run_snippet("standard_errors.py")
    assert "API error: 503" in out, out
    assert "Hello!" not in out, out


# --------------------------------------------------------------------------
# Anthropic-backed model (anthropic_mock.py speaks the Messages API)
# --------------------------------------------------------------------------

CLAUDE = "anthropic/claude-mock"


def test_anthropic_streamed_tool_call_through_the_stream_helper(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=CLAUDE,
        messages=user("What is the weather in Paris?"),
        tools=TOOLS,
    ) as stream:
        argument_deltas = []
        done = []
        for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                argument_deltas.append(event.arguments_delta)
            elif event.type == "tool_calls.function.arguments.done":
                done.append((event.name, event.arguments))
        final = stream.get_final_completion()

    assert len(argument_deltas) >= 2, "arguments arrive in pieces"
    assert done == [("get_weather", '{"city": "Paris"}')]
    assert final.model == CLAUDE
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id == "toolu_sdk"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_anthropic_text_answer(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model=CLAUDE, messages=user("hi"))
    assert answer.choices[0].message.content == "Hello from Claude"
    assert answer.usage.prompt_tokens == 20
    assert answer.usage.completion_tokens == 9
