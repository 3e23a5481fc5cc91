"""``moee serve`` as users run it: a subprocess on a free loopback port, ready once /health is 200, stopped by
SIGTERM with exit code 0; bad options exit 2 with a one-line message."""

from __future__ import annotations

import os
import signal
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
               "--device", "cpu", "--port", str(port), "--served-model-name", "tiny", "--log-level", "warning"]
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
            response = client.post(f"{url}/v1/embeddings", headers={"Authorization": "Bearer from-env"},
                                   json={"model": "tiny", "input": texts, "encoding_format": "float"})
        assert response.status_code == 200, response.text
        got = np.asarray([d["embedding"] for d in response.json()["data"]])
        expected = tiny_embedder.combine(tiny_embedder.encode_parts(texts), mode="hs")
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
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
    ],
)
def test_bad_options_exit_2_with_one_line(flags, message, capsys, tmp_path):
    assert main(["serve", "--model", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moee serve: error: ") and message in err and err.count("\n") == 1
