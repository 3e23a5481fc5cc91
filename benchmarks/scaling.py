"""Peak memory and time per document as the corpus grows: ``encode`` of 10k, 100k, 1M tiny texts.

Each size runs in a fresh process (``MALLOC_MMAP_THRESHOLD_=65536``, so freed memory leaves the process, and the
heap trimmed just before ``encode``, so free memory kept from the set-up cannot hide allocations) on the
tiny OLMoE checkpoint of ``tests/fixtures/olmoe-parity`` (3 layers, 8 experts, hidden 64; sum vectors of 88
dimensions), one torch thread. Memory is the peak resident set size during ``encode`` (``VmHWM``, reset just
before) minus the resident size just before it (model and corpus loaded). Of that peak, the result itself
grows with the corpus by construction: the raw parts (HS and RW, float32), the token counts and the returned
vectors, ``N x (2 x 88 x 4 + 8)`` bytes, plus the input list's copy that ``encode`` holds (8 bytes per text; the
peak is while the vectors are combined, when the raw parts and the vectors both exist and ``encode_parts``' own copy
of the list is gone). **Working memory** is
the peak minus those: what the pipeline holds besides its output (token lists of the chunks in flight, one
batch's activations, the combine blocks). Targets: working memory flat within 10% and time per document flat
within 15% from the smallest size to the largest.

    python benchmarks/scaling.py                          # 10k, 100k, 1M
    python benchmarks/scaling.py --sizes 10000,100000     # a quicker run
    python benchmarks/scaling.py --one-chunk              # the whole corpus as one chunk (tokenised up front,
                                                          # as before the pipeline): for comparison
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _common as c
import numpy as np

MODEL = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "olmoe-parity" / "model"
WORDS = ("hockey", "team", "printer", "graphics", "orbit", "shuttle", "doctor", "disease", "engine", "church",
         "keys", "senate", "the", "a", "of", "and", "to", "in", "it", "was", "game", "space", "car", "god")
MIB = 1024 * 1024


def tiny_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` texts of 1-8 words (a corpus of titles, queries or tweets)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 9, size=n)
    words = rng.integers(0, len(WORDS), size=int(lengths.sum()))
    out, at = [], 0
    for k in lengths:
        out.append(" ".join(WORDS[w] for w in words[at : at + k]))
        at += k
    return out


def trim_heap() -> None:
    """Return the C heap's free memory to the system (glibc ``malloc_trim``), where that exists."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def child(n: int, seed: int, one_chunk: bool) -> dict[str, float]:
    import torch

    from moee_plugins import MoEEmbedder
    from moee_plugins.core import pipeline

    if one_chunk:
        pipeline.CHUNK_FIRST_TEXTS = pipeline.CHUNK_MAX_TEXTS = 1 << 40
        pipeline.CHUNK_MAX_CHARS = 1 << 60

    torch.set_num_threads(1)
    emb = MoEEmbedder(str(MODEL), mode="sum", device="cpu")
    emb.calibrate(tiny_texts(256, seed + 1), show_progress_bar=False)
    emb.encode(tiny_texts(64, seed + 2), show_progress_bar=False)  # warm-up
    texts = tiny_texts(n, seed)
    gc.collect()
    trim_heap()  # start from a heap with no free memory kept back, so the peak counts what encode allocates
    before = c.rss_bytes()
    if not c.reset_peak_rss():
        raise SystemExit("cannot reset the peak-RSS mark (/proc/self/clear_refs): run on Linux as the process owner")
    start = time.perf_counter()
    vectors = emb.encode(texts, show_progress_bar=False)
    seconds = time.perf_counter() - start
    peak = c.peak_rss_bytes() - before
    result = n * (2 * (emb.hidden_dim + emb.routing_dim) * 4 + 8 + 8)
    assert vectors.shape == (n, emb.dim)
    return {"docs": n, "seconds": seconds, "peak_bytes": peak, "result_bytes": result,
            "working_bytes": peak - result, "budget": emb.engine.token_budget(emb.max_tokens_per_batch),
            "row_cap": emb.batch_size}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="corpus sizes (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one-chunk", action="store_true", help="tokenise the whole corpus up front (the old way)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        c.emit("CHILD " + json.dumps(child(args.child, args.seed, args.one_chunk)))
        return 0
    sizes = [int(x) for x in args.sizes.split(",")]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    c.emit(f"tiny OLMoE ({MODEL.name}: hidden 64, 3 layers x 8 experts), sum mode, library defaults, 1 torch thread; "
           f"texts of 1-8 words{'; ONE CHUNK (whole corpus tokenised up front)' if args.one_chunk else ''}")
    results = []
    for n in sizes:
        command = [sys.executable, __file__, "--child", str(n), "--seed", str(args.seed)]
        out = subprocess.run(command + (["--one-chunk"] if args.one_chunk else []), env=env, capture_output=True,
                             text=True, check=False)
        line = next((x for x in out.stdout.splitlines() if x.startswith("CHILD ")), None)
        if out.returncode or line is None:
            sys.stderr.write(out.stdout + out.stderr)
            raise SystemExit(f"size {n} failed (exit {out.returncode})")
        results.append(json.loads(line[6:]))
        r = results[-1]
        c.emit(f"  {n:,} docs: {r['seconds']:.1f} s, peak +{r['peak_bytes'] / MIB:.1f} MiB")
    rows = [[f"{r['docs']:,}", r["seconds"], 1e6 * r["seconds"] / r["docs"], r["peak_bytes"] / MIB,
             r["result_bytes"] / MIB, r["working_bytes"] / MIB] for r in results]
    c.emit(c.table(["documents", "seconds", "us per document", "peak above start (MiB)", "of which the result",
                    "working memory (MiB)"], rows))
    per_doc = [r["seconds"] / r["docs"] for r in results]
    working = [r["working_bytes"] for r in results]
    time_spread = max(per_doc) / min(per_doc) - 1
    memory_spread = max(working) / max(min(working), 1) - 1
    c.emit(f"SUMMARY scaling: {sizes[0]:,} -> {sizes[-1]:,} docs: time per document within {time_spread:.1%} "
           f"(target <= 15%: {'met' if time_spread <= 0.15 else 'NOT met'}), working memory within "
           f"{memory_spread:.1%} (target <= 10%: {'met' if memory_spread <= 0.10 else 'NOT met'}); "
           f"budget {results[0]['budget']} tokens, row cap {results[0]['row_cap']}")
    c.emit_json({"benchmark": "scaling", "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
