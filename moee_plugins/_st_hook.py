"""The ``moee:`` hook on ``SentenceTransformer.__init__``, activated lazily: ``import moee_plugins`` must not
import that framework.

:func:`activate` installs :func:`install_hook` right away when sentence-transformers is already imported, and
otherwise the moment it is imported (a one-shot import finder that watches the single name
``sentence_transformers``, then removes itself); when sentence-transformers is not installed it does nothing.
Only the standard library is imported at module level: the framework and the adapter are imported by the
functions that need them. The hook wraps ``__init__`` for names starting with ``moee:`` only, and
:func:`module_for` translates such a name plus ``SentenceTransformer`` arguments into an
:class:`~moee_plugins.sentence_transformers.MoEEModule` (also used by ``moee_plugins.sentence_transformers.load``).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import json
import logging
import os
import sys
import threading
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from .aliases import PREFIX, strip_prefix

logger = logging.getLogger(__name__)

TARGET = "sentence_transformers"
_lock = threading.Lock()


def _install() -> None:
    try:
        install_hook()
    except Exception:  # never break the user's `import sentence_transformers`
        logger.warning("could not install the moee: hook on sentence-transformers", exc_info=True)


class _InstallAfterExec(importlib.abc.Loader):
    """Runs the real loader, then installs the hook; the module keeps its real loader afterwards."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        spec = module.__spec__
        if spec is not None:
            spec.loader = self._loader
        module.__loader__ = self._loader
        self._loader.exec_module(module)
        _install()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Answers for ``sentence_transformers`` only, once, by wrapping the spec the other finders find."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != TARGET:
            return None
        _remove_finder()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _InstallAfterExec(spec.loader)
        return spec


_finder: _Finder | None = None


def _remove_finder() -> None:
    global _finder
    with _lock:
        if _finder is not None and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
        _finder = None


def activate() -> None:
    """Make ``SentenceTransformer("moee:...")`` work as soon as sentence-transformers is (or gets) imported."""
    global _finder
    if TARGET in sys.modules:
        _install()
        return
    if importlib.util.find_spec(TARGET) is None:  # not installed: nothing to hook
        return
    with _lock:
        if _finder is None:
            _finder = _Finder()
            sys.meta_path.insert(0, _finder)


def pending() -> bool:
    """Whether the finder is still waiting for sentence-transformers to be imported."""
    return _finder is not None


# ---------------------------------------------------------------------------------------------- the hook
_ORIGINAL = "__moee_original_init__"
MODULE_TYPE = f"{__package__}.sentence_transformers.MoEEModule"  # as a saved folder's modules.json names it
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
    from .core import MoEEmbedder
    from .sentence_transformers import MoEEModule

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
    embedder = MoEEmbedder(reference, device=kwargs.get("device"), trust_remote_code=trust_remote_code,
                           model_kwargs=loading or None, **embedder_options)
    module = MoEEModule(embedder, source=reference, **adapter)
    kwargs["similarity_fn_name"] = kwargs.get("similarity_fn_name") or module.similarity_fn_name
    return module
