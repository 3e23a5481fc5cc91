"""Shared pieces of the benchmarks: model shapes, a synthetic long-tailed corpus, the paper code's way of
encoding, timing and memory probes, and table printing. Nothing is downloaded.

Speed does not depend on the values of the weights, so every model is built from its config with
random weights; what matters (and is realistic) is its *shape*. The corpus is made of words of a
word-level vocabulary as large as OLMoE's (50,304 entries), so one word is one token and document
lengths are exact; they follow a lognormal law (tens to thousands of tokens) tuned so that the paper
code's fixed batches of 32, in input order, spend about 70% of their tokens on padding, as on
20 Newsgroups.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# --------------------------------------------------------------------------- shapes
SHAPES: dict[str, dict[str, Any]] = {
    # allenai/OLMoE-1B-7B-0924: 6.9B parameters, 1.3B active per token
    "olmoe-1b-7b": {"vocab_size": 50304, "hidden_size": 2048, "intermediate_size": 1024, "num_hidden_layers": 16,
                    "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 64, "num_experts_per_tok": 8,
                    "max_position_embeddings": 4096},
    # OLMoE's vocabulary, router (64 experts, top-8) and expert/hidden ratio at 1/8 of the width and 1/4 of the
    # depth: small enough for a 2-core CPU
    "olmoe-cpu": {"vocab_size": 50304, "hidden_size": 256, "intermediate_size": 128, "num_hidden_layers": 4,
                  "num_attention_heads": 4, "num_key_value_heads": 4, "num_experts": 64, "num_experts_per_tok": 8,
                  "max_position_embeddings": 4096},
}


@dataclass(frozen=True)
class CorpusSpec:
    """Lognormal document lengths in words (= tokens), clipped to [min_words, max_words]."""

    docs: int
    median_words: float
    sigma: float
    min_words: int
    max_words: int


# 20 Newsgroups-like at full scale (GPU: ~30% of the reference's tokens are real, as measured on 20NG) and
# shorter documents for a CPU, with a tail that gives the reference the same ~30%
CORPORA = {
    "cuda": CorpusSpec(docs=2048, median_words=200, sigma=0.7, min_words=8, max_words=4000),
    "cpu": CorpusSpec(docs=256, median_words=48, sigma=0.8, min_words=8, max_words=500),
}
# ours: rows per batch and padded-token budget, per device (a GPU wants big batches; a CPU is as fast on
# small ones, which pad less on a small corpus)
OURS_BATCHING = {"cuda": (256, 32768), "cpu": (16, 2048)}
REFERENCE_BATCH = 32
PAD_ID = 0
SPECIALS = ["<pad>", "<unk>", "<eos>"]
MAX_PIECES = 16


# --------------------------------------------------------------------------- command line
def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None,
                   help="model shape (default: olmoe-1b-7b on cuda, olmoe-cpu on cpu)")
    p.add_argument("--docs", type=int, default=None, help="documents in the corpus (default: per device)")
    p.add_argument("--max-words", type=int, default=None, help="longest document, in words (default: per device)")
    p.add_argument("--batch-size", type=int, default=None, help="ours/bare: rows per batch (default: per device)")
    p.add_argument("--max-tokens-per-batch", type=int, default=None,
                   help="ours/bare: padded tokens per batch (default: per device)")
    p.add_argument("--ref-batch-size", type=int, default=REFERENCE_BATCH,
                   help="the paper code's fixed batch size (default: %(default)s)")
    p.add_argument("--attn-implementation", default=None, help="sdpa (default), eager, flash_attention_2, ...")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    return p


@dataclass
class Setup:
    device: torch.device
    dtype: torch.dtype
    shape: str
    corpus: CorpusSpec
    batch_size: int
    max_tokens_per_batch: int | None
    ref_batch_size: int
    attn_implementation: str | None
    seed: int


def setup(args: argparse.Namespace) -> Setup:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    kind = "cuda" if device.type == "cuda" else "cpu"
    spec = CORPORA[kind]
    spec = CorpusSpec(args.docs or spec.docs, spec.median_words, spec.sigma, spec.min_words,
                      args.max_words or spec.max_words)
    rows, budget = OURS_BATCHING[kind]
    shape = args.shape or ("olmoe-1b-7b" if kind == "cuda" else "olmoe-cpu")
    return Setup(device, torch.bfloat16 if kind == "cuda" else torch.float32, shape, spec,
                 args.batch_size or rows, args.max_tokens_per_batch or budget, args.ref_batch_size,
                 args.attn_implementation, args.seed)


def describe(s: Setup) -> str:
    """One line: the machine, the software and the workload."""
    if s.device.type == "cuda":
        machine = torch.cuda.get_device_name(s.device)
    else:
        cpu = platform.processor() or platform.machine()
        with contextlib.suppress(OSError, StopIteration):
            cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name"))
        machine = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    import transformers

    return (f"{machine} | torch {torch.__version__}, transformers {transformers.__version__} | shape {s.shape} "
            f"({str(s.dtype).removeprefix('torch.')}) | {s.corpus.docs} docs, lognormal lengths (median "
            f"{s.corpus.median_words:g} words, sigma {s.corpus.sigma}, {s.corpus.min_words}-{s.corpus.max_words})")


# --------------------------------------------------------------------------- model and tokenizer
def build_model(s: Setup) -> Any:
    """A CausalLM (LM head included, for the reference) with random weights; ours and bare use its body."""
    from transformers import AutoModelForCausalLM, OlmoeConfig

    config = OlmoeConfig(**SHAPES[s.shape], pad_token_id=PAD_ID, bos_token_id=None, eos_token_id=2,
                         tie_word_embeddings=False)
    extra = {"attn_implementation": s.attn_implementation} if s.attn_implementation else {}
    torch.manual_seed(s.seed)
    with torch.device(s.device):
        model = AutoModelForCausalLM.from_config(config, dtype=s.dtype, **extra)
    return model.eval()


def build_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer with ``vocab_size`` entries: the prompt's pieces and words ``w0``, ``w1``, ..."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from moee_plugins.core.prompts import PRESETS

    pre = pre_tokenizers.Whitespace()
    pieces: list[str] = []
    for text in ("w0 w1", "w0?", "w0.", "w0!", "w0'"):
        for piece, _ in pre.pre_tokenize_str(PRESETS["prompteol"].format(text)):
            if not re.fullmatch(r"w\d+", piece) and piece not in pieces:
                pieces.append(piece)
    if len(pieces) > MAX_PIECES:
        raise RuntimeError(f"the prompt has {len(pieces)} non-word pieces, more than the {MAX_PIECES} set aside")
    words = vocab_size - len(SPECIALS) - len(pieces)
    vocab = {token: i for i, token in enumerate([*SPECIALS, *pieces, *(f"w{i}" for i in range(words))])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="<eos>", model_input_names=["input_ids", "attention_mask"])
    with tempfile.TemporaryDirectory() as tmp:  # a save/load round trip, as a real checkpoint's tokenizer
        fast.save_pretrained(tmp)
        fast = PreTrainedTokenizerFast.from_pretrained(tmp)
    return fast


def word_count(vocab_size: int) -> int:
    return vocab_size - len(SPECIALS) - MAX_PIECES  # a few entries are prompt pieces: never sample past the words


def make_corpus(spec: CorpusSpec, vocab_size: int, seed: int = 0) -> list[str]:
    """Deterministic documents: lognormal lengths, Zipf-distributed words (as in natural text)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(spec.median_words), spec.sigma, spec.docs)),
                      spec.min_words, spec.max_words).astype(int)
    words = word_count(vocab_size)
    zipf = 1.0 / np.arange(1, words + 1)
    ids = rng.choice(words, size=int(lengths.sum()), p=zipf / zipf.sum())
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [" ".join(f"w{i}" for i in ids[a:b]) + "." for a, b in itertools.pairwise(bounds)]


def embedder(model: Any, tokenizer: Any, s: Setup, texts: Sequence[str]) -> Any:
    """Ours: a sum-mode MoEEmbedder on the model's body, calibrated (statistics fixed before timing)."""
    from moee_plugins import MoEEmbedder

    emb = MoEEmbedder(model, tokenizer, mode="sum", device=s.device, dtype=s.dtype, batch_size=s.batch_size,
                      max_tokens_per_batch=s.max_tokens_per_batch, max_length=s.corpus.max_words + 64)
    emb.calibrate(list(texts[:64]), show_progress_bar=False)
    return emb


def default_embedder(model: Any, tokenizer: Any, s: Setup, texts: Sequence[str]) -> Any:
    """Ours with the library's own defaults (nothing tuned: row cap, token budget, threads); only ``max_length``
    is the tuned one's, so that both see the same tokens. Calibrated like :func:`embedder`."""
    from moee_plugins import MoEEmbedder

    emb = MoEEmbedder(model, tokenizer, mode="sum", device=s.device, max_length=s.corpus.max_words + 64)
    emb.calibrate(list(texts[:64]), show_progress_bar=False)
    return emb


# --------------------------------------------------------------------------- the three ways of working
def bare_batches(emb: Any, texts: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Exactly ours' batches (same token ids, same length-sorted plan), padded ahead of time."""
    from moee_plugins.core.batching import left_pad, plan_batches, position_ids_from_mask

    ids = emb.tokenize(list(texts))
    plan = plan_batches([len(row) for row in ids], emb.batch_size, emb.max_tokens_per_batch)
    batches = []
    for batch in plan:
        input_ids, mask = left_pad([ids[i] for i in batch], PAD_ID)
        batches.append((input_ids, mask, position_ids_from_mask(mask)))
    return batches


def run_bare(body: Any, batches: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
             device: torch.device) -> None:
    """The limit: the base model's forward pass over those batches and nothing else."""
    with torch.inference_mode():
        for input_ids, mask, positions in batches:
            body(input_ids=input_ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                 use_cache=False)
    sync(device)


def paper_prompt(text: str) -> str:
    """The paper code's PromptEOL formatting."""
    sent = text
    if sent and sent[-1] not in ".?!\"'":
        sent += "."
    sent = sent.replace('"', "'")
    return f'This sentence : "{sent}" means in one word:"'


def run_reference(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int, device: torch.device,
                  lm_head: bool = True) -> dict[str, int]:
    """The paper code's way: fixed batches in input order, left-padded to the batch's longest, a CausalLM forward
    with every layer's hidden states and router logits, last-token pooling and per-batch z-scoring.
    ``lm_head=False`` runs the same batches through the body only (to separate padding from the head)."""
    tokenizer.padding_side = "left"
    real = processed = 0
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            prompts = [paper_prompt(t) for t in texts[start : start + batch_size]]
            inputs = tokenizer(prompts, padding=True, return_tensors="pt").to(device)
            real += int(inputs["attention_mask"].sum())
            processed += inputs["input_ids"].numel()
            if not lm_head:
                out = model.model(**inputs, use_cache=False)
                out.last_hidden_state[:, -1, :].float().cpu()
                continue
            out = model(**inputs, output_hidden_states=True, output_router_logits=True, use_cache=False)
            hs = out.hidden_states[-1][:, -1, :].float().cpu()
            rows, width = inputs["input_ids"].shape
            rw = torch.cat([logits.reshape(rows, width, -1)[:, -1, :] for logits in out.router_logits], dim=1)
            rw = rw.float().cpu()
            emb = torch.cat([hs, rw], dim=1)
            _ = (emb - emb.mean(dim=0, keepdim=True)) / (emb.std(dim=0, keepdim=True) + 1e-8)
    sync(device)
    return {"real": real, "processed": processed}


def fixed_batches_tokens(lengths: Sequence[int], batch_size: int) -> int:
    """Processed tokens of fixed-size batches in input order, each padded to its longest row."""
    return sum(len(lengths[i : i + batch_size]) * max(lengths[i : i + batch_size])
               for i in range(0, len(lengths), batch_size))


def planned_tokens(lengths: Sequence[int], batch_size: int, max_tokens: int | None,
                   texts: Sequence[str] | None = None, batch_cost: int | None = None) -> tuple[int, int]:
    """(processed tokens, batches) of ours' length-sorted plan; with ``texts``, planned chunk by chunk as
    ``encode`` does (``moee_plugins.core.pipeline.chunk_spans``), else over the whole corpus at once."""
    from moee_plugins.core.batching import plan_batches
    from moee_plugins.core.pipeline import chunk_spans

    processed = batches = 0
    for start, stop in chunk_spans(texts) if texts is not None else [(0, len(lengths))]:
        chunk = list(lengths[start:stop])
        plan = plan_batches(chunk, batch_size, max_tokens, batch_cost=batch_cost)
        processed += sum(len(batch) * chunk[batch[0]] for batch in plan)
        batches += len(plan)
    return processed, batches


# --------------------------------------------------------------------------- timing and memory
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    gc.collect()
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    return _status_kb("VmHWM") * 1024


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


# --------------------------------------------------------------------------- output
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            + " |" for r in cells]
    return "\n".join([line, rule, *body])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def emit(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def emit_json(payload: dict[str, Any]) -> None:
    emit("JSON " + json.dumps(payload, default=str))
