"""The lazy activation of the ``moee:`` hook on ``SentenceTransformer.__init__``: ``import moee_plugins`` must not
import that framework.

:func:`activate` installs the hook right away when sentence-transformers is already imported, and otherwise the
moment it is imported (a one-shot import finder that watches the single name ``sentence_transformers``, then
removes itself); when sentence-transformers is not installed it does nothing. Only the standard library is
imported at module level. Installing imports the adapter, :mod:`moee_plugins.sentence_transformers`, which owns
the hook itself (:func:`~moee_plugins.sentence_transformers.install_hook`, ``module_for``); the adapter never
imports this module, so the two form no import circle.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import threading
from typing import Any

logger = logging.getLogger(__name__)

TARGET = "sentence_transformers"
_lock = threading.Lock()


def _install() -> None:
    adapter = sys.modules.get(f"{__package__}.sentence_transformers")
    if adapter is not None and not hasattr(adapter, "install_hook"):
        return  # the adapter is being imported (that imported sentence-transformers): it installs the hook at its end
    try:
        from .sentence_transformers import install_hook

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
