"""The Responses API through the official `openai` Python SDK, and every
event and object the gateway emits checked against OpenAI's OpenAPI spec.

Runs through tests/sdk/run.sh like test_sdk.py: the mock provider's models,
and an Anthropic-kind model served by anthropic_mock.py.
"""

from __future__ import annotations

import json
import os
from typing import Any

import urllib.request

import openai
import pytest

from openapi_check import check, check_event

API_KEY = os.environ.get("MUME_API_KEY", "")
ECHO = "mock/echo"
CUT = "mock/cut"
CLAUDE = "anthropic/claude-mock"

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def base_url() -> str:
    url = os.environ.get("MUME_BASE_URL")
    if not url:
        pytest.fail("MUME_BASE_URL is not set: run the suite through tests/sdk/run.sh")
    return url


@pytest.fixture(scope="module")
def client(base_url: str):
    c = openai.OpenAI(api_key=API_KEY, base_url=base_url, max_retries=0, timeout=30.0)
    yield c
    c.close()


def raw_request(url: str, body: dict[str, Any] | None = None):
    """An HTTP request with the suite's key, straight from the standard
    library, so the gateway's bytes are seen as they are."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Authorization", f"Bearer {API_KEY}")
    request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(request, timeout=30)


def raw_events(base_url: str, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """POSTs a streamed request; returns each event's data (its `event:` name
    checked against its `type`) and the x-request-id."""
    events: list[dict[str, Any]] = []
    with raw_request(f"{base_url}/responses", {**body, "stream": True}) as r:
        assert r.status == 200
        assert r.headers["content-type"] == "text/event-stream"
        name = None
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
                assert data["type"] == name, (name, data)
                events.append(data)
        return events, r.headers["x-request-id"]


def check_stream(events: list[dict[str, Any]]) -> None:
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    for n, e in enumerate(events):
        assert e["sequence_number"] == n
        check_event(e)


def test_create_returns_a_valid_response(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model=ECHO, input="Hello there")
    body = raw.http_response.json()
    check("Response", body)
    response = raw.parse()
    assert response.output_text == "Hello there"
    assert response.model == ECHO
    assert response.status == "completed"
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_stream_helper_gives_deltas_and_the_final_response(client: openai.OpenAI) -> None:
    text = "one two three"
    deltas = []
    with client.responses.stream(model=ECHO, input=text, instructions="Echo.") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert "".join(deltas) == text
    assert len(deltas) >= 2, "text arrives in pieces"
    assert final.output_text == text
    assert final.instructions == "Echo."
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == text


def test_every_streamed_event_and_object_matches_the_spec(base_url: str, client: openai.OpenAI) -> None:
    text_events, _ = raw_events(base_url, {"model": ECHO, "input": "a b c"})
    check_stream(text_events)
    assert text_events[-1]["type"] == "response.completed"
    check("Response", text_events[-1]["response"])

    tool_events, _ = raw_events(base_url, {"model": ECHO, "input": "Paris", "tools": [WEATHER]})
    check_stream(tool_events)
    kinds = [e["type"] for e in tool_events]
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds

    failed, _ = raw_events(base_url, {"model": CUT, "input": "one two three four five six"})
    check_stream(failed)
    assert [e["type"] for e in failed[-2:]] == ["error", "response.failed"]

    first_id = text_events[-1]["response"]["id"]
    with raw_request(f"{base_url}/responses/{first_id}/input_items") as r:
        check("ResponseItemList", json.load(r))
    with raw_request(f"{base_url}/responses/{first_id}") as r:
        check("Response", json.load(r))


def test_function_call_round_trip(base_url: str, client: openai.OpenAI) -> None:
    first = client.responses.create(model=ECHO, input="Paris", tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert json.loads(call.arguments)["city"] == "Paris"
    assert call.call_id

    second = client.responses.create(
        model=ECHO,
        previous_response_id=first.id,
        tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
    )
    assert "sunny, 21 C" in second.output_text
    assert second.previous_response_id == first.id

    # The listed input items are item resources: the output, and a call
    # written by hand without an id or a status, get both; a page past
    # the end still has string ids.
    resent = client.responses.create(
        model=ECHO,
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "Paris"},
            {"role": "assistant", "content": "Let me look."},
            {"type": "function_call", "call_id": call.call_id, "name": "get_weather", "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
        ],
    )
    for response in [second, resent]:
        with raw_request(f"{base_url}/responses/{response.id}/input_items") as r:
            page = json.load(r)
        check("ResponseItemList", page)
    with raw_request(f"{base_url}/responses/{resent.id}/input_items?after={page['last_id']}") as r:
        empty = json.load(r)
    check("ResponseItemList", empty)
    assert empty["data"] == []


def test_three_turn_previous_response_id_chain(client: openai.OpenAI) -> None:
    previous = None
    responses = []
    for text in ["first turn", "second turn", "third turn"]:
        r = client.responses.create(model=ECHO, input=text, previous_response_id=previous)
        assert r.output_text == text
        responses.append(r)
        previous = r.id
    # Each turn carries the whole conversation before it.
    inputs = [r.usage.input_tokens for r in responses]
    assert inputs[0] < inputs[1] < inputs[2], inputs
    items = client.responses.input_items.list(responses[2].id)
    assert [i.content[0].text for i in items.data] == ["third turn"]

    client.responses.delete(responses[2].id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(responses[2].id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=ECHO, input="x", previous_response_id=responses[2].id)


def test_mid_stream_failure_raises_an_sdk_error(client: openai.OpenAI) -> None:
    text = "one two three four five six"
    deltas = []
    with pytest.raises(openai.APIError) as info:
        with client.responses.stream(model=CUT, input=text) as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
    partial = "".join(deltas)
    assert partial and text.startswith(partial) and partial != text
    err = info.value
    assert not isinstance(err, openai.APIStatusError), "the status line was 200"
    assert err.message


def test_a_failure_before_the_stream_is_an_http_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        with client.responses.stream(model="mock/error-503", input="hi") as stream:
            for _ in stream:
                pass
    assert info.value.status_code == 503


def test_another_key_gets_404_for_a_stored_response(base_url: str, client: openai.OpenAI) -> None:
    r = client.responses.create(model=ECHO, input="mine")
    poor = openai.OpenAI(api_key=os.environ["MUME_POOR_KEY"], base_url=base_url, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        poor.responses.retrieve(r.id)


def test_anthropic_model_streams_through_the_responses_api(client: openai.OpenAI) -> None:
    with client.responses.stream(model=CLAUDE, input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "Hello from Claude"
    assert final.output_text == "Hello from Claude"
    assert final.model == CLAUDE
    assert final.usage.input_tokens == 20
    assert final.usage.output_tokens == 9


def test_web_search_cites_its_sources_and_every_event_matches_the_spec(
    base_url: str, client: openai.OpenAI
) -> None:
    # The mock model calls the search function it is offered, then repeats
    # the results it got: its answer cites them as [1] and [2].
    response = client.responses.create(model=ECHO, input="rust news", tools=[{"type": "web_search"}])
    check("Response", response.model_dump(mode="json", exclude_unset=True))
    assert response.output[0].type == "web_search_call"
    assert response.output[0].action.query == "rust news"
    text = response.output_text
    assert "First result for rust news" in text
    annotations = response.output[1].content[0].annotations
    urls = {a.url for a in annotations}
    assert urls == {"https://example.com/first", "https://example.org/second"}
    for a in annotations:
        assert a.type == "url_citation"
        assert text[a.start_index : a.end_index] in ("[1]", "[2]")

    events, _ = raw_events(base_url, {"model": ECHO, "input": "rust news", "tools": [{"type": "web_search"}]})
    check_stream(events)
    kinds = [e["type"] for e in events]
    assert kinds[2:7] == [
        "response.output_item.added",
        "response.web_search_call.in_progress",
        "response.web_search_call.searching",
        "response.web_search_call.completed",
        "response.output_item.done",
    ]
    assert "response.output_text.annotation.added" in kinds
    check("Response", events[-1]["response"])


def test_chat_web_search_options_give_url_citations(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=ECHO,
        messages=[{"role": "user", "content": "rust news"}],
        extra_body={"web_search_options": {}},
    )
    message = answer.choices[0].message
    assert "First result for rust news" in message.content
    cites = message.annotations
    assert cites and all(c.type == "url_citation" for c in cites)
    for c in cites:
        marker = message.content[c.url_citation.start_index : c.url_citation.end_index]
        assert marker in ("[1]", "[2]")
