"""Fingerprints of what a run's vectors depend on besides its options: the model's and tokenizer's files,
and the standardisation statistics. ``moee embed --resume`` refuses when one differs from the interrupted run.

A file is identified by its content, not its name: files up to :data:`FULL_HASH_BYTES` by the SHA-256 of
all their bytes; larger ones (weights) by their size, modification time and the SHA-256 of
:data:`SAMPLES` evenly spaced 1 MiB blocks, so fingerprinting a 14 GB checkpoint reads 16 MiB.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

FULL_HASH_BYTES = 64 << 20
SAMPLES = 16
_BLOCK = 1 << 20


def file_digest(path: str | Path) -> dict[str, Any]:
    """``{"size", "sha256"}`` of a small file; ``{"size", "mtime_ns", "sampled_sha256"}`` of a large one."""
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if stat.st_size <= FULL_HASH_BYTES:
            for block in iter(lambda: handle.read(_BLOCK), b""):
                digest.update(block)
            return {"size": stat.st_size, "sha256": digest.hexdigest()}
        step = (stat.st_size - _BLOCK) // (SAMPLES - 1)
        for k in range(SAMPLES):
            handle.seek(k * step)
            digest.update(handle.read(_BLOCK))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sampled_sha256": digest.hexdigest()}


def directory_digest(directory: str | Path) -> dict[str, Any]:
    """:func:`file_digest` of every file of a model directory (top level, symlinks followed), by name.

    Hidden files and ``*.md`` (model cards) are left out: they do not change the vectors.
    """
    directory = Path(directory)
    files = {}
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name.lower().endswith(".md") or not entry.is_file():
            continue
        files[entry.name] = file_digest(entry.path)
    return files


def _cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot directory of a hub model already in the Hugging Face cache, if any."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the hub would refuse: nothing cached under it
        return None
    return Path(found).parent if isinstance(found, str) else None


def model_files_fingerprint(model: str, tokenizer: str | None = None) -> dict[str, Any]:
    """The files a model reference (a local directory or a cached hub id) and a separate tokenizer load from.

    A reference whose files cannot be found (a hub id not in the cache) records ``None``: the path string
    in the settings still identifies it.
    """
    result: dict[str, Any] = {}
    for role, reference in (("model", model), ("tokenizer", tokenizer)):
        if reference is None or (role == "tokenizer" and reference == model):
            continue
        directory = Path(reference) if os.path.isdir(reference) else _cached_snapshot(reference)
        result[role] = directory_digest(directory) if directory is not None else None
    return result


def statistics_digest(statistics: dict[str, Any] | None) -> str | None:
    """SHA-256 of the statistics' canonical JSON (``None`` without statistics)."""
    if statistics is None:
        return None
    text = json.dumps({"hidden": statistics["hidden"], "routing": statistics["routing"]}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def reduction_digest(reduction: dict[str, Any] | None) -> str | None:
    """SHA-256 of a compact-vector reduction's canonical JSON (``None`` without one)."""
    if reduction is None:
        return None
    return hashlib.sha256(json.dumps(reduction, sort_keys=True).encode("utf-8")).hexdigest()
