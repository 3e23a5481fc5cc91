"""Resumable, sharded writing of a large matrix of embeddings (used by ``moee embed``).

Rows are computed shard by shard (shard ``k`` holds rows ``[k * shard_size, (k + 1) * shard_size)``)
and every finished shard is written atomically into a sidecar directory ``OUTPUT.shards/`` next to
the output, with a manifest that fingerprints the input file and the settings that produced the
rows. An interrupted run (Ctrl-C, crash, preemption) loses at most the shard in progress; resuming
checks the fingerprint, skips every finished shard and computes the rest. The final output is
assembled from the shards in row order, so it is the same as that of an uninterrupted run.

Every shard's checksum (SHA-256 of its shape and float32 bytes) is appended to ``checksums.jsonl`` once
the shard is in place. A shard whose bytes no longer match its checksum (flipped bytes, a shard swapped
with another, a file replaced by one of the right shape) is recomputed on resume and refused at assembly;
a non-finite row is never written.

Framework-free: numpy and the standard library (pyarrow only to write parquet).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("moee_plugins")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "moee-embed-shards"
MANIFEST_VERSION = 2
CHECKSUMS = "checksums.jsonl"
OUTPUT_FORMATS = (".npy", ".parquet")
_CHUNK = 1 << 20


class ShardError(ValueError):
    """The shard directory cannot be used as asked (mismatch, foreign directory, bad option)."""


def shard_dir_for(output: str | Path) -> Path:
    """``OUTPUT.shards``: the sidecar directory of an output file."""
    output = Path(output)
    return output.with_name(output.name + ".shards")


def ids_path_for(output: str | Path) -> Path:
    """``OUTPUT.ids.jsonl``: the ids of a ``.npy`` output written with an id field (one JSON value a line)."""
    output = Path(output)
    return output.with_name(output.name + ".ids.jsonl")


def array_checksum(array: np.ndarray) -> str:
    """SHA-256 of a shard's shape and float32 bytes: what the checksums journal records."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    digest = hashlib.sha256(f"{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def output_format(output: str | Path) -> str:
    """``npy`` or ``parquet`` from the output's suffix; anything else is an error naming the choices."""
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ShardError(f"output {output} must end in one of {OUTPUT_FORMATS}, got {suffix or 'no suffix'!r}")
    return suffix[1:]


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Size and SHA-256 of a file's bytes (its content, not its name or date), plus its path for messages."""
    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": digest.hexdigest()}


def _differences(expected: Any, actual: Any, prefix: str = "") -> list[str]:
    """Human-readable ``key: old != new`` lines between two JSON-like values."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        lines = []
        for key in sorted(set(expected) | set(actual), key=str):
            lines += _differences(expected.get(key), actual.get(key), f"{prefix}{key}.")
        return lines
    if expected != actual:
        return [f"{prefix.rstrip('.')}: {_short(expected)} (interrupted run) != {_short(actual)} (now)"]
    return []


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _normalise(value: Any) -> Any:
    """A JSON round trip, so a fresh dict compares equal to the one read back from the manifest."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


class ShardedOutput:
    """The shard directory of one output: its manifest, finished shards and final assembly.

    Example:
        >>> out = ShardedOutput.create("vectors.npy", num_rows=10, shard_size=4, dim=3,
        ...                            fingerprint={"input": {}, "settings": {}})   # doctest: +SKIP
        >>> for shard in out.pending():                                          # doctest: +SKIP
        ...     out.write(shard, np.zeros((shard.rows, 3), np.float32))
        >>> out.finish()                                                         # doctest: +SKIP
    """

    def __init__(self, output: str | Path, manifest: dict[str, Any]) -> None:
        self.output = Path(output)
        self.directory = shard_dir_for(self.output)
        self.manifest = manifest
        self.num_rows = int(manifest["num_rows"])
        self.shard_size = int(manifest["shard_size"])
        self.dim = int(manifest["dim"])
        self.format = output_format(self.output)
        self.checksums = self._read_checksums()

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, output: str | Path, *, num_rows: int, shard_size: int, dim: int,
               fingerprint: dict[str, Any], extra: dict[str, Any] | None = None) -> ShardedOutput:
        """Start a new run: an empty shard directory and its manifest. The directory must not exist."""
        if num_rows < 1:
            raise ShardError(f"nothing to write: {num_rows} rows")
        if shard_size < 1:
            raise ShardError(f"shard size must be a positive integer, got {shard_size}")
        output_format(output)
        directory = shard_dir_for(output)
        if directory.exists():
            raise ShardError(f"{directory} already exists")
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "num_rows": int(num_rows),
            "shard_size": int(shard_size),
            "dim": int(dim),
            "fingerprint": _normalise(fingerprint),
            **_normalise(extra or {}),
        }
        directory.mkdir(parents=True)
        _atomic_write_bytes(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
        return cls(output, manifest)

    @classmethod
    def open(cls, output: str | Path) -> ShardedOutput:
        """The unfinished run of ``output``; a directory without our manifest is never touched."""
        directory = shard_dir_for(output)
        manifest_path = directory / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text("utf-8"))
        except FileNotFoundError:
            raise ShardError(f"{directory} has no {MANIFEST}: it was not written by moee embed; "
                             "move or delete it yourself") from None
        except json.JSONDecodeError as exc:
            raise ShardError(f"{manifest_path} is corrupt ({exc}); delete {directory} to start over") from exc
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ShardError(f"{manifest_path} is not a {MANIFEST_FORMAT} manifest")
        if manifest.get("version") != MANIFEST_VERSION:
            raise ShardError(f"{manifest_path} is a version-{manifest.get('version')} manifest (shards without "
                             f"checksums); this version writes version {MANIFEST_VERSION}: start over with --overwrite")
        return cls(output, manifest)

    @staticmethod
    def check_removable(output: str | Path) -> None:
        """Raise unless the shard directory of ``output`` is absent or ours (it has our manifest)."""
        directory = shard_dir_for(output)
        if directory.exists() and not (directory / MANIFEST).is_file():
            raise ShardError(f"{directory} has no {MANIFEST}: it was not written by moee embed; "
                             "refusing to delete it")

    @staticmethod
    def remove(output: str | Path) -> None:
        """Delete the shard directory of ``output`` (only if it is ours)."""
        ShardedOutput.check_removable(output)
        directory = shard_dir_for(output)
        if directory.exists():
            shutil.rmtree(directory)

    def check(self, fingerprint: dict[str, Any], *, num_rows: int | None = None) -> None:
        """Refuse to resume with another input or other settings than the run that wrote the shards.

        Only the top-level keys of ``fingerprint`` are compared, so the input can be checked before
        a model is loaded and the settings after.
        """
        recorded = {key: self.manifest["fingerprint"].get(key) for key in fingerprint}
        problems = _differences(recorded, _normalise(fingerprint))
        if num_rows is not None and num_rows != self.num_rows:
            problems.append(f"rows: {self.num_rows} (interrupted run) != {num_rows} (now)")
        if problems:
            raise ShardError(
                f"cannot resume into {self.directory}: it was written for another input or other settings:\n  "
                + "\n  ".join(problems)
                + "\nrerun with the original input and options, or pass --overwrite to start over"
            )

    # ------------------------------------------------------------------ shards
    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.shard_size)

    def shards(self) -> list[Shard]:
        return [Shard(k, k * self.shard_size, min((k + 1) * self.shard_size, self.num_rows))
                for k in range(self.num_shards)]

    def path(self, shard: Shard) -> Path:
        return self.directory / f"shard-{shard.index:06d}.npy"

    def _read_checksums(self) -> dict[int, str]:
        """Shard index -> checksum; a later line wins (a recomputed shard), a torn last line is ignored."""
        checksums: dict[int, str] = {}
        try:
            lines = (self.directory / CHECKSUMS).read_text("utf-8").splitlines()
        except FileNotFoundError:
            return checksums
        for line in lines:
            try:
                entry = json.loads(line)
                checksums[int(entry["shard"])] = str(entry["sha256"])
            except (ValueError, KeyError, TypeError):
                continue
        return checksums

    def problem(self, shard: Shard, *, verify: bool = True) -> str | None:
        """Why a shard cannot be used (absent, unreadable, wrong shape, and with ``verify`` not matching its
        checksum or non-finite); ``None`` when it is fine."""
        path = self.path(shard)
        if not path.is_file():
            return "missing"
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            return f"unreadable ({exc})"
        if array.shape != (shard.rows, self.dim) or array.dtype != np.float32:
            return f"holds {array.shape} {array.dtype}, expected ({shard.rows}, {self.dim}) float32"
        if not verify:
            return None
        recorded = self.checksums.get(shard.index)
        if recorded is None:
            return "has no recorded checksum (written but not recorded)"
        if array_checksum(array) != recorded:
            return "does not match its recorded checksum (damaged, edited or swapped with another shard)"
        if not np.isfinite(array).all():  # cannot come from write(); checked anyway before anything is assembled
            return "holds non-finite values"
        return None

    def is_done(self, shard: Shard) -> bool:
        """A shard counts as finished only if its file holds exactly its rows and matches its checksum."""
        problem = self.problem(shard)
        if problem is not None and problem != "missing":
            logger.warning("shard %s %s; it will be recomputed", self.path(shard).name, problem)
        return problem is None

    def pending(self) -> list[Shard]:
        """Shards still to compute, in row order (leftovers of an interrupted write are cleared)."""
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink()
        return [shard for shard in self.shards() if not self.is_done(shard)]

    def write(self, shard: Shard, vectors: np.ndarray) -> None:
        """Store one finished shard atomically (a crash leaves either the whole shard or nothing), then its
        checksum. A shard with a non-finite value is refused: it is never written."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (shard.rows, self.dim):
            raise ValueError(f"shard {shard.index} must be ({shard.rows}, {self.dim}), got {vectors.shape}")
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if bad.size:
            rows = (bad[:10] + shard.start).tolist()
            raise ShardError(f"documents {rows}{' ...' if bad.size > 10 else ''} got non-finite vectors; nothing "
                             f"was written for shard {shard.index} (check the statistics and the dtype)")
        path = self.path(shard)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as handle:
            np.save(handle, vectors)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        checksum = array_checksum(vectors)
        with (self.directory / CHECKSUMS).open("a", encoding="utf-8") as journal:
            journal.write(json.dumps({"shard": shard.index, "rows": shard.rows, "sha256": checksum}) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
        self.checksums[shard.index] = checksum

    def iter_arrays(self) -> Iterator[tuple[Shard, np.ndarray]]:
        """Every shard in row order, each verified against its checksum (a mismatch is a ShardError)."""
        for shard in self.shards():
            problem = self.problem(shard)
            if problem is not None:
                raise ShardError(f"cannot assemble {self.output}: shard {shard.index} {problem}; "
                                 "run again with --resume to recompute it")
            yield shard, np.load(self.path(shard), mmap_mode="r")

    # ------------------------------------------------------------------ assembly
    def finish(self, ids: Iterable[int | str] | None = None) -> Path:
        """Assemble the output from every shard in row order (each verified), then delete the shard directory.

        ``ids``: the documents' ids in row order (all ``int`` or all ``str``), written as the parquet ``id``
        column, or for ``.npy`` into ``OUTPUT.ids.jsonl``; default: row positions.
        """
        self._write_all(ids)
        shutil.rmtree(self.directory)
        return self.output

    def _write_all(self, ids: Iterable[int | str] | None) -> None:
        missing = [shard.index for shard in self.shards() if self.problem(shard, verify=False) is not None]
        if missing:
            raise ShardError(f"cannot assemble {self.output}: shards {missing[:10]} are not finished")
        tmp = self.output.with_name(self.output.name + ".partial")
        id_iter = iter(ids) if ids is not None else None
        try:
            if self.format == "npy":
                self._write_npy(tmp)
                sidecar = ids_path_for(self.output)
                if id_iter is not None:
                    self._write_ids(sidecar, id_iter)
                elif sidecar.exists():
                    sidecar.unlink()  # a previous run's ids no longer describe this output
            else:
                self._write_parquet(tmp, id_iter)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.output)

    def _shard_ids(self, ids: Iterator[int | str], shard: Shard) -> list[int | str]:
        chunk = list(itertools.islice(ids, shard.rows))
        if len(chunk) != shard.rows:
            raise ShardError(f"the input has fewer ids than the {self.num_rows} rows of {self.output}")
        return chunk

    def _write_ids(self, path: Path, ids: Iterator[int | str]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            for shard in self.shards():
                handle.writelines(json.dumps(key, ensure_ascii=False) + "\n" for key in self._shard_ids(ids, shard))
        os.replace(tmp, path)

    def _write_npy(self, path: Path) -> None:
        matrix = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(self.num_rows, self.dim))
        for shard, array in self.iter_arrays():
            matrix[shard.start : shard.stop] = array
        matrix.flush()
        del matrix

    def _write_parquet(self, path: Path, ids: Iterator[int | str] | None = None) -> None:
        from .._extras import require

        pa = require("pyarrow", "cli", feature="writing parquet")
        pq = require("pyarrow.parquet", "cli", feature="writing parquet")
        writer = None
        try:
            for shard, array in self.iter_arrays():
                vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(array).reshape(-1)), self.dim)
                if ids is None:
                    keys = pa.array(np.arange(shard.start, shard.stop, dtype=np.int64))
                else:
                    chunk = self._shard_ids(ids, shard)
                    keys = pa.array(chunk, type=pa.string() if chunk and isinstance(chunk[0], str) else pa.int64())
                if writer is None:
                    schema = pa.schema([("id", keys.type), ("vector", pa.list_(pa.float32(), self.dim))])
                    writer = pq.ParquetWriter(str(path), schema)
                writer.write_table(pa.Table.from_arrays([keys, vectors], schema=writer.schema))
        finally:
            if writer is not None:
                writer.close()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_vectors(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of a ``moee embed`` output (.npy: ids from ``OUTPUT.ids.jsonl`` if present, else row numbers)."""
    path = Path(path)
    if output_format(path) == "npy":
        vectors = np.load(path)
        sidecar = ids_path_for(path)
        if sidecar.is_file():
            with sidecar.open(encoding="utf-8") as handle:
                return np.asarray([json.loads(line) for line in handle]), vectors
        return np.arange(len(vectors), dtype=np.int64), vectors
    from .._extras import require

    pq = require("pyarrow.parquet", "cli", feature="reading parquet")
    table = pq.read_table(str(path))
    column = table.column("vector").combine_chunks()
    width = column.type.list_size
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float32, copy=False)
    return table.column("id").to_numpy(zero_copy_only=False), vectors
