"""The HTTP edge of ``moee serve``: connection limits and read deadlines under uvicorn, the JSON body reader,
and the name a server shows for its model.

uvicorn closes idle keep-alive connections but has no deadline for a request's headers or body, so a client
that sends a request slowly (slow-loris) or stops half-way through a body holds its connection and buffers
forever. :func:`guarded_protocol` adds both (one read deadline per request) and a cap on open connections.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._extras import require
from .schemas import ApiError, check_media_type, decode_json, too_large


@dataclass(frozen=True)
class HttpLimits:
    """Connection-level limits of one server (flags of ``moee serve``).

    ``timeout_read_s``: a request's headers and body must arrive within this many seconds of its first byte
    (else the connection is closed); ``max_header_bytes``: a request whose headers are longer is disconnected
    (httptools buffers headers without a limit); ``max_connections``: connections beyond it are closed when accepted;
    ``timeout_keep_alive_s`` and ``limit_concurrency``: uvicorn's own (idle keep-alive connections are closed
    after it; beyond ``limit_concurrency`` connections or requests in flight, new requests get 503).
    """

    timeout_read_s: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 1024
    timeout_keep_alive_s: int = 5
    limit_concurrency: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.timeout_read_s, bool) or not isinstance(self.timeout_read_s, (int, float)) \
                or not 0 < self.timeout_read_s <= 3600:
            raise ValueError(f"timeout_read_s must be a number of seconds in (0, 3600], got {self.timeout_read_s!r}")
        for name in ("max_header_bytes", "max_connections", "timeout_keep_alive_s", "limit_concurrency"):
            value = getattr(self, name)
            if value is None and name == "limit_concurrency":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def guarded_protocol(limits: HttpLimits) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools or h11, as uvicorn would pick) with a per-request read deadline, a cap
    on header bytes and a connection cap. The deadline runs from a request's first byte until its body is
    complete; it is not armed while the app computes or answers, nor on an idle keep-alive connection (uvicorn's
    own timeout)."""
    auto = require("uvicorn.protocols.http.auto", "serve", feature="moee serve")

    class GuardedHTTPProtocol(auto.AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _read_deadline: asyncio.TimerHandle | None = None
        _header_bytes = 0  # bytes received while the current request's headers are incomplete

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                transport.close()  # over the cap: refused before it can hold anything
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            awaiting_headers = self._awaiting_headers()
            super().data_received(data)
            if self._awaiting_headers():  # every byte so far belongs to unfinished headers
                self._header_bytes = self._header_bytes + len(data) if awaiting_headers else len(data)
                too_long = self._header_bytes > limits.max_header_bytes
            else:  # headers complete (perhaps all in this chunk): their own size
                self._header_bytes = 0
                too_long = awaiting_headers and sum(len(k) + len(v) + 4 for k, v in self.headers) > limits.max_header_bytes
            if too_long and not self.transport.is_closing():
                self.transport.close()
                return
            if self._reading():
                if self._read_deadline is None:
                    self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            cycle = self.cycle
            return cycle is None or cycle.response_complete

        def _reading(self) -> bool:
            """Whether a request is still arriving: headers not complete yet, or its body not complete."""
            return self._awaiting_headers() or self.cycle.more_body

        def _arm(self) -> None:
            self._read_deadline = asyncio.get_running_loop().call_later(limits.timeout_read_s, self._expired)

        def _disarm(self) -> None:
            if self._read_deadline is not None:
                self._read_deadline.cancel()
                self._read_deadline = None

        def _expired(self) -> None:
            self._read_deadline = None
            if self._reading() and not self.transport.is_closing():
                self.transport.close()

    return GuardedHTTPProtocol


DOCS_ROUTES = ("/docs", "/redoc", "/openapi.json")


class ClientGone(Exception):
    """The client disconnected before its request was answered."""


class BodyBudget:
    """Bytes of request bodies being read at once, across all requests (event-loop only, so no lock): many
    slow or half-sent large bodies cannot add up past ``limit``; a request that would is told to retry (503)."""

    def __init__(self, limit: int, retry_after_s: int = 1) -> None:
        # the refused body is left unread, so the connection cannot carry another request: say so (Connection:
        # close), or a client reusing it would find it gone
        self.limit, self.in_use = limit, 0
        self._retry = {"Retry-After": str(retry_after_s), "Connection": "close"}

    def take(self, size: int) -> None:
        if self.in_use + size > self.limit:
            raise ApiError(503, f"the server is reading {self.in_use} bytes of other request bodies (limit "
                           f"{self.limit}, --max-buffered-bytes); retry shortly", kind="server_error",
                           code="busy_reading", headers=self._retry)
        self.in_use += size

    def give_back(self, size: int) -> None:
        self.in_use -= size


async def read_json(request: Any, limit: int, budget: BodyBudget | None = None) -> dict[str, Any]:
    """The body as a JSON object: ``application/json`` only (415), at most ``limit`` bytes (413, also without
    a Content-Length), within the server-wide ``budget`` while it is read (503), valid JSON (400)."""
    requests = require("starlette.requests", "serve", feature="moee serve")
    check_media_type(request.headers.get("content-type"))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and len(declared) < 20 and int(declared) > limit:
        raise too_large(int(declared), limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            if budget is not None:
                budget.take(len(chunk))
            size += len(chunk)
            if size > limit:
                raise too_large(size, limit)
            chunks.append(chunk)
    except requests.ClientDisconnect:
        raise ClientGone from None
    finally:
        if budget is not None:
            budget.give_back(size)
    return decode_json(b"".join(chunks))


def served_name(reference: str) -> str:
    """The name a server shows for ``reference`` (``/v1/models``, answers, errors): the alias of ``moee:name``,
    the folder's name of a local path, a hub id as given; never a full local path."""
    name = reference.strip()
    if name.startswith("moee:"):
        name = name[len("moee:") :]
    looks_local = os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\")) or os.path.exists(name)
    if looks_local:
        name = os.path.basename(os.path.normpath(os.path.expanduser(name))) or "moee"
    return name or "moee"


def add_docs_routes(app: Any, fastapi: Any, authorize: Callable[..., None]) -> None:
    """``/openapi.json``, ``/docs`` (Swagger UI) and ``/redoc``, behind the same key as the API."""
    docs = require("fastapi.openapi.docs", "serve", feature="moee serve")
    guarded = [fastapi.Depends(authorize)]

    async def openapi() -> Any:
        return app.openapi()

    async def swagger() -> Any:
        return docs.get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    async def redoc() -> Any:
        return docs.get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")

    for path, endpoint in zip(DOCS_ROUTES, (swagger, redoc, openapi), strict=True):
        app.add_api_route(path, endpoint, methods=["GET"], dependencies=guarded, include_in_schema=False)


__all__ = ["ApiError", "BodyBudget", "ClientGone", "HttpLimits", "add_docs_routes", "guarded_protocol", "read_json",
           "served_name"]
