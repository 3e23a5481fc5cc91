"""Peak memory above the weights while encoding: ours vs the bare forward pass (and the reference way).

CUDA: ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the run (weights and
inputs), in one process. CPU: the process's peak resident set size (``VmHWM``, reset through
``/proc/self/clear_refs`` before the run) minus its resident size just before the run, each method
in a fresh process with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors really leave the
process. Ours and bare use the same batches, so they should peak alike: the forward pass of the
largest batch dominates; ours adds only pooled vectors.

    python benchmarks/memory.py                                   # CPU, small OLMoE-like shape
    python benchmarks/memory.py --device cuda --shape olmoe-1b-7b # GPU, full OLMoE-1B-7B shape, bf16
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from typing import Any

import _common as c
import torch

METHODS = ("bare", "ours", "reference")
LABELS = {"bare": "bare forward, ours' batches", "ours": "ours: encode(), sum mode",
          "reference": "reference: CausalLM, all hidden states, fixed batches"}
MIB = 1024 * 1024


def prepare(s: c.Setup) -> dict[str, Any]:
    model = c.build_model(s)
    tokenizer = c.build_tokenizer(model.config.vocab_size)
    texts = c.make_corpus(s.corpus, model.config.vocab_size, s.seed)
    emb = c.embedder(model, tokenizer, s, texts)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"model": model, "tokenizer": tokenizer, "texts": texts, "emb": emb,
            "batches": c.bare_batches(emb, texts), "weights": weights}


def runner(method: str, env: dict[str, Any], s: c.Setup, texts: list[str] | None = None):
    texts = env["texts"] if texts is None else texts
    if method == "ours":
        return lambda: env["emb"].encode(texts, show_progress_bar=False)
    if method == "bare":
        batches = env["batches"] if texts is env["texts"] else env["batches"][-1:]
        return lambda: c.run_bare(env["emb"].model, batches, s.device)
    return lambda: c.run_reference(env["model"], env["tokenizer"], texts, s.ref_batch_size, s.device)


def measure_cuda(method: str, env: dict[str, Any], s: c.Setup) -> dict[str, float]:
    runner(method, env, s, env["texts"][:8])()  # warm-up
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    runner(method, env, s)()
    torch.cuda.synchronize()
    return {"extra": torch.cuda.max_memory_allocated() - before, "before": before}


def measure_cpu_here(method: str, s: c.Setup) -> dict[str, float]:
    env = prepare(s)
    runner(method, env, s, env["texts"][:8])()  # warm-up
    gc.collect()
    before = c.rss_bytes()
    if not c.reset_peak_rss():
        raise SystemExit("cannot reset the peak-RSS mark (/proc/self/clear_refs): CPU memory is not measurable here")
    runner(method, env, s)()
    return {"extra": c.peak_rss_bytes() - before, "before": before, "weights": env["weights"]}


def measure_cpu_in_subprocess(method: str) -> dict[str, float]:
    argv = list(sys.argv[1:])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--worker", method], env=env,
                          capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"the {method} worker failed:\n{done.stdout}\n{done.stderr}")


def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--skip-reference", action="store_true", help="measure ours and bare only")
    p.add_argument("--worker", choices=METHODS, help="(internal) measure one method in this process")
    args = p.parse_args()
    s = c.setup(args)
    if args.worker:
        c.emit("RESULT " + json.dumps(measure_cpu_here(args.worker, s)))
        return 0

    c.emit(c.describe(s))
    methods = [m for m in METHODS if not (args.skip_reference and m == "reference")]
    if s.device.type == "cuda":
        probe = "torch.cuda.max_memory_allocated() - memory_allocated() before the run"
        env = prepare(s)
        results = {m: measure_cuda(m, env, s) for m in methods}
        weights = env["weights"]
    else:
        probe = "peak RSS (VmHWM) - RSS before the run, one fresh process per method"
        results = {m: measure_cpu_in_subprocess(m) for m in methods}
        weights = results["bare"]["weights"]
    c.emit(f"probe: {probe}; weights {weights / MIB:,.0f} MiB")
    bare = results["bare"]["extra"]
    rows = [[LABELS[m], results[m]["extra"] / MIB, results[m]["extra"] / max(bare, 1)] for m in methods]
    c.emit(c.table(["", "peak above weights (MiB)", "x bare"], rows))
    ratio = results["ours"]["extra"] / max(bare, 1)
    line = (f"SUMMARY memory: ours peaks {results['ours']['extra'] / MIB:,.0f} MiB above the weights, bare "
            f"{bare / MIB:,.0f} MiB (ours / bare = {ratio:.2f})")
    if "reference" in results:
        line += f"; the reference way {results['reference']['extra'] / MIB:,.0f} MiB"
    c.emit(line)
    c.emit_json({"benchmark": "memory", "probe": probe, "weights": weights,
                 **{f"{m}_extra": results[m]["extra"] for m in methods}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
