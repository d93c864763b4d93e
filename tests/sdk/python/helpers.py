"""Shared helpers for the SDK tests: raw JSON of SDK responses and a strict SSE reader."""

from __future__ import annotations

import json
from typing import Any

import httpx


def raw_json(raw_response: Any) -> dict:
    """The JSON body of an SDK `with_raw_response` result, exactly as the server sent it."""
    return json.loads(raw_response.http_response.text)


def read_sse(http: httpx.Client, path: str, body: dict) -> tuple[httpx.Response, list[dict]]:
    """POSTs `body`, checks the SSE wire format, and returns the response and the decoded JSON events.

    Asserts: 200 with text/event-stream; every event is one `data: ` line followed by a blank
    line; the last event is exactly `data: [DONE]`, and nothing follows it.
    """
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode("utf-8")
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    events: list[dict] = []
    blocks = [b for b in text.split("\n\n") if b]
    assert blocks[-1] == "data: [DONE]"
    for block in blocks[:-1]:
        lines = [line for line in block.split("\n") if not line.startswith(":")]  # ':' = keep-alive comment
        if not lines:
            continue
        assert len(lines) == 1 and lines[0].startswith("data: "), block
        payload = lines[0][len("data: "):]
        assert payload != "[DONE]", "[DONE] sent twice"
        events.append(json.loads(payload))
    return response, events


def names_param(err: Any, param: str) -> bool:
    """True when an SDK APIStatusError's envelope names `param` (in `param`, or as a word in the message)."""
    import re

    body = err.body if isinstance(err.body, dict) else {}
    if body.get("param") == param:
        return True
    return re.search(rf"(?<![\w.]){re.escape(param)}(?![\w])", str(body.get("message", ""))) is not None
