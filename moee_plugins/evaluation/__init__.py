"""``moee eval``: MTEB in every MoEE mode from one forward pass per text, with a resumable parts cache.

Importing this package does not import ``mteb``; :func:`run` and the task factories do, when called.
"""

from .alpha import AlphaChoice, select_alpha
from .cache import PartsStore, parts_fingerprint, text_key
from .layers import LayersReport, parse_hidden_layers, run_layers
from .runner import BENCHMARKS, PAPER_TASKS, parse_alpha, parse_modes, resolve_tasks, run
from .summary import CATEGORIES, EvalReport, TaskRow, published_for, published_results, render_markdown
from .tasks import (
    classification_task,
    clustering_task,
    get_task,
    pair_classification_task,
    register_task,
    registered_tasks,
    reranking_task,
    sts_task,
    summarization_task,
    unregister_task,
)

__all__ = [
    "BENCHMARKS", "CATEGORIES", "PAPER_TASKS", "AlphaChoice", "EvalReport", "LayersReport", "PartsStore", "TaskRow",
    "classification_task", "clustering_task", "get_task", "pair_classification_task", "parse_alpha",
    "parse_hidden_layers", "parse_modes", "parts_fingerprint", "published_for", "published_results", "register_task",
    "registered_tasks", "render_markdown", "reranking_task", "resolve_tasks", "run", "run_layers", "select_alpha",
    "sts_task", "summarization_task", "text_key", "unregister_task",
]
