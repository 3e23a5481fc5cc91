"""One prepared check of the GPU path, printed as one table (under 8 minutes on one GPU, no network).

It builds a random model in the OLMoE-1B-7B shape on the spot.

    python benchmarks/gpu_check.py                          # CUDA: the OLMoE-1B-7B shape in bfloat16
    python benchmarks/gpu_check.py --device cpu --smoke     # a tiny shape on the CPU (CI runs it so it cannot rot)

Rows of the table (after float32 parity with the paper code on the reference fixture):

1. overhead: ``encode()`` with the library defaults vs a bare base-model forward over the very batches it ran
   (recorded from the model's own inputs; target <= 1.03), rounds interleaved, fastest of each;
2. tokenisation overlap: ``encode()`` (next chunk tokenised in a background thread on an accelerator) vs
   tokenising everything first, then ``encode_token_ids`` (no overlap);
3. each ``experts_implementation`` the model offers (eager, batched_mm, grouped_mm, and the Hopper kernels
   where they load) and each ``attn_implementation`` (eager, sdpa, flash attention where it loads), with its
   agreement to the default kernel;
4. bfloat16 vs 4-bit vs 8-bit (bitsandbytes, CUDA only), routers kept in full precision;
5. the out-of-memory split, forced: the model raises ``torch.OutOfMemoryError`` on batches over a row limit, and
   every row must still come back, in order, equal to small-batch results;
6. ``device_map="auto"`` over the visible devices;
7. ``moee serve`` (a separate process) vs ``encode()`` in-process, on the same texts.

Quantisation, ``device_map`` and the server load a saved checkpoint: on CUDA the OLMoE-1B-7B width at
``--checkpoint-layers`` (default 4) of its 16 layers, so that writing and loading it takes seconds. Status: ``ok`` /
``FAIL`` (a correctness check; any FAIL makes the exit status 1), ``met`` / ``NOT met`` (a speed target), or
``skipped`` (the reason in the agreement column). Only the package's public API is used.
"""

from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")  # nothing here may reach the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import _common as c  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _gpu_checkpoint import check_device_map, check_precision, check_serve, save_checkpoint  # noqa: E402
from _gpu_common import HEADERS, SMOKE_SHAPE, Plan, Report, build, close, embedder, release  # noqa: E402

from moee_plugins import MoEEmbedder  # noqa: E402
from moee_plugins.core.loading import implementation_choices  # noqa: E402
from moee_plugins.core.pipeline import background_tokenisation  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "olmoe-parity"


@contextlib.contextmanager
def recorded_inputs(body: Any):
    """The keyword inputs of every forward pass of ``body`` (on the host), through a torch forward pre-hook."""
    seen: list[dict[str, Any]] = []

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        seen.append({k: v.detach().cpu() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    handle = body.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def bare(body: Any, batches: list[dict[str, Any]], device: torch.device) -> None:
    with torch.inference_mode():
        for inputs in batches:
            body(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False)
    c.sync(device)


def interleaved(candidates: dict[str, Any], rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each candidate, rounds alternating in order and reversed (other load only ever adds time)."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(c.timed(candidates[name], device))
    return times


# --------------------------------------------------------------------------- the checks
def check_overhead(plan: Plan, report: Report, emb: MoEEmbedder, texts: list[str]) -> None:
    with recorded_inputs(emb.model) as batches:
        emb.encode(texts, show_progress_bar=False)  # warm-up, and the batches it runs
    bare(emb.model, batches[:2], plan.device)
    times = interleaved({"bare": lambda: bare(emb.model, batches, plan.device),
                         "ours": lambda: emb.encode(texts, show_progress_bar=False)}, plan.rounds, plan.device)
    base, ours = min(times["bare"]), min(times["ours"])
    report.add("overhead", "bare forward, ours' batches", "base", seconds=base, docs=len(texts), base=base,
               agreement=f"{len(batches)} batches")
    ratio, medians = ours / base, c.median(times["ours"]) / c.median(times["bare"])
    report.add("overhead", "encode(), library defaults", "met" if ratio <= 1.03 else "NOT met", seconds=ours,
               docs=len(texts), base=base, agreement=f"target <= 1.03; medians {medians:.3f}")


def check_overlap(plan: Plan, report: Report, emb: MoEEmbedder, texts: list[str]) -> None:
    out: dict[str, np.ndarray] = {}

    def on() -> None:
        out["on"] = emb.encode(texts, show_progress_bar=False)

    def off() -> None:
        ids = emb.tokenize(texts)
        out["off"] = emb.combine(emb.encode_token_ids(ids, show_progress_bar=False))

    times = interleaved({"off": off, "on": on}, plan.rounds, plan.device)
    base = min(times["off"])
    report.add("tokenisation overlap", "off: tokenize all, then encode_token_ids", "base", seconds=base,
               docs=len(texts), base=base)
    ok, detail = close(plan, out["on"], out["off"])
    background = "background thread" if background_tokenisation(plan.device) else "no thread on this device"
    report.add("tokenisation overlap", f"on: encode() ({background})", "ok" if ok else "FAIL",
               seconds=min(times["on"]), docs=len(texts), base=base, agreement=detail)


# batched_mm gathers one expert matrix per (token, expert) pair: at OLMoE's width 12 MiB a pair, so its batches
# must stay small (the token budget below); every kernel runs on the same short texts
KERNEL_TOKEN_BUDGETS = {"batched_mm": 256}
KERNEL_SAMPLE = 128


def check_kernels(plan: Plan, report: Report, model: Any, tokenizer: Any, statistics: Any, texts: list[str],
                  option: str) -> None:
    """Every ``option`` (experts_implementation or attn_implementation) the model offers: speed on the same short
    texts, and agreement with transformers' default kernel."""
    sample = sorted(texts, key=len)[:KERNEL_SAMPLE]
    default = embedder(plan, model, tokenizer, statistics)
    reference = default.encode(sample, show_progress_bar=False)
    before = {"experts_implementation": default.model.get_experts_implementation().get(""),
              "attn_implementation": default.model.config._attn_implementation}[option]
    choices = implementation_choices(default.model)[option]
    if not choices:
        report.add(option, "-", "skipped: the model's experts have one implementation")
    base = None
    for name in choices:
        budget = KERNEL_TOKEN_BUDGETS.get(name)
        variant = name if budget is None else f"{name} ({budget} tokens per batch)"
        try:
            extra = {} if budget is None else {"max_tokens_per_batch": budget}
            emb = embedder(plan, model, tokenizer, statistics, **{option: name}, **extra)
            emb.encode(sample[:8], show_progress_bar=False)  # warm-up (and a kernel that cannot run fails here)
            seconds = min(c.timed(lambda e=emb: e.encode(sample, show_progress_bar=False), plan.device)
                          for _ in range(max(1, plan.rounds - 1)))
            vectors = emb.encode(sample, show_progress_bar=False)
        except Exception as exc:  # not offered on this device, or offered but unable to run here: say so, go on
            report.add(option, variant, f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            continue
        finally:
            release()
        base = base or seconds
        ok, detail = close(plan, vectors, reference)
        report.add(option, variant, "ok" if ok else "FAIL", seconds=seconds, docs=len(sample), base=base,
                   agreement=f"vs default ({before}): {detail}")
    if choices and before is not None:  # back to the default for what follows
        embedder(plan, model, tokenizer, statistics, **{option: before})


def check_oom(plan: Plan, report: Report, model: Any, tokenizer: Any, statistics: Any, texts: list[str],
              reference: np.ndarray) -> None:
    """Batches of more than ``oom_rows`` rows raise torch.OutOfMemoryError in the model: the embedder must split."""
    limit = plan.oom_rows
    shapes: list[int] = []

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        rows = int(kwargs["input_ids"].shape[0])
        shapes.append(rows)
        if rows > limit:
            raise torch.OutOfMemoryError(f"forced: {rows} rows > {limit}")

    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    library = logging.getLogger("moee_plugins")
    level = library.level
    library.addHandler(handler)
    library.setLevel(logging.WARNING)
    emb = embedder(plan, model, tokenizer, statistics, batch_size=8 * limit, max_tokens_per_batch=None)
    handle = emb.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        start = time.perf_counter()
        vectors = emb.encode(texts, show_progress_bar=False)
        seconds = time.perf_counter() - start
    finally:
        handle.remove()
        library.removeHandler(handler)
        library.setLevel(level)
    ok, detail = close(plan, vectors, reference)
    split = any(rows > limit for rows in shapes) and max(shapes[-3:]) <= limit
    report.add("out-of-memory split (forced)", f"batches over {limit} rows fail", "ok" if ok and split else "FAIL",
               seconds=seconds, docs=len(texts),
               agreement=f"{len(vectors)}/{len(texts)} rows, {sum('out of memory' in w for w in warnings)} split(s); "
               f"vs unsplit: {detail}")


# --------------------------------------------------------------------------- main
def make_plan(argv: list[str] | None) -> Plan:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--smoke", action="store_true", help="a tiny shape and corpus: checks the script, not the GPU")
    p.add_argument("--docs", type=int, default=None, help="documents timed (default: 1,024 on CUDA, 32 for --smoke)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per comparison (default: 3; smoke 1)")
    p.add_argument("--checkpoint-layers", type=int, default=4, help="depth of the saved checkpoint (default: 4)")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here (use --device cpu --smoke to check the script)")
    if device.type != "cuda" and not args.smoke:
        sys.exit("the full check needs a CUDA GPU; on a CPU run it as --device cpu --smoke")
    shape = SMOKE_SHAPE if args.smoke else c.SHAPES["olmoe-1b-7b"]
    return Plan(device, torch.bfloat16 if device.type == "cuda" else torch.float32, shape,
                args.docs or (32 if args.smoke else 1024), 64 if args.smoke else 1000,
                args.rounds or (1 if args.smoke else 3), 4 if args.smoke else 32, args.checkpoint_layers, args.smoke)


def check_parity(plan: Plan, report: Report) -> None:
    """float32 parity with the paper code's outputs on the reference fixture (tests/fixtures/olmoe-parity)."""
    expected = np.load(FIXTURE / "expected.npz", allow_pickle=True)
    emb = MoEEmbedder(str(FIXTURE / "model"), mode="hs", dtype="float32", device=plan.device)
    parts = emb.encode_parts([str(t) for t in expected["texts"]], batch_size=6)
    dh = float(np.abs(parts.hidden - expected["hs_bs6"]).max())
    dr = float(np.abs(parts.routing - expected["rw_raw_bs6"]).max())
    report.add("parity with the paper code", "float32, reference fixture", "ok" if max(dh, dr) < 1e-4 else "FAIL",
               agreement=f"max|HS diff| {dh:.1e}, max|RW diff| {dr:.1e}")


def in_memory_checks(plan: Plan, report: Report) -> None:
    """The checks on the full-depth model built in memory (freed when this returns)."""
    model, tokenizer, texts = build(plan)
    emb = embedder(plan, model, tokenizer)
    emb.calibrate(texts[:64], show_progress_bar=False)
    check_overhead(plan, report, emb, texts)
    check_overlap(plan, report, emb, texts)
    for option in ("experts_implementation", "attn_implementation"):
        check_kernels(plan, report, model, tokenizer, emb.statistics, texts, option)
    check_oom(plan, report, model, tokenizer, emb.statistics, texts, emb.encode(texts, show_progress_bar=False))


def checkpoint_checks(plan: Plan, report: Report) -> None:
    """The checks that load a saved checkpoint (quantisation, device_map, the server)."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "checkpoint"
        texts = save_checkpoint(plan, ckpt)
        sample = texts[: max(16, len(texts) // 4)]
        full, statistics = check_precision(plan, report, ckpt, sample)
        release()
        check_device_map(plan, report, ckpt, sample, full)
        release()
        check_serve(plan, report, ckpt, sample, statistics)


def main(argv: list[str] | None = None) -> int:
    plan = make_plan(argv)
    logging.basicConfig(level=logging.ERROR)
    import transformers

    name = torch.cuda.get_device_name(plan.device) if plan.device.type == "cuda" else "CPU"
    c.emit(f"device: {name} | torch {torch.__version__}, transformers {transformers.__version__} | "
           f"{'smoke shape' if plan.smoke else 'OLMoE-1B-7B shape'} ({str(plan.dtype).removeprefix('torch.')}), "
           f"{plan.docs} documents, {plan.rounds} round(s)")
    started = time.perf_counter()
    report = Report()
    check_parity(plan, report)
    in_memory_checks(plan, report)
    release()
    checkpoint_checks(plan, report)
    c.emit("")
    c.emit(c.table(HEADERS, report.rows))
    c.emit(f"{len(report.rows)} rows, {len(report.failed)} FAIL, {time.perf_counter() - started:.0f} s")
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
