"""``moee serve``: an OpenAI-compatible embeddings server (``POST /v1/embeddings``) for one MoEE model.

Concurrent requests are merged into token-budget batches by one worker that owns the model; see
``docs/serve.md``. ``--engine ray --replicas N`` serves the same API from N replicas with Ray Serve.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from typing import Any

from ._common import UsageError
from ._options import add_model_options, check_positive, embedder_kwargs

API_KEY_ENV = "MOEE_API_KEY"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
BATCH_DEFAULTS = {"max_queue_tokens": 1 << 20, "stall_after_s": 120.0}  # as moee_plugins.serve.BatchSettings



def register(subparsers: Any) -> None:
    """Add the ``serve`` sub-command."""
    parser = subparsers.add_parser(
        "serve", help="serve embeddings over HTTP with OpenAI's /v1/embeddings API",
        description="Serve MoEE embeddings over HTTP: POST /v1/embeddings (OpenAI's API), GET /v1/models, "
        "POST /similarity, GET /health, GET /metrics (Prometheus). Concurrent requests are merged into "
        "token-budget batches.",
    )
    add_model_options(parser, model_required=True)
    net = parser.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    net.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    net.add_argument("--api-key", default=None,
                     help=f"require 'Authorization: Bearer KEY' on every route but /health (default: ${API_KEY_ENV} "
                     "if set, else no key)")
    net.add_argument("--served-model-name", default=None,
                     help="the model name /v1/models lists and requests send (default: the alias of moee:NAME, the "
                     "folder's name of a local path, or the hub id; never a full path)")
    net.add_argument("--max-batch-tokens", type=int, default=None,
                     help="padded tokens (rows x longest) per merged forward pass (default: --max-tokens-per-batch, "
                     "else 8192); --batch-size caps its rows")
    net.add_argument("--max-wait-ms", type=float, default=5.0,
                     help="how long an idle worker waits for more requests to fill a batch (default: %(default)s)")
    net.add_argument("--max-inputs-per-request", type=int, default=2048, help="(default: %(default)s)")
    net.add_argument("--max-request-bytes", type=int, default=8 * 1024 * 1024,
                     help="largest request body; larger ones get 413 (default: %(default)s)")
    net.add_argument("--max-buffered-bytes", type=int, default=256 * 1024 * 1024,
                     help="request bodies being read at once, all requests together; beyond it requests get 503 + "
                     "Retry-After (default: %(default)s)")
    net.add_argument("--max-queue-inputs", type=int, default=8192,
                     help="texts allowed to wait for the model; beyond it requests get 503 + Retry-After "
                     "(default: %(default)s)")
    net.add_argument("--max-queue-tokens", type=int, default=BATCH_DEFAULTS["max_queue_tokens"],
                     help="tokens allowed to wait for the model; beyond it requests get 503 + Retry-After "
                     "(default: %(default)s)")
    net.add_argument("--request-timeout", type=float, default=300.0,
                     help="seconds a request may take (tokenising, queueing, the model); past it: 504 and its "
                     "remaining work is dropped (default: %(default)s)")
    net.add_argument("--stall-timeout", type=float, default=BATCH_DEFAULTS["stall_after_s"],
                     help="a forward pass running longer makes GET /health answer 503 'stalled' (default: %(default)s)")
    net.add_argument("--tokenizer-threads", type=int, default=2,
                     help="threads tokenising requests, shared round-robin between them (default: %(default)s)")
    net.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    api = parser.add_argument_group("requests")
    api.add_argument("--named-prompt", action="append", default=[], metavar="NAME=PROMPT", dest="named_prompts",
                     help="a named prompt requests pick with \"prompt_name\" or \"input_type\" (repeatable): an "
                     "instruction such as 'query: ', a preset (prompteol, none, raw) or a template with {text}; "
                     "'query' and 'document' exist by default as the model's own prompt (rerank uses both)")
    api.add_argument("--docs", action="store_true",
                     help="serve /docs, /redoc and /openapi.json (behind --api-key when one is set; default: off)")
    api.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                     help="a browser origin allowed to call the API, e.g. https://app.example.com (repeatable; "
                     "default: none, no CORS headers)")
    limits = parser.add_argument_group("connections")
    limits.add_argument("--timeout-read", type=float, default=30.0,
                        help="seconds a request's headers and body may take to arrive; slower ones are "
                        "disconnected (default: %(default)s)")
    limits.add_argument("--max-header-bytes", type=int, default=64 * 1024,
                        help="largest request headers; longer ones end the connection (default: %(default)s)")
    limits.add_argument("--max-connections", type=int, default=1024,
                        help="open connections; more are closed as they arrive (default: %(default)s)")
    limits.add_argument("--timeout-keep-alive", type=int, default=5,
                        help="seconds an idle keep-alive connection stays open (uvicorn's; default: %(default)s)")
    limits.add_argument("--limit-concurrency", type=int, default=None,
                        help="connections + requests in flight beyond which new requests get 503 (uvicorn's; "
                        "default: no limit but --max-connections)")
    ray_options = parser.add_argument_group("--engine ray")
    ray_options.add_argument("--engine", choices=("local", "ray"), default="local",
                             help="local: this process; ray: Ray Serve replicas (default: %(default)s)")
    ray_options.add_argument("--replicas", type=int, default=1, help="model replicas for --engine ray (default: 1)")
    ray_options.add_argument("--address", default=None, help="Ray cluster address (default: a local cluster)")
    ray_options.add_argument("--num-gpus", type=float, default=None, help="GPUs per replica, e.g. 1 or 0.5")
    ray_options.add_argument("--num-cpus", type=float, default=None, help="CPUs per replica")
    parser.set_defaults(func=run)


def _named_prompts(pairs: list[str]) -> dict[str, str]:
    prompts: dict[str, str] = {}
    for pair in pairs:
        name, sep, prompt = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--named-prompt takes NAME=PROMPT (e.g. --named-prompt 'query=query: '), got {pair!r}")
        prompts[name.strip()] = prompt
    return prompts


def limits_from(args: argparse.Namespace) -> Any:
    """The connection limits the flags describe (``UsageError`` on a bad value)."""
    from ..serve.http import HttpLimits

    check_positive(args, "max_header_bytes", "max_connections", "timeout_keep_alive", "limit_concurrency")
    if not 0 < args.timeout_read <= 3600:
        raise UsageError(f"--timeout-read must be a number of seconds in (0, 3600], got {args.timeout_read}")
    return HttpLimits(timeout_read_s=args.timeout_read, max_header_bytes=args.max_header_bytes,
                      max_connections=args.max_connections,
                      timeout_keep_alive_s=args.timeout_keep_alive, limit_concurrency=args.limit_concurrency)


def settings_from(args: argparse.Namespace) -> Any:
    """The server settings the flags describe (``UsageError`` on a bad value)."""
    from ..serve import BatchSettings, ServeSettings
    from ..serve.http import served_name

    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be a positive integer <= 65535, got {args.port}")
    check_positive(args, "max_inputs_per_request", "max_request_bytes", "max_buffered_bytes", "max_queue_inputs",
                   "replicas", "batch_size", "max_queue_tokens", "tokenizer_threads")
    for flag in ("request_timeout", "stall_timeout"):
        if not getattr(args, flag) > 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be a positive number of seconds, got {getattr(args, flag)}")
    budget = args.max_batch_tokens or args.max_tokens_per_batch or 8192
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    try:
        batch = BatchSettings(max_batch_tokens=budget, max_batch_size=args.batch_size or BatchSettings.max_batch_size,
                              max_wait_ms=args.max_wait_ms,
                              max_queue_inputs=args.max_queue_inputs, max_queue_tokens=args.max_queue_tokens,
                              stall_after_s=args.stall_timeout)
        return ServeSettings(model_name=args.served_model_name or served_name(args.model), api_key=api_key,
                             max_inputs_per_request=args.max_inputs_per_request,
                             max_request_bytes=args.max_request_bytes, max_buffered_bytes=args.max_buffered_bytes,
                             batch=batch, request_timeout_s=args.request_timeout,
                             tokenizer_threads=args.tokenizer_threads, prompts=_named_prompts(args.named_prompts),
                             docs=args.docs, cors_origins=tuple(args.cors_origin))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    """Entry point: serves until SIGINT/SIGTERM; 0 after a clean stop, 2 on a bad option or a model that fails to load."""
    try:
        options = embedder_kwargs(args)
        settings = settings_from(args)
        limits = limits_from(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.host not in _LOOPBACK and settings.api_key is None:
        logging.getLogger("moee_plugins").warning(
            "moee serve: listening on %s without --api-key: anyone who can reach this port can use the model", args.host)
    if args.engine == "ray":
        return _run_on_ray(args, options, settings)

    from ..core.build import build_embedder
    from ..serve import create_app
    from ..serve.server import make_server

    def load() -> Any:
        return build_embedder(args.model, owner="moee serve", **options)

    app = create_app(load, settings)
    server = make_server(app, args.host, args.port, log_level=args.log_level, limits=limits)
    failed = threading.Event()

    def stop_if_load_fails() -> None:
        batcher = app.state.batcher
        if not batcher.wait_ready() and batcher.load_error is not None:
            sys.stderr.write(f"moee serve: error: cannot load model {args.model!r}: {batcher.load_error}\n")
            failed.set()
            server.should_exit = True

    threading.Thread(target=stop_if_load_fails, name="moee-serve-load-watch", daemon=True).start()
    sys.stderr.write(f"moee serve: loading {args.model}; serving http://{args.host}:{args.port}/v1/embeddings "
                     "(GET /health turns 200 once the model is ready)\n")
    server.run()
    return 2 if failed.is_set() else 0


def _run_on_ray(args: argparse.Namespace, options: dict[str, Any], settings: Any) -> int:
    from .._extras import require
    from ..jobs import ray_serve

    ray = require("ray", "ray")
    if not ray.is_initialized():
        ray.init(address=args.address)
    try:
        application = ray_serve.deployment(args.model, settings, replicas=args.replicas, num_cpus=args.num_cpus,
                                           num_gpus=args.num_gpus, **options)
    except (OSError, ValueError, TypeError, ImportError) as exc:
        raise UsageError(str(exc)) from exc
    sys.stderr.write(f"moee serve: {args.replicas} Ray Serve replica(s) of {args.model} at "
                     f"http://{args.host}:{args.port}/v1/embeddings (Ctrl-C stops)\n")
    with contextlib.suppress(KeyboardInterrupt):
        ray_serve.run(application, args.host, args.port, address=args.address, blocking=True)
    return 0
