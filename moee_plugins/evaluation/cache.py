"""A disk cache of raw parts (HS, RW) per text, so an evaluation runs the model once per unique text and resumes.

Every mode (hs, rw, concat, sum) is derived from the same raw parts, so the parts are what is worth keeping.
Entries are keyed by (model fingerprint, prompt, text): the fingerprint names a sub-directory, the prompt and
the text are hashed into the key. Parts are written in shards of ``shard_size`` texts, each shard atomically
(written aside, then renamed), so an interrupted run loses at most the shard being encoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.embedder import MoEEmbedder
from ..core.parts import MoEEParts
from ..core.persistence import identity, identity_digest
from ..core.prompts import PromptTemplate, prompt_to_config, resolve_prompt

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
KEY_BYTES = 16


def parts_fingerprint(embedder: MoEEmbedder) -> tuple[str, dict[str, Any]]:
    """A short digest of everything that determines an embedder's raw parts of a prompted text, and its inputs:
    the core's one identity of kind "parts" (options, dtype, shapes, model config and the weight and tokenizer
    files' contents), so another checkpoint at the same path gets another directory.

    The prompt is not part of it (it is part of each entry's key): one directory serves every prompt.
    """
    described = identity(embedder, "parts")
    described.pop("prompt", None)
    return identity_digest(described), described


def text_key(prompt: str | PromptTemplate | None, text: str) -> bytes:
    """The cache key of ``text`` under ``prompt``: 16 bytes of SHA-256 over the prompt template and the text."""
    template = prompt_to_config(resolve_prompt(prompt))
    return hashlib.sha256(template.encode("utf-8") + b"\x00" + text.encode("utf-8")).digest()[:KEY_BYTES]


class _Shard:
    """One block of cached parts: kept in memory (no directory) or read from its file on demand."""

    def __init__(self, path: Path | None, arrays: dict[str, np.ndarray] | None = None) -> None:
        self.path = path
        self.arrays = arrays

    def load(self) -> dict[str, np.ndarray]:
        if self.arrays is not None:
            return self.arrays
        assert self.path is not None
        with np.load(self.path) as data:
            return {name: data[name] for name in ("keys", "hidden", "routing", "num_tokens")}


class PartsStore:
    """Raw parts of texts, by (prompt, text), in memory and optionally on disk.

    Example:
        >>> from moee_plugins import MoEEmbedder
        >>> from moee_plugins.evaluation import PartsStore
        >>> emb = MoEEmbedder("moee:olmoe")                                  # doctest: +SKIP
        >>> store = PartsStore.for_embedder(emb, "cache/")                   # doctest: +SKIP
        >>> parts = store.encode(emb, ["a text", "another"], prompt="prompteol")  # forwards both  # doctest: +SKIP
        >>> parts = store.encode(emb, ["a text"], prompt="prompteol")        # no forward: cached  # doctest: +SKIP

    Args:
        directory: where shards live (created if missing); ``None`` keeps everything in memory.
        hidden_dim, routing_dim, layout: the embedder's part shapes and router layout.
        shard_size: texts encoded and written per shard (the most an interruption can lose).
        description: what the fingerprint was made of, written to ``meta.json`` for people.
    """

    def __init__(self, directory: str | Path | None, *, hidden_dim: int, routing_dim: int,
                 layout: Sequence[Any] = (), shard_size: int = 512, description: dict[str, Any] | None = None,
                 max_loaded_shards: int = 8) -> None:
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
        self.directory = Path(directory) if directory is not None else None
        self.hidden_dim = int(hidden_dim)
        self.routing_dim = int(routing_dim)
        self.layout = list(layout)
        self.shard_size = shard_size
        self.max_loaded_shards = max_loaded_shards
        self._shards: list[_Shard] = []
        self._index: dict[bytes, tuple[int, int]] = {}
        self._loaded: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self.forwarded = 0  # texts this store sent through the model
        self.reused = 0  # texts this store answered without the model (repeat or cached)
        if self.directory is not None:
            self._open(description or {})

    @classmethod
    def for_embedder(cls, embedder: MoEEmbedder, cache_dir: str | Path | None, **kwargs: Any) -> PartsStore:
        """A store for ``embedder``'s parts under ``cache_dir/<fingerprint>/`` (in memory if ``cache_dir`` is None)."""
        digest, description = parts_fingerprint(embedder)
        directory = Path(cache_dir) / digest if cache_dir is not None else None
        return cls(directory, hidden_dim=embedder.hidden_dim, routing_dim=embedder.routing_dim,
                   layout=embedder.layout, description=description, **kwargs)

    # ------------------------------------------------------------------ disk
    def _open(self, description: dict[str, Any]) -> None:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        meta_path = self.directory / "meta.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text("utf-8"))
            got = (meta.get("hidden_dim"), meta.get("routing_dim"))
            if got != (self.hidden_dim, self.routing_dim) or meta.get("format") != FORMAT_VERSION:
                raise ValueError(
                    f"parts cache {self.directory} holds format {meta.get('format')} parts of dimensions "
                    f"(hidden={got[0]}, routing={got[1]}), not format {FORMAT_VERSION} of "
                    f"(hidden={self.hidden_dim}, routing={self.routing_dim}); point the cache elsewhere or delete it"
                )
        else:
            meta = {"format": FORMAT_VERSION, "hidden_dim": self.hidden_dim, "routing_dim": self.routing_dim,
                    "fingerprint_of": description}
            tmp = meta_path.with_suffix(f".{uuid.uuid4().hex}.tmp")
            tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str), "utf-8")
            os.replace(tmp, meta_path)
        for path in sorted(self.directory.glob("shard-*.npz")):
            try:
                with np.load(path) as data:
                    keys = data["keys"]
            except Exception as exc:  # a damaged shard only costs its texts being encoded again
                logger.warning("ignoring unreadable parts-cache shard %s: %s", path, exc)
                continue
            self._register(_Shard(path), keys)
        if self._index:
            logger.info("parts cache %s: %d texts cached", self.directory, len(self._index))

    def _register(self, shard: _Shard, keys: np.ndarray) -> None:
        number = len(self._shards)
        self._shards.append(shard)
        for row, key in enumerate(keys):
            self._index.setdefault(bytes(key), (number, row))

    def _write(self, keys: np.ndarray, parts: MoEEParts) -> Path:
        assert self.directory is not None
        name = f"shard-{uuid.uuid4().hex}"
        tmp = self.directory / f"{name}.tmp"
        with open(tmp, "wb") as handle:
            np.savez(handle, keys=keys, hidden=parts.hidden.astype(np.float32),
                     routing=parts.routing.astype(np.float32), num_tokens=parts.num_tokens.astype(np.int64))
            handle.flush()
            os.fsync(handle.fileno())
        final = self.directory / f"{name}.npz"
        os.replace(tmp, final)
        return final

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def add(self, keys: Sequence[bytes], parts: MoEEParts) -> None:
        """Store ``parts`` (row i for ``keys[i]``), as one shard."""
        if len(keys) != len(parts):
            raise ValueError(f"{len(keys)} keys for {len(parts)} rows of parts")
        if parts.hidden.shape[1:] != (self.hidden_dim,) or parts.routing.shape[1:] != (self.routing_dim,):
            raise ValueError(
                f"parts of dimensions (hidden={parts.hidden.shape[1:]}, routing={parts.routing.shape[1:]}) do not fit "
                f"this store's (hidden={self.hidden_dim}, routing={self.routing_dim})"
            )
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), KEY_BYTES)
        if self.directory is None:
            arrays = {"keys": key_array, "hidden": parts.hidden.astype(np.float32),
                      "routing": parts.routing.astype(np.float32), "num_tokens": parts.num_tokens.astype(np.int64)}
            self._register(_Shard(None, arrays), key_array)
        else:
            self._register(_Shard(self._write(key_array, parts)), key_array)

    def get(self, keys: Sequence[bytes]) -> MoEEParts:
        """Parts of ``keys``, row i for ``keys[i]``; every key must be stored."""
        n = len(keys)
        hidden = np.empty((n, self.hidden_dim), dtype=np.float32)
        routing = np.empty((n, self.routing_dim), dtype=np.float32)
        num_tokens = np.empty(n, dtype=np.int64)
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for i, key in enumerate(keys):
            try:
                shard, row = self._index[key]
            except KeyError:
                raise KeyError(f"no cached parts for key {key.hex()} (input {i})") from None
            by_shard.setdefault(shard, []).append((i, row))
        for shard, pairs in by_shard.items():
            arrays = self._arrays(shard)
            out_rows = [i for i, _ in pairs]
            in_rows = [row for _, row in pairs]
            hidden[out_rows] = arrays["hidden"][in_rows]
            routing[out_rows] = arrays["routing"][in_rows]
            num_tokens[out_rows] = arrays["num_tokens"][in_rows]
        return MoEEParts(hidden, routing, num_tokens, list(self.layout))

    def _arrays(self, number: int) -> dict[str, np.ndarray]:
        shard = self._shards[number]
        if shard.arrays is not None:
            return shard.arrays
        if number in self._loaded:
            self._loaded.move_to_end(number)
            return self._loaded[number]
        arrays = shard.load()
        self._loaded[number] = arrays
        while len(self._loaded) > self.max_loaded_shards:
            self._loaded.popitem(last=False)
        return arrays

    def encode(self, embedder: MoEEmbedder, texts: Sequence[str], *, prompt: str | PromptTemplate | None = None,
               show_progress_bar: bool = False) -> MoEEParts:
        """Parts of ``texts`` (row i for text i) under ``prompt`` (default: the embedder's), running the model
        only on texts this store has not seen, once each, and storing them shard by shard."""
        template = embedder.prompt if prompt is None else resolve_prompt(prompt)
        items = list(texts)
        keys = [text_key(template, text) for text in items]
        first: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        missing = [i for key, i in first.items() if key not in self._index]
        self.reused += len(items) - len(missing)
        if missing:
            missing.sort(key=lambda i: -len(items[i]))  # similar lengths share batches: less padding
            from tqdm.auto import tqdm

            with tqdm(total=len(missing), desc="Encoding (parts)", unit="text", disable=not show_progress_bar) as bar:
                for start in range(0, len(missing), self.shard_size):
                    chunk = missing[start : start + self.shard_size]
                    parts = embedder.encode_parts([items[i] for i in chunk], prompt=template, show_progress_bar=False)
                    self.add([keys[i] for i in chunk], parts)
                    self.forwarded += len(chunk)
                    bar.update(len(chunk))
        return self.get(keys)
