"""Content digests of a model's files: what "the same weights and tokenizer" means on disk.

A file is identified by its content, not its name: files up to :data:`FULL_HASH_BYTES` by the SHA-256 of all
their bytes; larger ones (weights) by their size, modification time and the SHA-256 of :data:`SAMPLES` evenly
spaced 1 MiB blocks, so a 14 GB checkpoint costs 16 MiB of reading, not 14 GB.

Affordability: small files are hashed in full every time (64 MiB hash in a fraction of a second, so a file
rewritten in place is always seen). A large file's digest is also kept for the life of the process, keyed by
its path, size, modification time, change time and inode, so the next identity of the same model in a
process (the evaluation cache, then a save) reads nothing; a large file rewritten in place changes its size
or times, so it is read again.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

FULL_HASH_BYTES = 64 << 20
SAMPLES = 16
_BLOCK = 1 << 20
_memo: dict[tuple[str, int, int, int, int], dict[str, Any]] = {}
_memo_lock = threading.Lock()


def file_digest(path: str | Path) -> dict[str, Any]:
    """``{"size", "sha256"}`` of a small file; ``{"size", "mtime_ns", "sampled_sha256"}`` of a large one."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    if stat.st_size > FULL_HASH_BYTES:
        with _memo_lock:
            known = _memo.get(key)
        if known is not None:
            return dict(known)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if stat.st_size <= FULL_HASH_BYTES:
            for block in iter(lambda: handle.read(_BLOCK), b""):
                digest.update(block)
            result: dict[str, Any] = {"size": stat.st_size, "sha256": digest.hexdigest()}
        else:
            step = (stat.st_size - _BLOCK) // (SAMPLES - 1)
            for k in range(SAMPLES):
                handle.seek(k * step)
                digest.update(handle.read(_BLOCK))
            result = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sampled_sha256": digest.hexdigest()}
    if stat.st_size > FULL_HASH_BYTES:
        with _memo_lock:
            _memo[key] = dict(result)
    return result


def directory_digest(directory: str | Path) -> dict[str, Any]:
    """:func:`file_digest` of every file of a model directory (top level, symlinks followed), by name.

    Hidden files and ``*.md`` (model cards) are left out: they do not change the vectors.
    """
    files = {}
    for entry in sorted(os.scandir(Path(directory)), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name.lower().endswith(".md") or not entry.is_file():
            continue
        files[entry.name] = file_digest(entry.path)
    return files


def cached_snapshot(repo_id: str) -> Path | None:
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

    A reference whose files cannot be found (a hub id not in the cache, a model built in memory) records
    ``None``: its name alone then identifies it.
    """
    result: dict[str, Any] = {}
    for role, reference in (("model", model), ("tokenizer", tokenizer)):
        if reference is None or (role == "tokenizer" and reference == model):
            continue
        directory = Path(reference) if os.path.isdir(reference) else cached_snapshot(reference)
        result[role] = directory_digest(directory) if directory is not None else None
    return result
