"""Framework-free core: loading, router capture, prompts, pooling, batching, standardisation, modes."""

from .combine import MODES, combine, similarity
from .embedder import MoEEmbedder
from .parts import MoEEParts, RouterBlock
from .prompts import PRESETS, PromptTemplate, resolve_prompt
from .standardize import Statistics, calibration_sentences

__all__ = [
    "MODES", "PRESETS", "MoEEParts", "MoEEmbedder", "PromptTemplate", "RouterBlock", "Statistics",
    "calibration_sentences", "combine", "resolve_prompt", "similarity",
]
