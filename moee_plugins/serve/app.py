"""The HTTP API of ``moee serve``: OpenAI's ``/v1/embeddings`` and ``/v1/models``, ``/v1/rerank`` (Cohere/Jina/TEI
shape), plus ``/similarity``, ``/health`` and ``/metrics``, over a :class:`~moee_plugins.serve.batcher.DynamicBatcher`.

Request bodies are parsed by :mod:`~moee_plugins.serve.schemas` so that every refusal names the field and the
problem in OpenAI's error shape (``{"error": {"message", "type", "param", "code"}}``).
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
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._extras import require
from ..core.chunking import encode_request
from ..core.prompts import PRESETS, instruction_template
from .batcher import BatchFailed, BatchSettings, DynamicBatcher, NotReady, Overloaded, WorkerStopped
from .http import BodyBudget, ClientGone, add_docs_routes, read_json, served_name
from .inputs import refuse_long_token_ids, refuse_truncated, texts_of, vocabulary_size
from .metrics import ServerMetrics
from .rerank import RERANK_ROUTES, rerank_payload
from .schemas import (
    ApiError,
    check_model,
    check_token_ids,
    encoding_format,
    flag,
    parse_inputs,
    parse_rerank,
    parse_texts,
    prompt_name,
    shown,
)
from .tokenizing import TokenizerPool

logger = logging.getLogger("moee_plugins")

ROUTES = ("/v1/embeddings", "/v1/models", "/similarity", "/health", "/metrics", *RERANK_ROUTES)
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
    max_buffered_bytes: int = 256 * 1024 * 1024  # request bodies being read at once, all requests together
    retry_after_s: int = 1
    batch: BatchSettings = field(default_factory=BatchSettings)
    request_timeout_s: float = 300.0  # tokenising + queueing + the model; past it: 504 and the rows are dropped
    tokenizer_threads: int = 2
    # named prompts a request picks with ``prompt_name`` / ``input_type`` (None: the model's own template);
    # "query" and "document" always exist
    prompts: Mapping[str, str | None] = field(default_factory=dict)
    docs: bool = False  # /docs, /redoc, /openapi.json (behind the key when there is one)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none: no CORS headers at all

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ValueError("model_name must be a non-empty string")
        prompts = {"query": None, "document": None, **dict(self.prompts)}
        for name, prompt in prompts.items():
            if not isinstance(name, str) or not name or (prompt is not None and not isinstance(prompt, str)):
                raise ValueError(f"prompts must map names to prompt strings, got {name!r}: {prompt!r}")
            try:
                instruction_template(PRESETS["raw"], prompt)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"prompt {name!r}: {exc}") from None
        object.__setattr__(self, "prompts", prompts)
        if isinstance(self.cors_origins, str) or not all(isinstance(o, str) and o for o in self.cors_origins):
            raise ValueError(f"cors_origins must be a sequence of origins, got {self.cors_origins!r}")
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("api_key must be a non-empty string or None")
        if isinstance(self.request_timeout_s, bool) or not isinstance(self.request_timeout_s, (int, float)) \
                or not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be a positive number of seconds, got {self.request_timeout_s!r}")
        for name in ("max_inputs_per_request", "max_request_bytes", "max_buffered_bytes", "retry_after_s",
                     "tokenizer_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_buffered_bytes < self.max_request_bytes:
            raise ValueError(f"max_buffered_bytes ({self.max_buffered_bytes}) cannot be below max_request_bytes "
                             f"({self.max_request_bytes}): a request of the largest size could never be read")
        if self.max_inputs_per_request > self.batch.max_queue_inputs:
            raise ValueError(f"max_inputs_per_request ({self.max_inputs_per_request}) cannot exceed max_queue_inputs "
                             f"({self.batch.max_queue_inputs}): such a request could never be queued")




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


def _incident(what: str, exc: BaseException | None = None) -> str:
    """Log an internal failure under a fresh id and return the id: clients get the id, never the details."""
    incident = uuid.uuid4().hex[:12]
    logger.error("moee serve: %s [incident %s]", what, incident, exc_info=exc)
    return incident


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
            raise ClientGone
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
        settings = ServeSettings(model_name=served_name(str(embedder.config.get("model") or "moee")))
    metrics = ServerMetrics()
    batcher = DynamicBatcher(embedder, settings.batch, observer=metrics)
    budget = BodyBudget(settings.max_buffered_bytes, settings.retry_after_s)
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

    # the built-in docs routes take no dependencies: off here, served below behind the key when --docs is given
    app = fastapi.FastAPI(title="moee serve", summary="MoEE embeddings, OpenAI-compatible", lifespan=lifespan,
                          docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.metrics, app.state.settings = batcher, metrics, settings
    app.add_middleware(_RequestMetrics, metrics=metrics)
    if settings.cors_origins:
        cors = require("starlette.middleware.cors", "serve", feature="moee serve")
        app.add_middleware(cors.CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Any, exc: ApiError) -> Any:
        return Response(exc.encoded(), status_code=exc.status, headers=exc.headers, media_type="application/json")

    @app.exception_handler(ClientGone)
    async def _client_gone(_request: Any, _exc: ClientGone) -> Any:
        return Response(status_code=499)  # nobody is left to read an answer; its work was dropped

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

    def dimensions_of(body: dict[str, Any], embedder: Any) -> int | None:
        """None for full vectors, else a supported reduced dimension."""
        value = body.get("dimensions")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApiError(400, f"'dimensions' must be a positive integer, got {shown(value)}", param="dimensions")
        if value == embedder.dim:
            return None
        if batcher.supports_dimensions(value):
            return value
        reduced = sorted(embedder.supported_dimensions)
        offer = f"{embedder.dim}" + (f" or one of the reduced sizes {reduced}" if reduced else
                                     " (this model has no reduced dimensions fitted)")
        raise ApiError(400, f"dimensions={shown(value)} is not available: ask for {offer}", param="dimensions",
                       code="unsupported_dimensions")

    async def embed(request: Any, embedder: Any, texts: list[str], dimensions: int | None, *,
                    prompt: str | None = None, truncate: bool = True) -> tuple[np.ndarray, int, list[int]]:
        """Vectors (input order), tokens used and the indices of truncated inputs, via the batcher.
        ``prompt``: as :meth:`MoEEmbedder.prompt_for` takes it; ``truncate=False`` refuses over-long inputs."""
        if getattr(embedder, "long_texts", "truncate") == "chunk":  # windows pooled per text (core/chunking.py)
            vectors, tokens = await concurrency.run_in_threadpool(encode_request, embedder, texts, dimensions)
            metrics.inputs.inc(len(texts))
            metrics.tokens.inc(tokens)
            return vectors, tokens, []
        deadline = time.monotonic() + settings.request_timeout_s
        if not tokenizer:  # no await in between: one pool, however many first requests arrive together
            tokenizer.append(TokenizerPool(embedder, settings.tokenizer_threads))
        token_ids, truncated = await _until_done(request, tokenizer[0].submit(texts, prompt), deadline, metrics)
        if not truncate:
            await concurrency.run_in_threadpool(refuse_truncated, embedder, embedder.prompt_for(prompt), texts,
                                                truncated)
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

    async def body_of(request: Any) -> dict[str, Any]:
        """The request's JSON object, read within the byte limits, for this server's model."""
        body = await read_json(request, settings.max_request_bytes, budget)
        check_model(body, settings.model_name)
        return body

    def prompt_of(body: dict[str, Any]) -> str | None:
        name = prompt_name(body, settings.prompts)
        return None if name is None else settings.prompts[name]

    @app.post("/v1/embeddings", dependencies=[fastapi.Depends(authorize)])
    async def embeddings(request: fastapi.Request) -> Any:
        body = await body_of(request)
        items = parse_inputs(body.get("input"), "input", settings.max_inputs_per_request)
        fmt = encoding_format(body)
        prompt = prompt_of(body)
        truncate = flag(body, "truncate", True)
        embedder = require_ready()
        dimensions = dimensions_of(body, embedder)
        if any(isinstance(item, list) for item in items):
            check_token_ids(items, vocabulary_size(embedder))
            if not truncate:
                refuse_long_token_ids(embedder, items)
            texts = await concurrency.run_in_threadpool(texts_of, embedder, items)
        else:
            texts = items
        vectors, tokens, truncated = await embed(request, embedder, texts, dimensions, prompt=prompt, truncate=truncate)
        content = await concurrency.run_in_threadpool(_embeddings_json, vectors, fmt, settings.model_name, tokens)
        return Response(content, media_type="application/json", headers=truncation_headers(truncated))

    @app.post("/similarity", dependencies=[fastapi.Depends(authorize)])
    async def similarity(request: fastapi.Request) -> Any:
        """{"queries": [...], "documents": [...]} -> the mode's own similarity, one row per query."""
        body = await body_of(request)
        queries = parse_texts(body.get("queries"), "queries", settings.max_inputs_per_request)
        documents = parse_texts(body.get("documents"), "documents", settings.max_inputs_per_request)
        if len(queries) + len(documents) > settings.max_inputs_per_request:
            raise ApiError(400, f"{len(queries) + len(documents)} texts in all; this server takes at most "
                           f"{settings.max_inputs_per_request} per request", code="too_many_inputs")
        embedder = require_ready()
        vectors, tokens, truncated = await embed(request, embedder, queries + documents, None)
        scores = embedder.similarity(vectors[: len(queries)], vectors[len(queries) :])
        payload = {"object": "similarity", "model": settings.model_name, "mode": embedder.mode,
                   "data": np.asarray(scores, dtype=np.float32).tolist(),
                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return JSONResponse(payload, headers=truncation_headers(truncated))

    async def rerank(request: fastapi.Request) -> Any:
        """A query and documents -> the documents ranked by the model's similarity to the query, the query with
        the "query" prompt and the documents with the "document" prompt."""
        body = await body_of(request)
        parsed = parse_rerank(body, settings.max_inputs_per_request)
        embedder = require_ready()
        query_prompt, document_prompt = settings.prompts["query"], settings.prompts["document"]
        if query_prompt == document_prompt:  # one trip through the queue
            vectors, tokens, truncated = await embed(request, embedder, [parsed.query, *parsed.documents], None,
                                                     prompt=query_prompt)
            query, documents = vectors[:1], vectors[1:]
            truncated = [i - 1 for i in truncated if i > 0]
        else:
            query, tokens_q, _ = await embed(request, embedder, [parsed.query], None, prompt=query_prompt)
            documents, tokens, truncated = await embed(request, embedder, parsed.documents, None,
                                                       prompt=document_prompt)
            tokens += tokens_q
        scores = np.asarray(embedder.similarity(query, documents), dtype=np.float64)[0]
        return JSONResponse(rerank_payload(parsed, scores, settings.model_name, tokens),
                            headers=truncation_headers(truncated))

    for route in RERANK_ROUTES:
        app.add_api_route(route, rerank, methods=["POST"], dependencies=[fastapi.Depends(authorize)])

    if settings.docs:
        add_docs_routes(app, fastapi, authorize)

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

