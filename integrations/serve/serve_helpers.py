"""Helpers of the serve tests: a real uvicorn server on a free loopback port in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

MODEL_NAME = "moee-tiny"
API_KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    app: Any
    server: Any
    thread: threading.Thread
    url: str

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def client(self, key: str | None = API_KEY, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.Client(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs)

    def stop(self, timeout: float = 30) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_server(embedder: Any, **settings: Any) -> RunningServer:
    """Start ``create_app(embedder, ...)`` under uvicorn on 127.0.0.1 and wait (bounded) until /health is 200.
    ``limits``: an :class:`~moee_plugins.serve.http.HttpLimits`; the rest are ``ServeSettings`` fields."""
    from moee_plugins.serve import BatchSettings, ServeSettings, create_app
    from moee_plugins.serve.server import make_server

    batch = settings.pop("batch", None) or BatchSettings()
    limits = settings.pop("limits", None)
    app = create_app(embedder, ServeSettings(model_name=settings.pop("model_name", MODEL_NAME),
                                             api_key=settings.pop("api_key", API_KEY), batch=batch, **settings))
    port = free_port()
    server = make_server(app, "127.0.0.1", port, log_level="warning", graceful_timeout_s=20, limits=limits)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    running = RunningServer(app, server, thread, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(f"{running.url}/health").status_code == 200:
                    return running
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    running.stop()
    raise RuntimeError("the test server did not become healthy within 60 s")


class GatedEmbedder:
    """The tiny embedder, but every forward pass waits for ``gate`` to open: makes queueing deterministic."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls = 0

    def encode_batch(self, rows: Any) -> Any:
        self.calls += 1
        self.entered.set()
        if not self.gate.wait(30):
            raise TimeoutError("the test never opened the gate")
        return self._embedder.encode_batch(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)


def assert_error(response: Any, status: int, fragment: str, code: str | None = None) -> dict:
    """The response is an OpenAI-shaped error of ``status`` whose message says ``fragment`` (and has ``code``)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"], error["message"]
    if code is not None:
        assert error["code"] == code
    return error
