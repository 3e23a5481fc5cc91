"""benchmarks/gpu_check.py, the one prepared GPU check, runs end to end on the CPU (``--device cpu --smoke``: a tiny
shape) so that it cannot rot between the rare runs on a GPU: every row of its table is there, and no check fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
CHECKS = ("parity with the paper code", "overhead", "tokenisation overlap", "experts_implementation",
          "attn_implementation", "out-of-memory split (forced)", "precision", "device_map", "moee serve")


def test_gpu_check_smoke_runs_on_cpu():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--smoke"], capture_output=True, text=True,
                         env=env, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    table = {line.split("|")[1].strip() for line in rows[1:]}
    assert set(CHECKS) <= table, sorted(table)
    statuses = [line.split("|")[-2].strip() for line in rows[2:]]
    assert "FAIL" not in statuses
    # the correctness rows that can run on a CPU ran and passed (rather than being skipped)
    for check, variant in [("parity with the paper code", "float32"), ("tokenisation overlap", "on: encode()"),
                           ("experts_implementation", "eager"), ("experts_implementation", "grouped_mm"),
                           ("attn_implementation", "eager"), ("attn_implementation", "sdpa"),
                           ("out-of-memory split (forced)", "batches over"), ("moee serve", "server")]:
        assert any(line.split("|")[1].strip() == check and line.split("|")[2].strip().startswith(variant)
                   and line.split("|")[-2].strip() == "ok" for line in rows), (check, variant, rows)
