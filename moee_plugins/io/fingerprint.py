"""Fingerprints of what a run's vectors depend on besides its options: the model's and tokenizer's files,
the standardisation statistics and the compact-vector reduction.

The definitions are the core's (:mod:`moee_plugins.core.files` hashes files, :mod:`moee_plugins.core.persistence`
holds the one identity); this module names them for the readers and writers of files.
"""

from __future__ import annotations

from typing import Any

from ..core.files import FULL_HASH_BYTES, SAMPLES, directory_digest, file_digest, model_files_fingerprint
from ..core.persistence import statistics_digest, value_digest

__all__ = ["FULL_HASH_BYTES", "SAMPLES", "directory_digest", "file_digest", "model_files_fingerprint",
           "reduction_digest", "statistics_digest"]


def reduction_digest(reduction: dict[str, Any] | None) -> str | None:
    """SHA-256 of a compact-vector reduction's canonical JSON (``None`` without one)."""
    return value_digest(reduction)
