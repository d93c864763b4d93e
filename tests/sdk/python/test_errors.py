"""Every client mistake must raise the SDK's own exception class (never a retried 5xx) with an OpenAI envelope."""

from __future__ import annotations

import openai
import pytest

from helpers import names_param
from openai_spec import validate

HELLO = [{"role": "user", "content": "Hello"}]

BAD_CHAT_REQUESTS = {
    "n": {"n": 2},
    "tools": {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
    "temperature": {"temperature": 3.5},
    "response_format": {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
}


@pytest.mark.parametrize("param", sorted(BAD_CHAT_REQUESTS))
def test_unsupported_or_invalid_parameter_is_400(client, http, model_id, param):
    extra = BAD_CHAT_REQUESTS[param]
    with pytest.raises(openai.BadRequestError) as info:
        client.with_options(max_retries=0).chat.completions.create(
            model=model_id, messages=HELLO, max_tokens=4, **extra)
    assert names_param(info.value, param), f"400 does not name {param!r}: {info.value.body}"
    response = http.post("/v1/chat/completions", json={"model": model_id, "messages": HELLO, **extra})
    assert response.status_code == 400
    assert response.headers.get("x-request-id")
    validate("ErrorResponse", response.json())


def test_image_part_is_400(client, model_id):
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]}]
    with pytest.raises(openai.BadRequestError):
        client.with_options(max_retries=0).chat.completions.create(model=model_id, messages=messages, max_tokens=4)


def test_context_too_long_is_400(client, http, model_id):
    long_text = "hello " * 9000  # ~9000 tokens, over SmolLM2's 8192 context
    with pytest.raises(openai.BadRequestError):
        client.with_options(max_retries=0).chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": long_text}], max_tokens=4)
    response = http.post("/v1/completions", json={"model": model_id, "prompt": long_text, "max_tokens": 4})
    assert response.status_code == 400
    validate("ErrorResponse", response.json())


def test_unknown_model_is_404(client, http):
    with pytest.raises(openai.NotFoundError):
        client.with_options(max_retries=0).chat.completions.create(model="no-such-model", messages=HELLO, max_tokens=4)
    response = http.post("/v1/completions", json={"model": "no-such-model", "prompt": "x", "max_tokens": 1})
    assert response.status_code == 404
    validate("ErrorResponse", response.json())


@pytest.mark.parametrize(
    "method,path,content,status",
    [
        ("GET", "/v1/no-such-route", None, 404),
        ("GET", "/v1/chat/completions", None, 405),
        ("POST", "/v1/chat/completions", b"{not json", 400),
        ("POST", "/v1/chat/completions", b'{"messages": "not a list"}', 400),
        ("POST", "/v1/completions", b'{"prompt": "' + b"a" * (17 << 20) + b'"}', 413),
    ],
    ids=["unknown-route", "wrong-method", "bad-json", "wrong-type", "body-over-limit"],
)
def test_router_and_parse_errors_use_the_envelope(http, method, path, content, status):
    response = http.request(method, path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.headers.get("x-request-id")
    validate("ErrorResponse", response.json())


def test_api_key_mode(server_factory, model_id):
    server = server_factory("--api-key", "sk-test-secret", log_name="auth")
    wrong = openai.OpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.models.list()
    validate("ErrorResponse", {"error": info.value.body})
    right = openai.OpenAI(base_url=server.base_url, api_key="sk-test-secret", max_retries=0)
    assert model_id in [m.id for m in right.models.list()]
    r = right.chat.completions.create(model=model_id, messages=HELLO, max_tokens=2)
    assert r.usage.completion_tokens >= 1
    server.stop()
