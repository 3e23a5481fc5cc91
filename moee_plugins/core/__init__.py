"""Framework-free core: loading, router capture, prompts, pooling, batching, standardisation, modes; the engine
(forward passes), the vector rules, persistence and identity, and the one builder (see docs/development.md)."""

from .build import build_embedder
from .combine import MODES, combine, similarity
from .embedder import MoEEmbedder, check_texts
from .engine import Engine, ForwardPass
from .options import OPTIONS, parts_options, vector_options
from .parts import MoEEParts, RouterBlock
from .prompts import PRESETS, PromptTemplate, resolve_prompt
from .standardize import Statistics, calibration_sentences

__all__ = [
    "MODES", "OPTIONS", "PRESETS", "Engine", "ForwardPass", "MoEEParts", "MoEEmbedder", "PromptTemplate", "RouterBlock",
    "Statistics", "build_embedder", "calibration_sentences", "check_texts", "combine", "parts_options", "resolve_prompt",
    "similarity", "vector_options",
]
