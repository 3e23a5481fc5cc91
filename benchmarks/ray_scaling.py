"""Documents/s of ``moee_plugins.ray`` with 1 and 2 actors on a local Ray cluster, and the scaling ratio.

    python benchmarks/ray_scaling.py [--docs 800] [--actors 1 2] [--model moee:olmoe] [--json out.json]

Without ``--model`` it builds a small random OLMoE-shaped model (no download): big enough that the forward
pass, not Ray's bookkeeping, dominates. Each actor holds one CPU (Ray pins its torch to one thread), so the
1 -> 2 actor ratio says how well the actor pool uses a second core; the single-process row runs
``MoEEmbedder.encode`` on one thread in this process for comparison. Two throughputs are printed:

* steady: the sum over actors of documents / (its last batch end - its first batch start), i.e. the
  pool's throughput once the actors have loaded the model;
* end-to-end: documents / wall time of the whole job, actor start-up and model loading included.

On a GPU cluster pass ``--num-gpus 1 --num-cpus 4`` and a real model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from typing import Any

from moee_plugins import MoEEmbedder
from moee_plugins.ray import MoEEPredictor, predictor_kwargs

WORDS = ("hockey", "goalie", "puck", "orbit", "rocket", "launch", "oven", "flour", "dough", "printer", "driver",
         "memory", "doctor", "vaccine", "clinic", "river", "bridge", "harbor", "market", "price", "trade", "guitar")


class TimedPredictor(MoEEPredictor):
    """Stamps each batch with when it started and ended in the actor, and which process ran it."""

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        import torch

        start = time.time()
        out = super().__call__(batch)
        end = time.time()
        n = out.num_rows
        for name, value, kind in (("t0", start, pa.float64()), ("t1", end, pa.float64()),
                                  ("pid", os.getpid(), pa.int64()), ("threads", torch.get_num_threads(), pa.int64())):
            out = out.append_column(name, pa.array([value] * n, type=kind))
        return out


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(n)]


def run(texts: list[str], kwargs: dict[str, Any], actors: int, args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow as pa
    import ray
    import ray.data

    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)],
                             override_num_blocks=max(8, 4 * actors))
    started = time.perf_counter()
    out = ds.map_batches(TimedPredictor, fn_constructor_kwargs=kwargs, compute=ray.data.ActorPoolStrategy(size=actors),
                         num_cpus=args.num_cpus, num_gpus=args.num_gpus or None, batch_size=args.batch_size,
                         batch_format="pyarrow")
    table = pa.concat_tables(ray.get(out.to_arrow_refs()))
    wall = time.perf_counter() - started
    ids = sorted(table.column("id").to_pylist())
    if ids != list(range(len(texts))):
        raise AssertionError("some documents were lost or duplicated")
    # steady: each actor's documents over its span from first batch start to last batch end (idle gaps
    # between its batches included, its start-up not), summed over actors
    spans: dict[int, list[float]] = {}
    for pid, t0, t1 in zip(*(table.column(c).to_pylist() for c in ("pid", "t0", "t1")), strict=True):
        span = spans.setdefault(pid, [t0, t1, 0])
        span[0], span[1], span[2] = min(span[0], t0), max(span[1], t1), span[2] + 1
    return {
        "actors": actors,
        "docs": len(texts),
        "steady_docs_per_s": sum(rows / (t1 - t0) for t0, t1, rows in spans.values()),
        "end_to_end_docs_per_s": len(texts) / wall,
        "wall_s": wall,
        "actor_processes": len(set(table.column("pid").to_pylist())),
        "torch_threads_per_actor": sorted(set(table.column("threads").to_pylist())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="moee:<alias>, hub id or directory (default: a built small random model)")
    parser.add_argument("--docs", type=int, default=800)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=32, help="rows per Ray batch")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor")
    parser.add_argument("--cluster-cpus", type=int, default=None, help="CPUs of the local cluster (default: all)")
    parser.add_argument("--address", default="local", help="'local' (a new local cluster) or a cluster address")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import ray.data
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from moee_plugins.testing import build_tiny_moe

            model = str(build_tiny_moe(tmp, hidden_size=args.hidden_size, intermediate_size=args.hidden_size * 2,
                                       num_hidden_layers=args.layers, num_experts=args.experts,
                                       num_experts_per_tok=2, num_attention_heads=8, num_key_value_heads=8))
        texts = corpus(args.docs)
        device = "cuda" if args.num_gpus else "cpu"

        torch.set_num_threads(1)
        embedder = MoEEmbedder(model, device=device)
        embedder.encode(texts[:64], show_progress_bar=False)  # calibration + warm-up
        started = time.perf_counter()
        embedder.encode(texts, show_progress_bar=False)
        single = len(texts) / (time.perf_counter() - started)
        kwargs = predictor_kwargs(embedder=embedder, device=device)
        del embedder

        init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if args.address == "local":
            init["num_cpus"] = args.cluster_cpus or os.cpu_count()
        ray.init(address=args.address, **init)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            results = [run(texts, kwargs, n, args) for n in args.actors]
        finally:
            ray.shutdown()

    base = results[0]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"
    out = sys.stdout
    described = args.model or f"random OLMoE-shaped h={args.hidden_size} L={args.layers} E={args.experts}"
    out.write(f"machine: {machine}; model: {described}; docs: {len(texts)}; batch: {args.batch_size}; "
              f"ray {ray.__version__}\n")
    out.write(f"single process, 1 thread: {single:8.1f} docs/s\n")
    out.write("actors  steady docs/s  end-to-end docs/s  wall s  processes  torch threads\n")
    for r in results:
        out.write(f"{r['actors']:>6}  {r['steady_docs_per_s']:>13.1f}  {r['end_to_end_docs_per_s']:>17.1f}  "
                  f"{r['wall_s']:>6.1f}  {r['actor_processes']:>9}  {r['torch_threads_per_actor']}\n")
    for r in results[1:]:
        out.write(f"scaling {base['actors']} -> {r['actors']} actors: "
                  f"steady x{r['steady_docs_per_s'] / base['steady_docs_per_s']:.2f}, "
                  f"end-to-end x{r['end_to_end_docs_per_s'] / base['end_to_end_docs_per_s']:.2f}\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "single_process_docs_per_s": single, "results": results,
                       "ray": ray.__version__, "args": vars(args)}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
