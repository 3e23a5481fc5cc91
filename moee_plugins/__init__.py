"""moee-plugins: any Mixture-of-Experts LLM as a training-free embedding model (MoEE), for every framework."""

__version__ = "0.1.0"

from .aliases import ModelAlias, get_alias, list_aliases, register_alias, unregister_alias  # noqa: E402
from .core import MODES, PRESETS, MoEEmbedder, MoEEParts, PromptTemplate, Statistics  # noqa: E402

__all__ = [
    "MODES", "PRESETS", "ModelAlias", "MoEEParts", "MoEEmbedder", "PromptTemplate", "Statistics", "__version__",
    "get_alias", "list_aliases", "register_alias", "unregister_alias",
]
