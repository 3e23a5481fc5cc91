"""Ray Data adapter: embed corpora that outgrow one machine on a Ray cluster (actor pool, one model per actor).

Needs ``pip install "moee-plugins[ray]"``. Importing this module does not import Ray; the functions that
need it do, through :func:`moee_plugins._extras.require`.

Two levels (the file job, a corpus file -> parquet shards, is :func:`moee_plugins.io.ray_files.embed_files`):

* :class:`MoEEPredictor`: the callable class for ``Dataset.map_batches`` (each actor loads the model once);
  :func:`predictor_kwargs` builds its ``fn_constructor_kwargs`` with calibration statistics computed once.
* :func:`embed_dataset`: any ``ray.data.Dataset`` with a text column -> the same rows plus an ``embedding`` column.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._extras import require
from .core import MoEEmbedder, check_texts, options
from .core.prompts import PRESETS, instruction_template

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    from ray.data import Dataset

__all__ = ["MoEEPredictor", "embed_dataset", "predictor_kwargs"]

logger = logging.getLogger("moee_plugins")

_EMBEDDER_OPTIONS = frozenset(options.OPTIONS) | {"device", "statistics"}


def _ray() -> Any:
    return require("ray", "ray")


def _ray_data() -> Any:
    return require("ray.data", "ray")


# ---------------------------------------------------------------------------------------------- actors
def _build_embedder(model: str | None, config: Mapping[str, Any] | None, embedder_options: Mapping[str, Any],
                    ) -> MoEEmbedder:
    if config is not None:
        caller_kwargs = {"model_kwargs": config.get("model_kwargs")}  # the caller's own config: not a file's
        return MoEEmbedder.from_config(dict(config), **{**caller_kwargs, **embedder_options})
    if model is None:
        raise ValueError("MoEEPredictor needs model= ('moee:<alias>', a hub id or a directory) or config=")
    return MoEEmbedder(model, **embedder_options)


def _column_texts(values: Sequence[Any], column: str) -> list[str]:
    """Strings of a text column, by the core's one input rule (a null is refused, as the corpus readers do)."""
    return check_texts(list(values), item=f"column {column!r}: row {{i}} of this batch")[0]


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
    return _build_embedder(model, None, embedder_options).fix_statistics(calibration_texts).to_dict()


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
        embedder.fix_statistics(calibration_texts)
        return {**common, "config": embedder.portable_config, **embedder_options}

    if model is None:
        raise ValueError("predictor_kwargs needs model= ('moee:<alias>', a hub id or a directory) or embedder=")
    if not isinstance(model, str):
        raise TypeError(f"model must be a string ('moee:<alias>', a hub id or a directory every node can read), "
                        f"got {type(model).__name__}; wrap a loaded model with embedder=MoEEmbedder(model, tokenizer)")
    model, resolved = MoEEmbedder.portable_options(model, embedder_options)
    if options.needs_statistics(resolved):  # every actor must standardise with the same statistics
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
