"""Run the app with uvicorn: one process, one model, graceful shutdown (accepted requests are finished)."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from .._extras import require
from .http import HttpLimits, guarded_protocol


def make_server(app: Any, host: str = "127.0.0.1", port: int = 8080, *, log_level: str = "info",
                graceful_timeout_s: float = 30.0, limits: HttpLimits | None = None) -> Any:
    """A ``uvicorn.Server`` for ``app`` (``server.run()`` blocks; set ``server.should_exit`` to stop it).

    ``limits``: read deadline, connection cap and uvicorn's keep-alive / concurrency limits (see
    :class:`~moee_plugins.serve.http.HttpLimits`).

    SIGINT/SIGTERM stop it gracefully (a second SIGINT forces); ``run()`` then returns normally instead of
    re-raising the signal, so ``moee serve`` exits 0 after a clean stop.
    """
    uvicorn = require("uvicorn", "serve", feature="moee serve")

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    limits = limits or HttpLimits()
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=graceful_timeout_s, lifespan="on", http=guarded_protocol(limits),
                            timeout_keep_alive=limits.timeout_keep_alive_s, limit_concurrency=limits.limit_concurrency,
                            h11_max_incomplete_event_size=limits.max_header_bytes)
    return GracefulServer(config)


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8080, *, log_level: str = "info",
               graceful_timeout_s: float = 30.0, limits: HttpLimits | None = None) -> None:
    """Serve until SIGINT/SIGTERM; then stop listening, finish what was accepted and stop the worker."""
    make_server(app, host, port, log_level=log_level, graceful_timeout_s=graceful_timeout_s, limits=limits).run()
