"""``moee serve --engine ray``: the same API from 2 Ray Serve replicas on a local 2-CPU cluster."""

from __future__ import annotations

import time

import numpy as np
import pytest
from serve_helpers import API_KEY, MODEL_NAME, free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_two_replicas_serve_the_same_vectors(ray_cluster, tiny_model_dir, tiny_embedder):
    serve = pytest.importorskip("ray.serve")
    openai = pytest.importorskip("openai")
    from moee_plugins.jobs.ray_serve import deployment
    from moee_plugins.serve import ServeSettings

    port = free_port()
    settings = ServeSettings(model_name=MODEL_NAME, api_key=API_KEY)
    # the driver's statistics, shipped to both replicas (what predictor_kwargs does after calibrating once)
    application = deployment(str(tiny_model_dir), settings, replicas=2, num_cpus=0.5, device="cpu",
                             statistics=tiny_embedder.statistics.to_dict())
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(application, name="moee", route_prefix="/", blocking=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            replicas = serve.status().applications["moee"].deployments["moee"].replica_states
            if replicas.get("RUNNING") == 2:
                break
            time.sleep(0.2)
        assert serve.status().applications["moee"].deployments["moee"].replica_states.get("RUNNING") == 2
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0, timeout=60)
        texts = ["ray serve one", "ray serve two", "three"]
        expected = tiny_embedder.encode(texts)
        for _ in range(4):  # requests spread over both replicas; every one gives the in-process vectors
            response = client.embeddings.create(model=MODEL_NAME, input=texts)
            np.testing.assert_allclose([d.embedding for d in response.data], expected, atol=1e-6, rtol=0)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).embeddings.create(
                model=MODEL_NAME, input=texts)
    finally:
        serve.shutdown()
