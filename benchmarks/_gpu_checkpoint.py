"""The checks of benchmarks/gpu_check.py that load a saved checkpoint: precision (bf16, 4-bit, 8-bit),
``device_map="auto"`` and ``moee serve`` in its own process."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _common as c
import numpy as np
import torch
from _gpu_common import Plan, Report, agreement, build, close, release

from moee_plugins import MoEEmbedder

ROOT = Path(__file__).resolve().parents[1]


def save_checkpoint(plan: Plan, directory: Path) -> list[str]:
    """A checkpoint on disk (the full width, ``checkpoint_layers`` deep on CUDA); returns the corpus."""
    model, tokenizer, texts = build(plan, None if plan.smoke else plan.checkpoint_layers)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    del model
    release()
    return texts


def check_precision(plan: Plan, report: Report, ckpt: Path, texts: list[str]) -> tuple[np.ndarray, Any]:
    """bf16 (float32 on a CPU) from the saved checkpoint; then 4-bit and 8-bit where bitsandbytes runs."""
    full = MoEEmbedder(str(ckpt), device=plan.device, max_length=plan.max_words + 64)
    full.encode(texts[:8], show_progress_bar=False)
    seconds = c.timed(lambda: full.encode(texts, show_progress_bar=False), plan.device)
    vectors = full.encode(texts, show_progress_bar=False)
    statistics = full.statistics
    report.add("precision", f"{str(full.dtype).removeprefix('torch.')} (checkpoint)", "base", seconds=seconds,
               docs=len(texts), base=seconds)
    for kind in ("4bit", "8bit"):
        if plan.device.type != "cuda":
            report.add("precision", kind, "skipped: bitsandbytes quantisation needs CUDA")
            continue
        try:
            emb = MoEEmbedder(str(ckpt), device=plan.device, quantization=kind, statistics=statistics,
                              max_length=plan.max_words + 64)
        except ImportError as exc:  # bitsandbytes not installed
            report.add("precision", kind, f"skipped: {str(exc).splitlines()[0]}")
            continue
        except Exception as exc:  # installed but failing here: that is a finding
            report.add("precision", kind, "FAIL", agreement=f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
            continue
        routers = {str(p.dtype).removeprefix("torch.") for site in emb.sites for p in site.module.parameters()}
        emb.encode(texts[:8], show_progress_bar=False)
        q_seconds = c.timed(lambda e=emb: e.encode(texts, show_progress_bar=False), plan.device)
        _, cos = agreement(emb.encode(texts, show_progress_bar=False), vectors)
        ok = routers <= {"bfloat16", "float32", "float16"} and cos > 0.9
        report.add("precision", kind, "ok" if ok else "FAIL", seconds=q_seconds, docs=len(texts), base=seconds,
                   agreement=f"routers {sorted(routers)}; min cos vs full {cos:.3f}")
        del emb
        release()
    return vectors, statistics


def check_device_map(plan: Plan, report: Report, ckpt: Path, texts: list[str], full: np.ndarray) -> None:


    if importlib.util.find_spec("accelerate") is None:
        report.add("device_map", "auto", "skipped: accelerate is not installed")
        return
    try:
        emb = MoEEmbedder(str(ckpt), device=plan.device, model_kwargs={"device_map": "auto"},
                          max_length=plan.max_words + 64)
    except Exception as exc:
        report.add("device_map", "auto", "FAIL", agreement=f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
        return
    devices = sorted({str(p.device) for p in emb.model.parameters()})
    seconds = c.timed(lambda: emb.encode(texts, show_progress_bar=False), plan.device)
    ok, detail = close(plan, emb.encode(texts, show_progress_bar=False), full)
    visible = torch.cuda.device_count() if plan.device.type == "cuda" else 0
    report.add("device_map", f"auto over {visible} visible GPU(s)", "ok" if ok else "FAIL", seconds=seconds,
               docs=len(texts), agreement=f"weights on {', '.join(devices)}; vs one device: {detail}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, texts: list[str]) -> list[list[float]]:
    body = json.dumps({"model": "moee", "input": texts}).encode("utf-8")
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        data = json.loads(response.read())["data"]
    return [item["embedding"] for item in sorted(data, key=lambda item: item["index"])]


def check_serve(plan: Plan, report: Report, ckpt: Path, texts: list[str], statistics: Any,
                per_request: int = 16) -> None:
    """``moee serve`` in its own process on the plan's device vs ``encode()`` here, both with the statistics of the
    built-in sentences (the server calibrates on them as it starts; ``statistics`` are this process's)."""
    port = _free_port()
    argv = [sys.executable, "-c", "from moee_plugins.cli import main; raise SystemExit(main())", "serve",
            "--model", str(ckpt), "--served-model-name", "moee", "--device", str(plan.device), "--port", str(port),
            "--max-length", str(plan.max_words + 64), "--log-level", "warning"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                report.add("moee serve", "server process", "FAIL", agreement=server.stderr.read()[-200:])
                return
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/health",
                                                                       timeout=5) as response:
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                report.add("moee serve", "server process", "FAIL", agreement="not ready after 300 s")
                return
            time.sleep(0.5)  # polling a child process's readiness, not synchronising the check's results
        url = f"http://127.0.0.1:{port}/v1/embeddings"
        groups = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
        _post(url, groups[0])  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            served = np.asarray([v for group in pool.map(lambda g: _post(url, g), groups) for v in group],
                                dtype=np.float32)
        served_s = time.perf_counter() - start
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=60)
        if server.poll() is None:
            server.kill()
    local = MoEEmbedder(str(ckpt), device=plan.device, max_length=plan.max_words + 64, statistics=statistics)
    local.encode(texts[:8], show_progress_bar=False)
    local_s = c.timed(lambda: local.encode(texts, show_progress_bar=False), plan.device)
    ok, detail = close(plan, served, local.encode(texts, show_progress_bar=False))
    report.add("moee serve", "encode() in-process", "base", seconds=local_s, docs=len(texts), base=local_s)
    report.add("moee serve", f"server, {len(groups)} requests of {per_request} from 8 clients", "ok" if ok else "FAIL",
               seconds=served_s, docs=len(texts), base=local_s, agreement=detail)
