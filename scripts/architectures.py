"""The conformance matrix: every MoE ``model_type`` of the installed transformers, built tiny and checked.

    python scripts/architectures.py              # run the full matrix (parallel), write JSON + docs
    python scripts/architectures.py --jobs 4     # processes to use (default: half the CPUs, at least 1)
    python scripts/architectures.py --types olmoe jamba   # only these rows (merged into the saved JSON)
    python scripts/architectures.py --check      # docs/architectures.md is what the saved JSON renders to

Each model type runs in its own process with one thread and a time limit, so a hanging or crashing
architecture becomes a row of the table, never a broken run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.conformance import render_matrix  # noqa: E402

RESULT = ROOT / "docs" / "architectures.json"
DOCS = ROOT / "docs" / "architectures.md"
_CHILD = """
import json, sys, torch
torch.set_num_threads(1)
from scripts.conformance import conformance_check
print("MATRIX-ROW " + json.dumps(conformance_check(sys.argv[1], sys.argv[2])))
"""


def run_one(model_type: str, timeout: float) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"moee-{model_type}-") as work:
        try:
            done = subprocess.run([sys.executable, "-c", _CHILD, model_type, work], capture_output=True, text=True,
                                  timeout=timeout, env=env, cwd=str(ROOT))
        except subprocess.TimeoutExpired:
            return {"model_type": model_type, "status": "failed", "stage": "timeout",
                    "reason": f"did not finish within {timeout:.0f} s"}
    rows = [line[len("MATRIX-ROW "):] for line in done.stdout.splitlines() if line.startswith("MATRIX-ROW ")]
    if not rows:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model_type": model_type, "status": "failed", "stage": "crash", "reason": tail[:300]}
    row = json.loads(rows[-1])
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", nargs="*", help="only these model types")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model type")
    parser.add_argument("--check", action="store_true", help="fail if docs/architectures.md is not current")
    args = parser.parse_args(argv)
    if args.check:
        current = DOCS.read_text(encoding="utf-8") if DOCS.exists() else ""
        if current != render_matrix(json.loads(RESULT.read_text(encoding="utf-8"))):
            print(f"{DOCS} is stale: run python scripts/architectures.py", file=sys.stderr)
            return 1
        return 0
    from scripts.conformance import router_model_types

    types = args.types or list(router_model_types())
    saved = json.loads(RESULT.read_text(encoding="utf-8")) if args.types and RESULT.exists() else {"rows": []}
    rows = {row["model_type"]: row for row in saved["rows"]}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(lambda t: run_one(t, args.timeout), types):
            rows[row["model_type"]] = row
            print(f"{row['model_type']:40s} {row['status']:12s} {row.get('reason', '')[:90]}", flush=True)
    import transformers

    result = {"transformers": transformers.__version__, "command": "python scripts/architectures.py",
              "rows": [rows[t] for t in sorted(rows)]}
    RESULT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    DOCS.write_text(render_matrix(result), encoding="utf-8")
    counts: dict[str, int] = {}
    for row in result["rows"]:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
