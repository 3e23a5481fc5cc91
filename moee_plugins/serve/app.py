"""The HTTP API of ``moee serve``: OpenAI's ``/v1/embeddings`` and ``/v1/models``, plus ``/similarity``,
``/health`` and ``/metrics``, over a :class:`~moee_plugins.serve.batcher.DynamicBatcher`.

Request bodies are parsed here rather than by pydantic models so that every refusal names the field and
the problem in OpenAI's error shape (``{"error": {"message", "type", "param", "code"}}``).
"""

# no "from __future__ import annotations": FastAPI reads the handlers' annotations at run time
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._extras import require
from ..core.chunking import encode_request
from .batcher import BatchFailed, BatchSettings, DynamicBatcher, NotReady, Overloaded, WorkerStopped
from .metrics import ServerMetrics
from .tokenizing import TokenizerPool

logger = logging.getLogger("moee_plugins")

ROUTES = ("/v1/embeddings", "/v1/models", "/similarity", "/health", "/metrics")
ENCODING_FORMATS = ("float", "base64")
TRUNCATED_HEADER = "X-MoEE-Truncated"  # how many inputs were cut to max_length tokens
TRUNCATED_INDICES_HEADER = "X-MoEE-Truncated-Indices"  # which ones (the first 256)


@dataclass(frozen=True)
class ServeSettings:
    """Limits and identity of one server. ``model_name`` is what ``/v1/models`` lists and requests must name
    (requests may also leave ``model`` out)."""

    model_name: str
    api_key: str | None = None
    max_inputs_per_request: int = 2048
    max_request_bytes: int = 8 * 1024 * 1024
    retry_after_s: int = 1
    batch: BatchSettings = field(default_factory=BatchSettings)
    request_timeout_s: float = 300.0  # tokenising + queueing + the model; past it: 504 and the rows are dropped
    tokenizer_threads: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ValueError("model_name must be a non-empty string")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("api_key must be a non-empty string or None")
        if isinstance(self.request_timeout_s, bool) or not isinstance(self.request_timeout_s, (int, float)) \
                or not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be a positive number of seconds, got {self.request_timeout_s!r}")
        for name in ("max_inputs_per_request", "max_request_bytes", "retry_after_s", "tokenizer_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_inputs_per_request > self.batch.max_queue_inputs:
            raise ValueError(f"max_inputs_per_request ({self.max_inputs_per_request}) cannot exceed max_queue_inputs "
                             f"({self.batch.max_queue_inputs}): such a request could never be queued")


class ApiError(Exception):
    """A refusal with its HTTP status, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------- parsing
def parse_texts(value: Any, param: str, limit: int) -> list[str]:
    """A string or a non-empty list of non-empty strings, at most ``limit`` of them."""
    if value is None:
        raise ApiError(400, f"'{param}' is required: a string or a list of strings", param=param, code="missing")
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list):
        raise ApiError(400, f"'{param}' must be a string or a list of strings, got {_json_type(value)}", param=param)
    if not value:
        raise ApiError(400, f"'{param}' must not be an empty list", param=param)
    if len(value) > limit:
        raise ApiError(400, f"'{param}' holds {len(value)} inputs; this server takes at most {limit} per request: "
                       "split it into several requests", param=param, code="too_many_inputs")
    for i, item in enumerate(value):
        if isinstance(item, str):
            if not item:
                raise ApiError(400, f"'{param}[{i}]' is an empty string: every input needs some text", param=param)
            continue
        if _is_token_ids(item):
            raise ApiError(400, f"'{param}' holds token ids; this server embeds text only (its tokens depend on the "
                           "MoEE prompt): send the texts as strings", param=param, code="token_ids_not_supported")
        raise ApiError(400, f"'{param}[{i}]' must be a string, got {_json_type(item)}", param=param)
    return value


def _is_token_ids(item: Any) -> bool:
    if isinstance(item, bool):
        return False
    if isinstance(item, int):
        return True
    return isinstance(item, list) and bool(item) and all(isinstance(v, int) and not isinstance(v, bool) for v in item)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _encoding_format(body: dict[str, Any]) -> str:
    fmt = body.get("encoding_format")
    if fmt is None:
        return "float"
    if fmt not in ENCODING_FORMATS:
        raise ApiError(400, f"'encoding_format' must be one of {list(ENCODING_FORMATS)}, got {fmt!r}",
                       param="encoding_format")
    return fmt


# ---------------------------------------------------------------------------------------------- app
class _RequestMetrics:
    """ASGI middleware counting every answered request by route and status, with its latency."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status, started = 500, time.perf_counter()

        async def send_counting(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            self.metrics.observe_request(route, status, time.perf_counter() - started)


class _ClientGone(Exception):
    pass


def _incident(what: str, exc: BaseException | None = None) -> str:
    """Log an internal failure under a fresh id and return the id: clients get the id, never the details."""
    incident = uuid.uuid4().hex[:12]
    logger.error("moee serve: %s [incident %s]", what, incident, exc_info=exc)
    return incident


async def _read_json(request: Any, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise ApiError(400, "the request has no body: send a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {_json_type(body)}", code="invalid_json")
    return body


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, f"the request body has {size} bytes or more; this server takes at most {limit} "
                    "(--max-request-bytes): send fewer or shorter texts per request", code="request_too_large")


def _embeddings_json(vectors: np.ndarray, fmt: str, model_name: str, tokens: int) -> bytes:
    """OpenAI's embeddings response, serialised in a thread: neither the event loop nor the model waits on it."""
    if fmt == "base64":
        little = vectors.astype("<f4", copy=False)
        items: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    else:
        items = vectors.tolist()
    data = [{"object": "embedding", "index": i, "embedding": item} for i, item in enumerate(items)]
    payload = {"object": "list", "data": data, "model": model_name,
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return json.dumps(payload, separators=(",", ":")).encode()


async def _until_done(request: Any, future: Any, deadline: float, metrics: ServerMetrics) -> Any:
    """The result of a worker's future; the client going away (its work is dropped, nobody else's), the
    deadline passing (504) and a failure of the model on this request (a generic error naming an incident id)
    are answered here."""
    waiter = asyncio.wrap_future(future)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({waiter, watcher}, timeout=max(0.0, deadline - time.monotonic()),
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if waiter not in done:
        future.cancel()  # now, not when the loop gets to it: its rows must not be picked for a forward pass
        waiter.cancel()
        if watcher in done:
            raise _ClientGone
        metrics.timeouts.inc()
        raise ApiError(504, "the request was not answered within the server's time limit (--request-timeout): "
                       "retry later or send fewer texts per request", kind="server_error", code="timeout")
    try:
        return waiter.result()
    except WorkerStopped:
        raise ApiError(503, "the model worker stopped; the server must be restarted", kind="server_error",
                       code="worker_stopped") from None
    except BatchFailed as exc:
        incident = _incident(f"a request failed: {exc}", exc.__cause__ or exc.__context__)
        raise ApiError(500, f"the model could not embed this request's input (incident {incident})",
                       kind="server_error", code="embedding_failed") from None
    except Exception as exc:
        incident = _incident("a request failed", exc)
        raise ApiError(500, f"internal server error (incident {incident}, logged by the server)", kind="server_error",
                       code="internal_error") from None


async def _until_disconnect(request: Any) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(embedder: Any, settings: ServeSettings | None = None) -> Any:
    """A FastAPI app serving ``embedder`` (a built :class:`~moee_plugins.MoEEmbedder`, or a callable building
    one on the worker thread so ``/health`` answers "loading" meanwhile).

    The app owns its :class:`DynamicBatcher` (``app.state.batcher``) and metrics (``app.state.metrics``); the
    batcher stops, after finishing every accepted request, when the app's lifespan ends.
    """
    fastapi = require("fastapi", "serve", feature="moee serve")
    responses = require("fastapi.responses", "serve", feature="moee serve")
    starlette_exceptions = require("starlette.exceptions", "serve", feature="moee serve")
    concurrency = require("starlette.concurrency", "serve", feature="moee serve")
    JSONResponse, Response = responses.JSONResponse, responses.Response

    if settings is None:
        if callable(embedder):
            raise ValueError("create_app(loader) needs settings=ServeSettings(model_name=...)")
        settings = ServeSettings(model_name=str(embedder.config.get("model") or "moee"))
    metrics = ServerMetrics()
    batcher = DynamicBatcher(embedder, settings.batch, observer=metrics)
    tokenizer: list[TokenizerPool] = []  # made on the first request (the embedder may still be loading before)
    key_digest = hashlib.sha256(settings.api_key.encode()).digest() if settings.api_key else None
    retry = {"Retry-After": str(settings.retry_after_s)}
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        logger.info("moee serve: shutting down; finishing %d queued inputs", batcher.queued_inputs)
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        for pool in tokenizer:
            pool.close()

    app = fastapi.FastAPI(title="moee serve", summary="MoEE embeddings, OpenAI-compatible", lifespan=lifespan)
    app.state.batcher, app.state.metrics, app.state.settings = batcher, metrics, settings
    app.add_middleware(_RequestMetrics, metrics=metrics)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Any, exc: ApiError) -> Any:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(starlette_exceptions.HTTPException)
    async def _http_error(_request: Any, exc: Any) -> Any:
        error = ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _server_error(_request: Any, exc: Exception) -> Any:
        incident = _incident("internal error", exc)
        error = ApiError(500, f"internal server error (incident {incident}, logged by the server)", kind="server_error",
                         code="internal_error")
        return JSONResponse(error.body(), status_code=500)

    def authorize(request: fastapi.Request) -> None:
        if key_digest is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, key_digest):
            raise ApiError(401, "invalid or missing API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def require_ready() -> Any:
        if batcher.ready:
            return batcher.embedder
        if batcher.closing:
            raise ApiError(503, "the server is shutting down", kind="server_error", code="shutting_down", headers=retry)
        state, reason = batcher.health()
        if batcher.load_error is not None:
            raise ApiError(503, "the model failed to load (see the server log)", kind="server_error",
                           code="model_load_failed")
        if state == "stopped":
            raise ApiError(503, reason or "the model worker stopped", kind="server_error", code="worker_stopped")
        raise ApiError(503, "the model is still loading; retry shortly", kind="server_error", code="loading",
                       headers=retry)

    def check_model(body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is not None and model != settings.model_name:
            raise ApiError(404, f"model {model!r} is not served here; this server serves {settings.model_name!r}",
                           param="model", code="model_not_found")

    def dimensions_of(body: dict[str, Any], embedder: Any) -> int | None:
        """None for full vectors, else a supported reduced dimension."""
        value = body.get("dimensions")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApiError(400, f"'dimensions' must be a positive integer, got {value!r}", param="dimensions")
        if value == embedder.dim:
            return None
        if batcher.supports_dimensions(value):
            return value
        reduced = sorted(embedder.supported_dimensions)
        offer = f"{embedder.dim}" + (f" or one of the reduced sizes {reduced}" if reduced else
                                     " (this model has no reduced dimensions fitted)")
        raise ApiError(400, f"dimensions={value} is not available: ask for {offer}", param="dimensions",
                       code="unsupported_dimensions")

    async def embed(request: Any, embedder: Any, texts: list[str], dimensions: int | None
                    ) -> tuple[np.ndarray, int, list[int]]:
        """Vectors (input order), tokens used and the indices of truncated inputs, via the batcher."""
        if getattr(embedder, "long_texts", "truncate") == "chunk":  # windows pooled per text (core/chunking.py)
            vectors, tokens = await concurrency.run_in_threadpool(encode_request, embedder, texts, dimensions)
            metrics.inputs.inc(len(texts))
            metrics.tokens.inc(tokens)
            return vectors, tokens, []
        deadline = time.monotonic() + settings.request_timeout_s
        if not tokenizer:  # no await in between: one pool, however many first requests arrive together
            tokenizer.append(TokenizerPool(embedder, settings.tokenizer_threads))
        token_ids, truncated = await _until_done(request, tokenizer[0].submit(texts), deadline, metrics)
        try:
            future = batcher.submit(token_ids, dimensions)
        except Overloaded as exc:
            metrics.rejected.labels(reason="overloaded").inc()
            raise ApiError(503, f"the server is overloaded ({exc}); retry after {settings.retry_after_s} s",
                           kind="server_error", code="overloaded", headers=retry) from None
        except NotReady as exc:
            raise ApiError(503, str(exc), kind="server_error", code="not_ready", headers=retry) from None
        vectors = await _until_done(request, future, deadline, metrics)
        tokens = sum(len(row) for row in token_ids)
        metrics.inputs.inc(len(texts))
        metrics.tokens.inc(tokens)
        if truncated:
            metrics.truncated.inc(len(truncated))
        return vectors, tokens, truncated

    def truncation_headers(truncated: list[int]) -> dict[str, str]:
        headers = {TRUNCATED_HEADER: str(len(truncated))}
        if truncated:
            headers[TRUNCATED_INDICES_HEADER] = ",".join(map(str, truncated[:256]))
        return headers

    @app.post("/v1/embeddings", dependencies=[fastapi.Depends(authorize)])
    async def embeddings(request: fastapi.Request) -> Any:
        body = await _read_json(request, settings.max_request_bytes)
        check_model(body)
        texts = parse_texts(body.get("input"), "input", settings.max_inputs_per_request)
        fmt = _encoding_format(body)
        embedder = require_ready()
        dimensions = dimensions_of(body, embedder)
        try:
            vectors, tokens, truncated = await embed(request, embedder, texts, dimensions)
        except _ClientGone:
            return Response(status_code=499)
        content = await concurrency.run_in_threadpool(_embeddings_json, vectors, fmt, settings.model_name, tokens)
        return Response(content, media_type="application/json", headers=truncation_headers(truncated))

    @app.post("/similarity", dependencies=[fastapi.Depends(authorize)])
    async def similarity(request: fastapi.Request) -> Any:
        """{"queries": [...], "documents": [...]} -> the mode's own similarity, one row per query."""
        body = await _read_json(request, settings.max_request_bytes)
        check_model(body)
        queries = parse_texts(body.get("queries"), "queries", settings.max_inputs_per_request)
        documents = parse_texts(body.get("documents"), "documents", settings.max_inputs_per_request)
        if len(queries) + len(documents) > settings.max_inputs_per_request:
            raise ApiError(400, f"{len(queries) + len(documents)} texts in all; this server takes at most "
                           f"{settings.max_inputs_per_request} per request", code="too_many_inputs")
        embedder = require_ready()
        try:
            vectors, tokens, truncated = await embed(request, embedder, queries + documents, None)
        except _ClientGone:
            return Response(status_code=499)
        scores = embedder.similarity(vectors[: len(queries)], vectors[len(queries) :])
        payload = {"object": "similarity", "model": settings.model_name, "mode": embedder.mode,
                   "data": np.asarray(scores, dtype=np.float32).tolist(),
                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return JSONResponse(payload, headers=truncation_headers(truncated))

    @app.get("/v1/models", dependencies=[fastapi.Depends(authorize)])
    async def models() -> Any:
        entry = {"id": settings.model_name, "object": "model", "created": created, "owned_by": "moee-plugins"}
        if batcher.ready:
            entry.update(mode=batcher.embedder.mode, dimensions=batcher.embedder.dim,
                         max_length=batcher.embedder.max_length)
        return {"object": "list", "data": [entry]}

    @app.get("/health")
    async def health() -> Any:
        """200 while the worker is alive and making progress; 503 with a reason when it is loading, failed,
        stopped, stalled on one forward pass past --stall-timeout, or shutting down."""
        state, reason = batcher.health()
        if state == "ok":
            return {"status": state, "model": settings.model_name}
        body = {"status": state, "model": settings.model_name, "message": reason,
                "queued_inputs": batcher.queued_inputs, "forward_passes": batcher.forward_passes}
        return JSONResponse(body, status_code=503, headers=retry)

    @app.get("/metrics", dependencies=[fastapi.Depends(authorize)])
    async def prometheus_metrics() -> Any:
        content, media_type = metrics.render()
        return Response(content, media_type=media_type)

    return app
