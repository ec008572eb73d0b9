"""MCP tools the gateway runs itself, through the official `openai` Python SDK.

Runs through tests/sdk/run.sh, which starts two FastMCP servers
(mcp_server.py: Streamable HTTP at MUME_MCP_URL, legacy HTTP+SSE at
MUME_MCP_SSE_URL), allowlists 127.0.0.1 for them in the gateway's `[mcp]`
section and registers the Streamable one as "registered".

The mock model calls the first tool it is offered (arguments shaped by the
tool's schema: strings from the input, integers 1), then answers "The tool
returned: <what the tool gave it>". `allowed_tools` picks the tool.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
from typing import Any

import openai
import pytest

from openapi_check import check, check_event
from test_responses import base_url, client, raw_events, raw_request  # noqa: F401 (fixtures)

API_KEY = os.environ.get("MUME_API_KEY", "")
ECHO = "mock/echo"
LABEL = "calc"
FENCE = '<mcp_tool_output server="{label}" tool="{tool}">'

# The MCP streaming events, which openapi_check.EVENT_SCHEMAS does not map.
MCP_EVENT_SCHEMAS = {
    "response.mcp_list_tools.in_progress": "ResponseMCPListToolsInProgressEvent",
    "response.mcp_list_tools.completed": "ResponseMCPListToolsCompletedEvent",
    "response.mcp_list_tools.failed": "ResponseMCPListToolsFailedEvent",
    "response.mcp_call.in_progress": "ResponseMCPCallInProgressEvent",
    "response.mcp_call_arguments.delta": "ResponseMCPCallArgumentsDeltaEvent",
    "response.mcp_call_arguments.done": "ResponseMCPCallArgumentsDoneEvent",
    "response.mcp_call.completed": "ResponseMCPCallCompletedEvent",
    "response.mcp_call.failed": "ResponseMCPCallFailedEvent",
}

ITEM_SCHEMAS = {
    "mcp_list_tools": "MCPListTools",
    "mcp_call": "MCPToolCall",
    "mcp_approval_request": "MCPApprovalRequest",
}

ALL_TOOLS = {"add", "shout", "fail", "headers"}


def _env_url(name: str) -> str:
    url = os.environ.get(name)
    if not url:
        pytest.fail(f"{name} is not set: run the suite through tests/sdk/run.sh")
    return url


@pytest.fixture(scope="module")
def mcp_url() -> str:
    return _env_url("MUME_MCP_URL")


@pytest.fixture(scope="module")
def mcp_sse_url() -> str:
    return _env_url("MUME_MCP_SSE_URL")


def mcp_tool(url: str | None, **fields: Any) -> dict[str, Any]:
    """An `mcp` tool for the request's `tools`; `url` None names a
    registered server by its label alone."""
    tool: dict[str, Any] = {"type": "mcp", "server_label": fields.pop("server_label", LABEL)}
    if url is not None:
        tool["server_url"] = url
    tool.update(fields)
    return tool


def check_any_event(event: dict[str, Any]) -> None:
    schema = MCP_EVENT_SCHEMAS.get(event.get("type", ""))
    if schema:
        check(schema, event)
    else:
        check_event(event)


def check_mcp_stream(events: list[dict[str, Any]]) -> None:
    for n, e in enumerate(events):
        assert e["sequence_number"] == n, (n, e["type"])
        check_any_event(e)


def collapsed(kinds: list[str]) -> list[str]:
    """Event types with each run of one delta type counted once: how many
    pieces a text or the arguments arrive in is not fixed."""
    out: list[str] = []
    for k in kinds:
        if k.endswith(".delta") and out and out[-1] == k:
            continue
        out.append(k)
    return out


LISTING_EVENTS = [
    "response.output_item.added",
    "response.mcp_list_tools.in_progress",
    "response.mcp_list_tools.completed",
    "response.output_item.done",
]
CALL_EVENTS = [
    "response.output_item.added",
    "response.mcp_call.in_progress",
    "response.mcp_call_arguments.delta",
    "response.mcp_call_arguments.done",
    "response.mcp_call.completed",
    "response.output_item.done",
]
MESSAGE_EVENTS = [
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
START = ["response.created", "response.in_progress"]


def assert_answer_quotes(text: str, tool: str, output: str, label: str = LABEL) -> None:
    """`text` is the mock's answer to a tool that returned `output`: that
    output, inside the fence the gateway puts around it."""
    assert text.startswith("The tool returned: "), text
    assert FENCE.format(label=label, tool=tool) in text, text
    assert text.endswith(f"\n{output}\n</mcp_tool_output>"), text


def types(response: Any) -> list[str]:
    return [item.type for item in response.output]


def only(response: Any, kind: str) -> Any:
    found = [item for item in response.output if item.type == kind]
    assert len(found) == 1, (kind, types(response))
    return found[0]


def check_items(items: list[dict[str, Any]]) -> None:
    for item in items:
        if item["type"] in ITEM_SCHEMAS:
            check(ITEM_SCHEMAS[item["type"]], item)


def generation(base_url: str, request_id: str) -> dict[str, Any]:
    """The /generation record of a request, waiting for it to be written."""
    deadline = time.monotonic() + 15
    while True:
        try:
            with raw_request(f"{base_url}/generation?id={request_id}") as r:
                return json.load(r)["data"]
        except urllib.error.HTTPError as e:
            if e.code != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


# --- Responses ------------------------------------------------------------------


def test_responses_lists_calls_and_answers_with_the_tool_output(client: openai.OpenAI, mcp_url: str) -> None:
    raw = client.responses.with_raw_response.create(
        model=ECHO,
        input="add two numbers",
        tools=[mcp_tool(mcp_url, allowed_tools=["add"], require_approval="never")],
    )
    body = raw.http_response.json()
    check("Response", body)
    check_items(body["output"])
    response = raw.parse()
    assert response.status == "completed"
    assert types(response) == ["mcp_list_tools", "mcp_call", "message"]

    listing = response.output[0]
    assert listing.server_label == LABEL
    assert listing.error is None
    assert [t.name for t in listing.tools] == ["add"]
    add = listing.tools[0]
    assert add.description == "Adds two integers."
    assert add.input_schema["type"] == "object"
    assert sorted(add.input_schema["required"]) == ["a", "b"]
    assert add.input_schema["properties"]["a"]["type"] == "integer"

    call = response.output[1]
    assert call.server_label == LABEL
    assert call.name == "add"
    assert call.status == "completed"
    assert call.error is None
    assert call.approval_request_id is None
    args = json.loads(call.arguments)
    assert set(args) == {"a", "b"}
    assert all(isinstance(v, int) for v in args.values())
    assert call.output == str(args["a"] + args["b"])
    assert call.id != listing.id

    assert_answer_quotes(response.output_text, "add", call.output)
    # The tool's own words are marked as data, not instructions.
    assert "not instructions" in response.output_text

    stored = client.responses.retrieve(response.id)
    assert types(stored) == types(response)
    assert stored.output[1].output == call.output


def test_streamed_mcp_events_are_ordered_and_match_the_spec(base_url: str, mcp_url: str) -> None:
    events, _ = raw_events(
        base_url,
        {
            "model": ECHO,
            "input": "add two numbers",
            "tools": [mcp_tool(mcp_url, allowed_tools=["add"], require_approval="never")],
        },
    )
    check_mcp_stream(events)
    kinds = [e["type"] for e in events]
    assert collapsed(kinds) == START + LISTING_EVENTS + CALL_EVENTS + MESSAGE_EVENTS + ["response.completed"]

    final = events[-1]["response"]
    check("Response", final)
    assert final["status"] == "completed"
    assert [i["type"] for i in final["output"]] == ["mcp_list_tools", "mcp_call", "message"]

    # Every event names the item it is about, at its place in the output.
    listing_id, call_id, message_id = (i["id"] for i in final["output"])
    for e in events[2:6]:
        assert e["output_index"] == 0
        assert e.get("item_id", e.get("item", {}).get("id")) == listing_id
    for e in events[6:12]:
        assert e["output_index"] == 1
        assert e.get("item_id", e.get("item", {}).get("id")) == call_id
    for e in events[12:-1]:
        assert e["output_index"] == 2
        assert e.get("item_id", e.get("item", {}).get("id")) == message_id

    # The listing starts empty and is complete when done; so is the call.
    assert events[2]["item"]["tools"] == []
    assert events[5]["item"] == final["output"][0]
    assert events[6]["item"]["status"] == "in_progress"
    assert events[6]["item"]["output"] is None
    deltas = [e["delta"] for e in events if e["type"] == "response.mcp_call_arguments.delta"]
    done = next(e for e in events if e["type"] == "response.mcp_call_arguments.done")
    assert "".join(deltas) == done["arguments"]
    done_call = events[11]["item"]
    assert done_call == final["output"][1]
    args = json.loads(done_call["arguments"])
    assert done_call["output"] == str(args["a"] + args["b"])
    assert done_call["status"] == "completed"

    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == final["output"][2]["content"][0]["text"]
    assert_answer_quotes(text, "add", done_call["output"])


def test_stream_helper_parses_mcp_events(client: openai.OpenAI, mcp_url: str) -> None:
    with client.responses.stream(
        model=ECHO,
        input="shout this",
        tools=[mcp_tool(mcp_url, allowed_tools=["shout"], require_approval="never")],
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert collapsed(kinds) == START + LISTING_EVENTS + CALL_EVENTS + MESSAGE_EVENTS + ["response.completed"]
    for e in events:
        # warnings=False: the SDK's parsed output types make pydantic warn.
        check_any_event(e.model_dump(mode="json", exclude_unset=True, warnings=False))
    assert types(final) == ["mcp_list_tools", "mcp_call", "message"]
    call = final.output[1]
    assert call.output == json.loads(call.arguments)["text"].upper()
    assert_answer_quotes(final.output_text, "shout", call.output)


def test_failing_tool_gives_a_failed_call_the_model_hears_about(
    base_url: str, client: openai.OpenAI, mcp_url: str
) -> None:
    tools = [mcp_tool(mcp_url, allowed_tools=["fail"], require_approval="never")]
    raw = client.responses.with_raw_response.create(model=ECHO, input="fail now", tools=tools)
    body = raw.http_response.json()
    check("Response", body)
    check_items(body["output"])
    response = raw.parse()
    assert response.status == "completed"
    assert types(response) == ["mcp_list_tools", "mcp_call", "message"]
    call = response.output[1]
    assert call.name == "fail"
    assert call.status == "failed"
    assert call.output is None
    error = body["output"][1]["error"]
    assert error["type"] == "mcp_tool_execution_error"
    reason = json.loads(call.arguments)["reason"]
    assert any(f"failed on purpose: {reason}" in c["text"] for c in error["content"]), error
    assert "The tool reported an error." in response.output_text
    assert f"failed on purpose: {reason}" in response.output_text

    events, _ = raw_events(base_url, {"model": ECHO, "input": "fail now", "tools": tools})
    check_mcp_stream(events)
    kinds = collapsed([e["type"] for e in events])
    failed_call = [k.replace(".mcp_call.completed", ".mcp_call.failed") for k in CALL_EVENTS]
    assert kinds == START + LISTING_EVENTS + failed_call + MESSAGE_EVENTS + ["response.completed"]
    assert events[-1]["response"]["output"][1]["status"] == "failed"


def test_unreachable_listing_fails_and_the_model_answers_without_tools(
    base_url: str, client: openai.OpenAI, mcp_url: str
) -> None:
    # An allowlisted host, but nothing MCP at that path.
    nowhere = mcp_url.rsplit("/", 1)[0] + "/nothing-here"
    tools = [mcp_tool(nowhere, require_approval="never")]
    response = client.responses.create(model=ECHO, input="plain words", tools=tools)
    assert response.status == "completed"
    assert types(response) == ["mcp_list_tools", "message"]
    listing = response.output[0]
    assert listing.tools == []
    assert isinstance(listing.error, str) and listing.error
    assert response.output_text == "plain words"

    events, _ = raw_events(base_url, {"model": ECHO, "input": "plain words", "tools": tools})
    check_mcp_stream(events)
    kinds = collapsed([e["type"] for e in events])
    failed_listing = [k.replace(".mcp_list_tools.completed", ".mcp_list_tools.failed") for k in LISTING_EVENTS]
    assert kinds == START + failed_listing + MESSAGE_EVENTS + ["response.completed"]
    check("Response", events[-1]["response"])


def test_allowed_tools_filters_the_listing(client: openai.OpenAI, mcp_url: str) -> None:
    # "always": nothing runs, the response stops at the approval request.
    everything = client.responses.create(
        model=ECHO, input="hi", tools=[mcp_tool(mcp_url, require_approval="always")]
    )
    assert {t.name for t in everything.output[0].tools} == ALL_TOOLS

    for allowed in (["shout"], {"tool_names": ["shout"]}):
        response = client.responses.create(
            model=ECHO,
            input="quiet words",
            tools=[mcp_tool(mcp_url, allowed_tools=allowed, require_approval="never")],
        )
        assert [t.name for t in response.output[0].tools] == ["shout"], allowed
        call = only(response, "mcp_call")
        assert call.name == "shout"
        assert call.output == json.loads(call.arguments)["text"].upper()


def test_legacy_sse_server(client: openai.OpenAI, mcp_sse_url: str) -> None:
    assert mcp_sse_url.endswith("/sse")
    raw = client.responses.with_raw_response.create(
        model=ECHO,
        input="sse words",
        tools=[mcp_tool(mcp_sse_url, allowed_tools=["add", "shout"], require_approval="never")],
    )
    body = raw.http_response.json()
    check("Response", body)
    response = raw.parse()
    assert types(response) == ["mcp_list_tools", "mcp_call", "message"]
    listing = response.output[0]
    assert listing.error is None
    assert {t.name for t in listing.tools} == {"add", "shout"}
    call = response.output[1]
    assert call.status == "completed"
    args = json.loads(call.arguments)
    if call.name == "add":
        assert call.output == str(args["a"] + args["b"])
    else:
        assert call.name == "shout"
        assert call.output == args["text"].upper()
    assert_answer_quotes(response.output_text, call.name, call.output)


# --- approvals -------------------------------------------------------------------


@pytest.mark.parametrize(
    "require_approval, asks",
    [
        (None, True),  # the Responses API's default
        ("always", True),
        ({"always": {"tool_names": ["add"]}}, True),
        ({"never": {"tool_names": ["shout"]}}, True),  # add is in neither list
        ({"never": {"tool_names": ["add"]}}, False),
        ("never", False),
    ],
)
def test_require_approval_settings(
    client: openai.OpenAI, mcp_url: str, require_approval: Any, asks: bool
) -> None:
    fields: dict[str, Any] = {"allowed_tools": ["add"]}
    if require_approval is not None:
        fields["require_approval"] = require_approval
    raw = client.responses.with_raw_response.create(
        model=ECHO, input="add", tools=[mcp_tool(mcp_url, **fields)]
    )
    check("Response", raw.http_response.json())
    response = raw.parse()
    assert response.status == "completed"
    if asks:
        assert types(response) == ["mcp_list_tools", "mcp_approval_request"]
    else:
        assert types(response) == ["mcp_list_tools", "mcp_call", "message"]


def test_approval_round_trip_through_previous_response_id(client: openai.OpenAI, mcp_url: str) -> None:
    tools = [mcp_tool(mcp_url, allowed_tools=["add"])]
    raw = client.responses.with_raw_response.create(model=ECHO, input="add please", tools=tools)
    body = raw.http_response.json()
    check("Response", body)
    check_items(body["output"])
    first = raw.parse()
    assert first.status == "completed"
    assert types(first) == ["mcp_list_tools", "mcp_approval_request"]
    request = first.output[1]
    assert request.server_label == LABEL
    assert request.name == "add"
    assert set(json.loads(request.arguments)) == {"a", "b"}
    assert first.output_text == ""

    raw = client.responses.with_raw_response.create(
        model=ECHO,
        previous_response_id=first.id,
        input=[{"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}],
        tools=tools,
    )
    check("Response", raw.http_response.json())
    second = raw.parse()
    assert second.status == "completed"
    assert second.previous_response_id == first.id
    assert "mcp_approval_request" not in types(second)
    call = only(second, "mcp_call")
    assert call.approval_request_id == request.id
    assert call.name == "add"
    assert call.arguments == request.arguments
    args = json.loads(call.arguments)
    assert call.status == "completed"
    assert call.output == str(args["a"] + args["b"])
    assert types(second)[-1] == "message"
    assert_answer_quotes(second.output_text, "add", call.output)

    # Answered once: a new turn on top asks again rather than reusing it.
    third = client.responses.create(
        model=ECHO, previous_response_id=second.id, input="again", tools=tools
    )
    assert types(third) == ["mcp_list_tools", "mcp_approval_request"]
    assert third.output[1].id != request.id


def test_approval_sent_again_without_stored_state(client: openai.OpenAI, mcp_url: str) -> None:
    tools = [mcp_tool(mcp_url, allowed_tools=["add"])]
    question = {"role": "user", "content": "add please"}
    raw = client.responses.with_raw_response.create(model=ECHO, input=[question], tools=tools, store=False)
    request = raw.http_response.json()["output"][-1]
    assert request["type"] == "mcp_approval_request"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(raw.parse().id)

    answer = {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}
    raw = client.responses.with_raw_response.create(
        model=ECHO, store=False, input=[question, request, answer], tools=tools
    )
    check("Response", raw.http_response.json())
    second = raw.parse()
    call = only(second, "mcp_call")
    assert call.approval_request_id == request["id"]
    assert call.arguments == request["arguments"]
    args = json.loads(call.arguments)
    assert call.output == str(args["a"] + args["b"])
    assert_answer_quotes(second.output_text, "add", call.output)


def test_approval_items_alone_are_enough_to_continue(client: openai.OpenAI, mcp_url: str) -> None:
    tools = [mcp_tool(mcp_url, allowed_tools=["add"])]
    raw = client.responses.with_raw_response.create(model=ECHO, input="add please", tools=tools, store=False)
    request = raw.http_response.json()["output"][-1]
    assert request["type"] == "mcp_approval_request"
    answer = {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}
    second = client.responses.create(model=ECHO, store=False, input=[request, answer], tools=tools)
    call = only(second, "mcp_call")
    assert call.approval_request_id == request["id"]
    args = json.loads(call.arguments)
    assert call.output == str(args["a"] + args["b"])
    assert_answer_quotes(second.output_text, "add", call.output)


def test_denied_approval_runs_nothing_and_tells_the_model(
    base_url: str, client: openai.OpenAI, mcp_url: str
) -> None:
    tools = [mcp_tool(mcp_url, allowed_tools=["add"])]
    first = client.responses.create(model=ECHO, input="add please", tools=tools)
    request = only(first, "mcp_approval_request")
    raw = client.responses.with_raw_response.create(
        model=ECHO,
        previous_response_id=first.id,
        input=[
            {
                "type": "mcp_approval_response",
                "approval_request_id": request.id,
                "approve": False,
                "reason": "not today",
            }
        ],
        tools=tools,
    )
    check("Response", raw.http_response.json())
    denied = raw.parse()
    assert denied.status == "completed"
    assert "mcp_call" not in types(denied)
    assert "mcp_approval_request" not in types(denied)
    assert types(denied)[-1] == "message"
    # The mock repeats the tool message it got: the refusal and its reason.
    assert denied.output_text == "The tool returned: The user did not approve this call: not today"
    assert generation(base_url, raw.headers["x-request-id"])["num_mcp_calls"] == 0


def test_approval_of_an_unknown_request_is_a_bad_request(client: openai.OpenAI, mcp_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(
            model=ECHO,
            input=[
                {"role": "user", "content": "add please"},
                {"type": "mcp_approval_response", "approval_request_id": "mcpr_nope", "approve": True},
            ],
            tools=[mcp_tool(mcp_url, allowed_tools=["add"])],
        )
    assert "mcpr_nope" in info.value.message


def test_streamed_approval_request_ends_the_response(base_url: str, mcp_url: str) -> None:
    events, _ = raw_events(
        base_url,
        {"model": ECHO, "input": "add please", "tools": [mcp_tool(mcp_url, allowed_tools=["add"])]},
    )
    check_mcp_stream(events)
    kinds = [e["type"] for e in events]
    assert kinds == START + LISTING_EVENTS + [
        "response.output_item.added",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    check("Response", final)
    assert [i["type"] for i in final["output"]] == ["mcp_list_tools", "mcp_approval_request"]
    assert events[-2]["item"] == final["output"][1]


# --- Chat Completions (extension) --------------------------------------------------


def test_chat_completion_carries_mcp_output(client: openai.OpenAI, mcp_url: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=ECHO,
        messages=[{"role": "user", "content": "add two numbers"}],
        tools=[mcp_tool(mcp_url, allowed_tools=["add"], require_approval="never")],
    )
    body = raw.http_response.json()
    check("CreateChatCompletionResponse", body)
    items = body["mcp_output"]
    check_items(items)
    assert [i["type"] for i in items] == ["mcp_list_tools", "mcp_call"]
    assert [t["name"] for t in items[0]["tools"]] == ["add"]
    call = items[1]
    args = json.loads(call["arguments"])
    assert call["status"] == "completed"
    assert call["output"] == str(args["a"] + args["b"])
    assert "mcp_incomplete" not in body

    completion = raw.parse()
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.tool_calls is None
    assert_answer_quotes(completion.choices[0].message.content, "add", call["output"])
    # The SDK keeps the extension field.
    assert completion.model_extra["mcp_output"] == items


def test_chat_stream_sends_mcp_items_before_the_answer(client: openai.OpenAI, mcp_url: str) -> None:
    # No require_approval: Chat Completions takes it as "never".
    stream = client.chat.completions.create(
        model=ECHO,
        messages=[{"role": "user", "content": "add two numbers"}],
        tools=[mcp_tool(mcp_url, allowed_tools=["add"])],
        stream=True,
    )
    chunks = [chunk.to_dict() for chunk in stream]
    with_items = [n for n, c in enumerate(chunks) if "mcp_output" in c]
    assert with_items == [0, 1], [list(c) for c in chunks]
    assert all(c["choices"] == [] for c in chunks[:2])
    # Only these are checked against the spec: it has no null finish_reason
    # or logprobs, which every content chunk (OpenAI's too) carries.
    for chunk in chunks[:2]:
        check("CreateChatCompletionStreamResponse", chunk)
    items = [item for c in chunks[:2] for item in c["mcp_output"]]
    check_items(items)
    assert [i["type"] for i in items] == ["mcp_list_tools", "mcp_call"]
    call = items[1]
    args = json.loads(call["arguments"])
    assert call["output"] == str(args["a"] + args["b"])
    assert len({c["id"] for c in chunks}) == 1

    rest = chunks[2:]
    assert rest and all(len(c["choices"]) == 1 for c in rest)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in rest)
    assert_answer_quotes(text, "add", call["output"])
    assert rest[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any(c["choices"][0]["delta"].get("tool_calls") for c in rest)


@pytest.mark.parametrize("require_approval", ["always", {"always": {"tool_names": ["add"]}}])
def test_chat_refuses_approvals(client: openai.OpenAI, mcp_url: str, require_approval: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=ECHO,
            messages=[{"role": "user", "content": "add"}],
            tools=[mcp_tool(mcp_url, allowed_tools=["add"], require_approval=require_approval)],
        )
    assert info.value.status_code == 400
    assert info.value.body["param"] == "tools[0].require_approval"


# --- headers, registered servers, SSRF ----------------------------------------------


def test_headers_and_authorization_reach_only_the_server(
    base_url: str, client: openai.OpenAI, mcp_url: str
) -> None:
    response = client.responses.create(
        model=ECHO,
        input="who am I",
        tools=[
            mcp_tool(
                mcp_url,
                allowed_tools=["headers"],
                require_approval="never",
                headers={"X-Team": "blue"},
                authorization="oauth-token-123",
            )
        ],
    )
    call = only(response, "mcp_call")
    assert call.status == "completed"
    seen = json.loads(call.output)
    assert seen == {
        "x-team": "blue",
        "authorization": "Bearer oauth-token-123",
        "gateway_key_seen": False,
    }

    # Neither the token nor the header values are echoed or kept.
    with raw_request(f"{base_url}/responses/{response.id}") as r:
        stored = json.load(r)
    check("Response", stored)
    for tools in (response.model_dump(mode="json")["tools"], stored["tools"]):
        assert len(tools) == 1
        tool = tools[0]
        assert tool["type"] == "mcp"
        assert tool["server_url"] == mcp_url
        assert tool["allowed_tools"] == ["headers"]
        assert tool.get("authorization") is None
        assert tool["headers"] is None
        assert "oauth-token-123" not in json.dumps(tools)
        assert "blue" not in json.dumps(tools)
    assert "authorization" not in stored["tools"][0]


def test_registered_server_by_label_alone(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=ECHO,
        input="who am I",
        tools=[{"type": "mcp", "server_label": "registered", "allowed_tools": ["headers"], "require_approval": "never"}],
    )
    assert types(response) == ["mcp_list_tools", "mcp_call", "message"]
    call = response.output[1]
    assert call.server_label == "registered"
    seen = json.loads(call.output)
    # The header's value comes from MUME_SDK_MCP_TEAM in the gateway's environment.
    assert seen == {"x-team": "green", "authorization": None, "gateway_key_seen": False}
    assert_answer_quotes(response.output_text, "headers", call.output, label="registered")


def test_unknown_label_without_url_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model=ECHO,
            input="hi",
            tools=[{"type": "mcp", "server_label": "not-registered", "require_approval": "never"}],
        )


@pytest.mark.parametrize(
    "target",
    [
        "localhost",  # the FastMCP server, by a name the allowlist does not hold
        "http://169.254.169.254/",
        "http://10.0.0.1/mcp",
    ],
)
def test_internal_server_urls_are_refused(client: openai.OpenAI, mcp_url: str, target: str) -> None:
    url = mcp_url.replace("127.0.0.1", "localhost") if target == "localhost" else target
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(
            model=ECHO, input="hi", tools=[mcp_tool(url, require_approval="never")]
        )
    assert info.value.code == "mcp_server_refused"
    assert info.value.body["param"] == "tools[0].server_url"

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=ECHO, messages=[{"role": "user", "content": "hi"}], tools=[mcp_tool(url)]
        )
    assert info.value.code == "mcp_server_refused"


# --- accounting and caps -----------------------------------------------------------


def test_generation_counts_mcp_calls(base_url: str, client: openai.OpenAI, mcp_url: str) -> None:
    raw = client.responses.with_raw_response.create(
        model=ECHO,
        input="add two numbers",
        tools=[mcp_tool(mcp_url, allowed_tools=["add"], require_approval="never")],
    )
    assert only(raw.parse(), "mcp_call").status == "completed"
    record = generation(base_url, raw.headers["x-request-id"])
    assert record["num_mcp_calls"] == 1
    assert record["model"] == ECHO

    raw = client.chat.completions.with_raw_response.create(
        model=ECHO,
        messages=[{"role": "user", "content": "add"}],
        tools=[mcp_tool(mcp_url, allowed_tools=["add"])],
    )
    assert generation(base_url, raw.headers["x-request-id"])["num_mcp_calls"] == 1

    # A request without MCP tools counts none.
    raw = client.responses.with_raw_response.create(model=ECHO, input="plain")
    assert generation(base_url, raw.headers["x-request-id"])["num_mcp_calls"] == 0


def test_max_tool_calls_caps_the_calls(base_url: str, client: openai.OpenAI, mcp_url: str) -> None:
    tools = [mcp_tool(mcp_url, allowed_tools=["add"], require_approval="never")]
    raw = client.responses.with_raw_response.create(model=ECHO, input="add", tools=tools, max_tool_calls=0)
    body = raw.http_response.json()
    # "max_tool_calls" is the gateway's own reason, outside the spec's enum
    # for incomplete_details.reason: everything else is checked.
    check("Response", {**body, "incomplete_details": None})
    response = raw.parse()
    assert response.status == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_tool_calls"}
    assert types(response) == ["mcp_list_tools"]
    assert generation(base_url, raw.headers["x-request-id"])["num_mcp_calls"] == 0

    events, _ = raw_events(base_url, {"model": ECHO, "input": "add", "tools": tools, "max_tool_calls": 0})
    kinds = [e["type"] for e in events]
    assert kinds == START + LISTING_EVENTS + ["response.incomplete"]
    final = events[-1]
    assert final["response"]["incomplete_details"] == {"reason": "max_tool_calls"}
    # As above: the last event's incomplete_details is the gateway's extension.
    check_mcp_stream(events[:-1])
    assert final["sequence_number"] == len(events) - 1
    check_event({**final, "response": {**final["response"], "incomplete_details": None}})

    # One call allowed: the mock's single call runs and it answers.
    capped = client.responses.create(model=ECHO, input="add", tools=tools, max_tool_calls=1)
    assert capped.status == "completed"
    assert types(capped) == ["mcp_list_tools", "mcp_call", "message"]
