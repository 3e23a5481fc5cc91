"""``MoEEmbedder``: one forward pass per batch -> hidden state + routing weights -> MoEE embeddings."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import options as opts
from .aliases import ModelAlias
from .batching import plan_batches, position_ids_from_mask, right_pad, tokenize
from .chunking import encode_chunked
from .combine import MODES, Standardizer, combine, combine_tensors, finite_rows, similarity, standardizer
from .layers import HiddenLayerCapture, resolve_hidden_layer
from .loading import (
    base_model,
    input_device,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_reference,
)
from .options import DEFAULT
from .parts import MoEEParts, RouterBlock
from .pipeline import (
    AUTO,
    auto_batch_cost,
    background_tokenisation,
    chunk_spans,
    prefetched,
    resolve_token_budget,
)
from .prompts import PromptTemplate, instruction_template, resolve_prompt
from .reduction import Reduction, check_dimensions
from .routers import RoutingCapture, find_router_sites, select_sites, sized_from_logits
from .standardize import Statistics, calibration_sentences
from .version import __version__

logger = logging.getLogger("moee_plugins")

STANDARDIZE = ("auto", None)
_FLUSH_ROWS = 4096  # pooled rows kept on the device between copies to the host
CONFIG_FILE = "moee_config.json"
"""A saved embedder's configuration. Not ``config.json``: that name belongs to a Hugging Face model."""
STATISTICS_FILE = "moee_statistics.json"
WEIGHTS_DIR = "moee_model"
"""Sub-folder of a saved embedder holding a copy of the base model (``save_pretrained(include_weights=True)``)."""
FOLDER_FORMATS = ("moee-plugins/embedder", "moee-plugins/sentence-transformers")
FOLDER_FORMAT_VERSION = 1


def check_texts(texts: Any, *, item: str = "texts[{i}]") -> tuple[list[str], bool]:
    """A list of strings and whether the input was a single string. Names the first bad item (``item``: how,
    e.g. ``"row {i} of column 'text'"``).

    The one input rule of every adapter and reader: a mapping (its keys) or a set (no order) is refused, since
    output row i must belong to input i; so is a null (never silently an empty text) and text that is not valid
    Unicode (a lone surrogate).
    """
    if isinstance(texts, str):
        items, single = [texts], True
    else:
        if texts is None:
            raise TypeError("texts must be a string or a sequence of strings, got None")
        if isinstance(texts, (bytes, bytearray, Mapping)) or not isinstance(texts, Iterable):
            raise TypeError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}")
        if isinstance(texts, (set, frozenset)):
            raise TypeError(f"texts must be an ordered sequence of strings, got a {type(texts).__name__} (no order: "
                            "row i could not match text i); pass a list, e.g. sorted(texts)")
        items, single = list(texts), False
        for i, value in enumerate(items):
            if value is None:
                raise TypeError(f"{item.format(i=i)} must be a string, got None (a null): fill or drop it first "
                                "(an empty text is the string \"\")")
            if not isinstance(value, str):
                raise TypeError(f"{item.format(i=i)} must be a string, got {type(value).__name__}: {value!r:.80}")
    for i, value in enumerate(items):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            where = "the text" if single else item.format(i=i)
            raise ValueError(f"{where} is not valid Unicode: a lone surrogate {value[exc.start]!r} at character "
                             f"{exc.start}; fix its decoding (e.g. errors='replace')") from None
    return items, single


@contextlib.contextmanager
def _closing(chunks: Any):
    """Stop a chunk generator (and its background tokenisation) however the loop over it ends."""
    try:
        yield
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


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
        device: where to run (default: CUDA when present).
        trust_remote_code: run a checkpoint's own modelling code (off unless you ask; never read from a file).
        statistics: standardisation statistics (a :class:`Statistics` or its dict), e.g. from a saved config.
        **options: see :mod:`moee_plugins.core.options` (``mode``, ``prompt``, ``pooling``, ``routing``,
            ``alpha``, ``layers``, ``hidden_layer``, ``standardize``, ``normalize``, ``dtype``, ``quantization``,
            ``max_length``, ``long_texts`` (``"truncate"``, or ``"chunk"``: windows of ``max_length`` tokens,
            ``chunk_overlap`` apart),
            ``batch_size``, ``max_tokens_per_batch``, ``model_kwargs``). An option you do not give takes the
            alias's default (``moee:<alias>``), else the table's.
            ``max_tokens_per_batch="auto"`` (default) picks the padded-token budget for the device: on a CPU a
            fixed 2,048 tokens (measured near-optimal, see docs/performance.md); on CUDA the largest power of
            two whose estimated activations fit in half the free memory, between 4,096 and 65,536 (an
            out-of-memory batch is still split and retried). ``None``: no budget. The row cap ``batch_size``
            (default 1,024) only binds on very short texts.
        reduction: a fitted dimension reduction (a :class:`Reduction` or its dict), e.g. from a saved config;
            see :meth:`fit_reduction` and ``encode(..., dimensions=)``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        mode: str = DEFAULT,
        prompt: str | PromptTemplate = DEFAULT,
        pooling: str = DEFAULT,
        routing: str | None = DEFAULT,
        alpha: float = DEFAULT,
        layers: Sequence[int] | None = DEFAULT,
        hidden_layer: int = DEFAULT,
        standardize: str | None = DEFAULT,
        normalize: bool = DEFAULT,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = DEFAULT,
        quantization: str | None = DEFAULT,
        max_length: int = DEFAULT,
        long_texts: str = DEFAULT,
        chunk_overlap: int = DEFAULT,
        batch_size: int = DEFAULT,
        max_tokens_per_batch: int | None = DEFAULT,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = DEFAULT,
        statistics: Statistics | dict[str, Any] | None = None,
        reduction: Reduction | dict[str, Any] | None = None,
    ) -> None:
        given = {"mode": mode, "prompt": prompt, "pooling": pooling, "routing": DEFAULT if routing is None else routing,
                 "alpha": alpha, "layers": layers, "hidden_layer": hidden_layer, "standardize": standardize,
                 "normalize": normalize, "dtype": dtype,
                 "quantization": quantization, "max_length": max_length, "long_texts": long_texts,
                 "chunk_overlap": chunk_overlap, "batch_size": batch_size,
                 "max_tokens_per_batch": max_tokens_per_batch, "trust_remote_code": trust_remote_code,
                 "model_kwargs": model_kwargs}
        alias: ModelAlias | None = None
        if isinstance(model, str):
            reference = resolve_reference(model)
            alias = reference.alias
            self._model_ref: str = model
        elif isinstance(model, torch.nn.Module):
            if tokenizer is None:
                raise ValueError("a loaded model needs its tokenizer: MoEEmbedder(model, tokenizer, ...)")
            self._model_ref = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        else:
            raise TypeError(
                f"model must be 'moee:<alias>', a hub id, a local directory or a PreTrainedModel, got {type(model).__name__}"
            )
        if tokenizer is not None and not isinstance(tokenizer, str) and not callable(tokenizer):
            raise TypeError(f"tokenizer must be a tokenizer or a hub id / directory, got {type(tokenizer).__name__}")
        self._tokenizer_ref = tokenizer if isinstance(tokenizer, str) else None
        given["tokenizer"] = self._tokenizer_ref
        if statistics is not None and not isinstance(statistics, (Statistics, Mapping)):
            raise TypeError(f"statistics must be a Statistics, its dict (Statistics.to_dict()) or None, "
                            f"got {type(statistics).__name__}: {statistics!r:.80}")
        self.options = opts.resolve(given, alias.defaults if alias else None, alias.name if alias else "")
        self._apply_options(self.options)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self._dtype_arg, self.device)

        if isinstance(model, str):
            self.model = load_model(reference, device=self.device, dtype=self.dtype, quantization=self.quantization,
                                    trust_remote_code=self.trust_remote_code, model_kwargs=self.model_kwargs)
            self.model_path = reference.path
        else:
            self.model = base_model(model).eval()
            self.model_path = self._model_ref
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer or self.model_path, self.trust_remote_code)
        self.tokenizer = tokenizer
        self._pad_id = next((v for v in (tokenizer.pad_token_id, tokenizer.eos_token_id) if v is not None), 0)
        self._attach_model()
        self.statistics: Statistics | None = None
        self.reduction: Reduction | None = None
        if statistics is not None:
            self.set_statistics(statistics)
        if reduction is not None:
            self.set_reduction(reduction)

    @classmethod
    def build(cls, model: Any, *, owner: str = "MoEEmbedder", **options: Any) -> MoEEmbedder:
        """The one way adapters take "an embedder, or a name plus options": an existing embedder is shared as is
        (options would silently not apply to it, so they are refused), anything else builds one."""
        if isinstance(model, cls):
            if options:
                raise TypeError(f"{owner} got an existing MoEEmbedder and embedder options {sorted(options)}; "
                                "configure the embedder itself, or pass a model name instead")
            return model
        if not isinstance(model, (str, torch.nn.Module)):
            raise TypeError(f"{owner}: model must be 'moee:<alias>', a hub id, a local directory or a MoEEmbedder, "
                            f"got {type(model).__name__}")
        return cls(model, **options)

    def _apply_options(self, values: dict[str, Any]) -> None:
        for name in ("mode", "pooling", "routing", "alpha", "layers", "hidden_layer", "standardize", "normalize",
                     "quantization", "max_length", "long_texts", "chunk_overlap", "batch_size", "max_tokens_per_batch",
                     "trust_remote_code", "model_kwargs"):
            setattr(self, name, values[name])
        self.prompt = resolve_prompt(values["prompt"])
        self._dtype_arg = values["dtype"]

    def _attach_model(self) -> None:
        """Everything derived from the loaded model (router sites hold closures: rebuilt after unpickling)."""
        self.sites = sized_from_logits(self.model, select_sites(find_router_sites(self.model), self.layers))
        self.layout = self._layout()
        self._hidden_capture = HiddenLayerCapture(self.model, [resolve_hidden_layer(self.model, self.hidden_layer)])
        self.hidden_dim = int(self.model.config.hidden_size)
        self.routing_dim = self.layout[-1].stop
        self._input_device = input_device(self.model, self.device)
        self._row_cap: int | None = None  # lowered for the rest of the run after an out-of-memory split
        self._lock = threading.RLock()
        self._calibrated_once = False
        self._device_statistics: dict[str, tuple[Statistics, Standardizer]] = {}

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
        return self.dim_of(self.mode)

    def dim_of(self, mode: str) -> int:
        """Length of the vectors of ``mode``."""
        return {"hs": self.hidden_dim, "rw": self.routing_dim}.get(mode, self.hidden_dim + self.routing_dim)

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim

    @property
    def supported_dimensions(self) -> tuple[int, ...]:
        """Sizes ``encode(..., dimensions=)`` accepts: those of the fitted reduction, () when none is fitted."""
        return self.reduction.dimensions if self.reduction is not None else ()

    @property
    def moe_layers(self) -> list[int]:
        """Decoder layers whose routers feed the embedding."""
        return sorted({site.layer for site in self.sites})

    # ------------------------------------------------------------------ prompts and tokens
    def prompt_for(self, prompt: str | PromptTemplate | None = None) -> PromptTemplate:
        """The one prompt rule every adapter uses for per-call prompts (queries, documents, words).

        ``None``/``""``: the embedder's template; a preset (``prompteol``, ``none``, ``raw``) or a template
        with ``{text}``: that template; any other string (``"query: "``) is an instruction put in front of
        the embedder's template, so PromptEOL still ends the input and truncation never cuts either.
        """
        return instruction_template(self.prompt, prompt)

    def tokenize(self, texts: Sequence[str], prompt: str | PromptTemplate | None = None) -> list[list[int]]:
        """Token ids the model will see for each text (prompt applied, truncated inside the prompt)."""
        items, _ = check_texts(texts)
        return tokenize(self.tokenizer, self.prompt_for(prompt), items, self.max_length)

    def pad(self, token_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` padded the way :meth:`encode_features` expects them."""
        return right_pad([list(row) for row in token_ids], self._pad_id)

    # ------------------------------------------------------------------ encoding
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
        items, _ = check_texts(texts)
        template = self.prompt_for(prompt)
        if self.long_texts == "chunk":  # windows of long texts, their raw parts pooled per text (core/chunking.py)
            return encode_chunked(self, items, template, self._batch_size(batch_size), show_progress_bar, progress)

        def tokenize_span(span: tuple[int, int]) -> tuple[int, list[list[int]]]:
            return span[0], tokenize(self.tokenizer, template, items[span[0] : span[1]], self.max_length)

        # on an accelerator, the next chunk is tokenised in a background thread while the model runs this one
        chunks = prefetched(tokenize_span, chunk_spans(items), background_tokenisation(self.device))
        return self._encode_chunks(len(items), chunks, self._batch_size(batch_size), show_progress_bar, progress)

    def encode_token_ids(
        self,
        token_ids: Sequence[Sequence[int]],
        *,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> MoEEParts:
        """The raw channels of already tokenised inputs (as :meth:`tokenize` returns them), in input order."""
        return self._encode_token_ids(self._token_id_rows(token_ids), self._batch_size(batch_size), show_progress_bar)

    @staticmethod
    def _token_id_rows(token_ids: Any) -> list[list[int]]:
        if isinstance(token_ids, (str, bytes, Mapping, set, frozenset)) or not isinstance(token_ids, Iterable):
            raise TypeError(f"token_ids must be a sequence of token-id sequences, got {type(token_ids).__name__}")
        rows: list[list[int]] = []
        for i, row in enumerate(token_ids):
            if isinstance(row, (str, bytes)) or not isinstance(row, Iterable):
                raise TypeError(f"token_ids[{i}] must be a sequence of token ids, got {type(row).__name__}")
            ids = [int(v) for v in row]
            if not ids:
                raise ValueError(f"token_ids[{i}] is empty: every input needs at least one token")
            rows.append(ids)
        return rows

    def encode_batch(self, token_ids: Sequence[Sequence[int]]) -> MoEEParts:
        """The raw channels of exactly these rows, as one forward pass: for a caller that plans its own batches
        (the server). Nothing is re-planned; only an out-of-memory batch is halved and retried."""
        rows = self._token_id_rows(token_ids)
        if not rows:
            return self._encode_token_ids(rows, None, False)
        capture = RoutingCapture(self.sites, self.pooling, self.routing)
        with self._lock, torch.inference_mode(), capture.attached():
            both = self._forward_halving(rows, capture).cpu().numpy()
        hidden, routing = both[:, : self.hidden_dim], both[:, self.hidden_dim :]
        self._check_finite(hidden, routing)
        return MoEEParts(hidden, routing, np.array([len(r) for r in rows], dtype=np.int64), list(self.layout))

    def _forward_halving(self, rows: list[list[int]], capture: RoutingCapture) -> torch.Tensor:
        try:
            return self._forward(rows, capture)
        except torch.OutOfMemoryError:
            if len(rows) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(rows) // 2
            return torch.cat([self._forward_halving(rows[:half], capture), self._forward_halving(rows[half:], capture)])

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        prompt: str | PromptTemplate | None = None,
        mode: str | None = None,
        alpha: float | None = None,
        dimensions: int | None = None,
    ) -> np.ndarray:
        """float32 embeddings, (N, dim); a single string gives a 1-D vector.

        ``mode``/``alpha`` override the embedder's for this call (the same forward pass serves every mode);
        ``prompt`` follows :meth:`prompt_for`; ``dimensions``: one of :attr:`supported_dimensions`, for
        compact vectors of that size (the fitted PCA, L2-normalised), ``None`` for full vectors. Statistics
        are fixed first if the mode needs them (:meth:`ensure_statistics`).
        """
        items, single = check_texts(texts)
        mode = self._mode(mode)
        alpha = self.alpha if alpha is None else opts.check_alpha(alpha)
        self.check_dimensions(dimensions, mode, alpha)
        self.ensure_statistics(mode)
        parts = self.encode_parts(items, batch_size=batch_size, show_progress_bar=show_progress_bar, prompt=prompt)
        vectors = self.combine(parts, mode, alpha=alpha, dimensions=dimensions)
        return vectors[0] if single else vectors

    def combine(self, parts: MoEEParts, mode: str | None = None, *, alpha: float | None = None,
                dimensions: int | None = None) -> np.ndarray:
        """Vectors of ``mode`` (default: this embedder's) from raw parts: one forward pass serves every mode;
        ``dimensions`` reduces them with the fitted reduction (see :meth:`fit_reduction`).

        Pure: it never runs the model. A mode that standardises needs statistics first
        (:meth:`ensure_statistics` or :meth:`calibrate`).
        """
        mode = self._mode(mode)
        alpha = self.alpha if alpha is None else opts.check_alpha(alpha)
        self.check_dimensions(dimensions, mode, alpha)
        vectors = combine(parts.hidden, parts.routing, mode, alpha=alpha, statistics=self._statistics_for(mode),
                          normalize=self.normalize)
        self._check_vectors(finite_rows(vectors))
        return vectors if dimensions is None else self.reduction.apply(vectors, dimensions)
    # ------------------------------------------------------------------ compact vectors
    def fit_reduction(self, texts: Sequence[str], dimensions: int | Sequence[int], *, batch_size: int | None = None,
                      show_progress_bar: bool | None = None) -> Reduction:
        """Fit the PCA behind compact vectors on ``texts`` (more than ``max(dimensions)`` varied ones, ideally a
        sample of the corpus), for this embedder's mode (and alpha). ``dimensions``: one size or several
        (nested components: one fit serves them all). Uses the current statistics (calibrating first if none)."""
        items, single = check_texts(texts)
        if single:
            raise TypeError("fit_reduction() needs a sequence of texts, not a single string")
        self._check_reduction_request(dimensions, len(items))
        self.ensure_statistics()
        parts = self.encode_parts(items, batch_size=batch_size, show_progress_bar=show_progress_bar)
        return self._fit_reduction(parts, dimensions, f"fit_reduction({len(items)} texts)")

    def set_reduction(self, reduction: Reduction | dict[str, Any] | None) -> None:
        """Install a fitted reduction (or its dict, as in :attr:`config`); ``None`` removes it."""
        if reduction is None:
            self.reduction = None
            return
        fitted = reduction if isinstance(reduction, Reduction) else Reduction.from_dict(reduction)
        expected = {"hs": self.hidden_dim, "rw": self.routing_dim}.get(fitted.mode, self.hidden_dim + self.routing_dim)
        if fitted.input_dim != expected:
            raise ValueError(f"the reduction takes {fitted.input_dim}-dimensional {fitted.mode} vectors but this "
                             f"embedder's are {expected}-dimensional; was it fitted with another model or layers?")
        self.reduction = fitted

    def _check_reduction_request(self, dimensions: int | Sequence[int], num_texts: int) -> None:
        """Refuse an impossible fit before any text is encoded."""
        largest = check_dimensions(dimensions)[-1]
        if largest >= self.dim:
            raise ValueError(f"dimensions={largest} is not a reduction: {self.mode} vectors have {self.dim} dimensions")
        if num_texts <= largest:
            raise ValueError(f"a {largest}-dimensional reduction needs more than {largest} calibration texts, "
                             f"got {num_texts}")

    def _fit_reduction(self, parts: MoEEParts, dimensions: int | Sequence[int], source: str) -> Reduction:
        vectors = self.combine(parts)
        self.reduction = Reduction.fit(vectors, dimensions, mode=self.mode, alpha=self.alpha, source=source)
        return self.reduction

    def check_dimensions(self, dimensions: int | None, mode: str | None = None, alpha: float | None = None) -> None:
        """Refuse a compact size this embedder cannot produce for ``mode``/``alpha`` (no reduction, a size not
        fitted, a reduction of other vectors), naming the problem: adapters check their setting once, up front."""
        if dimensions is None:
            return
        if isinstance(dimensions, bool) or not isinstance(dimensions, int):
            raise TypeError(f"dimensions must be None or an integer, got {type(dimensions).__name__}")
        if self.reduction is None:
            raise ValueError(f"dimensions={dimensions}: no reduction is fitted; call fit_reduction(texts, "
                             f"{dimensions}) or calibrate(texts, dimensions={dimensions}) first")
        if dimensions not in self.reduction.dimensions:
            raise ValueError(f"dimensions={dimensions} is not fitted; supported dimensions: {self.reduction.dimensions}")
        mode = mode or self.mode
        alpha = self.alpha if alpha is None else alpha
        if mode != self.reduction.mode or (mode == "sum" and alpha != self.reduction.alpha):
            fitted = self.reduction.mode + (f" (alpha={self.reduction.alpha:g})" if self.reduction.mode == "sum" else "")
            raise ValueError(f"the reduction was fitted on {fitted} vectors, not {mode}"
                             f"{f' (alpha={alpha:g})' if mode == 'sum' else ''}; fit one for these with fit_reduction")

    def check_truncation(self, size: int | None, name: str = "truncate_dim") -> None:
        """Refuse cutting vectors to their first ``size`` dimensions (a framework's ``truncate_dim``): that keeps
        hidden-state dimensions and drops every routing one, unless a fitted reduction of that size exists."""
        supported = tuple(self.supported_dimensions)
        if size is not None and size != self.dim and size not in supported:
            raise ValueError(
                f"{name}={size} would cut an MoEE vector's routing dimensions off (its first {self.hidden_dim} "
                f"dimensions are the hidden state); fitted compact sizes: {list(supported) or 'none'}. "
                f"Use {name}=None, or fit a reduction of that size")

    def similarity(self, a: Any, b: Any, mode: str | None = None) -> np.ndarray:
        """The similarity this mode is defined with: (cos(HS) + alpha cos(RW)) / (1 + alpha) for ``sum`` (a dot
        product of unit-length sum vectors: the paper's score over a constant), cosine for the other modes."""
        return similarity(np.asarray(a), np.asarray(b), mode or self.mode)

    # ------------------------------------------------------------------ padded tensors (adapters)
    def encode_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[HS | RW] raw and pooled, (N, hidden_dim + routing_dim) float32 on the model's device, from
        tensors padded by :meth:`pad` (e.g. a framework's ``preprocess`` output). No host round trip."""
        if not isinstance(input_ids, torch.Tensor) or not isinstance(attention_mask, torch.Tensor):
            raise TypeError("encode_features needs input_ids and attention_mask tensors (see MoEEmbedder.pad)")
        if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(f"input_ids and attention_mask must be 2-D of one shape, got {tuple(input_ids.shape)} "
                             f"and {tuple(attention_mask.shape)}")
        if input_ids.shape[0] == 0:
            return torch.empty((0, self.hidden_dim + self.routing_dim), device=self._input_device)
        capture = RoutingCapture(self.sites, self.pooling, self.routing)
        with self._lock, torch.inference_mode(), capture.attached():
            pooled = self._forward_padded(input_ids, attention_mask, capture)
        finite = torch.isfinite(pooled).all(dim=1)
        if not bool(finite.all()):
            self._check_finite_rows(finite.cpu().numpy())
        return pooled

    def combine_features(self, pooled: torch.Tensor, mode: str | None = None, *, alpha: float | None = None,
                         dimensions: int | None = None) -> torch.Tensor:
        """:meth:`combine` on the device: the vectors of ``mode`` from :meth:`encode_features`' output, float32
        (``dimensions``: the fitted reduction's compact vectors of that size)."""
        mode = self._mode(mode)
        alpha = self.alpha if alpha is None else opts.check_alpha(alpha)
        self.check_dimensions(dimensions, mode, alpha)
        statistics = self._statistics_for(mode)
        out = combine_tensors(pooled[:, : self.hidden_dim], pooled[:, self.hidden_dim :], mode, alpha=alpha,
                              standardize=None if statistics is None else self._standardizer_on(pooled.device),
                              normalize=self.normalize)
        finite = torch.isfinite(out).all(dim=1)
        if not bool(finite.all()):
            self._check_vectors(finite.cpu().numpy())
        if dimensions is not None:
            out = self.reduction.apply_tensor(out.float(), dimensions)
        return out.float()

    def _standardizer_on(self, device: torch.device) -> Standardizer:
        """The statistics as tensors on ``device``, cached until the statistics change."""
        key = str(device)
        cached = self._device_statistics.get(key)
        if cached is None or cached[0] is not self.statistics:
            assert self.statistics is not None
            cached = (self.statistics, standardizer(self.statistics, device))
            self._device_statistics[key] = cached
        return cached[1]

    # ------------------------------------------------------------------ standardisation
    def needs_statistics(self, mode: str | None = None) -> bool:
        """Whether vectors of ``mode`` are standardised and no statistics are set yet."""
        return opts.needs_statistics({"standardize": self.standardize, "mode": self._mode(mode),
                                      "statistics": self.statistics})

    def fix_statistics(self, texts: Sequence[str] | None = None) -> Statistics | None:
        """Fix now the statistics every copy of this embedder (other processes, actors) must share: fitted on
        ``texts`` when given, else the ones set or the built-in calibration (whatever the mode)."""
        if texts is not None:
            return self.calibrate(list(texts), show_progress_bar=False)
        return self.ensure_statistics("sum")

    @staticmethod
    def portable_options(model: str, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """``model`` and ``options`` as any process can build the embedder from them: an alias's target, with
        the alias's defaults made explicit (custom aliases live in one process's registry only)."""
        reference = resolve_reference(model)
        defaults = dict(reference.alias.defaults) if reference.alias is not None else {}
        return reference.path, {**defaults, **options}

    def ensure_statistics(self, mode: str | None = None) -> Statistics | None:
        """Fix the standardisation statistics ``mode`` needs, calibrating once on the built-in sentences if
        none are set (logged). Call it before encoding; :meth:`encode` does. Returns the statistics in use."""
        if not self.needs_statistics(mode):
            return self.statistics if self.standardize is not None else None
        with self._lock:
            if self.statistics is None:
                sentences = list(calibration_sentences())
                logger.info("calibrating on %d built-in sentences (once; call ensure_statistics() or calibrate() "
                            "ahead of time, or pass statistics=, to choose when)", len(sentences))
                parts = self.encode_parts(sentences, show_progress_bar=False)
                self.statistics = Statistics.fit(parts.hidden, parts.routing, source="built-in calibration set")
        return self.statistics

    def calibrate(self, texts: Sequence[str], *, batch_size: int | None = None,
                  show_progress_bar: bool | None = None, dimensions: int | Sequence[int] | None = None) -> Statistics:
        """Fix the standardisation statistics from ``texts`` (at least 2; a few hundred varied ones is good).

        ``dimensions`` also fits the compact-vector reduction on the same texts (see :meth:`fit_reduction`);
        without it, a reduction fitted on the previous statistics no longer applies and is removed.
        """
        items, single = check_texts(texts)
        if single:
            raise TypeError("calibrate() needs a sequence of texts, not a single string")
        if dimensions is not None:
            self._check_reduction_request(dimensions, len(items))
        parts = self.encode_parts(items, batch_size=batch_size, show_progress_bar=show_progress_bar)
        self.statistics = Statistics.fit(parts.hidden, parts.routing, source=f"calibrate({len(items)} texts)")
        self._drop_stale_reduction()
        if dimensions is not None:
            self._fit_reduction(parts, dimensions, f"calibrate({len(items)} texts)")
        return self.statistics

    def _drop_stale_reduction(self) -> None:
        if self.reduction is not None:
            logger.warning("new standardisation statistics: the fitted reduction %s no longer applies and is "
                           "removed (fit it again with fit_reduction)", self.reduction.dimensions)
            self.reduction = None

    def set_statistics(self, statistics: Statistics | dict[str, Any]) -> None:
        if isinstance(statistics, Statistics):
            stats = statistics
        elif isinstance(statistics, Mapping):
            stats = Statistics.from_dict(dict(statistics))
        else:
            raise TypeError(f"statistics must be a Statistics or its dict (Statistics.to_dict()), "
                            f"got {type(statistics).__name__}: {statistics!r:.80}")
        stats.check_dims(self.hidden_dim, self.routing_dim)
        self.statistics = stats
        self._drop_stale_reduction()

    def _statistics_for(self, mode: str) -> Statistics | None:
        if self.standardize is None or mode == "hs":
            return None
        if self.statistics is None:
            raise RuntimeError(
                f"mode {mode!r} standardises with fixed statistics and none are set: call "
                "embedder.ensure_statistics() (built-in calibration sentences), embedder.calibrate(texts), or pass "
                "statistics=...; combine() never runs the model"
            )
        return self.statistics

    def _mode(self, mode: str | None) -> str:
        if mode is None:
            return self.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return mode

    def _batch_size(self, batch_size: Any) -> int:
        return self.batch_size if batch_size is None else opts.check_positive_int(batch_size)

    # ------------------------------------------------------------------ forward
    def _encode_token_ids(self, token_ids: list[list[int]], batch_size: int | None,
                          show_progress_bar: bool | None, progress: Any = None) -> MoEEParts:
        return self._encode_chunks(len(token_ids), [(0, token_ids)], batch_size, show_progress_bar, progress)

    def _token_budget(self) -> int | None:
        """The padded-token budget of this run (``"auto"`` resolved once per embedder and device)."""
        if self.max_tokens_per_batch != AUTO:
            return self.max_tokens_per_batch
        key = (str(self.device), str(self.dtype))
        if getattr(self, "_auto_budget", (None, None))[0] != key:
            self._auto_budget = (key, resolve_token_budget(AUTO, self.model, self.device, self.dtype))
        return self._auto_budget[1]

    def _batch_cost(self) -> int | None:
        """The per-batch cost the plan minimises with (``"auto"`` only; explicit budgets fill each batch)."""
        return auto_batch_cost(self._token_budget()) if self.max_tokens_per_batch == AUTO else None

    def _encode_chunks(self, n: int, chunks: Iterable[tuple[int, list[list[int]]]], batch_size: int | None,
                       show_progress_bar: bool | None, progress: Any = None) -> MoEEParts:
        """Every chunk ``(offset, token ids)`` is planned (length-sorted batches) and run on its own, so only
        the chunks in flight are held in memory; rows land at ``offset + i`` in input order."""
        hidden = np.empty((n, self.hidden_dim), dtype=np.float32)
        routing = np.empty((n, self.routing_dim), dtype=np.float32)
        lengths = np.zeros(n, dtype=np.int64)
        if n == 0:
            return MoEEParts(hidden, routing, lengths, list(self.layout))
        rows = batch_size or self.batch_size
        if not isinstance(rows, int) or rows < 1:
            raise ValueError(f"batch_size must be a positive integer, got {rows!r}")
        budget, batch_cost = self._token_budget(), self._batch_cost()
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
        with self._lock, torch.inference_mode(), capture.attached(), own_bar, _closing(chunks):
            for offset, token_ids in chunks:
                chunk_lengths = [len(ids) for ids in token_ids]
                lengths[offset : offset + len(token_ids)] = chunk_lengths
                queue = deque(plan_batches(chunk_lengths, rows, budget, batch_cost=batch_cost))
                while queue:
                    batch = queue.popleft()
                    if self._row_cap is not None and len(batch) > self._row_cap:
                        queue.extendleft(reversed([batch[i : i + self._row_cap]
                                                   for i in range(0, len(batch), self._row_cap)]))
                        continue
                    try:
                        vectors = self._forward([token_ids[i] for i in batch], capture)
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
                    pending.append(([offset + i for i in batch], vectors))
                    if sum(len(done) for done, _ in pending) >= _FLUSH_ROWS:
                        flush()
                    done_tokens += sum(chunk_lengths[i] for i in batch)
                    progress.update(len(batch))
                    if progress is own_bar:  # an external bar's owner shows its own figures
                        progress.set_postfix(
                            tokens_per_s=f"{done_tokens / max(time.perf_counter() - started, 1e-9):.0f}", refresh=False)
                del token_ids  # the chunk's token lists go before the next chunk is fetched
            flush()
        self._check_finite(hidden, routing)
        return MoEEParts(hidden, routing, lengths, list(self.layout))

    def _forward(self, rows: list[list[int]], capture: RoutingCapture) -> torch.Tensor:
        """One forward pass; pooling happens on the device. Returns [HS | RW] pooled, (rows, H + R) float32,
        still on the device."""
        input_ids, attention_mask = right_pad(rows, self._pad_id)
        return self._forward_padded(input_ids, attention_mask, capture)

    def _forward_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        capture: RoutingCapture) -> torch.Tensor:
        """The forward pass on padded tensors (capture attached): [HS | RW] pooled on the device."""
        input_ids = input_ids.to(self._input_device)
        attention_mask = attention_mask.to(self._input_device)
        capture.start_batch(attention_mask)
        with self._hidden_capture.attached():  # hidden_layer: a hook on that decoder layer (core/layers.py)
            output = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                position_ids=position_ids_from_mask(attention_mask), use_cache=False)
            last_hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
            pooled_hidden = self._hidden_capture.pooled(last_hidden, attention_mask, self.pooling)[0]
        pooled_routing = capture.collect(pooled_hidden.device)
        return torch.cat([pooled_hidden, pooled_routing], dim=1)

    @staticmethod
    def _check_finite(hidden: np.ndarray, routing: np.ndarray) -> None:
        MoEEmbedder._check_finite_rows(finite_rows(hidden) & finite_rows(routing))

    @staticmethod
    def _check_finite_rows(finite: np.ndarray) -> None:
        bad = np.flatnonzero(~finite)
        if bad.size:
            raise FloatingPointError(
                f"the model produced non-finite hidden states or router scores for inputs {bad[:10].tolist()}"
                f"{' ...' if bad.size > 10 else ''}; this usually means float16 overflow: use dtype='bfloat16' or 'float32'"
            )

    @staticmethod
    def _check_vectors(finite: np.ndarray) -> None:
        bad = np.flatnonzero(~np.asarray(finite))
        if bad.size:
            raise FloatingPointError(
                f"the vectors of inputs {bad[:10].tolist()}{' ...' if bad.size > 10 else ''} are not finite after "
                "standardisation and combination; check the statistics (set_statistics / moee_statistics.json) and alpha"
            )

    # ------------------------------------------------------------------ configuration
    @property
    def config(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict that fully describes this embedder (statistics included)."""
        config: dict[str, Any] = {"model": self._model_ref}
        config.update(self.options_config())
        reduction = getattr(self, "reduction", None)
        config["statistics"] = self.statistics.to_dict() if self.statistics is not None else None
        config["reduction"] = reduction.to_dict() if hasattr(reduction, "to_dict") else reduction
        config["moee_plugins_version"] = __version__
        return config

    def options_config(self) -> dict[str, Any]:
        """Every option of :data:`moee_plugins.core.options.OPTIONS`, as this embedder has it (JSON-ready)."""
        values = dict(self.options)
        values.update(mode=self.mode, alpha=self.alpha, normalize=self.normalize, max_length=self.max_length,
                      batch_size=self.batch_size, max_tokens_per_batch=self.max_tokens_per_batch)
        values["prompt"] = opts.OPTIONS["prompt"].check(self.prompt)
        values["tokenizer"] = self._tokenizer_ref
        return {name: values[name] for name in opts.OPTIONS}

    @property
    def model_reference(self) -> str:
        """The model as another process can load it: an alias's target, a local directory made absolute."""
        path = str(self.model_path)
        return os.path.abspath(path) if os.path.isdir(path) else path

    @property
    def portable_config(self) -> dict[str, Any]:
        """:attr:`config` with the model reference resolved (no alias registry needed to load it)."""
        return dict(self.config, model=self.model_reference)

    def fingerprint(self, kind: str = "vectors") -> dict[str, Any]:
        """What the ``kind`` (``"vectors"`` or ``"parts"``) of an input depends on, from the options table:
        the options of that kind, the resolved model and dtype, the shapes, and for vectors the statistics."""
        if kind not in ("vectors", "parts"):
            raise ValueError(f"kind must be 'vectors' or 'parts', got {kind!r}")
        config = self.options_config()
        out = opts.vector_options(config) if kind == "vectors" else opts.parts_options(config)
        out.update(model=self.model_reference, resolved_dtype=str(self.dtype).removeprefix("torch."),
                   hidden_dim=self.hidden_dim, routing_dim=self.routing_dim)
        if kind == "vectors":
            full = self.config
            out["statistics_sha256"] = opts.digest(full["statistics"], 64) if full["statistics"] is not None else None
            out["reduction"] = full["reduction"]
            out["dim"] = self.dim
        return out

    @classmethod
    def from_config(cls, config: dict[str, Any], *, model: Any = None, tokenizer: Any = None,
                    trust_remote_code: bool = False, **overrides: Any) -> MoEEmbedder:
        """Rebuild an embedder from :attr:`config`; ``model``/``tokenizer`` reuse already loaded objects.

        ``trust_remote_code`` is the loading caller's choice alone: a config (a file someone sent) that
        says ``"trust_remote_code": true`` never switches remote code on by itself.
        """
        kwargs = opts.options_from_config(config, trust_remote_code=trust_remote_code)
        if config.get("trust_remote_code") and not trust_remote_code:
            logger.warning("ignoring trust_remote_code=true in a config: only the caller can allow a model's own "
                           "code to run (from_config(..., trust_remote_code=True))")
        if model is None and not config.get("model"):
            raise ValueError("a MoEEmbedder config needs a 'model' entry (a hub id, a directory or 'moee:<alias>'), "
                             f"got keys {sorted(config)}")
        config_tokenizer = kwargs.pop("tokenizer", None)
        kwargs.update(overrides)
        state = {k: config[k] for k in opts.STATE_KEYS if config.get(k) is not None}
        state.update({k: kwargs.pop(k) for k in opts.STATE_KEYS if k in kwargs})
        return cls(model if model is not None else config["model"],
                   tokenizer if tokenizer is not None else config_tokenizer, **state, **kwargs)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike[str], *, include_weights: bool = False,
                        source: str | None = None, safe_serialization: bool = True) -> Path:
        """Write a complete, portable embedder folder: ``moee_config.json`` (options, resolved model reference),
        ``moee_statistics.json``, the tokenizer, and with ``include_weights`` the base model in ``moee_model/``.

        Statistics are fixed first (:meth:`ensure_statistics`), so a reload never recalibrates.
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.ensure_statistics()
        weights = None
        if include_weights:
            weights = WEIGHTS_DIR
            self.model.save_pretrained(path / WEIGHTS_DIR, safe_serialization=safe_serialization)
        config = self.portable_config
        statistics = config.pop("statistics")
        config.pop("moee_plugins_version")
        config["tokenizer"] = None  # saved next to the config
        saved = {"format": FOLDER_FORMATS[0], "format_version": FOLDER_FORMAT_VERSION,
                 "moee_plugins_version": __version__, "source": source or self._model_ref, "weights": weights,
                 "embedder": config}
        (path / CONFIG_FILE).write_text(json.dumps(saved, indent=2), encoding="utf-8")
        if statistics is not None:
            (path / STATISTICS_FILE).write_text(json.dumps(statistics), encoding="utf-8")
        self.tokenizer.save_pretrained(str(path))
        return path

    @staticmethod
    def read_folder(directory: str | os.PathLike[str]) -> dict[str, Any]:
        """The saved ``moee_config.json`` of a folder, checked: its format, and that a weights entry stays
        inside the folder (a received folder must never make us load some other local model)."""
        path = Path(directory)
        config_path = path / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{path} is not a saved MoEE embedder: no {CONFIG_FILE}")
        saved = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or saved.get("format") not in FOLDER_FORMATS or not isinstance(
                saved.get("embedder"), dict):
            raise ValueError(f"{config_path} is not a MoEE configuration (format {FOLDER_FORMATS[0]!r})")
        if int(saved.get("format_version", 0)) > FOLDER_FORMAT_VERSION:
            raise ValueError(f"{path} was saved by a newer moee-plugins (format {saved['format_version']}); "
                             "upgrade moee-plugins to load it")
        weights = saved.get("weights")
        if weights:
            inside = path.resolve()
            target = (path / str(weights)).resolve()
            if (not isinstance(weights, str) or os.path.isabs(weights) or ".." in Path(weights).parts
                    or inside not in (target, *target.parents) or target == inside):
                raise ValueError(f"{config_path}: weights entry {weights!r} points outside the folder; a saved MoEE "
                                 "folder may only reference weights inside itself (e.g. 'moee_model')")
            saved["weights_path"] = str(target)
        statistics_path = path / STATISTICS_FILE
        if statistics_path.is_file():
            saved["statistics"] = json.loads(statistics_path.read_text(encoding="utf-8"))
        return saved

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], *, trust_remote_code: bool = False,
                        tokenizer: Any = None, **overrides: Any) -> MoEEmbedder:
        """Load a folder written by :meth:`save_pretrained` (or saved by the sentence-transformers adapter).

        ``trust_remote_code`` is the caller's alone (never the folder's); ``overrides`` replace saved options
        (e.g. ``device="cuda"``, ``batch_size=64``).
        """
        saved = cls.read_folder(directory)
        config = dict(saved["embedder"])
        if saved.get("statistics") is not None:
            config["statistics"] = saved["statistics"]
        if saved.get("weights_path"):
            config["model"] = saved["weights_path"]
        if tokenizer is None:
            tokenizer = load_tokenizer(str(directory), bool(trust_remote_code))
        return cls.from_config(config, tokenizer=tokenizer, trust_remote_code=trust_remote_code, **overrides)

    # ------------------------------------------------------------------ placement and pickling
    def to(self, device: str | torch.device) -> MoEEmbedder:
        """Move the model to ``device`` (dtype unchanged) and follow it; returns ``self``."""
        target = torch.device(device)
        with self._lock:
            if getattr(self.model, "hf_device_map", None) is None:
                self.model.to(target)
            self.follow_model(target)
        return self

    def follow_model(self, fallback: torch.device | None = None) -> None:
        """Re-read where the model lives after someone else moved it (e.g. a framework's ``.to()``)."""
        self._input_device = input_device(self.model, fallback or self.device)
        self.device = self._input_device
        self._device_statistics = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "sites", "layout", "_device_statistics"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        statistics = state.get("statistics")
        self.__dict__.update(state)
        self._attach_model()
        self.statistics = statistics

    def __repr__(self) -> str:
        return (f"MoEEmbedder(model={self._model_ref!r}, mode={self.mode!r}, prompt={self.prompt.name!r}, "
                f"pooling={self.pooling!r}, routing={self.routing!r}, dim={self.dim}, "
                f"moe_layers={len(self.moe_layers)}, device={str(self.device)!r})")
