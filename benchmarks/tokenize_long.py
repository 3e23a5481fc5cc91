"""Tokenisation time and peak memory of one long text: ours (cut by characters first) vs the whole text.

Each measurement runs in a fresh process (``MALLOC_MMAP_THRESHOLD_=65536``, so freed memory leaves it): the
tokenizer is loaded, the text built, the peak-RSS mark reset (``/proc/self/clear_refs``), then the text is
tokenised for ``max_length`` tokens under the PromptEOL template; reported are the wall time of that call and
the peak resident memory above what the process held just before it. Rounds are interleaved (every size and
method once per round) and the table gives medians. The whole-text way runs under an address-space cap
(``--cap-gb`` above the process's size): where it needs more, it is reported as aborted, as a 50 MB line used
to abort ``moee embed``.

    python benchmarks/tokenize_long.py                       # the tiny byte-level BPE of the tests, 3 rounds
    python benchmarks/tokenize_long.py --tokenizer DIR       # any local tokenizer folder
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"1 KB": 1_000, "1 MB": 1_000_000, "50 MB": 50_000_000}
METHODS = ("ours", "whole")
LABELS = {"ours": "ours: cut by characters, then tokenised", "whole": "whole text tokenised (before)"}
MIB = 1024 * 1024


def whole_text_ids(tokenizer: Any, template: Any, text: str, max_length: int) -> list[int]:
    """The way before: the whole prompt tokenised, then the whole text again with offsets to cut inside it."""
    cleaned = template.clean(text)
    ids = list(tokenizer(template.wrap(cleaned), add_special_tokens=True)["input_ids"])
    if len(ids) <= max_length:
        return ids
    overhead = len(tokenizer(template.wrap(""), add_special_tokens=True)["input_ids"])
    offsets = tokenizer(cleaned, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    keep = min(len(offsets), max_length - overhead)
    while keep > 0:
        ids = list(tokenizer(template.wrap(cleaned[: offsets[keep - 1][1]]), add_special_tokens=True)["input_ids"])
        if len(ids) <= max_length:
            return ids
        keep -= len(ids) - max_length
    return list(tokenizer(template.wrap(""), add_special_tokens=True)["input_ids"])


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def worker(method: str, chars: int, tokenizer_dir: str, max_length: int, cap_gb: float) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    from transformers import AutoTokenizer

    from moee_plugins.core.batching import tokenize
    from moee_plugins.core.prompts import PRESETS
    from moee_plugins.core.standardize import calibration_sentences

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    template = PRESETS["prompteol"]
    prose = " ".join(calibration_sentences())
    text = (prose * (chars // len(prose) + 1))[:chars]
    run = (lambda: tokenize(tokenizer, template, [text], max_length)[0]) if method == "ours" else \
        (lambda: whole_text_ids(tokenizer, template, text, max_length))
    if method == "whole":
        size = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
        cap = size + int(cap_gb * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    ids = run()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mib": (_status_kb("VmHWM") - before) / 1024, "tokens": len(ids)}


def measure(method: str, chars: int, args: argparse.Namespace) -> dict[str, Any] | None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, __file__, "--worker", method, str(chars), "--tokenizer", args.tokenizer,
               "--max-length", str(args.max_length), "--cap-gb", str(args.cap_gb)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if done.returncode == 0 and lines else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", default=str(ROOT / "tests" / "fixtures" / "olmoe-parity" / "model"),
                   help="a local tokenizer folder (default: the tests' tiny byte-level BPE)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cap-gb", type=float, default=3.0, help="address-space cap of the whole-text way, in GB")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "CHARS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.tokenizer, args.max_length, args.cap_gb)))
        return
    results: dict[tuple[str, str], list[dict[str, Any] | None]] = {}
    for _ in range(args.rounds):  # interleaved: every size and method once per round
        for size, chars in SIZES.items():
            for method in METHODS:
                results.setdefault((size, method), []).append(measure(method, chars, args))
    rows = []
    for size in SIZES:
        for method in METHODS:
            runs = results[(size, method)]
            done = [r for r in runs if r is not None]
            if len(done) < len(runs):
                rows.append([size, LABELS[method], f"aborted ({len(runs) - len(done)}/{len(runs)} runs)",
                             f"> {args.cap_gb:g} GB cap", "-"])
                continue
            rows.append([size, LABELS[method], f"{statistics.median(r['seconds'] for r in done) * 1000:,.1f}",
                         f"{statistics.median(r['peak_mib'] for r in done):,.1f}", f"{done[0]['tokens']:,}"])
    print(f"{platform.node()} · {platform.processor() or platform.machine()} · python {platform.python_version()} · "
          f"tokenizer {args.tokenizer} · max_length {args.max_length} · {args.rounds} interleaved rounds, medians")
    headers = ["text", "method", "time (ms)", "peak memory above start (MiB)", "tokens"]
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    raw = {f"{size}/{method}": runs for (size, method), runs in results.items()}
    print("JSON " + json.dumps(raw))


if __name__ == "__main__":
    main()
