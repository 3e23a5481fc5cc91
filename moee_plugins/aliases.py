"""The ``moee:<alias>`` registry (public import path; the registry itself lives in :mod:`moee_plugins.core.aliases`)."""

from .core.aliases import (
    PREFIX,
    ModelAlias,
    builtin_aliases,
    get_alias,
    list_aliases,
    register_alias,
    strip_prefix,
    unregister_alias,
)

__all__ = ["PREFIX", "ModelAlias", "builtin_aliases", "get_alias", "list_aliases", "register_alias", "strip_prefix",
           "unregister_alias"]
