"""Framework-free core: loading, router capture, prompts, pooling, batching, standardisation, modes."""

from .combine import MODES, combine, similarity
from .embedder import MoEEmbedder, check_texts
from .options import OPTIONS, parts_options, vector_options
from .parts import MoEEParts, RouterBlock
from .prompts import PRESETS, PromptTemplate, resolve_prompt
from .standardize import Statistics, calibration_sentences

__all__ = [
    "MODES", "OPTIONS", "PRESETS", "MoEEParts", "MoEEmbedder", "PromptTemplate", "RouterBlock", "Statistics",
    "calibration_sentences", "check_texts", "combine", "parts_options", "resolve_prompt", "similarity",
    "vector_options",
]
