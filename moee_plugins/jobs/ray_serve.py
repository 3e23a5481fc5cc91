"""The ``moee serve`` API as a Ray Serve application: N replicas, each a model with its own dynamic batcher,
behind Ray Serve's HTTP proxy (``moee serve --engine ray --replicas N``).

Statistics are fitted once (by :func:`moee_plugins.ray.predictor_kwargs`) and shipped to every replica, so a
vector does not depend on the replica that computed it. Needs ``pip install "moee-plugins[serve,ray]"`` and
``ray[serve]``.
"""

from __future__ import annotations

from typing import Any

from .._extras import require
from ..serve.app import ServeSettings, create_app


class MoEEServeReplica:
    """One replica: builds the embedder from ``predictor_kwargs`` and serves :func:`create_app` over it."""

    def __init__(self, embedder_kwargs: dict[str, Any], settings: ServeSettings) -> None:
        from ..ray import MoEEPredictor

        self._embedder = MoEEPredictor(**embedder_kwargs).embedder
        self._settings = settings
        self._app: Any = None

    def __serve_build_asgi_app__(self) -> Any:
        self._app = create_app(self._embedder, self._settings)
        batcher = self._app.state.batcher
        if not batcher.wait_ready(timeout=600):  # the proxy sends traffic only once the replica is up
            raise RuntimeError(f"moee serve replica: the model is not ready: {batcher.load_error}")
        return self._app

    def check_health(self) -> None:
        """Ray Serve restarts a replica whose worker died."""
        batcher = self._app.state.batcher if self._app is not None else None
        if batcher is not None:
            state, reason = batcher.health()
            if state in ("error", "stopped", "stalled"):
                raise RuntimeError(f"moee serve replica: {reason}")


def deployment(model: str, settings: ServeSettings, *, replicas: int = 1, num_cpus: float | None = None,
               num_gpus: float | None = None, **embedder_options: Any) -> Any:
    """A bound Ray Serve application (pass it to ``ray.serve.run``) serving ``model`` on ``replicas`` replicas.

    Calibrates once in a Ray task with the replicas' resources; ``embedder_options`` are
    :class:`~moee_plugins.MoEEmbedder` arguments.
    """
    serve = require("ray.serve", "serve", feature="moee serve --engine ray (pip install 'ray[serve]')")
    from ..ray import predictor_kwargs

    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be a positive integer, got {replicas!r}")
    kwargs = predictor_kwargs(model, num_cpus=num_cpus, num_gpus=num_gpus, **embedder_options)
    actor_options: dict[str, Any] = {}
    if num_cpus is not None:
        actor_options["num_cpus"] = num_cpus
    if num_gpus is not None:
        actor_options["num_gpus"] = num_gpus
    replica_class = serve.deployment(name="moee", num_replicas=replicas, ray_actor_options=actor_options,
                                     max_ongoing_requests=256)(
        serve.ingress()(MoEEServeReplica))
    return replica_class.bind(kwargs, settings)


def run(application: Any, host: str = "127.0.0.1", port: int = 8080, *, address: str | None = None,
        blocking: bool = True) -> None:
    """Start Ray Serve's proxy on host:port and run ``application`` (blocks until Ctrl-C when ``blocking``)."""
    ray = require("ray", "ray")
    serve = require("ray.serve", "serve", feature="moee serve --engine ray (pip install 'ray[serve]')")
    if not ray.is_initialized():
        ray.init(address=address)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application, name="moee", route_prefix="/", blocking=blocking)
