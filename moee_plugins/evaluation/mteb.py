"""MTEB (2.x) encoder around :class:`moee_plugins.MoEEmbedder`: every mode from one forward pass per text.

The wrapper follows mteb's ``EncoderProtocol`` (``encode(inputs, *, task_metadata, hf_split, hf_subset,
prompt_type, **kwargs)``, ``similarity``, ``similarity_pairwise``, ``mteb_model_meta``). It encodes raw parts
(HS, RW) through a :class:`~moee_plugins.evaluation.cache.PartsStore`, so views of the same wrapper in other
modes (:meth:`MoEEMTEBModel.with_mode`) reuse them instead of running the model again.

What each MTEB task type does with the vectors (``sum`` vectors are ``[u(HS), sqrt(alpha) u(RW)] / sqrt(1 + alpha)``,
unit length, so ``a . b = (cos(HS) + alpha cos(RW)) / (1 + alpha)`` exactly, the fused score over a constant):

- STS, summarization, pair classification, reranking: scores come from :meth:`similarity` /
  :meth:`similarity_pairwise`, which are the fused score itself for ``sum`` (cosine for the other modes).
  MTEB's extra cosine/euclidean columns are monotone in the fused score too (constant norm); only its
  Manhattan column is not.
- Classification: logistic regression (L2-regularised) on the vectors. Its decision function depends on the
  data only through dot products, i.e. it is kernel logistic regression with kernel cos(HS) + alpha cos(RW).
- Clustering: k-means on the vectors, whose squared distances are ``2 - 2 (cos(HS) + alpha cos(RW)) / (1 + alpha)``:
  kernel k-means with the fused similarity as kernel.

The paper's released code instead averages the labels (classification) or cluster ids (clustering) predicted
from HS and RW separately; fusing the similarity is the same definition in every task type.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._extras import require
from ..core import options
from ..core.build import build_embedder
from ..core.embedder import MoEEmbedder
from ..core.parts import MoEEParts
from ..core.prompts import PromptTemplate, prompt_to_config
from .cache import PartsStore, text_key

if TYPE_CHECKING:
    from mteb.models.model_meta import ModelMeta

require("mteb", "mteb", feature="moee_plugins.mteb")  # a clear install hint if mteb is missing
_model_meta = require("mteb.models.model_meta", "mteb", feature="moee_plugins.mteb")

PAPER_CITATION = """@inproceedings{li2025moee,
  title     = {Your Mixture-of-Experts LLM Is Secretly an Embedding Model for Free},
  author    = {Li, Ziyue and Zhou, Tianyi},
  booktitle = {The Thirteenth International Conference on Learning Representations},
  year      = {2025},
  url       = {https://openreview.net/forum?id=eFGQ97z5Cd}
}"""
_IN_EXPERIMENT = ("mode", "alpha", "prompt")  # MTEB records these in experiment_kwargs, not in the revision


def _as_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float32).numpy()
    return np.asarray(values, dtype=np.float32)


def model_name(embedder: MoEEmbedder) -> str:
    """``moee/<checkpoint name>``: MTEB wants ``organisation/name``."""
    base = Path(str(getattr(embedder, "model_path", "") or embedder.config["model"]).rstrip("/")).name
    return "moee/" + (re.sub(r"[^A-Za-z0-9._-]+", "_", base) or "model")


def config_revision(embedder: MoEEmbedder) -> str:
    """A short digest of what changes vectors (the core's fingerprint), other than mode, alpha and prompt."""
    fingerprint = {k: v for k, v in embedder.fingerprint("vectors").items() if k not in _IN_EXPERIMENT}
    return options.digest(fingerprint, 12)


class MoEEMTEBModel:
    """An MTEB encoder for one MoEE mode; :meth:`with_mode` gives views that share the parts already encoded.

    Example:
        >>> import mteb
        >>> from moee_plugins.evaluation.mteb import MoEEMTEBModel
        >>> model = MoEEMTEBModel("moee:olmoe", mode="sum", cache_dir="parts-cache")  # doctest: +SKIP
        >>> mteb.evaluate(model, mteb.get_task("STSBenchmark"))                          # doctest: +SKIP
        >>> mteb.evaluate(model.with_mode("hs"), mteb.get_task("STSBenchmark"))  # no new forward  # doctest: +SKIP

    The embedder's statistics are fixed when the wrapper is built (a calibration on the built-in sentences if it
    has none), so ``revision`` (what MTEB files results under) is stable for the wrapper and every view.

    Args:
        model: a :class:`MoEEmbedder`, or what :class:`MoEEmbedder` accepts (then ``embedder_kwargs`` configure it).
        mode: ``hs``, ``rw``, ``concat`` or ``sum`` (default: the embedder's).
        alpha: weight of cos(RW) in ``sum`` mode (default: the embedder's).
        prompt: prompt for every text (default: the embedder's); MTEB's task instructions are not used,
            as in the paper.
        store: where parts are kept; default: a new :class:`PartsStore` under ``cache_dir`` (memory if None).
        name: the MTEB model name (default ``moee/<checkpoint name>``).
    """

    def __init__(self, model: MoEEmbedder | Any, *, mode: str | None = None, alpha: float | None = None,
                 prompt: str | PromptTemplate | None = None, store: PartsStore | None = None,
                 cache_dir: str | Path | None = None, name: str | None = None, **embedder_kwargs: Any) -> None:
        embedder = build_embedder(model, owner="MoEEMTEBModel", **embedder_kwargs)
        self.embedder = embedder
        self.prompt = embedder.prompt_for(prompt)
        self.store = store if store is not None else PartsStore.for_embedder(embedder, cache_dir)
        self.name = name or model_name(embedder)
        self._seen: dict[str, set[bytes]] = {}  # shared by every view: keys of the texts each task encoded
        self.mode, self.alpha = self._check(mode or embedder.mode, embedder.alpha if alpha is None else alpha)
        self._n_parameters = sum(p.numel() for p in embedder.model.parameters())
        # statistics fixed now (any mode a view may use), so the revision MTEB files results under is known at
        # construction and the same for this wrapper and all its views
        embedder.fix_statistics()
        self.revision = config_revision(embedder)
        self.mteb_model_meta = self._meta()

    @staticmethod
    def _check(mode: str, alpha: Any) -> tuple[str, float]:
        return options.OPTIONS["mode"].check(mode), options.check_alpha(alpha)

    def with_mode(self, mode: str, alpha: float | None = None, *, alpha_label: str | None = None) -> MoEEMTEBModel:
        """The same encoder in another mode (and alpha), sharing the embedder and every part already encoded.

        ``alpha_label`` replaces the number in MTEB's experiment name (e.g. ``"auto"`` when alpha is chosen per task).
        """
        view = copy.copy(self)
        view.mode, view.alpha = self._check(mode, self.alpha if alpha is None else alpha)
        view.mteb_model_meta = view._meta(alpha_label)
        return view

    def _meta(self, alpha_label: str | None = None) -> ModelMeta:
        experiment: dict[str, Any] = {"mode": self.mode, "prompt": prompt_to_config(self.prompt)}
        if self.mode == "sum":
            experiment["alpha"] = alpha_label if alpha_label is not None else self.alpha
        dim = self.embedder.dim_of(self.mode)
        return _model_meta.ModelMeta(
            loader=None, name=self.name, revision=self.revision, release_date=None,
            languages=None, n_parameters=self._n_parameters, memory_usage_mb=None,
            max_tokens=self.embedder.max_length, embed_dim=dim, license=None, open_weights=True,
            public_training_code=None, public_training_data=None, framework=["PyTorch", "Transformers"],
            reference="https://github.com/tianyi-lab/MoE-Embedding",
            similarity_fn_name="dot" if self.mode == "sum" else "cosine", use_instructions=False,
            training_datasets=None, citation=PAPER_CITATION, experiment_kwargs=experiment,
        )

    # ------------------------------------------------------------------ EncoderProtocol
    def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str,
               prompt_type: Any = None, **kwargs: Any) -> np.ndarray:
        """Vectors of this mode for every text of ``inputs`` (a DataLoader of batches with a ``text`` column)."""
        if config_revision(self.embedder) != self.revision:
            raise ValueError(f"the embedder changed after this MTEB wrapper was built (revision {self.revision}, now "
                             f"{config_revision(self.embedder)}: new statistics or options), so its results would be "
                             "filed under the wrong revision; build a new MoEEMTEBModel for the changed embedder")
        texts: list[str] = []
        for batch in inputs:
            if "text" not in batch:
                raise ValueError(f"MoEE embeds text only; this batch has columns {sorted(batch)}")
            texts.extend(batch["text"])
        parts = self.store.encode(self.embedder, texts, prompt=self.prompt,
                                  show_progress_bar=bool(kwargs.get("show_progress_bar", False)))
        name = getattr(task_metadata, "name", None) or "unknown"
        self._seen.setdefault(name, set()).update(text_key(self.prompt, text) for text in texts)
        self.embedder.ensure_statistics(self.mode)
        return self.embedder.combine(parts, self.mode, alpha=self.alpha)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """All-pairs similarity of this mode: cos(HS) + alpha cos(RW) for ``sum`` vectors, else cosine."""
        scores = self.embedder.similarity(_as_numpy(embeddings1), _as_numpy(embeddings2), self.mode)
        return torch.from_numpy(np.ascontiguousarray(scores))

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Row-by-row similarity of this mode (the diagonal of :meth:`similarity`)."""
        a = np.atleast_2d(_as_numpy(embeddings1)).astype(np.float64)
        b = np.atleast_2d(_as_numpy(embeddings2)).astype(np.float64)
        if a.shape != b.shape:
            raise ValueError(f"pairwise similarity needs arrays of equal shape, got {a.shape} and {b.shape}")
        if self.mode != "sum":
            tiny = np.finfo(np.float64).tiny
            a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), tiny)
            b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), tiny)
        return torch.from_numpy((a * b).sum(axis=1).astype(np.float32))

    # ------------------------------------------------------------------ helpers
    def task_parts(self, task_name: str) -> MoEEParts:
        """Raw parts of every unique text that task ``task_name`` encoded through this wrapper (any view)."""
        keys = sorted(self._seen.get(task_name, ()))
        if not keys:
            raise KeyError(f"no texts were encoded for task {task_name!r}")
        return self.store.get(keys)

    def encoded_tasks(self) -> list[str]:
        """Names of the tasks that encoded texts through this wrapper (any view)."""
        return sorted(self._seen)

    def encoded_keys(self) -> set[bytes]:
        """Cache keys of every distinct (prompt, text) encoded through this wrapper (any view, any task)."""
        return set().union(*self._seen.values())

    def __repr__(self) -> str:
        alpha = f", alpha={self.alpha:g}" if self.mode == "sum" else ""
        return f"MoEEMTEBModel(name={self.name!r}, mode={self.mode!r}{alpha}, prompt={self.prompt.name!r})"
