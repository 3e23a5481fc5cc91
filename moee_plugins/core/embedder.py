"""``MoEEmbedder``: the facade. Options and texts live here; the forward pass is :mod:`.engine`'s, the vector
rules :mod:`.vectors`', the config, folders and identity :mod:`.persistence`'s."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import options as opts
from . import persistence
from .aliases import ModelAlias
from .batching import tokenize, tokenize_marking_truncated
from .chunking import encode_chunked
from .construction import check_arguments, load_model_and_tokenizer
from .engine import Engine, token_id_rows
from .inputs import check_text_list, check_texts
from .loading import resolve_device, resolve_dtype, resolve_reference
from .options import DEFAULT
from .parts import MoEEParts
from .persistence import CONFIG_FILE, FOLDER_FORMAT_VERSION, FOLDER_FORMATS, STATISTICS_FILE, WEIGHTS_DIR
from .pipeline import background_tokenisation, chunk_spans, prefetched
from .prompts import PromptTemplate, instruction_template, resolve_prompt
from .reduction import Reduction
from .standardize import Statistics, calibration_sentences
from .vectors import VectorRules, check_mode, similarity

logger = logging.getLogger("moee_plugins")

__all__ = ["CONFIG_FILE", "FOLDER_FORMATS", "FOLDER_FORMAT_VERSION", "STATISTICS_FILE", "WEIGHTS_DIR", "MoEEmbedder",
           "check_texts"]


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
            ``chunk_overlap`` apart), ``batch_size``, ``max_tokens_per_batch``, ``model_kwargs``,
            ``experts_implementation``, ``attn_implementation``). An option you do not give takes the
            alias's default (``moee:<alias>``), else the table's; an option added to the table is accepted here
            by name (an unknown name is refused, listing the valid ones). ``max_tokens_per_batch="auto"`` (default):
            the padded-token budget chosen for the device (:mod:`moee_plugins.core.pipeline`; 2,048 on a CPU).
        reduction: a fitted dimension reduction (a :class:`Reduction` or its dict), e.g. from a saved config;
            see :meth:`fit_reduction` and ``encode(..., dimensions=)``.

    The forward passes run in :attr:`engine` (an :class:`~moee_plugins.core.engine.Engine`): observe them with
    ``embedder.engine.observe(listener)``.
    """

    def __init__(self, model: Any, tokenizer: Any = None, *, mode: str = DEFAULT, prompt: str | PromptTemplate = DEFAULT,
                 pooling: str = DEFAULT, routing: str | None = DEFAULT, alpha: float = DEFAULT,
                 layers: Sequence[int] | None = DEFAULT, standardize: str | None = DEFAULT, normalize: bool = DEFAULT,
                 device: str | torch.device | None = None, dtype: str | torch.dtype = DEFAULT,
                 quantization: str | None = DEFAULT, max_length: int = DEFAULT, batch_size: int = DEFAULT,
                 max_tokens_per_batch: int | None = DEFAULT, trust_remote_code: bool = False,
                 model_kwargs: dict[str, Any] | None = DEFAULT, statistics: Statistics | dict[str, Any] | None = None,
                 reduction: Reduction | dict[str, Any] | None = None, **more_options: Any) -> None:
        given = {**more_options, "mode": mode, "prompt": prompt, "pooling": pooling,
                 "routing": DEFAULT if routing is None else routing, "alpha": alpha, "layers": layers,
                 "standardize": standardize, "normalize": normalize, "dtype": dtype, "quantization": quantization,
                 "max_length": max_length, "batch_size": batch_size, "max_tokens_per_batch": max_tokens_per_batch,
                 "trust_remote_code": trust_remote_code, "model_kwargs": model_kwargs}
        self.model_name: str = check_arguments(model, tokenizer, statistics)
        reference = resolve_reference(model) if isinstance(model, str) else None
        alias: ModelAlias | None = reference.alias if reference is not None else None
        self.tokenizer_reference: str | None = tokenizer if isinstance(tokenizer, str) else None
        given["tokenizer"] = self.tokenizer_reference
        self.options = opts.resolve(given, alias.defaults if alias else None, alias.name if alias else "")
        for name in set(opts.OPTIONS) - {"prompt", "dtype", "tokenizer"}:  # every option of the table, as an attribute
            setattr(self, name, self.options[name])
        self.prompt = resolve_prompt(self.options["prompt"])
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.options["dtype"], self.device)
        self.model, self.model_path, self.tokenizer = load_model_and_tokenizer(
            model, reference, tokenizer, name=self.model_name, device=self.device, dtype=self.dtype, options=self.options)
        self._attach_model()
        self.vectors = VectorRules(self.hidden_dim, self.routing_dim)
        if statistics is not None:
            self.set_statistics(statistics)
        if reduction is not None:
            self.set_reduction(reduction)

    def _attach_model(self) -> None:
        """The engine on the loaded model (router sites hold closures: rebuilt after unpickling)."""
        self.engine = Engine.for_model(self.model, self.tokenizer, layers=self.layers, pooling=self.pooling,
                                       routing=self.routing, device=self.device, dtype=self.dtype,
                                       hidden_layer=self.hidden_layer)

    # ------------------------------------------------------------------ shape and state
    sites = property(lambda self: self.engine.sites, doc="The router sites whose scores make the routing channel.")
    layout = property(lambda self: self.engine.layout, doc="Which routing columns each router fills.")
    hidden_dim = property(lambda self: self.engine.hidden_dim, doc="Width of the hidden-state channel.")
    routing_dim = property(lambda self: self.engine.routing_dim, doc="Width of the routing channel.")
    statistics = property(lambda self: self.vectors.statistics, lambda self, value: setattr(self.vectors, "statistics", value),
                          doc="The standardisation statistics in use (None until fixed).")
    reduction = property(lambda self: self.vectors.reduction, lambda self, value: setattr(self.vectors, "reduction", value),
                         doc="The fitted compact-vector reduction (None without one).")
    dim = property(lambda self: self.dim_of(self.mode), doc="Length of the vectors :meth:`encode` returns.")

    def dim_of(self, mode: str) -> int:
        """Length of the vectors of ``mode``."""
        return self.vectors.dim_of(mode)

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

    def tokenize(self, texts: Sequence[str], prompt: str | PromptTemplate | None = None, *,
                 max_length: int | None = None) -> list[list[int]]:
        """Token ids the model will see for each text (prompt applied, truncated inside the prompt at
        ``max_length``, default the embedder's); each text is cut by characters first, so the work is bounded."""
        return self.tokenize_marking_truncated(texts, prompt, max_length=max_length)[0]

    def tokenize_marking_truncated(self, texts: Sequence[str], prompt: str | PromptTemplate | None = None, *,
                                   max_length: int | None = None) -> tuple[list[list[int]], list[int]]:
        """:meth:`tokenize`, and the indices of the texts that were cut to ``max_length`` (one tokenizer pass)."""
        items, _ = check_texts(texts)
        limit = self.max_length if max_length is None else opts.check_positive_int(max_length, "max_length")
        return tokenize_marking_truncated(self.tokenizer, self.prompt_for(prompt), items, limit)

    def pad(self, token_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` padded the way :meth:`encode_features` expects them."""
        return self.engine.pad(token_ids)

    # ------------------------------------------------------------------ encoding
    def encode_parts(self, texts: str | Sequence[str], *, batch_size: int | None = None,
                     show_progress_bar: bool | None = None, prompt: str | PromptTemplate | None = None,
                     progress: Any = None) -> MoEEParts:
        """The raw channels (HS and RW, unstandardised) of every text, in input order.

        ``progress``: an open tqdm bar (or anything with ``update(n)``) to advance batch by batch instead
        of a bar of this call's own, e.g. one bar over a corpus encoded in several calls.
        """
        items, _ = check_texts(texts)
        template = self.prompt_for(prompt)
        if self.long_texts == "chunk":  # windows of long texts, their raw parts pooled per text (core/chunking.py)
            return encode_chunked(self, items, template, self._run_settings(batch_size)["batch_size"],
                                  show_progress_bar, progress)

        def tokenize_span(span: tuple[int, int]) -> tuple[int, list[list[int]]]:
            return span[0], tokenize(self.tokenizer, template, items[span[0] : span[1]], self.max_length)

        # on an accelerator, the next chunk is tokenised in a background thread while the model runs this one
        chunks = prefetched(tokenize_span, chunk_spans(items), background_tokenisation(self.device))
        return self.engine.run_chunks(len(items), chunks, **self._run_settings(batch_size),
                                      show_progress_bar=show_progress_bar, progress=progress)

    def encode_token_ids(self, token_ids: Sequence[Sequence[int]], *, batch_size: int | None = None,
                         show_progress_bar: bool | None = None) -> MoEEParts:
        """The raw channels of already tokenised inputs (as :meth:`tokenize` returns them), in input order."""
        return self.engine.run(token_id_rows(token_ids), **self._run_settings(batch_size),
                               show_progress_bar=show_progress_bar)

    def encode_batch(self, token_ids: Sequence[Sequence[int]]) -> MoEEParts:
        """The raw channels of exactly these rows, as one forward pass: for a caller that plans its own batches
        (the server). Nothing is re-planned; only an out-of-memory batch is halved and retried."""
        return self.engine.run_batch(token_ids)

    def _run_settings(self, batch_size: Any) -> dict[str, Any]:
        rows = self.batch_size if batch_size is None else opts.check_positive_int(batch_size)
        return {"batch_size": rows, "max_tokens_per_batch": self.max_tokens_per_batch}

    def encode(self, texts: str | Sequence[str], *, batch_size: int | None = None, show_progress_bar: bool | None = None,
               prompt: str | PromptTemplate | None = None, mode: str | None = None, alpha: float | None = None,
               dimensions: int | None = None) -> np.ndarray:
        """float32 embeddings, (N, dim); a single string gives a 1-D vector.

        ``mode``/``alpha`` override the embedder's for this call (the same forward pass serves every mode);
        ``prompt`` follows :meth:`prompt_for`; ``dimensions``: one of :attr:`supported_dimensions`, for
        compact vectors of that size (the fitted PCA, L2-normalised), ``None`` for full vectors. Statistics
        are fixed first if the mode needs them (:meth:`ensure_statistics`).
        """
        items, single = check_texts(texts)
        mode, alpha = self._mode_alpha(mode, alpha)
        self.check_dimensions(dimensions, mode, alpha)
        self.ensure_statistics(mode)
        parts = self.encode_parts(items, batch_size=batch_size, show_progress_bar=show_progress_bar, prompt=prompt)
        vectors = self.combine(parts, mode, alpha=alpha, dimensions=dimensions)
        return vectors[0] if single else vectors

    def _mode_alpha(self, mode: str | None, alpha: float | None) -> tuple[str, float]:
        return check_mode(mode, self.mode), self.alpha if alpha is None else opts.check_alpha(alpha)

    def combine(self, parts: MoEEParts, mode: str | None = None, *, alpha: float | None = None,
                dimensions: int | None = None) -> np.ndarray:
        """Vectors of ``mode`` (default: this embedder's) from raw parts: one forward pass serves every mode;
        ``dimensions`` reduces them with the fitted reduction (see :meth:`fit_reduction`).

        Pure: it never runs the model. A mode that standardises needs statistics first
        (:meth:`ensure_statistics` or :meth:`calibrate`).
        """
        mode, alpha = self._mode_alpha(mode, alpha)
        return self.vectors.combine(parts, mode, alpha=alpha, standardize=self.standardize, normalize=self.normalize,
                                    dimensions=dimensions)

    def encode_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[HS | RW] raw and pooled, (N, hidden_dim + routing_dim) float32 on the model's device, from
        tensors padded by :meth:`pad` (e.g. a framework's ``preprocess`` output). No host round trip."""
        return self.engine.forward_features(input_ids, attention_mask)

    def combine_features(self, pooled: torch.Tensor, mode: str | None = None, *, alpha: float | None = None,
                         dimensions: int | None = None) -> torch.Tensor:
        """:meth:`combine` on the device: the vectors of ``mode`` from :meth:`encode_features`' output, float32
        (``dimensions``: the fitted reduction's compact vectors of that size)."""
        mode, alpha = self._mode_alpha(mode, alpha)
        return self.vectors.combine_features(pooled, mode, alpha=alpha, standardize=self.standardize,
                                             normalize=self.normalize, dimensions=dimensions)

    def similarity(self, a: Any, b: Any, mode: str | None = None) -> np.ndarray:
        """The similarity this mode is defined with: (cos(HS) + alpha cos(RW)) / (1 + alpha) for ``sum`` (a dot
        product of unit-length sum vectors: the paper's score over a constant), cosine for the other modes."""
        return similarity(np.asarray(a), np.asarray(b), mode or self.mode)

    # ------------------------------------------------------------------ compact vectors
    def fit_reduction(self, texts: Sequence[str], dimensions: int | Sequence[int], *, batch_size: int | None = None,
                      show_progress_bar: bool | None = None) -> Reduction:
        """Fit the PCA behind compact vectors on ``texts`` (more than ``max(dimensions)`` varied ones, ideally a
        sample of the corpus), for this embedder's mode (and alpha). ``dimensions``: one size or several
        (nested components: one fit serves them all). Uses the current statistics (calibrating first if none)."""
        items = check_text_list(texts, "fit_reduction")
        self.vectors.check_reduction_request(dimensions, len(items), self.mode)
        self.ensure_statistics()
        parts = self.encode_parts(items, batch_size=batch_size, show_progress_bar=show_progress_bar)
        return self._fit_reduction(parts, dimensions, f"fit_reduction({len(items)} texts)")

    def _fit_reduction(self, parts: MoEEParts, dimensions: int | Sequence[int], source: str) -> Reduction:
        return self.vectors.fit_reduction(self.combine(parts), dimensions, mode=self.mode, alpha=self.alpha,
                                          source=source)

    def set_reduction(self, reduction: Reduction | dict[str, Any] | None) -> None:
        """Install a fitted reduction (or its dict, as in :attr:`config`); ``None`` removes it."""
        self.vectors.set_reduction(reduction)

    def check_dimensions(self, dimensions: int | None, mode: str | None = None, alpha: float | None = None) -> None:
        """Refuse a compact size this embedder cannot produce for ``mode``/``alpha`` (no reduction, a size not
        fitted, a reduction of other vectors), naming the problem: adapters check their setting once, up front."""
        self.vectors.check_dimensions(dimensions, mode or self.mode, self.alpha if alpha is None else alpha)

    def check_truncation(self, size: int | None, name: str = "truncate_dim") -> None:
        """Refuse cutting vectors to their first ``size`` dimensions (a framework's ``truncate_dim``) unless a
        fitted reduction of that size exists: it would keep hidden-state dimensions and drop every routing one."""
        self.vectors.check_truncation(size, self.dim, name)

    # ------------------------------------------------------------------ standardisation
    def needs_statistics(self, mode: str | None = None) -> bool:
        """Whether vectors of ``mode`` are standardised and no statistics are set yet."""
        return self.vectors.needs_statistics(check_mode(mode, self.mode), self.standardize)

    def fix_statistics(self, texts: Sequence[str] | None = None) -> Statistics | None:
        """Fix now the statistics every copy of this embedder (other processes, actors) must share: fitted on
        ``texts`` when given, else the ones set or the built-in calibration (whatever the mode)."""
        if texts is not None:
            return self.calibrate(list(texts), show_progress_bar=False)
        return self.ensure_statistics("sum")

    def ensure_statistics(self, mode: str | None = None) -> Statistics | None:
        """Fix the standardisation statistics ``mode`` needs, calibrating once on the built-in sentences if
        none are set (logged). Call it before encoding; :meth:`encode` does. Returns the statistics in use."""
        def fit() -> MoEEParts:
            sentences = list(calibration_sentences())
            logger.info("calibrating on %d built-in sentences (once; call ensure_statistics() or calibrate() ahead "
                        "of time, or pass statistics=, to choose when)", len(sentences))
            return self.encode_parts(sentences, show_progress_bar=False)

        if not self.needs_statistics(mode):  # no lock: encoding in another thread need not finish first
            return self.statistics if self.standardize is not None else None
        with self.engine.lock:
            return self.vectors.ensure_statistics(check_mode(mode, self.mode), self.standardize, fit)

    def calibrate(self, texts: Sequence[str], *, batch_size: int | None = None,
                  show_progress_bar: bool | None = None, dimensions: int | Sequence[int] | None = None) -> Statistics:
        """Fix the standardisation statistics from ``texts`` (at least 2; a few hundred varied ones is good).

        ``dimensions`` also fits the compact-vector reduction on the same texts (see :meth:`fit_reduction`);
        without it, a reduction fitted on the previous statistics no longer applies and is removed.
        """
        items = check_text_list(texts, "calibrate")
        if dimensions is not None:
            self.vectors.check_reduction_request(dimensions, len(items), self.mode)
        parts = self.encode_parts(items, batch_size=batch_size, show_progress_bar=show_progress_bar)
        statistics = self.vectors.fit_statistics(parts, f"calibrate({len(items)} texts)")
        if dimensions is not None:
            self._fit_reduction(parts, dimensions, f"calibrate({len(items)} texts)")
        return statistics

    def set_statistics(self, statistics: Statistics | dict[str, Any]) -> None:
        self.vectors.set_statistics(statistics)

    # ------------------------------------------------------------------ configuration and persistence
    config = property(persistence.config, doc="A plain, JSON-serialisable dict that fully describes this embedder.")
    options_config = persistence.options_config
    portable_options = staticmethod(persistence.portable_options)
    read_folder = staticmethod(persistence.read_folder)

    model_reference = property(lambda self: persistence.model_reference(self.model_path),
                               doc="The model as another process can load it: an alias's target, a directory made absolute.")
    portable_config = property(lambda self: dict(self.config, model=self.model_reference),
                               doc=":attr:`config` with the model reference resolved (no alias registry needed).")
    fingerprint = persistence.identity
    from_config = classmethod(persistence.from_config)
    save_pretrained = persistence.save_pretrained
    from_pretrained = classmethod(persistence.from_pretrained)

    # ------------------------------------------------------------------ placement and pickling
    def to(self, device: str | torch.device) -> MoEEmbedder:
        """Move the model to ``device`` (dtype unchanged) and follow it; returns ``self``."""
        self.engine.move(torch.device(device))
        self.follow_model(torch.device(device))
        return self

    def follow_model(self, fallback: torch.device | None = None) -> None:
        """Re-read where the model lives after someone else moved it (e.g. a framework's ``.to()``)."""
        self.device = self.engine.follow(fallback or self.device)
        self.vectors.forget_devices()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("engine", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._attach_model()

    def __repr__(self) -> str:
        return (f"MoEEmbedder(model={self.model_name!r}, mode={self.mode!r}, prompt={self.prompt.name!r}, "
                f"pooling={self.pooling!r}, routing={self.routing!r}, dim={self.dim}, "
                f"moe_layers={len(self.moe_layers)}, device={str(self.device)!r})")
