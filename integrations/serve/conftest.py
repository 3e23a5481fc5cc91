"""Fixtures of the serve tests: servers on free loopback ports, and a small local Ray cluster (2 CPUs)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("httpx")

from serve_helpers import RunningServer, start_server


@pytest.fixture
def serve_factory() -> Iterator[Callable[..., RunningServer]]:
    """Start servers for one test; all are stopped after it."""
    started: list[RunningServer] = []

    def factory(embedder: Any, **settings: Any) -> RunningServer:
        running = start_server(embedder, **settings)
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


@pytest.fixture(scope="module")
def server(one_thread: None, tiny_embedder: Any) -> Iterator[RunningServer]:
    """One server over the shared tiny embedder for a whole module."""
    running = start_server(tiny_embedder)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    pytest.importorskip("ray.serve")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():  # pragma: no cover - another module left one running
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024**2,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
