"""The table, the plan and the model builder of benchmarks/gpu_check.py (kept apart so each file stays short)."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import _common as c
import numpy as np
import torch

from moee_plugins import MoEEmbedder

SMOKE_SHAPE = {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 32, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 4, "num_experts": 8, "num_experts_per_tok": 2,
               "max_position_embeddings": 1024}
HEADERS = ["check", "variant", "seconds", "docs/s", "time / base", "agreement", "status"]


@dataclass
class Plan:
    device: torch.device
    dtype: torch.dtype
    shape: dict[str, Any]
    docs: int
    max_words: int
    rounds: int
    oom_rows: int
    checkpoint_layers: int
    smoke: bool


class Report:
    """The table's rows; a FAIL anywhere makes the exit status 1."""

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []

    def add(self, check: str, variant: str, status: str, *, seconds: float | None = None, docs: int | None = None,
            base: float | None = None, agreement: str = "") -> None:
        rate = docs / seconds if seconds and docs else None
        ratio = seconds / base if seconds and base else None
        if status.startswith("skipped: "):  # the reason goes where the agreement would
            status, agreement = "skipped", status.removeprefix("skipped: ")
        self.rows.append([check, variant, _num(seconds), _num(rate), _num(ratio), agreement[:110], status])
        c.emit(f"  {check} / {variant}: {status} {agreement}".rstrip())

    @property
    def failed(self) -> list[list[Any]]:
        return [row for row in self.rows if row[-1] == "FAIL"]


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:,.3f}" if value < 10 else f"{value:,.1f}"


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max |a - b|, min cosine of matching rows)."""
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.abs(a - b).max()), float(cos.min())


def close(plan: Plan, a: np.ndarray, b: np.ndarray) -> tuple[bool, str]:
    """Same vectors up to the dtype's rounding: 1e-4 in float32, cosine >= 0.99 in 16-bit (batch shapes differ)."""
    diff, cos = agreement(a, b)
    ok = diff <= 1e-4 if plan.dtype == torch.float32 else cos >= 0.99
    return ok, f"max|diff| {diff:.1e}, min cos {cos:.4f}"


def release() -> None:
    """Free what the caller dropped (GPU memory included) before the next model is loaded."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- model, corpus, embedders
def build(plan: Plan, layers: int | None = None) -> tuple[Any, Any, list[str]]:
    """A CausalLM with random weights in the plan's shape (``layers`` overrides the depth), its tokenizer, the corpus."""
    from transformers import AutoModelForCausalLM, OlmoeConfig

    shape = dict(plan.shape, **({"num_hidden_layers": layers} if layers else {}))
    config = OlmoeConfig(**shape, pad_token_id=c.PAD_ID, bos_token_id=None, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(plan.device):
        model = AutoModelForCausalLM.from_config(config, dtype=plan.dtype).eval()
    tokenizer = c.build_tokenizer(config.vocab_size)
    spec = c.CorpusSpec(plan.docs, min(200.0, plan.max_words / 4), 0.7, 8, plan.max_words)
    return model, tokenizer, c.make_corpus(spec, config.vocab_size, seed=0)


def embedder(plan: Plan, model: Any, tokenizer: Any, statistics: Any = None, **options: Any) -> MoEEmbedder:
    """Ours with the library's defaults (only ``max_length`` set, so every text is whole)."""
    return MoEEmbedder(model, tokenizer, mode="sum", device=plan.device, max_length=plan.max_words + 64,
                       statistics=statistics, **options)
