"""The official LangChain conformance suites, unmodified, offline against the tiny local MoE model.

No standard test is overridden or skipped: ``test_no_overrides_DO_NOT_OVERRIDE`` checks that itself.
The model is loaded through the ``moee:tiny-olmoe`` alias with network sockets blocked.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from moee_plugins.langchain import MoEEmbeddings

_PARAMS: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _offline_tiny_model(tiny_alias: str, tiny_embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the suites at the tiny model (reusing its calibration) and refuse any network connection."""
    _PARAMS.clear()
    _PARAMS.update(model=tiny_alias, model_kwargs={"device": "cpu", "statistics": tiny_embedder.statistics})
    real_connect = socket.socket.connect

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise RuntimeError(f"network access attempted during an offline test: {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


class _TinyModelParams:
    @property
    def embeddings_class(self) -> type[MoEEmbeddings]:
        return MoEEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        assert _PARAMS, "the _offline_tiny_model fixture did not run"
        return dict(_PARAMS)


class TestMoEEmbeddingsUnit(_TinyModelParams, EmbeddingsUnitTests):
    pass


class TestMoEEmbeddingsIntegration(_TinyModelParams, EmbeddingsIntegrationTests):
    pass
