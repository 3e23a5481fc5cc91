"""Ray Data adapter: embed corpora that outgrow one machine on a Ray cluster (actor pool, one model per actor).

Needs ``pip install "moee-plugins[ray]"``. Importing this module does not import Ray; the functions that
need it do, through :func:`moee_plugins._extras.require`.

Three levels:

* :class:`MoEEPredictor`: the callable class for ``Dataset.map_batches`` (each actor loads the model once);
  :func:`predictor_kwargs` builds its ``fn_constructor_kwargs`` with calibration statistics computed once.
* :func:`embed_dataset`: any ``ray.data.Dataset`` with a text column -> the same rows plus an ``embedding`` column.
* :func:`embed_files`: a txt/jsonl/csv/parquet corpus (local path or any filesystem Ray reads) -> parquet
  shards with ``id`` and ``vector`` columns, as ``moee embed`` writes (what ``moee embed --engine ray`` runs).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._extras import require
from .core import MoEEmbedder, options
from .core.loading import resolve_reference
from .core.prompts import PRESETS, instruction_template

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    from ray.data import Dataset

__all__ = ["FORMATS", "MoEEPredictor", "embed_dataset", "embed_files", "predictor_kwargs", "read_corpus_dataset"]

logger = logging.getLogger("moee_plugins")

FORMATS = ("txt", "jsonl", "csv", "parquet")
_EMBEDDER_OPTIONS = frozenset(options.OPTIONS) | {"device", "statistics"}


def _ray() -> Any:
    return require("ray", "ray")


def _ray_data() -> Any:
    return require("ray.data", "ray")


# ---------------------------------------------------------------------------------------------- actors
def _build_embedder(model: str | None, config: Mapping[str, Any] | None, embedder_options: Mapping[str, Any],
                    ) -> MoEEmbedder:
    if config is not None:
        return MoEEmbedder.from_config(dict(config), **embedder_options)
    if model is None:
        raise ValueError("MoEEPredictor needs model= ('moee:<alias>', a hub id or a directory) or config=")
    return MoEEmbedder(model, **embedder_options)


def _portable(model: str, embedder_options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``model`` as any process can load it (an alias's target, with the alias's defaults made explicit), since
    custom aliases live in one process's registry only."""
    reference = resolve_reference(model)
    defaults = dict(reference.alias.defaults) if reference.alias is not None else {}
    return reference.path, {**defaults, **embedder_options}


def _column_texts(values: Sequence[Any], column: str) -> list[str]:
    """Strings of a text column; a null becomes "" (as :func:`moee_plugins.core.corpus.read_corpus` reads it)."""
    texts = []
    for i, value in enumerate(values):
        if value is None:
            texts.append("")
        elif isinstance(value, str):
            texts.append(value)
        else:
            raise TypeError(f"column {column!r} must hold strings; row {i} of this batch is "
                            f"{type(value).__name__}: {value!r:.80}")
    return texts


class MoEEPredictor:
    """A callable class for ``ray.data.Dataset.map_batches``: every actor loads the model once, then
    embeds the ``text_column`` of each batch into an ``output_column`` (input rows and columns kept).

    Build its arguments with :func:`predictor_kwargs`: it computes the standardisation statistics once
    and ships them to every actor, so a vector does not depend on which actor computed it.

    Example:
        >>> import ray
        >>> from moee_plugins.ray import MoEEPredictor, predictor_kwargs
        >>> ds = ray.data.read_parquet("s3://bucket/corpus/")                      # doctest: +SKIP
        >>> out = ds.map_batches(
        ...     MoEEPredictor,
        ...     fn_constructor_kwargs=predictor_kwargs("moee:olmoe", text_column="text", num_gpus=1),
        ...     compute=ray.data.ActorPoolStrategy(size=8), num_gpus=1,
        ...     batch_size=256, batch_format="pyarrow")                                 # doctest: +SKIP
        >>> out.write_parquet("s3://bucket/embeddings/")                           # doctest: +SKIP

    Batches may be ``pyarrow.Table`` (the vectors become a ``fixed_size_list<float32>`` column),
    ``pandas.DataFrame`` or ``dict[str, numpy.ndarray]`` (a 2-D float32 array).

    Args:
        model: ``"moee:<alias>"``, a hub id or a directory every node can read (or give ``config``).
        config: an :attr:`MoEEmbedder.config` (statistics included) to rebuild the embedder from.
        text_column: the column holding the texts; a null counts as an empty text.
        output_column: the vector column to add (replaced if present).
        prompt: a prompt for this job only (the core's prompt rule; default: the embedder's).
        **embedder_options: :class:`moee_plugins.MoEEmbedder` arguments (``mode``, ``device``,
            ``statistics``, ...); with ``config`` they override its fields.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        text_column: str = "text",
        output_column: str = "embedding",
        prompt: str | None = None,
        **embedder_options: Any,
    ) -> None:
        self.text_column = text_column
        self.output_column = output_column
        self.prompt = prompt
        self.embedder = _build_embedder(model, config, embedder_options)
        if self.embedder.needs_statistics():
            logger.warning("MoEEPredictor got no standardisation statistics: this actor calibrates on its own; "
                           "build the arguments with moee_plugins.ray.predictor_kwargs() to calibrate once")

    def __call__(self, batch: Any) -> Any:
        """Embed one batch; row i of the output is row i of the input, with its vector appended."""
        import pyarrow as pa

        if isinstance(batch, pa.Table):
            return self._arrow(batch)
        if isinstance(batch, Mapping):
            values = self._column(batch, list(batch))
            out = dict(batch)
            out[self.output_column] = self._encode(values.tolist() if isinstance(values, np.ndarray) else list(values))
            return out
        if hasattr(batch, "columns") and hasattr(batch, "assign"):  # pandas.DataFrame
            values = self._column(batch, list(batch.columns))
            vectors = self._encode(values.tolist())
            return batch.assign(**{self.output_column: list(vectors)})
        raise TypeError(f"MoEEPredictor takes pyarrow, pandas or numpy batches, got {type(batch).__name__}; "
                        "use map_batches(..., batch_format='pyarrow')")

    def _column(self, batch: Any, columns: list[str]) -> Any:
        if self.text_column not in columns:
            raise KeyError(f"the batch has no text column {self.text_column!r}; columns: {columns} "
                           "(set text_column=...)")
        return batch[self.text_column]

    def _encode(self, values: Sequence[Any]) -> np.ndarray:
        texts = _column_texts(values, self.text_column)
        return self.embedder.encode(texts, prompt=self.prompt, show_progress_bar=False)

    def _arrow(self, table: pa.Table) -> pa.Table:
        import pyarrow as pa

        values = self._column(table, table.column_names).to_pylist()
        vectors = np.ascontiguousarray(self._encode(values), dtype=np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()),
                                                   vectors.shape[1])
        if self.output_column in table.column_names:
            table = table.drop_columns([self.output_column])
        return table.append_column(self.output_column, column)


# ---------------------------------------------------------------------------------------------- calibration
def _calibrated_statistics(model: str, embedder_options: Mapping[str, Any],
                           calibration_texts: Sequence[str] | None) -> dict[str, Any]:
    """Load the embedder, fix its statistics (on ``calibration_texts`` or the built-in sentences), return them."""
    embedder = _build_embedder(model, None, embedder_options)
    if calibration_texts is not None:
        embedder.calibrate(list(calibration_texts), show_progress_bar=False)
    else:
        embedder.ensure_statistics("sum")
    return embedder.statistics.to_dict()


def predictor_kwargs(
    model: str | None = None,
    *,
    embedder: MoEEmbedder | None = None,
    text_column: str = "text",
    output_column: str = "embedding",
    prompt: str | None = None,
    calibration_texts: Sequence[str] | None = None,
    calibrate_on: Literal["worker", "driver"] = "worker",
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    **embedder_options: Any,
) -> dict[str, Any]:
    """``fn_constructor_kwargs`` for :class:`MoEEPredictor`, with the standardisation statistics computed once.

    Statistics are fitted on ``calibration_texts`` (default: the built-in calibration sentences), either
    in one Ray task with the actors' resources (``calibrate_on="worker"``, the default: the driver need not
    hold the model, and a GPU cluster calibrates in the dtype its actors use) or in this process
    (``"driver"``). With ``embedder=`` the statistics come from that embedder (calibrated here if needed)
    and ``embedder_options`` override fields of its config; its device is not copied (each actor takes
    CUDA when it has a GPU, with ``dtype="auto"`` bfloat16) unless you pass ``device=``.
    """
    instruction_template(PRESETS["raw"], prompt)  # the core's prompt rule: refuses what it cannot use
    if not isinstance(text_column, str) or not text_column:
        raise ValueError(f"text_column must be a non-empty column name, got {text_column!r}")
    unknown = sorted(set(embedder_options) - _EMBEDDER_OPTIONS)
    if unknown:
        raise TypeError(f"unknown MoEEmbedder options {unknown}; valid: {sorted(_EMBEDDER_OPTIONS)}")
    if calibrate_on not in ("worker", "driver"):
        raise ValueError(f"calibrate_on must be 'worker' or 'driver', got {calibrate_on!r}")
    if isinstance(calibration_texts, str):
        raise TypeError("calibration_texts must be a sequence of texts, not a single string")
    common = {"text_column": text_column, "output_column": output_column, "prompt": prompt}

    if embedder is not None:
        if model is not None:
            raise ValueError("pass model= or embedder=, not both")
        if not isinstance(embedder, MoEEmbedder):
            raise TypeError(f"embedder must be a moee_plugins.MoEEmbedder, got {type(embedder).__name__}")
        if calibration_texts is not None:
            embedder.calibrate(list(calibration_texts), show_progress_bar=False)
        else:
            embedder.ensure_statistics("sum")
        return {**common, "config": embedder.portable_config, **embedder_options}

    if model is None:
        raise ValueError("predictor_kwargs needs model= ('moee:<alias>', a hub id or a directory) or embedder=")
    if not isinstance(model, str):
        raise TypeError(f"model must be a string ('moee:<alias>', a hub id or a directory every node can read), "
                        f"got {type(model).__name__}; wrap a loaded model with embedder=MoEEmbedder(model, tokenizer)")
    model, resolved = _portable(model, embedder_options)
    # hs vectors are never standardised; every other mode needs the same statistics on every actor
    needs_statistics = (resolved.get("standardize", "auto") is not None and resolved.get("statistics") is None
                        and resolved.get("mode", "sum") != "hs")
    if needs_statistics:
        started = time.perf_counter()
        if calibrate_on == "driver":
            statistics = _calibrated_statistics(model, resolved, calibration_texts)
        else:
            ray = _ray()
            task = ray.remote(_calibrated_statistics).options(num_gpus=num_gpus or 0, num_cpus=num_cpus or 1)
            statistics = ray.get(task.remote(model, resolved, calibration_texts))
        logger.info("calibrated standardisation statistics on the %s in %.1f s", calibrate_on,
                    time.perf_counter() - started)
        resolved["statistics"] = statistics
    return {**common, "model": model, **resolved}


# ---------------------------------------------------------------------------------------------- datasets
def _compute(concurrency: int | tuple[int, int]) -> Any:
    ray_data = _ray_data()
    if isinstance(concurrency, bool):
        raise TypeError("concurrency must be a number of actors or a (min, max) pair")
    if isinstance(concurrency, int):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1 actors, got {concurrency}")
        return ray_data.ActorPoolStrategy(size=concurrency)
    if (isinstance(concurrency, tuple) and len(concurrency) == 2 and all(isinstance(c, int) for c in concurrency)
            and 1 <= concurrency[0] <= concurrency[1]):
        return ray_data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    raise ValueError(f"concurrency must be a number of actors or a (min, max) pair with 1 <= min <= max, "
                     f"got {concurrency!r}")


def embed_dataset(
    ds: Dataset,
    *,
    text_column: str = "text",
    model: str | None = None,
    embedder: MoEEmbedder | None = None,
    output_column: str = "embedding",
    prompt: str | None = None,
    concurrency: int | tuple[int, int] = 1,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    batch_size: int = 256,
    forward_batch_size: int | None = None,
    calibration_texts: Sequence[str] | None = None,
    calibrate_on: Literal["worker", "driver"] = "worker",
    **embedder_options: Any,
) -> Dataset:
    """``ds`` with an ``output_column`` of MoEE vectors, computed by an actor pool (lazy, like any Ray Dataset).

    Every input row comes back exactly once with all its columns; Ray Data does not keep row order unless
    ``ds.context.execution_options.preserve_order`` is set, so carry an id column. ``concurrency`` is the
    number of actors (or a ``(min, max)`` autoscaling range), ``num_gpus``/``num_cpus`` what each one holds,
    ``batch_size`` the rows Ray hands an actor per call, which the embedder sorts by length and splits into
    forward passes of at most ``forward_batch_size`` rows (the embedder's ``batch_size``). An actor that dies
    is restarted and its batch retried (Ray Data's actor-pool defaults: ``max_restarts=-1``,
    ``max_task_retries=-1``).

    Example:
        >>> import ray
        >>> from moee_plugins.ray import embed_dataset
        >>> ds = ray.data.read_json("s3://bucket/docs.jsonl", lines=True)           # doctest: +SKIP
        >>> out = embed_dataset(ds, text_column="body", model="moee:olmoe", concurrency=4, num_gpus=1)  # doctest: +SKIP
        >>> out.select_columns(["doc_id", "embedding"]).write_parquet("s3://bucket/vectors/")  # doctest: +SKIP
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    compute = _compute(concurrency)
    if forward_batch_size is not None:
        embedder_options["batch_size"] = forward_batch_size
    columns = ds.columns(fetch_if_missing=False)  # checked here when known, else by each actor
    if columns and text_column not in columns:
        raise ValueError(f"the dataset has no text column {text_column!r}; columns: {columns}")
    kwargs = predictor_kwargs(model, embedder=embedder, text_column=text_column, output_column=output_column,
                              prompt=prompt, calibration_texts=calibration_texts, calibrate_on=calibrate_on,
                              num_gpus=num_gpus, num_cpus=num_cpus, **embedder_options)
    return ds.map_batches(MoEEPredictor, fn_constructor_kwargs=kwargs, compute=compute, batch_size=batch_size,
                          batch_format="pyarrow", num_gpus=num_gpus, num_cpus=num_cpus,
                          udf_modifying_row_count=False)


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

    Rows are read as :func:`moee_plugins.core.corpus.read_corpus` reads them (a txt line per document,
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
        ds = ray_data.read_text(paths, drop_empty_lines=False)
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
    without it Ray writes whichever batch finishes first (rows still carry their ids). ``rows_per_file``
    is a lower bound Ray aims for per shard. Other arguments are those of :func:`read_corpus_dataset`
    and :func:`embed_dataset`; ``progress=False`` hides Ray Data's progress bars.

    Joins the cluster at ``address`` (``"auto"``, ``"ray://head:10001"``; ``None``: the running cluster or a
    new local one, as ``ray.init`` decides) unless Ray is already initialised; a cluster it started it also
    shuts down. Returns a summary: ``rows``, ``dim``, ``files``, ``output_dir``, ``seconds``.

    Example:
        >>> from moee_plugins.ray import embed_files
        >>> embed_files("docs.jsonl", "vectors/", "moee:olmoe", address="auto",
        ...             concurrency=8, num_gpus=1)                                  # doctest: +SKIP
        {'rows': 1000000, 'dim': 3072, 'files': [...], ...}
    """
    ray = _ray()
    ray_data = _ray_data()
    out = os.fspath(output_dir)
    if _is_local(out) and os.path.isdir(out) and any(os.scandir(out)) and not overwrite:
        raise FileExistsError(f"output directory {out} is not empty; choose another or pass overwrite=True")
    if _is_local(out) and os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError(f"output_dir {out} exists and is not a directory")
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
        mode = ray_data.SaveMode.OVERWRITE if overwrite else ray_data.SaveMode.APPEND
        vectors.select_columns(["id", "vector"]).write_parquet(out, min_rows_per_file=rows_per_file, mode=mode)
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
