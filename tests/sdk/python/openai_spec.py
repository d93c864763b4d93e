"""Validates JSON bodies against the official OpenAI OpenAPI spec (../shared/specs/openai-openapi.yaml).

The spec is OpenAPI 3.1 (JSON Schema 2020-12) but still uses the 3.0 `nullable: true` form in places
(stream chunk `finish_reason`, `logprobs`, `usage`), which plain JSON Schema ignores. Those nodes are
rewritten to `anyOf: [<schema>, {"type": "null"}]` before validation. The spec is read, never copied.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

REPO_ROOT = Path(__file__).resolve().parents[3]
SPEC_PATH = Path(
    os.environ.get("AI_SANDBOX_OPENAI_SPEC", REPO_ROOT.parent / "shared" / "specs" / "openai-openapi.yaml")
)
SPEC_URI = "urn:openai-openapi"


def _nullable_to_anyof(node: Any) -> Any:
    """Returns `node` with every OpenAPI 3.0 `nullable: true` turned into a JSON Schema null alternative."""
    if isinstance(node, list):
        return [_nullable_to_anyof(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable_to_anyof(value) for key, value in node.items()}
    if out.pop("nullable", False) is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.lru_cache(maxsize=1)
def _registry() -> Registry:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(SPEC_PATH, encoding="utf-8") as handle:
        spec = yaml.load(handle, Loader=loader)
    spec = _nullable_to_anyof(spec)
    return Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(spec))


@functools.lru_cache(maxsize=None)
def _validator(schema_name: str) -> Draft202012Validator:
    registry = _registry()
    # Fail loudly on a wrong schema name instead of validating against nothing.
    registry.resolver(SPEC_URI).lookup(f"{SPEC_URI}#/components/schemas/{schema_name}")
    return Draft202012Validator({"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}, registry=registry)


def validate(schema_name: str, instance: Any) -> None:
    """Raises `AssertionError` listing every violation of `components/schemas/<schema_name>`."""
    errors = sorted(_validator(schema_name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  at /{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors[:10]]
        raise AssertionError(f"response does not match {schema_name}:\n" + "\n".join(lines))


def validate_completion_chunk(chunk: dict) -> None:
    """Validates a /v1/completions stream chunk.

    The spec uses CreateCompletionResponse for chunks too, but its `finish_reason` enum has no null,
    while every chunk before the last one carries `finish_reason: null` (as OpenAI does). Nulls are
    swapped for "stop" only for the schema check. Likewise with `stream_options.include_usage`
    every chunk but the usage chunk carries `usage: null` (ChatCompletionStreamOptions: "All other
    chunks will also include a `usage` field, but with a null value"), which CreateCompletionResponse
    does not allow; a null `usage` is left out for the check. Everything else is validated as is.
    """
    patched = copy.deepcopy(chunk)
    if "usage" in patched and patched["usage"] is None:
        del patched["usage"]
    for choice in patched.get("choices", []):
        if isinstance(choice, dict) and choice.get("finish_reason", "missing") is None:
            choice["finish_reason"] = "stop"
    validate("CreateCompletionResponse", patched)
