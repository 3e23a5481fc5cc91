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

import functools
import json
import logging
import os
import weakref
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

from ._extras import require

require("sentence_transformers", "sentence-transformers")

from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.base.modules import InputModule  # noqa: E402

from .core import MoEEmbedder, PromptTemplate, build_embedder, card, check_texts, options  # noqa: E402
from .core.aliases import PREFIX, strip_prefix  # noqa: E402
from .core.chunking import chunked_features  # noqa: E402
from .core.persistence import CONFIG_FILE, STATISTICS_FILE, WEIGHTS_DIR  # noqa: E402

__all__ = ["CONFIG_FILE", "STATISTICS_FILE", "WEIGHTS_DIR", "MoEEModule", "MoEESentenceTransformer", "hook_installed",
           "install_hook", "load", "split_model_kwargs", "uninstall_hook"]

# the truncate_dim of the encode call in progress (sentence-transformers applies it after the module, unseen)
_CALL_TRUNCATE_DIM: ContextVar[int | None] = ContextVar("moee_call_truncate_dim", default=None)


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
        self.embedder = embedder = build_embedder(embedder, owner="MoEEModule", **embedder_options)
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
        """Token ids exactly as the core builds them, padded as :meth:`MoEEmbedder.encode_features` expects.

        A per-call ``processing_kwargs={"text": {"max_length": n}}`` is honoured (the core's truncation inside the
        prompt template, at ``n`` tokens); any other processing setting is refused rather than silently ignored."""
        texts, _ = check_texts(list(inputs))
        max_length = _call_max_length(kwargs.get("processing_kwargs"))
        token_ids = self.embedder.tokenize(texts, prompt=prompt, max_length=max_length)
        input_ids, attention_mask = self.embedder.pad(token_ids)
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
        """The compact size the encode call's or the owner's ``truncate_dim`` asks for (None: full vectors);
        refuses a plain cut."""
        owner = self._owner() if self.__dict__.get("_owner") is not None else None
        size = _CALL_TRUNCATE_DIM.get() or getattr(owner, "truncate_dim", None)
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
        if type(model) is SentenceTransformer:  # a user's own subclass is kept as it is
            model.__class__ = MoEESentenceTransformer
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
            embedder_options["model_kwargs"] = {**options.file_model_kwargs(saved["embedder"].get("model_kwargs")),
                                                **loading}
        if "device" not in embedder_options and REQUESTED_DEVICE.get() is not None:
            embedder_options["device"] = REQUESTED_DEVICE.get()
        embedder = MoEEmbedder.from_pretrained(directory, trust_remote_code=bool(trust_remote_code), **embedder_options)
        include = adapter.get("include_weights", bool(saved.get("weights")))
        return cls(embedder, include_weights=include, source=saved.get("source"))


def _call_max_length(processing_kwargs: Any) -> int | None:
    """The ``max_length`` of a per-call ``processing_kwargs`` (None: the model's); what the core cannot honour is
    refused, naming the fix."""
    if not processing_kwargs:
        return None
    text = processing_kwargs.get("text") if isinstance(processing_kwargs, dict) else None
    other = sorted(set(processing_kwargs) - {"text"}) if isinstance(processing_kwargs, dict) else processing_kwargs
    unsupported = sorted(set(text) - {"max_length", "truncation"}) if isinstance(text, dict) else text
    if other or unsupported or not isinstance(text, dict) or text.get("truncation", True) is not True:
        raise ValueError(f"processing_kwargs={processing_kwargs!r:.120}: an MoEE model honours only "
                         "{'text': {'max_length': N}} (the core tokenises inside its prompt template and always "
                         "truncates); set model.max_seq_length = N to change the length for every call")
    if "max_length" not in text:
        return None
    return options.check_positive_int(text["max_length"], "processing_kwargs['text']['max_length']")


class MoEESentenceTransformer(SentenceTransformer):
    """The ``SentenceTransformer`` an :class:`MoEEModule` runs in (set when the model is assembled): a per-call
    ``encode(..., truncate_dim=d)`` gets the module's rule (a fitted compact size, else refused) instead of a plain
    cut, which sentence-transformers applies after the module, where the module cannot see it."""

    def encode(self, *args: Any, truncate_dim: int | None = None, **kwargs: Any) -> Any:
        if truncate_dim is None:
            return super().encode(*args, **kwargs)
        module = self[0]
        if isinstance(module, MoEEModule):
            module.embedder.check_truncation(truncate_dim)
        token = _CALL_TRUNCATE_DIM.set(truncate_dim)
        try:
            return super().encode(*args, truncate_dim=truncate_dim, **kwargs)
        finally:
            _CALL_TRUNCATE_DIM.reset(token)


# shown (repr, sentence-transformers' own messages) as what it is to its users; pickled by its qualified name
MoEESentenceTransformer.__name__ = SentenceTransformer.__name__


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


# ------------------------------------------------- the moee: hook (moee_plugins._st_hook activates it lazily)
logger = logging.getLogger(__name__)
_ORIGINAL = "__moee_original_init__"
MODULE_TYPE = f"{__name__}.MoEEModule"  # as a saved folder's modules.json names it
REQUESTED_DEVICE: ContextVar[str | None] = ContextVar("moee_requested_device", default=None)
_UNSUPPORTED = ("revision", "token", "use_auth_token", "cache_folder", "processor_kwargs", "tokenizer_kwargs",
                "config_kwargs")


def _init_slot() -> tuple[Any, Any]:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer, SentenceTransformer.__dict__["__init__"]


def install_hook() -> bool:
    """Wrap ``SentenceTransformer.__init__`` once (idempotent) so ``moee:`` names build an ``MoEEModule``;
    any other name goes to the original ``__init__`` untouched. Returns whether this call installed it."""
    cls, current = _init_slot()
    if getattr(current, _ORIGINAL, None) is not None:
        return False

    @functools.wraps(current)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        name = args[0] if args else kwargs.get("model_name_or_path")
        if not (isinstance(name, str) and name.startswith(PREFIX)):
            return current(self, *args, **kwargs)
        kwargs.pop("model_name_or_path", None)
        module = module_for(name, kwargs)
        return current(self, None, *args[1:], modules=[module], **kwargs)

    setattr(__init__, _ORIGINAL, current)
    cls.__init__ = __init__
    logger.debug("installed the moee: hook on SentenceTransformer")
    return True


def uninstall_hook() -> bool:
    """Restore the original ``SentenceTransformer.__init__``; returns whether a hook was removed."""
    cls, current = _init_slot()
    original = getattr(current, _ORIGINAL, None)
    if original is None:
        return False
    cls.__init__ = original
    return True


def hook_installed() -> bool:
    return getattr(_init_slot()[1], _ORIGINAL, None) is not None


def split_model_kwargs(model_kwargs: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """sentence-transformers' ``model_kwargs`` -> (MoEEmbedder options, adapter options, ``from_pretrained`` args)."""
    from .core import options

    return options.split_model_kwargs(model_kwargs, adapter_keys=("include_weights",), owner="SentenceTransformer(...)")


def _saved_dir(reference: str) -> str | None:
    path = strip_prefix(reference)
    return path if os.path.isfile(os.path.join(path, "modules.json")) else None


def _saved_settings(directory: str, kwargs: dict[str, Any]) -> None:
    """Refuse a folder holding anything but our one module (``moee:`` is no way around the trust check), and fill
    the model-level settings it records (prompts, similarity, truncate_dim) unless the caller gave them."""
    modules = json.loads(Path(directory, "modules.json").read_text(encoding="utf-8"))
    if [m.get("type") for m in modules] != [MODULE_TYPE]:
        raise ValueError(f"moee:{directory} loads folders holding one {MODULE_TYPE}; this one has modules "
                         f"{[m.get('type') for m in modules]}: use SentenceTransformer({directory!r}, "
                         "trust_remote_code=True) if you trust every module it names")
    settings_path = os.path.join(directory, "config_sentence_transformers.json")
    if os.path.isfile(settings_path):
        settings = json.loads(Path(settings_path).read_text(encoding="utf-8"))
        for key in ("prompts", "default_prompt_name", "similarity_fn_name", "truncate_dim"):
            if kwargs.get(key) is None and settings.get(key) is not None:
                kwargs[key] = settings[key]


def module_for(reference: str, kwargs: dict[str, Any]) -> Any:
    """The ``MoEEModule`` for ``SentenceTransformer("moee:...", **kwargs)``; consumes the loading arguments in
    kwargs (the rest go to ``SentenceTransformer``). The base model's remote code follows ``trust_remote_code``."""
    if kwargs.pop("modules", None) is not None:
        raise ValueError(f"pass either a model name ({reference!r}) or modules=[...], not both")
    if kwargs.pop("backend", "torch") != "torch":
        raise ValueError("MoEE models run on the torch backend (they read router logits with hooks)")
    for key in _UNSUPPORTED:
        if kwargs.pop(key, None):
            raise ValueError(f"{key}=... is not supported with a 'moee:' name; pass embedder options in model_kwargs, "
                             "a local directory instead of a revision, or HF_TOKEN / HF_HOME in the environment")
    if kwargs.pop("local_files_only", False):
        raise ValueError("local_files_only=True is not supported with a 'moee:' name; set HF_HUB_OFFLINE=1 instead")
    embedder_options, adapter, loading = split_model_kwargs(kwargs.pop("model_kwargs", None))
    trust_remote_code = bool(kwargs.pop("trust_remote_code", False))
    saved = _saved_dir(reference)
    if saved is not None:
        _saved_settings(saved, kwargs)
        module_kwargs = {**embedder_options, **adapter, **({"model_kwargs": loading} if loading else {})}
        token = REQUESTED_DEVICE.set(kwargs.get("device"))
        try:
            return MoEEModule.load(saved, trust_remote_code=trust_remote_code, model_kwargs=module_kwargs or None)
        finally:
            REQUESTED_DEVICE.reset(token)
    embedder = build_embedder(reference, owner="SentenceTransformer(...)", device=kwargs.get("device"),
                              trust_remote_code=trust_remote_code, model_kwargs=loading or None, **embedder_options)
    module = MoEEModule(embedder, source=reference, **adapter)
    kwargs["similarity_fn_name"] = kwargs.get("similarity_fn_name") or module.similarity_fn_name
    return module


install_hook()  # importing this module directly (before or after sentence-transformers) also installs the hook
