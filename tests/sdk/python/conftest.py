"""Fixtures for the SDK conformance tests: the server under test, SDK clients, and extra server instances.

scripts/test starts the main server and sets AI_SANDBOX_BASE_URL (".../v1") and AI_SANDBOX_MODEL_ID.
Tests that need a differently configured server (API key, the vendor quickstart's model id) start
their own instance of AI_SANDBOX_BIN on a free port. Without AI_SANDBOX_BASE_URL the main server is
started here too, so `pytest tests/sdk/python` also works on its own once the binary is built.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MODEL_PATH = os.environ.get("AI_SANDBOX_MODEL_PATH", str(REPO_ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
STARTUP_TIMEOUT_S = float(os.environ.get("AI_SANDBOX_STARTUP_TIMEOUT", "180"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One running `ai-sandbox-api` process on 127.0.0.1, stopped by `stop()`."""

    def __init__(self, *extra_args: str, served_model_name: str = DEFAULT_MODEL_ID, log_name: str = "server"):
        binary = os.environ.get("AI_SANDBOX_BIN")
        if not binary:
            pytest.skip("AI_SANDBOX_BIN is not set: cannot start an extra server instance")
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"
        log_dir = Path(os.environ.get("AI_SANDBOX_LOG_DIR", "/tmp"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{log_name}-{self.port}.log"
        args = [
            binary, "--model", MODEL_PATH, "--host", "127.0.0.1", "--port", str(self.port),
            "--served-model-name", served_model_name, "--threads", os.environ.get("AI_SANDBOX_TEST_THREADS", "2"),
            *extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AI_SANDBOX_")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                health = httpx.get(f"{self.root}/health", timeout=2)
                if health.status_code == 200:
                    return
                if '"status":"error"' in health.text.replace(" ", ""):
                    self.stop()
                    raise RuntimeError(f"model failed to load: {health.text}; log: {self.log_path}")
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not healthy after {STARTUP_TIMEOUT_S}s; log: {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def base_url() -> str:
    url = os.environ.get("AI_SANDBOX_BASE_URL")
    if url:
        yield url.rstrip("/")
        return
    server = Server(log_name="main")
    yield server.base_url
    server.stop()


@pytest.fixture(scope="session")
def root_url(base_url: str) -> str:
    return base_url.removesuffix("/v1")


@pytest.fixture(scope="session")
def model_id() -> str:
    return os.environ.get("AI_SANDBOX_MODEL_ID", DEFAULT_MODEL_ID)


@pytest.fixture(scope="session")
def client(base_url: str) -> openai.OpenAI:
    # Any key works when the server runs without --api-key; the SDK refuses to start without one.
    return openai.OpenAI(base_url=base_url, api_key="sk-anything", timeout=300)


@pytest.fixture(scope="session")
def http(root_url: str) -> httpx.Client:
    with httpx.Client(base_url=root_url, timeout=300, headers={"authorization": "Bearer sk-anything"}) as c:
        yield c


@pytest.fixture(scope="session")
def server_factory():
    started: list[Server] = []

    def start(*extra_args: str, **kwargs) -> Server:
        server = Server(*extra_args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
