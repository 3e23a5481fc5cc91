"""``MoEEmbedder``: one forward pass per batch -> hidden state + routing weights -> MoEE embeddings."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..aliases import ModelAlias
from .batching import plan_batches, position_ids_from_mask, right_pad, tokenize
from .combine import MODES, combine, similarity
from .loading import (
    QUANTIZATIONS,
    base_model,
    dtype_name,
    input_device,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_reference,
)
from .parts import MoEEParts, RouterBlock
from .pooling import POOLINGS, pool
from .prompts import PromptTemplate, prompt_to_config, resolve_prompt
from .routers import ROUTING_KINDS, RoutingCapture, find_router_sites, select_sites
from .standardize import Statistics, calibration_sentences

logger = logging.getLogger("moee_plugins")

STANDARDIZE = ("auto", None)
_FLUSH_ROWS = 4096  # pooled rows kept on the device between copies to the host
CONFIG_KEYS = (
    "model", "tokenizer", "mode", "prompt", "pooling", "routing", "alpha", "layers", "standardize", "normalize",
    "dtype", "quantization", "max_length", "batch_size", "max_tokens_per_batch", "trust_remote_code", "model_kwargs",
)


def _check_texts(texts: Any) -> tuple[list[str], bool]:
    """A list of strings and whether the input was a single string. Names the first bad item."""
    if isinstance(texts, str):
        return [texts], True
    if texts is None:
        raise TypeError("texts must be a string or a sequence of strings, got None")
    if isinstance(texts, (bytes, dict)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}")
    items = list(texts)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"texts[{i}] must be a string, got {type(item).__name__}: {item!r:.80}")
    return items, False


class MoEEmbedder:
    """Training-free text embeddings from a Mixture-of-Experts LLM (Li & Zhou, ICLR 2025).

    Example:
        >>> from moee_plugins import MoEEmbedder
        >>> emb = MoEEmbedder("moee:olmoe")                       # doctest: +SKIP
        >>> X = emb.encode(["The hockey team won.", "GPUs and printers"])  # doctest: +SKIP
        >>> emb.similarity(X, X)                                  # doctest: +SKIP

    Args:
        model: ``"moee:<alias>"``, a hub id, a local directory, or a loaded ``PreTrainedModel``
            (then ``tokenizer`` is required).
        tokenizer: a tokenizer, or a hub id / directory to load it from (default: the model's).
        mode: ``hs``, ``rw``, ``concat`` or ``sum`` (see :func:`moee_plugins.core.combine.combine`).
        prompt: ``prompteol``, ``none``, ``raw`` or a custom template containing ``{text}``.
        pooling: ``last`` (last real token) or ``mean`` (over real tokens).
        routing: ``logits`` (raw router scores) or ``probs`` (the model's softmax/sigmoid over all
            experts); ``None`` takes the alias's default, else ``logits``.
        alpha: weight of cos(RW) in ``sum`` mode.
        layers: decoder-layer indices whose routers to use (default: every MoE layer).
        standardize: ``auto`` (fixed per-dimension statistics from :meth:`calibrate`, or from the
            shipped calibration sentences on first use) or ``None`` (off).
        normalize: L2-normalise hs/rw/concat vectors.
        device, dtype, quantization: where and how to run; ``dtype="auto"`` is bfloat16 on CUDA,
            float32 on CPU; ``quantization`` is ``4bit``/``8bit`` (routers stay in full precision).
        max_length: tokens per text, prompt included; longer texts are cut inside the prompt.
        batch_size, max_tokens_per_batch: row cap and padded-token budget of a batch.
        trust_remote_code: run a checkpoint's own modelling code (off unless you ask).
        model_kwargs: extra ``from_pretrained`` arguments (e.g. ``device_map="auto"``).
        statistics: standardisation statistics (a :class:`Statistics` or its dict), e.g. from a saved config.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        mode: str = "sum",
        prompt: str | PromptTemplate = "prompteol",
        pooling: str = "last",
        routing: str | None = None,
        alpha: float = 1.0,
        layers: Sequence[int] | None = None,
        standardize: str | None = "auto",
        normalize: bool = True,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "auto",
        quantization: str | None = None,
        max_length: int = 512,
        batch_size: int = 32,
        max_tokens_per_batch: int | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        statistics: Statistics | dict[str, Any] | None = None,
    ) -> None:
        alias: ModelAlias | None = None
        if isinstance(model, str):
            reference = resolve_reference(model)
            alias = reference.alias
            defaults = alias.defaults if alias else {}
            routing = routing if routing is not None else defaults.get("routing")
            self._model_ref: str = model
        elif isinstance(model, torch.nn.Module):
            if tokenizer is None:
                raise ValueError("a loaded model needs its tokenizer: MoEEmbedder(model, tokenizer, ...)")
            self._model_ref = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        else:
            raise TypeError(
                f"model must be 'moee:<alias>', a hub id, a local directory or a PreTrainedModel, got {type(model).__name__}"
            )
        routing = routing or "logits"
        self._validate_options(mode, pooling, routing, alpha, standardize, quantization, max_length, batch_size,
                               max_tokens_per_batch, layers)
        self.mode = mode
        self.prompt = resolve_prompt(prompt)
        self.pooling = pooling
        self.routing = routing
        self.alpha = float(alpha)
        self.standardize = standardize
        self.normalize = bool(normalize)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.max_tokens_per_batch = max_tokens_per_batch
        self.trust_remote_code = bool(trust_remote_code)
        self.model_kwargs = dict(model_kwargs or {})
        self.quantization = quantization
        self._dtype_arg = dtype
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._tokenizer_ref = tokenizer if isinstance(tokenizer, str) else None

        if isinstance(model, str):
            self.model = load_model(reference, device=self.device, dtype=self.dtype, quantization=quantization,
                                    trust_remote_code=self.trust_remote_code, model_kwargs=self.model_kwargs)
            self.model_path = reference.path
        else:
            self.model = base_model(model).eval()
            self.model_path = self._model_ref
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer or self.model_path, self.trust_remote_code)
        self.tokenizer = tokenizer
        self._pad_id = next((v for v in (tokenizer.pad_token_id, tokenizer.eos_token_id) if v is not None), 0)

        self.sites = select_sites(find_router_sites(self.model), list(layers) if layers is not None else None)
        self.layers = None if layers is None else [int(layer) for layer in layers]
        self.layout = self._layout()
        self.hidden_dim = int(self.model.config.hidden_size)
        self.routing_dim = self.layout[-1].stop
        self._input_device = input_device(self.model, self.device)
        self._row_cap: int | None = None  # lowered for the rest of the run after an out-of-memory split
        self._lock = threading.RLock()
        self.statistics: Statistics | None = None
        if statistics is not None:
            self.set_statistics(statistics)

    # ------------------------------------------------------------------ options
    @staticmethod
    def _validate_options(mode, pooling, routing, alpha, standardize, quantization, max_length, batch_size,
                          max_tokens_per_batch, layers) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if routing not in ROUTING_KINDS:
            raise ValueError(f"routing must be one of {ROUTING_KINDS}, got {routing!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        if standardize not in STANDARDIZE:
            raise ValueError(f"standardize must be 'auto' or None, got {standardize!r}")
        if quantization is not None and quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be None or one of {QUANTIZATIONS}, got {quantization!r}")
        for name, value in (("max_length", max_length), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if max_tokens_per_batch is not None and (not isinstance(max_tokens_per_batch, int) or max_tokens_per_batch < 1):
            raise ValueError(f"max_tokens_per_batch must be None or a positive integer, got {max_tokens_per_batch!r}")
        if layers is not None and (isinstance(layers, (str, bytes)) or not all(isinstance(x, int) for x in layers)):
            raise TypeError(f"layers must be a sequence of decoder-layer indices, got {layers!r}")

    def _layout(self) -> list[RouterBlock]:
        blocks, start = [], 0
        for site in self.sites:
            blocks.append(RouterBlock(site.layer, site.name, site.num_experts, start, start + site.num_experts))
            start += site.num_experts
        return blocks

    # ------------------------------------------------------------------ shape
    @property
    def dim(self) -> int:
        """Length of the vectors :meth:`encode` returns."""
        return {"hs": self.hidden_dim, "rw": self.routing_dim}.get(self.mode, self.hidden_dim + self.routing_dim)

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim

    @property
    def moe_layers(self) -> list[int]:
        """Decoder layers whose routers feed the embedding."""
        return sorted({site.layer for site in self.sites})

    # ------------------------------------------------------------------ encoding
    def tokenize(self, texts: Sequence[str], prompt: str | PromptTemplate | None = None) -> list[list[int]]:
        """Token ids the model will see for each text (prompt applied, truncated inside the prompt)."""
        items, _ = _check_texts(texts)
        template = self.prompt if prompt is None else resolve_prompt(prompt)
        return tokenize(self.tokenizer, template, items, self.max_length)

    def encode_parts(
        self,
        texts: str | Sequence[str],
        *,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        prompt: str | PromptTemplate | None = None,
        progress: Any = None,
    ) -> MoEEParts:
        """The raw channels (HS and RW, unstandardised) of every text, in input order.

        ``progress``: an open tqdm bar (or anything with ``update(n)``) to advance batch by batch instead
        of a bar of this call's own, e.g. one bar over a corpus encoded in several calls.
        """
        items, _ = _check_texts(texts)
        token_ids = self.tokenize(items, prompt)
        return self._encode_token_ids(token_ids, batch_size, show_progress_bar, progress)

    def encode_token_ids(
        self,
        token_ids: Sequence[Sequence[int]],
        *,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> MoEEParts:
        """The raw channels of already tokenised inputs (as :meth:`tokenize` returns them), in input order.

        For frameworks that tokenise in one step and run the model in another (sentence-transformers).
        """
        if isinstance(token_ids, (str, bytes)) or not isinstance(token_ids, Iterable):
            raise TypeError(f"token_ids must be a sequence of token-id sequences, got {type(token_ids).__name__}")
        rows: list[list[int]] = []
        for i, row in enumerate(token_ids):
            if isinstance(row, (str, bytes)) or not isinstance(row, Iterable):
                raise TypeError(f"token_ids[{i}] must be a sequence of token ids, got {type(row).__name__}")
            ids = [int(v) for v in row]
            if not ids:
                raise ValueError(f"token_ids[{i}] is empty: every input needs at least one token")
            rows.append(ids)
        return self._encode_token_ids(rows, batch_size, show_progress_bar)

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        prompt: str | PromptTemplate | None = None,
    ) -> np.ndarray:
        """float32 embeddings, (N, dim); a single string gives a 1-D vector."""
        items, single = _check_texts(texts)
        parts = self.encode_parts(items, batch_size=batch_size, show_progress_bar=show_progress_bar, prompt=prompt)
        vectors = self.combine(parts)
        return vectors[0] if single else vectors

    def combine(self, parts: MoEEParts, mode: str | None = None, *, alpha: float | None = None) -> np.ndarray:
        """Vectors of ``mode`` (default: this embedder's) from raw parts: one forward pass serves every mode."""
        mode = mode or self.mode
        statistics = self._statistics_for(mode)
        return combine(parts.hidden, parts.routing, mode, alpha=self.alpha if alpha is None else alpha,
                       statistics=statistics, normalize=self.normalize)

    def similarity(self, a: Any, b: Any, mode: str | None = None) -> np.ndarray:
        """The similarity this mode is defined with: cos(HS) + alpha cos(RW) for ``sum`` (a dot product
        of sum vectors), cosine for the other modes."""
        return similarity(np.asarray(a), np.asarray(b), mode or self.mode)

    # ------------------------------------------------------------------ standardisation
    def calibrate(self, texts: Sequence[str], *, batch_size: int | None = None,
                  show_progress_bar: bool | None = None) -> Statistics:
        """Fix the standardisation statistics from ``texts`` (at least 2; a few hundred varied ones is good)."""
        items, single = _check_texts(texts)
        if single:
            raise TypeError("calibrate() needs a sequence of texts, not a single string")
        parts = self.encode_parts(items, batch_size=batch_size, show_progress_bar=show_progress_bar)
        self.statistics = Statistics.fit(parts.hidden, parts.routing, source=f"calibrate({len(items)} texts)")
        return self.statistics

    def set_statistics(self, statistics: Statistics | dict[str, Any]) -> None:
        stats = statistics if isinstance(statistics, Statistics) else Statistics.from_dict(statistics)
        stats.check_dims(self.hidden_dim, self.routing_dim)
        self.statistics = stats

    def _statistics_for(self, mode: str) -> Statistics | None:
        if self.standardize is None or mode == "hs":
            return None
        if self.statistics is None:
            with self._lock:
                if self.statistics is None:
                    sentences = calibration_sentences()
                    logger.info("calibrating standardisation on %d built-in sentences", len(sentences))
                    parts = self.encode_parts(list(sentences), show_progress_bar=False)
                    self.statistics = Statistics.fit(parts.hidden, parts.routing, source="built-in calibration set")
        return self.statistics

    # ------------------------------------------------------------------ forward
    def _encode_token_ids(self, token_ids: list[list[int]], batch_size: int | None,
                          show_progress_bar: bool | None, progress: Any = None) -> MoEEParts:
        n = len(token_ids)
        hidden = np.empty((n, self.hidden_dim), dtype=np.float32)
        routing = np.empty((n, self.routing_dim), dtype=np.float32)
        lengths = [len(ids) for ids in token_ids]
        if n == 0:
            return MoEEParts(hidden, routing, np.zeros(0, dtype=np.int64), list(self.layout))
        rows = batch_size or self.batch_size
        if not isinstance(rows, int) or rows < 1:
            raise ValueError(f"batch_size must be a positive integer, got {rows!r}")
        queue = deque(plan_batches(lengths, rows, self.max_tokens_per_batch))
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO and n > 1
        from tqdm.auto import tqdm

        capture = RoutingCapture(self.sites, self.pooling, self.routing)
        started, done_tokens = time.perf_counter(), 0
        # pooled vectors stay on the device until a few thousand rows are pending: one copy (and one wait for
        # the GPU) per flush instead of per batch, so the next batch is queued while the last one still runs
        pending: list[tuple[list[int], torch.Tensor]] = []

        def flush() -> None:
            if pending:
                rows_done = [i for batch_rows, _ in pending for i in batch_rows]
                both = torch.cat([vectors for _, vectors in pending]).cpu().numpy()
                hidden[rows_done] = both[:, : self.hidden_dim]
                routing[rows_done] = both[:, self.hidden_dim :]
                pending.clear()

        own_bar = tqdm(total=n, desc="Encoding", unit="text", disable=progress is not None or not show_progress_bar)
        progress = own_bar if progress is None else progress
        with self._lock, torch.inference_mode(), capture.attached(), own_bar:
            while queue:
                batch = queue.popleft()
                if self._row_cap is not None and len(batch) > self._row_cap:
                    queue.extendleft(reversed([batch[i : i + self._row_cap] for i in range(0, len(batch), self._row_cap)]))
                    continue
                try:
                    pending.append((batch, self._forward([token_ids[i] for i in batch], capture)))
                except torch.OutOfMemoryError:
                    if len(batch) == 1:
                        raise
                    self._row_cap = max(1, len(batch) // 2)
                    logger.warning("out of memory on a batch of %d texts; continuing with at most %d per batch",
                                   len(batch), self._row_cap)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    queue.appendleft(batch)
                    continue
                if sum(len(done) for done, _ in pending) >= _FLUSH_ROWS:
                    flush()
                done_tokens += sum(lengths[i] for i in batch)
                progress.update(len(batch))
                if progress is own_bar:  # an external bar's owner shows its own figures
                    progress.set_postfix(tokens_per_s=f"{done_tokens / max(time.perf_counter() - started, 1e-9):.0f}",
                                         refresh=False)
            flush()
        self._check_finite(hidden, routing)
        return MoEEParts(hidden, routing, np.asarray(lengths, dtype=np.int64), list(self.layout))

    def _forward(self, rows: list[list[int]], capture: RoutingCapture) -> torch.Tensor:
        """One forward pass; pooling happens on the device. Returns [HS | RW] pooled, (rows, H + R) float32,
        still on the device."""
        input_ids, attention_mask = right_pad(rows, self._pad_id)
        input_ids = input_ids.to(self._input_device)
        attention_mask = attention_mask.to(self._input_device)
        capture.start_batch(attention_mask)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids_from_mask(attention_mask), use_cache=False)
        last_hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        pooled_hidden = pool(last_hidden, attention_mask.to(last_hidden.device), self.pooling)
        pooled_routing = capture.collect(pooled_hidden.device)
        return torch.cat([pooled_hidden, pooled_routing], dim=1)

    @staticmethod
    def _check_finite(hidden: np.ndarray, routing: np.ndarray) -> None:
        bad = np.flatnonzero(~(np.isfinite(hidden).all(axis=1) & np.isfinite(routing).all(axis=1)))
        if bad.size:
            raise FloatingPointError(
                f"the model produced non-finite hidden states or router scores for inputs {bad[:10].tolist()}"
                f"{' ...' if bad.size > 10 else ''}; this usually means float16 overflow: use dtype='bfloat16' or 'float32'"
            )

    # ------------------------------------------------------------------ configuration
    @property
    def config(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict that fully describes this embedder (statistics included)."""
        return {
            "model": self._model_ref,
            "tokenizer": self._tokenizer_ref,
            "mode": self.mode,
            "prompt": prompt_to_config(self.prompt),
            "pooling": self.pooling,
            "routing": self.routing,
            "alpha": self.alpha,
            "layers": self.layers,
            "standardize": self.standardize,
            "normalize": self.normalize,
            "dtype": dtype_name(self._dtype_arg),
            "quantization": self.quantization,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "max_tokens_per_batch": self.max_tokens_per_batch,
            "trust_remote_code": self.trust_remote_code,
            "model_kwargs": self.model_kwargs,
            "statistics": self.statistics.to_dict() if self.statistics is not None else None,
            "moee_plugins_version": __version__,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], *, model: Any = None, tokenizer: Any = None,
                    **overrides: Any) -> MoEEmbedder:
        """Rebuild an embedder from :attr:`config`; ``model``/``tokenizer`` reuse already loaded objects."""
        unknown = set(config) - set(CONFIG_KEYS) - {"statistics", "moee_plugins_version"}
        if unknown:
            raise ValueError(f"unknown MoEEmbedder config keys: {sorted(unknown)}")
        kwargs = {k: config[k] for k in CONFIG_KEYS if k in config and k not in ("model", "tokenizer")}
        kwargs.update(overrides)
        statistics = config.get("statistics")
        return cls(model if model is not None else config["model"],
                   tokenizer if tokenizer is not None else config.get("tokenizer"),
                   statistics=statistics, **kwargs)

    def __repr__(self) -> str:
        return (f"MoEEmbedder(model={self._model_ref!r}, mode={self.mode!r}, prompt={self.prompt.name!r}, "
                f"pooling={self.pooling!r}, routing={self.routing!r}, dim={self.dim}, "
                f"moe_layers={len(self.moe_layers)}, device={str(self.device)!r})")
