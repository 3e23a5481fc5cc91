"""Throughput and latency of ``moee serve`` under load, against in-process ``encode`` of the same texts.

One run, side by side: (1) in-process ``MoEEmbedder.encode`` of every text of every request at once (globally
length-sorted batches: the best case); (2) the server (uvicorn on 127.0.0.1, dynamic batching with the same
row cap and token budget) answering ``--requests`` requests of 1..``--max-texts`` texts from ``--clients``
concurrent clients in a separate process (so the load generator does not share the server's interpreter).
Every response is checked against the in-process vectors (max |diff| printed; requests answered exactly once).
Prints texts/s, tokens/s, p50/p99 latency, mean batch size and the ratio server / in-process
(target >= 0.9 at saturation). ``--rounds N`` repeats both sides N times, interleaved (in-process first on odd
rounds, server first on even ones), and reports the median ratio: on a shared machine a single run says little.

Then (unless ``--probes 0``) the head-of-line test: ``--long-clients`` clients keep the server saturated with
requests of ``--long-texts`` long texts while one client sends ``--probes`` one-text requests, one after the other;
the probes' p50/p99 latency is what a short query waits behind long work. Run it with the old code first on the
path for "before" (``PYTHONPATH=/path/to/old/checkout``). Loopback only; bounded by --requests and --timeout.

    python benchmarks/serve_load.py --threads 1 --rounds 3         # CPU: olmoe-cpu shape, 2,000 requests
    python benchmarks/serve_load.py --requests 300 --threads 1     # a quicker look
    python benchmarks/serve_load.py --device cuda --shape olmoe-1b-7b
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common as c
import numpy as np

# short texts, as retrieval queries and chunks are: the request count, not document length, is what is tested
SERVE_CORPORA = {
    "cpu": c.CorpusSpec(docs=1024, median_words=12, sigma=0.6, min_words=2, max_words=96),
    "cuda": c.CorpusSpec(docs=4096, median_words=64, sigma=0.7, min_words=4, max_words=512),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _client_process(url: str, requests: list[list[int]], expected_path: str, clients: int, timeout: float,
                    out: Any) -> None:
    """The load generator: ``clients`` concurrent connections, base64 vectors (as the openai client asks)."""
    import base64

    import httpx

    expected = np.load(expected_path, mmap_mode="r")
    texts_path = Path(expected_path).with_suffix(".txt")
    corpus = texts_path.read_text().split("\n")
    latencies: list[float] = []
    answered: dict[int, int] = {}
    worst = 0.0
    failures: list[str] = []

    async def worker(queue: asyncio.Queue, client: httpx.AsyncClient) -> None:
        nonlocal worst
        while True:
            try:
                request_id = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            rows = requests[request_id]
            started = time.perf_counter()
            response = await client.post("/v1/embeddings", json={"input": [corpus[i] for i in rows],
                                                                  "encoding_format": "base64"})
            latencies.append(time.perf_counter() - started)
            answered[request_id] = answered.get(request_id, 0) + 1
            if response.status_code != 200:
                failures.append(f"{request_id}: {response.status_code} {response.text[:200]}")
                continue
            data = response.json()["data"]
            got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
            worst = max(worst, float(np.abs(got - expected[rows]).max()))

    async def main() -> float:
        queue: asyncio.Queue = asyncio.Queue()
        for request_id in range(len(requests)):
            queue.put_nowait(request_id)
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
            started = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(worker(queue, client) for _ in range(clients))), timeout)
            return time.perf_counter() - started

    elapsed = asyncio.run(main())
    out.put({"elapsed": elapsed, "latencies": latencies, "answered": answered, "worst": worst, "failures": failures})


def _probe_process(url: str, long_texts: list[str], short_texts: list[str], long_clients: int, per_request: int,
                   probes: int, timeout: float, out: Any) -> None:
    """Saturate with long requests, and time ``probes`` one-text requests sent one after the other."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []

    async def long_worker(client: httpx.AsyncClient, stop: asyncio.Event, seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            texts = [rng.choice(long_texts) for _ in range(per_request)]
            response = await client.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"})
            if response.status_code != 200:
                failures.append(f"long: {response.status_code}")

    async def main() -> None:
        limits = httpx.Limits(max_connections=long_clients + 1, max_keepalive_connections=long_clients + 1)
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
            stop = asyncio.Event()
            loaders = [asyncio.ensure_future(long_worker(client, stop, i)) for i in range(long_clients)]
            await asyncio.sleep(2.0)  # let the long requests fill the queue before the first probe
            for i in range(probes):
                started = time.perf_counter()
                response = await client.post("/v1/embeddings", json={"input": short_texts[i % len(short_texts)],
                                                                      "encoding_format": "base64"})
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    failures.append(f"probe: {response.status_code}")
            stop.set()
            await asyncio.wait_for(asyncio.gather(*loaders), timeout)

    asyncio.run(main())
    out.put({"latencies": latencies, "failures": failures})


def _spawn(target: Any, args: tuple, timeout: float) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=target, args=(*args, out))
    process.start()
    result = out.get(timeout=timeout + 60)
    process.join(30)
    return result


def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000, help="requests sent (default: %(default)s)")
    p.add_argument("--clients", type=int, default=64, help="concurrent clients (default: %(default)s)")
    p.add_argument("--max-texts", type=int, default=32, help="texts per request, 1..N (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="server batching wait (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the median ratio (default: %(default)s)")
    p.add_argument("--probes", type=int, default=0, help="short requests timed under long load (default: %(default)s)")
    p.add_argument("--long-clients", type=int, default=8, help="clients sending long requests (default: %(default)s)")
    p.add_argument("--long-texts", type=int, default=16, help="texts per long request (default: %(default)s)")
    p.add_argument("--long-words", type=int, default=400, help="words per long text (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds (default: %(default)s)")
    args = p.parse_args()
    s = c.setup(args)
    kind = "cuda" if s.device.type == "cuda" else "cpu"
    spec = SERVE_CORPORA[kind]
    s.corpus = c.CorpusSpec(args.docs or spec.docs, spec.median_words, spec.sigma, spec.min_words,
                            args.max_words or spec.max_words)
    if args.batch_size is None:
        s.batch_size = 64 if kind == "cpu" else 256
    c.emit(c.describe(s))

    from moee_plugins.serve import BatchSettings, ServeSettings, create_app
    from moee_plugins.serve.server import make_server

    model = c.build_model(s)
    tokenizer = c.build_tokenizer(model.config.vocab_size)
    corpus = c.make_corpus(s.corpus, model.config.vocab_size, s.seed)
    long_corpus = c.make_corpus(c.CorpusSpec(64, args.long_words, 0.01, args.long_words, args.long_words),
                                model.config.vocab_size, s.seed + 1)
    s.corpus = c.CorpusSpec(s.corpus.docs, s.corpus.median_words, s.corpus.sigma, s.corpus.min_words,
                            max(s.corpus.max_words, args.long_words))  # max_length covers the long texts
    emb = c.embedder(model, tokenizer, s, corpus)
    rng = random.Random(s.seed)
    requests = [[rng.randrange(len(corpus)) for _ in range(rng.randint(1, args.max_texts))] for _ in range(args.requests)]
    flat = [corpus[i] for rows in requests for i in rows]
    lengths = [len(ids) for ids in emb.tokenize(flat)]
    tokens = sum(lengths)
    in_process_padded, _ = c.planned_tokens(lengths, s.batch_size, s.max_tokens_per_batch)
    c.emit(f"{args.requests} requests of 1-{args.max_texts} texts from {args.clients} clients: {len(flat):,} texts, "
           f"{tokens:,} tokens (prompt included); batches of at most {s.batch_size} rows, "
           f"{s.max_tokens_per_batch} padded tokens; {args.rounds} interleaved round(s)")

    emb.encode(flat[:64], show_progress_bar=False)  # warm-up
    expected = emb.encode(corpus, show_progress_bar=False)

    settings = ServeSettings(model_name="bench", max_inputs_per_request=max(2048, args.max_texts),
                             batch=BatchSettings(max_batch_tokens=s.max_tokens_per_batch, max_batch_size=s.batch_size,
                                                 max_wait_ms=args.max_wait_ms, max_queue_inputs=1 << 20))
    app = create_app(emb, settings)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = make_server(app, "127.0.0.1", port, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    if not app.state.batcher.wait_ready(120):
        sys.exit(f"the server did not start: {app.state.batcher.load_error}")
    while not server.started:
        time.sleep(0.05)

    metrics = app.state.metrics
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        expected_path = str(Path(tmp) / "expected.npy")
        np.save(expected_path, expected)
        Path(expected_path).with_suffix(".txt").write_text("\n".join(corpus))
        for r in range(args.rounds):
            def in_process() -> float:
                started = time.perf_counter()
                emb.encode(flat, show_progress_bar=False)
                return time.perf_counter() - started

            def served() -> dict[str, Any]:
                before = {k: metrics.sample(k) for k in ("moee_batch_size_count", "moee_batch_size_sum",
                                                         "moee_batch_padded_tokens_total", "moee_batch_seconds_sum")}
                result = _spawn(_client_process, (url, requests, expected_path, args.clients, args.timeout),
                                args.timeout)
                result.update({k: metrics.sample(k) - v for k, v in before.items()})
                return result

            if r % 2 == 0:
                in_process_s, result = in_process(), served()
            else:
                result = served()
                in_process_s = in_process()
            result["in_process_s"] = in_process_s
            result["ratio"] = in_process_s / result["elapsed"]
            rounds.append(result)
            c.emit(f"round {r + 1}: in-process {in_process_s:.2f} s, server {result['elapsed']:.2f} s, "
                   f"ratio {result['ratio']:.3f}")
        probe = None
        if args.probes:
            short = [corpus[i] for i in range(min(len(corpus), 64))]
            probe = _spawn(_probe_process, (url, long_corpus, short, args.long_clients, args.long_texts, args.probes,
                                            args.timeout), args.timeout)
    server.should_exit = True
    thread.join(60)

    ratios = [r["ratio"] for r in rounds]
    ratio = c.median(ratios)
    last = rounds[-1]
    batches = last["moee_batch_size_count"]
    mean_batch = last["moee_batch_size_sum"] / max(batches, 1)
    latencies = np.asarray([x for r in rounds for x in r["latencies"]]) * 1000
    once = all(len(r["answered"]) == args.requests and set(r["answered"].values()) == {1} for r in rounds)
    failures = [line for r in rounds for line in r["failures"]]
    worst = max(r["worst"] for r in rounds)
    in_process_s = c.median([r["in_process_s"] for r in rounds])
    server_s = c.median([r["elapsed"] for r in rounds])
    rows = [
        ["in-process encode", f"{len(flat) / in_process_s:,.0f}", f"{tokens / in_process_s:,.0f}", "-", "-", "-"],
        ["moee serve", f"{len(flat) / server_s:,.0f}", f"{tokens / server_s:,.0f}", f"{np.percentile(latencies, 50):.0f}",
         f"{np.percentile(latencies, 99):.0f}", f"{mean_batch:.1f}"],
    ]
    c.emit(c.table(["(medians)", "texts/s", "tokens/s", "p50 ms", "p99 ms", "mean batch"], rows))
    server_padded = last["moee_batch_padded_tokens_total"]
    busy = last["moee_batch_seconds_sum"] / last["elapsed"]
    c.emit(f"real / padded tokens: in-process {tokens / in_process_padded:.0%}, server {tokens / server_padded:.0%}; "
           f"server forward passes busy {busy:.0%} of the last round")
    c.emit(f"answered exactly once: {once}; failures: {len(failures)}; max |server - in-process| = {worst:.2e}")
    for line in failures[:5]:
        c.emit(f"  {line}")
    c.emit(f"SUMMARY server / in-process throughput = {ratio:.2f} (median of {len(ratios)} interleaved rounds: "
           f"{', '.join(f'{x:.3f}' for x in ratios)}; target >= 0.9 at saturation)")
    payload: dict[str, Any] = {
        "requests": args.requests, "clients": args.clients, "texts": len(flat), "tokens": tokens, "rounds": args.rounds,
        "in_process_s": in_process_s, "server_s": server_s, "ratios": ratios, "ratio": ratio,
        "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
        "mean_batch": mean_batch, "batches": batches, "in_process_padded_tokens": in_process_padded,
        "server_padded_tokens": server_padded, "worker_busy": busy, "answered_once": once, "max_abs_diff": worst,
        "failures": len(failures)}
    if probe is not None:
        probe_ms = np.asarray(probe["latencies"]) * 1000
        c.emit(f"SUMMARY one-text request under saturation by {args.long_clients} clients x {args.long_texts} texts of "
               f"{args.long_words} words: p50 {np.percentile(probe_ms, 50):.0f} ms, p99 {np.percentile(probe_ms, 99):.0f} "
               f"ms over {len(probe_ms)} probes (failures: {len(probe['failures'])})")
        payload.update(probe_p50_ms=float(np.percentile(probe_ms, 50)), probe_p99_ms=float(np.percentile(probe_ms, 99)),
                       probes=len(probe_ms), probe_failures=len(probe["failures"]))
    c.emit_json(payload)
    return 0 if once and not failures and worst <= 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
