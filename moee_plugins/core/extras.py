"""Lazy imports of optional dependencies with an error that says how to install them."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, *, feature: str | None = None) -> ModuleType:
    """Import ``module`` or raise an ``ImportError`` naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - message is what matters, tested via monkeypatch
        what = feature or f"moee_plugins.{extra.replace('-', '_')}"
        raise ImportError(
            f"{what} needs the optional dependency {module!r}, which is not installed. "
            f'Install it with: pip install "moee-plugins[{extra}]" (until the package is on PyPI, in a clone of the '
            f'repository: pip install ".[{extra}]")'
        ) from exc
