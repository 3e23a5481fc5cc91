"""The Ray *file job*: a txt/jsonl/csv/parquet corpus (a local path or any filesystem Ray reads) -> parquet
shards with ``id`` and ``vector`` columns, as ``moee embed`` writes them (what ``moee embed --engine ray`` runs).

Needs ``pip install "moee-plugins[ray]"``; Ray is imported only when a function runs. The per-batch work is
the Ray adapter's (:func:`moee_plugins.ray.embed_dataset`); this module reads and writes files around it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._extras import require
from ..ray import embed_dataset

if TYPE_CHECKING:  # pragma: no cover
    from ray.data import Dataset

    from ..core import MoEEmbedder

__all__ = ["FORMATS", "embed_files", "read_corpus_dataset"]

logger = logging.getLogger("moee_plugins")

FORMATS = ("txt", "jsonl", "csv", "parquet")


def _ray() -> Any:
    return require("ray", "ray")


def _ray_data() -> Any:
    return require("ray.data", "ray")


def _format_of(path: str, input_format: str | None) -> str:
    if input_format is not None:
        fmt = input_format.lower().lstrip(".")
        if fmt not in FORMATS:
            raise ValueError(f"input_format must be one of {FORMATS}, got {input_format!r}")
        return fmt
    suffix = Path(path.rstrip("/")).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(f"cannot tell the format of {path!r} from its name; use one of {FORMATS} "
                         "as its extension or pass input_format=")
    return suffix


def _txt_rows(row: dict[str, Any]) -> list[dict[str, str]]:
    """One file's bytes -> a row per document, as :func:`moee_plugins.io.corpus.iter_records` reads a .txt."""
    from ..io.corpus import split_txt

    return [{"text": text} for text in split_txt(row["bytes"], row.get("path", "<text>"))]


def _is_local(path: str) -> bool:
    return "://" not in path


def read_corpus_dataset(
    input_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    text_field: str = "text",
    text_column: str | None = None,
    id_field: str | None = None,
    input_format: str | None = None,
) -> Dataset:
    """A corpus read with Ray's own readers, as a dataset with columns ``id`` and ``text``.

    Rows are read as :func:`moee_plugins.io.corpus.read_corpus` reads them (a txt line per document,
    empty lines kept). ``id`` is the value of ``id_field`` when given, else the row's position in the input
    (files in the order Ray lists them), so output row ids match single-process ``moee embed``.
    Paths may be files, directories (then give ``input_format``) or any URI Ray reads (``s3://``, ``gs://``).
    """
    ray = _ray()
    ray_data = _ray_data()
    paths = [os.fspath(p) for p in ([input_path] if isinstance(input_path, (str, os.PathLike)) else input_path)]
    if not paths:
        raise ValueError("no input path given")
    formats = {_format_of(p, input_format) for p in paths}
    if len(formats) > 1:
        raise ValueError(f"the inputs mix formats {sorted(formats)}; embed one format at a time")
    fmt = formats.pop()
    for path in paths:
        if _is_local(path) and not os.path.exists(path):
            raise FileNotFoundError(f"no such corpus file or directory: {path}")
    column = text_column or text_field
    if fmt == "txt":
        if column != "text":
            raise ValueError("a txt corpus has one document a line: there is no text field to choose")
        # Ray's read_text splits on every Unicode line break (a lone "\r" too): split by our rule instead
        ds = ray_data.read_binary_files(paths, include_paths=True, file_extensions=None).flat_map(_txt_rows)
    elif fmt == "jsonl":
        ds = ray_data.read_json(paths, lines=True, file_extensions=None)
    elif fmt == "csv":
        import pyarrow as pa
        from pyarrow import csv

        types = {column: pa.string(), **({id_field: pa.string()} if id_field else {})}
        ds = ray_data.read_csv(paths, convert_options=csv.ConvertOptions(column_types=types), file_extensions=None)
    else:
        ds = ray_data.read_parquet(paths, file_extensions=None)
    # blocks in file order, so a row's position is its id
    ds.context.execution_options.preserve_order = True
    columns = ds.columns()
    for name, flag in ((column, "text_column" if fmt in ("csv", "parquet") else "text_field"), (id_field, "id_field")):
        if name is not None and name not in columns:
            raise ValueError(f"{paths[0]}: no column {name!r}; columns: {columns} (set {flag}=...)")
    keep = [column] + ([id_field] if id_field and id_field != column else [])
    blocks = ds.select_columns(keep).to_arrow_refs()

    def add_ids(table: Any, start: int, text: str, ids: str | None) -> Any:  # runs in a worker; pickled by value
        import pyarrow as pa

        id_column = table.column(ids) if ids else pa.array(range(start, start + table.num_rows), type=pa.int64())
        return pa.table({"id": id_column, "text": table.column(text)})

    counts = ray.get([ray.remote(lambda t: t.num_rows).options(num_cpus=0.1).remote(ref) for ref in blocks])
    if sum(counts) == 0:
        raise ValueError(f"{paths[0]}: the corpus has no rows")
    starts = [0, *itertools.accumulate(counts)][:-1]
    task = ray.remote(add_ids).options(num_cpus=0.1)
    refs = [task.remote(ref, start, column, id_field) for ref, start in zip(blocks, starts, strict=True)]
    return ray_data.from_arrow_refs(refs)


def _name_shards_in_row_order(files: list[Path], rows_per_file: int | None) -> None:
    """Make file-name order input order. Ray names its write tasks' files in no guaranteed order and, when it
    buffers blocks into one file, may write them out of order: shards already in order are only renamed by
    rank; otherwise the new shards are rewritten sorted by row position (logged: it reads them all once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = {path: pq.read_table(path, columns=["id"]).column("id").to_numpy() for path in files}
    ordered = sorted((p for p in files if len(ids[p])), key=lambda p: int(ids[p][0]))
    flat = np.concatenate([ids[p] for p in ordered]) if ordered else np.zeros(0, dtype=np.int64)
    if flat.size < 2 or bool(np.all(np.diff(flat) > 0)):
        for rank, path in enumerate(ordered):
            path.rename(path.with_name(f"{rank:06d}_{path.name}"))
        return
    logger.info("Ray wrote %d rows out of input order; rewriting %d shard(s) sorted by row position", flat.size, len(files))
    table = pa.concat_tables([pq.read_table(p) for p in files]).sort_by("id")
    step = rows_per_file or len(table)
    for rank, start in enumerate(range(0, len(table), step)):
        pq.write_table(table.slice(start, step), files[0].with_name(f"{rank:06d}_rows.parquet"))
    for path in files:
        path.unlink()


def _check_output_dir(out: str, inputs: list[str], overwrite: bool) -> None:
    """Refuse an output folder that is or holds an input, is a file, or (with ``overwrite``) was not written by moee."""
    from ..io.ownership import describe_contents, is_ours, lock_path_for, refuse_overlap

    refuse_overlap([out, lock_path_for(out)], inputs)
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError(f"output_dir {out} exists and is not a directory")
    if os.path.isdir(out) and any(os.scandir(out)):
        if not overwrite:
            raise FileExistsError(f"output directory {out} is not empty; choose another or pass overwrite=True")
        if not is_ours(out):
            raise FileExistsError(f"output directory {out} was not written by moee (it has no marker file) and holds "
                                  f"{describe_contents(out)}; refusing to replace it: choose another output directory "
                                  "or empty it yourself")


@contextlib.contextmanager
def _staged_output(out: str, overwrite: bool) -> Iterator[Path]:
    """A fresh folder beside ``out``, marked as moee's, that replaces ``out`` when the block succeeds (removed
    when it fails). ``out`` itself is replaced only when empty or, with ``overwrite``, marked as moee's."""
    from ..io.ownership import OutputLock, is_ours, mark_ours

    target = Path(out)
    with OutputLock(target):  # one job per output folder at a time
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
        try:
            mark_ours(staging, "embed-ray")
            yield staging
        except BaseException:
            shutil.rmtree(staging)  # ours: made above
            raise
        if target.is_dir() and any(target.iterdir()):
            if not (overwrite and is_ours(target)):  # someone wrote there while the job ran
                raise FileExistsError(f"output directory {out} changed during the job and was left alone; the "
                                      f"vectors are in {staging}")
            old = target.with_name(f".{target.name}.{os.getpid()}.old")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old)  # ours: it has our marker
        else:
            if target.is_dir():
                target.rmdir()
            os.replace(staging, target)


def embed_files(
    input_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    model: str | None = None,
    *,
    embedder: MoEEmbedder | None = None,
    text_field: str = "text",
    text_column: str | None = None,
    id_field: str | None = None,
    input_format: str | None = None,
    address: str | None = None,
    concurrency: int | tuple[int, int] = 1,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    batch_size: int = 256,
    forward_batch_size: int | None = None,
    rows_per_file: int | None = 100_000,
    preserve_order: bool = True,
    overwrite: bool = False,
    calibration_texts: Sequence[str] | None = None,
    calibrate_on: Literal["worker", "driver"] = "worker",
    prompt: str | None = None,
    progress: bool = True,
    ray_init_kwargs: Mapping[str, Any] | None = None,
    **embedder_options: Any,
) -> dict[str, Any]:
    """Embed a corpus on a Ray cluster and write parquet shards with columns ``id`` (int64 row position, or
    the ``id_field`` values) and ``vector`` (``fixed_size_list<float32>[dim]``) under ``output_dir``: the
    schema of single-process ``moee embed -o OUT.parquet``, so ``pyarrow.parquet.read_table(output_dir)``
    gives the same table.

    With ``preserve_order`` (default) the shards, read in file-name order, hold the rows in input order;
    without it Ray writes whichever batch finishes first (rows still carry their ids). A local ``output_dir``
    is written as a new folder marked as moee's (``.moee-output.json``) and swapped in when complete; an
    existing non-empty one is replaced only with ``overwrite`` and only when moee wrote it, never when it is
    or holds an input. ``rows_per_file``
    is a lower bound Ray aims for per shard. Other arguments are those of :func:`read_corpus_dataset`
    and :func:`embed_dataset`; ``progress=False`` hides Ray Data's progress bars.

    Joins the cluster at ``address`` (``"auto"``, ``"ray://head:10001"``; ``None``: the running cluster or a
    new local one, as ``ray.init`` decides) unless Ray is already initialised; a cluster it started it also
    shuts down. Returns a summary: ``rows``, ``dim``, ``files``, ``output_dir``, ``seconds``.

    Example:
        >>> from moee_plugins.jobs.ray_files import embed_files
        >>> embed_files("docs.jsonl", "vectors/", "moee:olmoe", address="auto",
        ...             concurrency=8, num_gpus=1)                                  # doctest: +SKIP
        {'rows': 1000000, 'dim': 3072, 'files': [...], ...}
    """
    ray = _ray()
    ray_data = _ray_data()
    out = os.fspath(output_dir)
    inputs = [os.fspath(p) for p in ([input_path] if isinstance(input_path, (str, os.PathLike)) else input_path)]
    if _is_local(out):
        _check_output_dir(out, [p for p in inputs if _is_local(p)], overwrite)
    elif overwrite:  # Ray's overwrite mode deletes whatever the prefix holds: never handed a user's folder
        raise ValueError(f"overwrite=True needs a local output_dir (moee replaces only a folder it wrote); empty {out} "
                         "yourself or choose a new output_dir")
    if rows_per_file is not None and (isinstance(rows_per_file, bool) or not isinstance(rows_per_file, int)
                                      or rows_per_file < 1):
        raise ValueError(f"rows_per_file must be None or a positive integer, got {rows_per_file!r}")
    for path in [input_path] if isinstance(input_path, (str, os.PathLike)) else input_path:
        _format_of(os.fspath(path), input_format)  # fail on a bad format before starting a cluster

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, **dict(ray_init_kwargs or {}))
    elif address is not None or ray_init_kwargs:
        logger.warning("Ray is already initialised; ignoring address=%r and ray_init_kwargs", address)
    context = ray_data.DataContext.get_current()
    bars = context.enable_progress_bars
    context.enable_progress_bars = bars and progress
    try:
        started = time.perf_counter()
        ds = read_corpus_dataset(input_path, text_field=text_field, text_column=text_column, id_field=id_field,
                                 input_format=input_format)
        rows = ds.count()  # known from the block metadata
        ds.context.execution_options.preserve_order = preserve_order  # this job's context, not the global one
        vectors = embed_dataset(ds, text_column="text", model=model, embedder=embedder, output_column="vector",
                                prompt=prompt, concurrency=concurrency, num_gpus=num_gpus, num_cpus=num_cpus,
                                batch_size=batch_size, forward_batch_size=forward_batch_size,
                                calibration_texts=calibration_texts, calibrate_on=calibrate_on, **embedder_options)
        if _is_local(out):  # into a new folder of ours, swapped in once complete: no one else's file is touched
            with _staged_output(out, overwrite) as staging:
                vectors.select_columns(["id", "vector"]).write_parquet(str(staging), min_rows_per_file=rows_per_file,
                                                                       mode=ray_data.SaveMode.APPEND)
                if preserve_order and id_field is None:
                    _name_shards_in_row_order(sorted(staging.glob("*.parquet")), rows_per_file)
        else:
            vectors.select_columns(["id", "vector"]).write_parquet(out, min_rows_per_file=rows_per_file,
                                                                   mode=ray_data.SaveMode.APPEND)
        seconds = time.perf_counter() - started
        files = sorted(str(p) for p in Path(out).glob("*.parquet")) if _is_local(out) else []
        dim = None
        if files:
            import pyarrow.parquet as pq

            dim = pq.read_schema(files[0]).field("vector").type.list_size
        logger.info("embedded %d rows in %.1f s (%.1f rows/s) into %s", rows, seconds, rows / max(seconds, 1e-9), out)
        return {"rows": rows, "dim": dim, "files": files, "output_dir": out, "seconds": seconds}
    finally:
        context.enable_progress_bars = bars
        if started_here:
            ray.shutdown()
