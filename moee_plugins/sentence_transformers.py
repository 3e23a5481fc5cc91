"""sentence-transformers adapter: an MoEE model is a ``SentenceTransformer`` like any other.

- :class:`MoEEModule`: the input module around a :class:`~moee_plugins.MoEEmbedder` (``preprocess`` pads the
  core's token ids, ``forward`` runs the core on those tensors, on the device).
- ``SentenceTransformer("moee:<alias | hub id | dir | saved MoEE folder>")``: ``import moee_plugins`` hooks
  ``SentenceTransformer.__init__`` for names starting with ``moee:`` only (the prefix is your explicit choice
  of this module); every other call runs exactly as sentence-transformers runs it. A bare
  ``SentenceTransformer(saved_folder)`` follows sentence-transformers' own rule: it needs
  ``trust_remote_code=True``, because ``MoEEModule`` is not one of its classes.
- :func:`load`: the same without any hook.

Without ``import moee_plugins`` first, ``SentenceTransformer("moee:...")`` fails with sentence-transformers'
"Path ... not found": import the package (or use :func:`load`).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch

from ._extras import require

require("sentence_transformers", "sentence-transformers")

from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.base.modules import InputModule  # noqa: E402

from ._st_hook import REQUESTED_DEVICE, hook_installed, install_hook, module_for, split_model_kwargs, uninstall_hook  # noqa: E402
from .core import MoEEmbedder, PromptTemplate, card, check_texts, options  # noqa: E402
from .core.chunking import chunked_features  # noqa: E402
from .core.embedder import CONFIG_FILE, STATISTICS_FILE, WEIGHTS_DIR  # noqa: E402

__all__ = ["CONFIG_FILE", "STATISTICS_FILE", "WEIGHTS_DIR", "MoEEModule", "hook_installed", "install_hook", "load",
           "split_model_kwargs", "uninstall_hook"]


class _Features(dict):
    """The module's output: names the one missing key users may ask for (``output_value="token_embeddings"``)."""

    def __missing__(self, key: str) -> Any:
        raise KeyError(f"an MoEE model produces only 'sentence_embedding' (hidden state plus routing weights), "
                       f"not {key!r}: use output_value='sentence_embedding'")


class MoEEModule(InputModule):
    """sentence-transformers input module that runs a :class:`~moee_plugins.MoEEmbedder`.

    Example:
        >>> from sentence_transformers import SentenceTransformer
        >>> from moee_plugins.sentence_transformers import MoEEModule
        >>> module = MoEEModule("moee:olmoe", mode="sum")                       # doctest: +SKIP
        >>> model = SentenceTransformer(modules=[module], similarity_fn_name=module.similarity_fn_name)  # doctest: +SKIP
        >>> model.encode(["The hockey team won."]).shape                       # doctest: +SKIP

    ``embedder``: a :class:`~moee_plugins.MoEEmbedder`, or a model reference plus ``**options`` to build one;
    ``include_weights``: copy the base model into the saved folder; ``source``: the name shown in the card.
    """

    config_file_name = CONFIG_FILE
    save_in_root = True

    def __init__(self, embedder: MoEEmbedder | str, *, include_weights: bool = False, source: str | None = None,
                 **embedder_options: Any) -> None:
        super().__init__()
        source = source or (embedder if isinstance(embedder, str) else None)
        self.embedder = embedder = MoEEmbedder.build(embedder, owner="MoEEModule", **embedder_options)
        self.auto_model = embedder.model  # a sub-module: moved, shared and counted with the SentenceTransformer
        self.include_weights = bool(include_weights)
        self.source = source or embedder.config["model"]
        self.__dict__["_owner"] = None  # weak reference to the SentenceTransformer, set in on_model_ready

    @property
    def tokenizer(self) -> Any:
        return self.embedder.tokenizer

    @property
    def max_seq_length(self) -> int:
        """Tokens per text, prompt included (the core's ``max_length``)."""
        return self.embedder.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.embedder.max_length = options.check_positive_int(value, "max_seq_length")

    @property
    def similarity_fn_name(self) -> str:
        """``dot`` for ``sum`` vectors (their dot product is the fused score), else ``cosine``."""
        return "dot" if self.embedder.mode == "sum" else "cosine"

    def get_embedding_dimension(self) -> int:
        return self.embedder.dim

    def get_config_dict(self) -> dict[str, Any]:
        config = self.embedder.portable_config
        for key in ("statistics", "moee_plugins_version"):
            config.pop(key, None)
        return config

    def __repr__(self) -> str:
        return f"MoEEModule({self.embedder!r})"

    def prompt_template(self, prompt: str | None = None) -> PromptTemplate:
        """The core's one prompt rule (:meth:`MoEEmbedder.prompt_for`) for a sentence-transformers prompt."""
        return self.embedder.prompt_for(prompt)

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Token ids exactly as the core builds them, padded as :meth:`MoEEmbedder.encode_features` expects."""
        texts, _ = check_texts(list(inputs))
        input_ids, attention_mask = self.embedder.pad(self.embedder.tokenize(texts, prompt=prompt))
        if self.embedder.long_texts == "chunk":  # the core splits and pools long texts itself (core/chunking.py)
            return {"input_ids": input_ids, "attention_mask": attention_mask, "moee_texts": texts, "moee_prompt": prompt}
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """The core's forward and combination on the padded features, on the device; row i is input i.

        With the model's ``truncate_dim`` set to a fitted compact size, the vectors are the core's compact ones
        of that size (the fitted PCA), so sentence-transformers' own cut is a no-op.
        """
        compact = self._check_truncate_dim()
        self.embedder.ensure_statistics()
        if "moee_texts" in features:
            pooled = chunked_features(self.embedder, features["moee_texts"], features.get("moee_prompt"))
        else:
            pooled = self.embedder.encode_features(features["input_ids"], features["attention_mask"])
        output = _Features(features)
        output["sentence_embedding"] = self.embedder.combine_features(pooled, dimensions=compact).to(
            features["input_ids"].device)
        return output

    def _check_truncate_dim(self) -> int | None:
        """The compact size the owner's ``truncate_dim`` asks for (None: full vectors); refuses a plain cut."""
        owner = self._owner() if self.__dict__.get("_owner") is not None else None
        size = getattr(owner, "truncate_dim", None)
        self.embedder.check_truncation(size)
        return None if size is None or size == self.embedder.dim else size

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> MoEEModule:
        """After ``.to()``/``.cuda()``/``.cpu()`` the core follows its model."""
        result = super()._apply(fn, *args, **kwargs)
        if "embedder" in self.__dict__:
            self.embedder.follow_model()
        return result

    def __getstate__(self) -> dict[str, Any]:
        """The multi-process pool pickles the model: fix the statistics once here, not once per worker."""
        self.embedder.ensure_statistics()
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_owner", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__["_owner"] = None

    def on_model_ready(self, model: Any) -> None:
        """Set the mode's similarity (unless one was given or saved) and an honest model card."""
        self.__dict__["_owner"] = weakref.ref(model)
        self._check_truncate_dim()
        if getattr(model, "_similarity_fn_name", "unknown") is None:
            model.similarity_fn_name = self.similarity_fn_name
        if hasattr(model, "_model_card_text") and model._model_card_text is None:
            model._model_card_text = self.model_card(model)

    def model_card(self, model: Any = None) -> str:
        """A README for the saved model (the core's card): what it is, its settings, and how to load it."""
        return card.model_card(self.embedder, model_id=getattr(getattr(model, "model_card_data", None), "model_id", None),
                               similarity=getattr(model, "similarity_fn_name", None) or self.similarity_fn_name,
                               include_weights=self.include_weights, weights_dir=WEIGHTS_DIR)

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """The core's portable folder (config, statistics, tokenizer, optionally weights) in ``output_path``."""
        self.embedder.save_pretrained(output_path, include_weights=self.include_weights, source=self.source,
                                      safe_serialization=safe_serialization)
        owner = self._owner() if self.__dict__.get("_owner") is not None else None
        if owner is not None and card.is_generated(getattr(owner, "_model_card_text", None)):
            owner._model_card_text = self.model_card(owner)  # refresh our own card; a user's card is kept

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             trust_remote_code: bool = False, model_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> MoEEModule:
        """Rebuild the module from a saved folder (local or hub); ``model_kwargs`` override saved options.

        ``trust_remote_code`` is the loading user's, never the folder's.
        """
        if kwargs.get("backend", "torch") != "torch":
            raise ValueError(f"MoEE models run on the torch backend, got backend={kwargs['backend']!r}")
        directory = cls.load_dir_path(model_name_or_path, subfolder=subfolder, token=token, cache_folder=cache_folder,
                                      revision=revision, local_files_only=local_files_only)
        embedder_options, adapter, loading = split_model_kwargs(model_kwargs)
        saved = MoEEmbedder.read_folder(directory)
        if loading:
            embedder_options["model_kwargs"] = {**(saved["embedder"].get("model_kwargs") or {}), **loading}
        if "device" not in embedder_options and REQUESTED_DEVICE.get() is not None:
            embedder_options["device"] = REQUESTED_DEVICE.get()
        embedder = MoEEmbedder.from_pretrained(directory, trust_remote_code=bool(trust_remote_code), **embedder_options)
        include = adapter.get("include_weights", bool(saved.get("weights")))
        return cls(embedder, include_weights=include, source=saved.get("source"))


def load(model: str, *, device: str | None = None, trust_remote_code: bool = False, include_weights: bool = False,
         **settings: Any) -> SentenceTransformer:
    """A ``SentenceTransformer`` for an MoE checkpoint or a saved MoEE folder, without the hook.

    ``settings``: ``SentenceTransformer`` arguments (``prompts``, ``similarity_fn_name``, ...) and
    :class:`~moee_plugins.MoEEmbedder` options or ``from_pretrained`` arguments, as in ``model_kwargs``.

    Example:
        >>> from moee_plugins.sentence_transformers import load
        >>> model = load("moee:olmoe", mode="concat")                # doctest: +SKIP
        >>> model.encode_query(["what is MoEE?"]).shape             # doctest: +SKIP
    """
    if not isinstance(model, str) or not model.strip():
        raise TypeError(f"model must be 'moee:<alias>', a hub id or a directory, got {model!r}")
    st_names = ("prompts", "default_prompt_name", "similarity_fn_name", "truncate_dim", "model_card_data")
    kwargs = {k: settings.pop(k) for k in st_names if k in settings}
    model_kwargs = dict(settings, include_weights=include_weights) if include_weights else dict(settings)
    kwargs.update(device=device, trust_remote_code=trust_remote_code, model_kwargs=model_kwargs or None)
    module = module_for(model, kwargs)
    return SentenceTransformer(modules=[module], **kwargs)


install_hook()  # importing this module directly (before or after sentence-transformers) also installs the hook
