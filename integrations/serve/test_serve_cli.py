"""``moee serve`` as users run it: a subprocess on a free loopback port, ready once /health is 200, stopped by
SIGTERM with exit code 0; bad options exit 2 with a one-line message."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import free_port

from moee_plugins.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_moee_serve_subprocess_answers_then_stops_on_sigterm(tiny_model_dir, tiny_embedder, tmp_path):
    httpx = pytest.importorskip("httpx")
    port = free_port()
    env = {**os.environ, "MOEE_API_KEY": "from-env", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "moee_plugins.cli", "serve", "--model", str(tiny_model_dir), "--mode", "hs",
               "--device", "cpu", "--port", str(port), "--log-level", "warning", "--named-prompt", "query=query: ",
               "--max-header-bytes", "4096"]
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            else:
                log.seek(0)
                pytest.fail(f"moee serve did not become healthy: {log.read()[-2000:]}")
            texts = ["hello server", "second text"]
            assert client.post(f"{url}/v1/embeddings", json={"input": texts}).status_code == 401  # key from the env
            key = {"Authorization": "Bearer from-env"}
            response = client.post(f"{url}/v1/embeddings", headers=key,
                                   json={"model": tiny_model_dir.name, "input": texts, "encoding_format": "float"})
            queries = client.post(f"{url}/v1/embeddings", headers=key,
                                  json={"input": texts, "encoding_format": "float", "input_type": "query"})
            assert client.get(f"{url}/v1/models", headers=key).json()["data"][0]["id"] == tiny_model_dir.name
            assert client.get(f"{url}/docs", headers=key).status_code == 404
        assert response.status_code == 200, response.text
        got = np.asarray([d["embedding"] for d in response.json()["data"]])
        expected = tiny_embedder.combine(tiny_embedder.encode_parts(texts), mode="hs")
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        got = np.asarray([d["embedding"] for d in queries.json()["data"]])
        expected = tiny_embedder.combine(tiny_embedder.encode_parts(texts, prompt="query: "), mode="hs")
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as big:  # --max-header-bytes reached uvicorn
            big.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 8192 + b"\r\n\r\n")
            try:
                answer = big.recv(1024)
            except ConnectionResetError:
                answer = b""
            assert not answer.startswith(b"HTTP/1.1 200")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "0"], "--port must be a positive integer <= 65535"),
        (["--max-inputs-per-request", "0"], "--max-inputs-per-request must be a positive integer"),
        (["--max-inputs-per-request", "10", "--max-queue-inputs", "5"], "cannot exceed max_queue_inputs"),
        (["--max-wait-ms", "-1"], "max_wait_ms must be between 0 and 10000"),
        (["--layers", "a,b"], "--layers must be comma-separated integers"),
        (["--timeout-read", "0"], "--timeout-read must be a number of seconds in (0, 3600]"),
        (["--max-connections", "0"], "--max-connections must be a positive integer"),
        (["--max-header-bytes", "0"], "--max-header-bytes must be a positive integer"),
        (["--max-buffered-bytes", "1000"], "max_buffered_bytes (1000) cannot be below max_request_bytes"),
        (["--limit-concurrency", "0"], "--limit-concurrency must be a positive integer"),
        (["--named-prompt", "query"], "--named-prompt takes NAME=PROMPT"),
        (["--named-prompt", "=x"], "--named-prompt takes NAME=PROMPT"),
        (["--named-prompt", "title={text} and {text}"], "prompt 'title': prompt '{text} and {text}' is neither a preset"),
    ],
)
def test_bad_options_exit_2_with_one_line(flags, message, capsys, tmp_path):
    assert main(["serve", "--model", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moee serve: error: ") and message in err and err.count("\n") == 1


def test_serve_flags_become_settings_and_limits(tiny_model_dir):
    from moee_plugins.cli import build_parser
    from moee_plugins.commands.serve import limits_from, settings_from

    args = build_parser().parse_args(["serve", "--model", str(tiny_model_dir), "--named-prompt", "query=query: ",
                                      "--named-prompt", "title=Title: {text}", "--docs", "--cors-origin", "https://a.example",
                                      "--timeout-read", "2.5", "--max-connections", "7",
                                      "--max-header-bytes", "4096", "--timeout-keep-alive", "9",
                                      "--limit-concurrency", "11"])
    settings, limits = settings_from(args), limits_from(args)
    assert settings.model_name == tiny_model_dir.name  # the folder's name, not its path
    assert settings.prompts == {"query": "query: ", "document": None, "title": "Title: {text}"}
    assert settings.docs and settings.cors_origins == ("https://a.example",)
    assert (limits.timeout_read_s, limits.max_header_bytes, limits.max_connections, limits.timeout_keep_alive_s,
            limits.limit_concurrency) == (2.5, 4096, 7, 9, 11)
    plain = settings_from(build_parser().parse_args(["serve", "--model", str(tiny_model_dir)]))
    assert not plain.docs and plain.cors_origins == () and plain.prompts == {"query": None, "document": None}
