"""moee-plugins: any Mixture-of-Experts LLM as a training-free embedding model (MoEE), for every framework."""

from .aliases import ModelAlias, get_alias, list_aliases, register_alias, unregister_alias
from .core import MODES, PRESETS, MoEEmbedder, MoEEParts, PromptTemplate, Statistics, calibration_sentences
from .core.version import __version__

__all__ = [
    "MODES", "PRESETS", "ModelAlias", "MoEEParts", "MoEEmbedder", "PromptTemplate", "Statistics", "__version__",
    "calibration_sentences",
    "get_alias", "list_aliases", "register_alias", "unregister_alias",
]

from ._st_hook import activate as _activate_st_hook

_activate_st_hook()  # SentenceTransformer("moee:...") once sentence-transformers is imported; never imports it
