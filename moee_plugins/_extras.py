"""Kept for the modules outside the core that import it: the helper lives in :mod:`moee_plugins.core.extras`
(the core imports nothing of the package outside ``core``)."""

from .core.extras import require

__all__ = ["require"]
