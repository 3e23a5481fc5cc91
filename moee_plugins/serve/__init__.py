"""``moee serve``: MoEE embeddings over HTTP with OpenAI's ``/v1/embeddings`` API and dynamic batching.

Needs ``pip install "moee-plugins[serve]"`` (FastAPI, uvicorn, prometheus-client); Ray Serve scale-out needs
``moee-plugins[serve,ray]`` too. Importing this package imports neither.

* :func:`~moee_plugins.serve.app.create_app`: the FastAPI app over a built embedder (or a loader).
* :class:`~moee_plugins.serve.batcher.DynamicBatcher`: the worker thread that owns the model.
* :func:`~moee_plugins.serve.server.run_server`: uvicorn on one host/port, graceful on SIGINT/SIGTERM, with
  :class:`~moee_plugins.serve.http.HttpLimits` (read deadline, connection cap).
* :func:`~moee_plugins.jobs.ray_serve.deployment`: the same API as a Ray Serve application with N replicas.
"""

from __future__ import annotations

from .app import ApiError, ServeSettings, create_app
from .batcher import BatchFailed, BatchSettings, DynamicBatcher, NotReady, Overloaded, WorkerStopped
from .http import HttpLimits

__all__ = ["ApiError", "BatchFailed", "BatchSettings", "DynamicBatcher", "HttpLimits", "NotReady", "Overloaded",
           "ServeSettings", "WorkerStopped", "create_app"]
