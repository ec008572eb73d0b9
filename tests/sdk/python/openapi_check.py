"""Validation of what the gateway emits against OpenAI's own OpenAPI spec.

The spec is the project's reference copy, `../shared/reference/openai-openapi.yaml`
beside the checkout (override with OPENAI_OPENAPI). Schemas are checked with
jsonschema's Draft 2020-12 validator (the spec is OpenAPI 3.1), resolving
`#/components/...` references inside the spec itself.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
SPEC_PATH = Path(
    os.environ.get(
        "OPENAI_OPENAPI",
        REPO_ROOT.parent / "shared" / "reference" / "openai-openapi.yaml",
    )
)

# Responses streaming event type -> its schema in the spec.
EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
    "error": "ResponseErrorEvent",
    "response.web_search_call.in_progress": "ResponseWebSearchCallInProgressEvent",
    "response.web_search_call.searching": "ResponseWebSearchCallSearchingEvent",
    "response.web_search_call.completed": "ResponseWebSearchCallCompletedEvent",
    "response.output_text.annotation.added": "ResponseOutputTextAnnotationAddedEvent",
}


@functools.lru_cache(maxsize=1)
def components() -> dict[str, Any]:
    if not SPEC_PATH.is_file():
        raise FileNotFoundError(
            f"OpenAI's OpenAPI spec is not at {SPEC_PATH}; set OPENAI_OPENAPI to its path"
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with SPEC_PATH.open() as f:
        return yaml.load(f, Loader=loader)["components"]


@functools.lru_cache(maxsize=None)
def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"#/components/schemas/{name}", "components": components()}
    return jsonschema.Draft202012Validator(schema)


def check(name: str, value: Any) -> None:
    """Fails with every violation of schema `name` by `value`."""
    errors = sorted(validator(name).iter_errors(value), key=lambda e: list(e.path))
    if errors:
        lines = [f"{list(e.path)}: {e.message[:300]}" for e in errors[:10]]
        raise AssertionError(f"{name} violated:\n" + "\n".join(lines))


def check_event(event: dict[str, Any]) -> None:
    kind = event.get("type")
    assert kind in EVENT_SCHEMAS, f"unexpected event type {kind!r}"
    check(EVENT_SCHEMAS[kind], event)
