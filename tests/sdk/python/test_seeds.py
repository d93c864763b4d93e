"""The vendor quickstart's own examples, verbatim: only `YOUR_INSTANCE_IP:8000` is replaced by our host:port.

Source: linode/gpu-instance-quickstart @67db805c, docs/api-usage.md and docs/quickstart.md (the
"One-Click AI Sandbox" docs). Their requests name the model `mistralai/Mistral-7B-Instruct-v0.3`
and tell the user that it must match the deployed id, so these run against an instance started with
`--served-model-name mistralai/Mistral-7B-Instruct-v0.3` (serving SmolLM2 under that id).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from openai_spec import validate

VENDOR_HOST = "http://YOUR_INSTANCE_IP:8000"
VENDOR_MODEL = "mistralai/Mistral-7B-Instruct-v0.3"

# docs/api-usage.md, "Chat Completions / Example Request"
CURL_CHAT_API_USAGE = """curl http://YOUR_INSTANCE_IP:8000/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "mistralai/Mistral-7B-Instruct-v0.3",
    "messages": [
      {"role": "user", "content": "Hello! Can you explain what AI is?"}
    ],
    "temperature": 0.7,
    "max_tokens": 500
  }'"""

# docs/quickstart.md, "Using the API"
CURL_CHAT_QUICKSTART = """curl http://YOUR_INSTANCE_IP:8000/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "mistralai/Mistral-7B-Instruct-v0.3",
    "messages": [{"role": "user", "content": "Hello!"}]
  }'"""

# docs/api-usage.md, "Model Information" and "Troubleshooting"
CURL_MODELS = "curl http://YOUR_INSTANCE_IP:8000/v1/models"
CURL_HEALTH = "curl http://YOUR_INSTANCE_IP:8000/health"

# docs/api-usage.md, "Using with OpenAI SDK"
PYTHON_SDK = '''from openai import OpenAI

# Point to your instance instead of OpenAI
client = OpenAI(
    base_url="http://YOUR_INSTANCE_IP:8000/v1",
    api_key="not-needed"  # Not used, but required by SDK
)

response = client.chat.completions.create(
    model="mistralai/Mistral-7B-Instruct-v0.3",
    messages=[
        {"role": "user", "content": "Hello!"}
    ]
)

print(response.choices[0].message.content)
'''

# docs/api-usage.md, "Using with JavaScript/TypeScript"
JS_FETCH = """const response = await fetch('http://YOUR_INSTANCE_IP:8000/v1/chat/completions', {
  method: 'POST',
  headers: {
    'Content-Type': 'application/json',
  },
  body: JSON.stringify({
    model: 'mistralai/Mistral-7B-Instruct-v0.3',
    messages: [
      { role: 'user', content: 'Hello!' }
    ],
  }),
});

const data = await response.json();
console.log(data.choices[0].message.content);
"""


@pytest.fixture(scope="module")
def vendor(server_factory):
    # Three of the examples set no max_tokens, so a reply may run to the end of the context at
    # temperature 1; node's fetch gives up after 300 s without response headers. A 2048-token
    # context bounds that (still far more than the examples need) without touching the examples.
    server = server_factory("--ctx-size", "2048", served_model_name=VENDOR_MODEL, log_name="seeds")
    yield server
    server.stop()


def with_host(text: str, server) -> str:
    assert VENDOR_HOST in text
    return text.replace(VENDOR_HOST, server.root)


def run(args: list[str], timeout: float = 600) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args[0]} exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def assert_sensible_chat(body: dict) -> None:
    assert "error" not in body, body
    validate("CreateChatCompletionResponse", body)
    assert body["model"] == VENDOR_MODEL
    content = body["choices"][0]["message"]["content"]
    assert isinstance(content, str) and len(content.strip()) >= 2, content
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("command", [CURL_CHAT_API_USAGE, CURL_CHAT_QUICKSTART], ids=["api-usage", "quickstart"])
def test_vendor_curl_chat(vendor, command):
    body = json.loads(run(["bash", "-c", with_host(command, vendor)]))
    assert_sensible_chat(body)


def test_vendor_curl_models_and_health(vendor):
    models = json.loads(run(["bash", "-c", with_host(CURL_MODELS, vendor)]))
    validate("ListModelsResponse", models)
    assert VENDOR_MODEL in [m["id"] for m in models["data"]]
    assert json.loads(run(["bash", "-c", with_host(CURL_HEALTH, vendor)])) == {"status": "ok"}


def test_vendor_python_sdk_example(vendor):
    out = run([sys.executable, "-c", with_host(PYTHON_SDK, vendor)])
    assert out.strip(), "the example printed no answer"


def test_vendor_js_fetch_example(vendor):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    out = run([node, "--input-type=module", "-e", with_host(JS_FETCH, vendor)])
    assert out.strip() and out.strip() != "undefined", out
