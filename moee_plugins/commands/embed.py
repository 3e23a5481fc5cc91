"""``moee embed``: embed a corpus file into a ``.npy`` matrix or a ``.parquet`` table, resumably.

Row ``i`` of the output is input document ``i``. The input is streamed: documents are read shard by shard
(``--shard-size`` documents each), so memory does not grow with the corpus. Every finished shard is saved
into ``OUTPUT.shards/`` at once with its checksum, so an interrupted run (Ctrl-C, SIGTERM, crash,
preemption) continues with ``--resume`` where it stopped: finished shards are never recomputed, no row is
lost or duplicated, and the output is the same as that of an uninterrupted run. ``--resume`` refuses when
the input, an option that changes the vectors, the model's or tokenizer's files or the statistics differ.
Inside a shard the core sorts documents by length and batches them under a row cap and a token budget.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._common import UsageError, corpus_problem, quiet_libraries
from ._options import add_model_options, add_text_options, check_positive, embedder_kwargs, load_embedder

DEFAULT_SHARD_SIZE = 1024
STATISTICS_FORMAT = "moee-statistics"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so a run stops where Ctrl-C would."""


def register(subparsers: Any) -> None:
    """Add the ``embed`` sub-command."""
    parser = subparsers.add_parser(
        "embed",
        help="embed a corpus into a .npy matrix or a .parquet table (resumable)",
        description="Embed every document of INPUT with MoEE. Row i of OUTPUT is document i. Shards are saved "
        "as they are computed into OUTPUT.shards/, so an interrupted run continues with --resume.",
    )
    parser.add_argument("-o", "--output", required=True,
                        help="OUTPUT.npy (float32, one row per document) or OUTPUT.parquet (columns id, vector)")
    add_model_options(parser)
    add_text_options(parser, corpus_input=str)
    parser.add_argument("--id-field", default=None,
                        help="jsonl field / csv or parquet column whose values become the ids: the parquet id column, "
                        "or OUTPUT.ids.jsonl beside a .npy (default: the row position); ids must be unique")
    parser.add_argument("--allow-duplicate-ids", action="store_true",
                        help="accept an --id-field whose values repeat (default: refused, naming the first duplicate)")
    parser.add_argument("--statistics", default=None, metavar="FILE",
                        help="standardisation statistics saved by `moee calibrate` (default: calibrate on the built-in "
                        "sentences before the first shard)")
    parser.add_argument("--dimensions", type=int, default=None, metavar="D",
                        help="compact vectors of D dimensions: the PCA that `moee calibrate --dimensions` saved in the "
                        "--statistics file (default: full vectors)")
    parser.add_argument("--shard-size", type=int, default=None,
                        help=f"documents per saved shard (default: {DEFAULT_SHARD_SIZE}; on --resume, the interrupted "
                        "run's)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run into OUTPUT (same input and options); starts afresh if there "
                        "is none")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUTPUT and discard an unfinished run's shards")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process (resumable); ray: a Ray cluster, OUTPUT is a directory of parquet "
                        "shards (default: %(default)s)")
    ray_options = parser.add_argument_group("--engine ray")
    ray_options.add_argument("--address", default=None,
                             help="Ray cluster address ('auto', 'ray://head:10001'); default: a running local cluster "
                             "or a new one")
    ray_options.add_argument("--actors", type=int, default=1, help="model replicas (Ray actors) (default: %(default)s)")
    ray_options.add_argument("--num-gpus", type=float, default=None, help="GPUs per actor, e.g. 1 or 0.5")
    ray_options.add_argument("--num-cpus", type=float, default=None, help="CPUs per actor")
    ray_options.add_argument("--ray-batch-size", type=int, default=256,
                             help="documents Ray hands an actor per call (default: %(default)s)")
    parser.set_defaults(func=run)


# ---------------------------------------------------------------------- pieces (also used by tests)
def build_embedder(args: argparse.Namespace) -> Any:
    """The embedder the options describe (loads the model with the core's one builder); tests replace it."""
    return load_embedder(args)


def run_identity(embedder: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings, model files) a run's vectors depend on: the core's one identity
    (:func:`moee_plugins.core.persistence.identity`: options of kind parts and vectors, model, dtype, shapes, file
    contents) with the package version. Batching is not in it (it regroups the same computation, so a resumed
    run may change it, e.g. after running out of memory). The files, the statistics and the compact-vector request
    are recorded on their own, so a refusal names what changed."""
    from ..core.persistence import identity
    from ..core.version import __version__

    settings = identity(embedder, "vectors", fitted=False)
    files = settings.pop("files")
    settings["moee_plugins_version"] = __version__
    return settings, files


def input_fingerprint(args: argparse.Namespace) -> dict[str, Any]:
    """The input's content (size and SHA-256, not its name or date) and how documents are read from it."""
    from ..io import file_fingerprint
    from ..io.corpus import field_for

    fingerprint = file_fingerprint(args.input)
    fingerprint.pop("path")
    return {**fingerprint, "field": field_for(args.input, args.text_field, args.text_column)}


def _validate(args: argparse.Namespace) -> None:
    from ..io import output_format

    output_format(args.output)
    check_positive(args, "batch_size", "max_length", "max_tokens_per_batch", "shard_size", "dimensions")
    if args.dimensions is not None and args.statistics is None and not args.resume:
        raise UsageError("--dimensions needs the --statistics file `moee calibrate --dimensions` wrote (the fitted "
                         "reduction is saved there, beside the statistics)")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: choose one")
    try:
        args.output.exists()
    except OSError as exc:  # e.g. a file name too long for the file system
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}; choose another --output") from None
    if args.output.exists() and args.output.is_dir():
        raise UsageError(f"output {args.output} is a directory; give a file name ending in .npy or .parquet")


def check_output_writable(output: Path) -> None:
    """Fail now, before a model loads, if nothing can be written where ``output`` and its shards go."""
    from ..io import shard_dir_for

    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output's folder {parent}: {exc.strerror or exc}; "
                         "choose another --output") from None
    # a probe named like the longest file the run creates next to the output, removed at once
    probe = parent / (shard_dir_for(output).name + ".partial")
    try:
        with probe.open("xb"):
            pass
    except FileExistsError:
        return
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}; choose another --output") from None
    probe.unlink()


def _count(args: argparse.Namespace) -> tuple[int, str | None]:
    """Documents in the input (and the id kind), reading every record once before the model loads."""
    from ..io import CorpusError, count_records

    try:
        count, id_kind = count_records(args.input, text_field=args.text_field, text_column=args.text_column,
                                       id_field=args.id_field, unique_ids=not args.allow_duplicate_ids)
    except CorpusError as exc:
        problem = corpus_problem(exc, args.input.suffix.lower(), args.id_field)
        if exc.kind == "duplicate":
            problem = UsageError(f"{problem} (pass --allow-duplicate-ids to keep them)")
        raise problem from exc
    if count == 0:
        raise UsageError(f"{args.input} holds no documents")
    return count, id_kind


def _records(args: argparse.Namespace, *, ids: bool = False) -> Iterator[Any]:
    from ..io import CorpusError, iter_records

    try:
        yield from iter_records(args.input, text_field=args.text_field, text_column=args.text_column,
                                id_field=args.id_field if ids else None)
    except CorpusError as exc:  # the input changed since it was counted
        raise corpus_problem(exc, args.input.suffix.lower(), args.id_field) from exc


def read_statistics_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """(statistics, the settings they were fitted with, the compact-vector reduction), the last two where recorded,
    from a ``moee calibrate`` file, or from a bare statistics JSON (``moee_statistics.json``, a config's
    ``"statistics"``, whose ``"reduction"`` comes along)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no such statistics file: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read statistics from {path}: {exc}") from None
    if isinstance(data, dict) and data.get("format") == STATISTICS_FORMAT:
        return data["statistics"], data.get("settings"), data.get("reduction")
    reduction = None
    if isinstance(data, dict) and isinstance(data.get("statistics"), dict):
        data, reduction = data["statistics"], data.get("reduction")  # an embedder config
    if not (isinstance(data, dict) and "hidden" in data and "routing" in data):
        raise UsageError(f"{path} holds no standardisation statistics (write one with `moee calibrate`)")
    return data, None, reduction


def raw_part_settings(embedder: Any) -> dict[str, Any]:
    """The settings standardisation statistics depend on: the core's identity of the raw parts, by content (the
    same files under another name, an alias or a copy, are the same model; a hub id not in the local cache is
    identified by its name)."""
    from ..core.persistence import content_identity, identity

    raw = content_identity(identity(embedder, "parts"))
    raw.pop("tokenizer", None)  # a separate tokenizer is identified by its files
    raw["model_files"] = raw.pop("files")
    return raw


def _apply_statistics_file(embedder: Any, path: str) -> dict[str, Any]:
    statistics, settings, reduction = read_statistics_file(path)
    if settings is not None:
        from ..io.shards import _differences, _normalise

        problems = _differences(_normalise(settings), _normalise(raw_part_settings(embedder)))
        if problems:
            lines = "; ".join(p.replace("(interrupted run)", "(statistics file)") for p in problems)
            raise UsageError(f"the statistics in {path} were fitted with other settings: {lines}; "
                             "run `moee calibrate` with this run's options")
    try:
        embedder.set_statistics(statistics)
        embedder.set_reduction(reduction)
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"cannot use the statistics in {path}: {exc}") from exc
    return embedder.config["statistics"]


def _check_model_files(sharded: Any, model_files: dict[str, Any]) -> None:
    """Refuse to resume when the model's files changed, even at the same path: the finished shards were computed
    with the old weights or tokenizer."""
    from ..io import ShardError

    try:
        sharded.check({"model_files": model_files})
    except ShardError as exc:
        raise UsageError(f"the model's files changed since the interrupted run (other weights or another tokenizer "
                         f"at the same path), so its finished shards no longer match this model: {exc}") from None


def _check_dimensions(embedder: Any, args: argparse.Namespace) -> dict[str, Any] | None:
    """The compact-vector request of this run, checked against the embedder's reduction (None: full vectors)."""
    from ..io.fingerprint import reduction_digest

    if args.dimensions is None:
        return None
    try:
        embedder.check_dimensions(args.dimensions)
    except (TypeError, ValueError) as exc:
        where = f"the statistics file {args.statistics}" if args.statistics else "the interrupted run"
        raise UsageError(f"--dimensions {args.dimensions}: {exc} (reduction from {where}; fit one with "
                         f"`moee calibrate --dimensions {args.dimensions}`)") from exc
    return {"dimensions": args.dimensions, "reduction": reduction_digest(embedder.config.get("reduction"))}


def announce_calibration(embedder: Any, command: str, quiet: bool) -> None:
    """Fix the standardisation statistics now (not inside the first shard), saying so once."""
    from ..core.standardize import calibration_sentences

    if not embedder.needs_statistics():
        return
    if not quiet:
        _say(f"moee {command}: calibrating the standardisation statistics on the {len(calibration_sentences())} "
             "built-in sentences (once; `moee calibrate` saves them for --statistics)")
    embedder.ensure_statistics()


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")


@contextlib.contextmanager
def _sigterm_stops_the_run() -> Iterator[None]:
    """SIGTERM (a scheduler, ``kill``, a pre-empted machine) stops the run as Ctrl-C does, with the resume hint."""
    def stop(signum: int, frame: Any) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------- the command
def _run_on_ray(args: argparse.Namespace) -> int:
    """The same job on a Ray cluster (see moee_plugins.jobs.ray_files): parquet shards with the columns id, vector."""
    if args.resume or args.shard_size is not None or args.statistics is not None or args.dimensions is not None:
        raise UsageError("--resume, --shard-size, --statistics and --dimensions apply to --engine local only")
    if args.id_field and "://" not in args.input and Path(args.input).is_file():
        _count(argparse.Namespace(**{**vars(args), "input": Path(args.input)}))  # duplicate ids, before Ray starts
    from ..jobs.ray_files import embed_files

    try:
        options = embedder_kwargs(args)
        summary = embed_files(
            str(args.input), str(args.output), args.model, text_field=args.text_field, text_column=args.text_column,
            id_field=args.id_field, address=args.address, concurrency=args.actors, num_gpus=args.num_gpus,
            num_cpus=args.num_cpus, batch_size=args.ray_batch_size, forward_batch_size=options.pop("batch_size"),
            overwrite=args.overwrite, progress=not args.quiet, **options,
        )
    except (OSError, ValueError, TypeError, ImportError) as exc:
        raise UsageError(str(exc)) from exc
    sys.stdout.write(f"wrote {summary['rows']} x {summary['dim']} float32 vectors to {summary['output_dir']} "
                     f"({len(summary['files'])} parquet shards)\n")
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``moee embed``: 0 on success, 2 on a bad input or option, 130/143 when interrupted."""
    if args.engine == "ray":  # paths stay strings: Ray reads object-store URIs (s3://...) too
        return _run_on_ray(args)
    args.input, args.output = Path(args.input), Path(args.output)
    _validate(args)
    from ..io import ids_path_for, shard_dir_for
    from ..io.ownership import claimed

    also = [shard_dir_for(args.output), ids_path_for(args.output), args.output.with_name(args.output.name + ".partial")]
    check_output_writable(args.output)
    with claimed(args.output, inputs=[args.input, args.statistics], also_written=also):  # one run per output
        return _run_local(args)


def _run_local(args: argparse.Namespace) -> int:
    from ..io import ShardedOutput, shard_dir_for
    from ..io.fingerprint import statistics_digest

    shard_dir = shard_dir_for(args.output)
    resuming = args.resume and shard_dir.exists()
    if args.overwrite:
        ShardedOutput.check_removable(args.output)  # before anything slow; removed only once the model loads
    elif not resuming:
        if shard_dir.exists():
            raise UsageError(f"{shard_dir} holds an unfinished run: pass --resume to continue it, "
                             "or --overwrite to start over")
        if args.output.exists():
            if args.resume:
                _say(f"moee embed: {args.output} is complete and there is no unfinished run to resume; nothing to do "
                     "(pass --overwrite to recompute it)")
                return 0
            raise UsageError(f"{args.output} exists: pass --overwrite to replace it")

    num_rows, _ = _count(args)
    source = input_fingerprint(args)
    sharded = ShardedOutput.open(args.output) if resuming else None
    if sharded is not None:  # check the input before spending time on loading a model
        sharded.check({"input": source}, num_rows=num_rows)
        if args.shard_size is not None and args.shard_size != sharded.shard_size:
            raise UsageError(f"--shard-size {args.shard_size} differs from the interrupted run's "
                             f"{sharded.shard_size}; leave it out to resume")
    else:
        check_output_writable(args.output)
    if args.statistics is not None:
        read_statistics_file(args.statistics)  # a bad file is reported before the model loads

    with quiet_libraries(args.quiet):
        embedder = build_embedder(args)
    settings, model_files = run_identity(embedder)
    if sharded is not None:
        sharded.check({"settings": settings})
        _check_model_files(sharded, model_files)
        recorded = sharded.manifest.get("statistics")
        sharded.check({"statistics": statistics_digest(recorded)})  # the manifest's statistics were not edited
        if args.statistics is not None:
            given = _apply_statistics_file(embedder, args.statistics)
            sharded.check({"statistics": statistics_digest(given)})
        elif recorded is not None:
            embedder.set_statistics(recorded)  # the very statistics of the finished shards
            embedder.set_reduction(sharded.manifest.get("reduction"))  # and its reduction, if it had one
        sharded.check({"compact": _check_dimensions(embedder, args)})
    else:
        if args.overwrite:
            ShardedOutput.remove(args.output)
        if args.statistics is not None:
            _apply_statistics_file(embedder, args.statistics)
        announce_calibration(embedder, "embed", args.quiet)
        compact = _check_dimensions(embedder, args)
        statistics = embedder.config["statistics"]
        sharded = ShardedOutput.create(
            args.output, num_rows=num_rows, shard_size=args.shard_size or DEFAULT_SHARD_SIZE,
            dim=embedder.dim if args.dimensions is None else args.dimensions,
            fingerprint={"input": source, "settings": settings, "model_files": model_files,
                         "statistics": statistics_digest(statistics), "compact": compact},
            extra={"input_path": str(args.input.resolve()), "statistics": statistics,
                   "reduction": embedder.config.get("reduction") if compact else None},
        )

    pending = sharded.pending()
    done_before = sharded.num_rows - sum(shard.rows for shard in pending)
    if done_before:
        _say(f"moee embed: resuming: {sharded.num_shards - len(pending)} of {sharded.num_shards} shards "
             f"({done_before} documents) already done")
    counters = {"documents": 0, "tokens": 0}
    started = time.perf_counter()
    try:
        with _sigterm_stops_the_run():
            _compute(args, embedder, sharded, pending, done_before, counters, started)
            damaged = sharded.pending()  # every shard re-verified against its checksum before assembly
            if damaged:
                _say(f"moee embed: {len(damaged)} shard(s) changed on disk during the run; recomputing them")
                _compute(args, embedder, sharded, damaged, sharded.num_rows - sum(s.rows for s in damaged), counters,
                         started)
    except (KeyboardInterrupt, Terminated) as exc:
        remaining = len(sharded.pending())
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        _say(f"\nmoee embed: {what}; {sharded.num_shards - remaining} of {sharded.num_shards} shards are saved "
             f"in {shard_dir}. Run the same command with --resume to finish.")
        return 143 if isinstance(exc, Terminated) else 130
    ids = (record.id for record in _records(args, ids=True)) if args.id_field else None
    sharded.finish(ids)
    elapsed = max(time.perf_counter() - started, 1e-9)
    documents, tokens = counters["documents"], counters["tokens"]
    sys.stdout.write(f"wrote {sharded.num_rows} x {sharded.dim} float32 vectors to {args.output} "
                     f"({documents} computed now: {documents / elapsed:.1f} documents/s, {tokens / elapsed:.0f} "
                     "tokens/s)\n")
    return 0


def _compute(args: argparse.Namespace, embedder: Any, sharded: Any, pending: list[Any], done_before: int,
             counters: dict[str, int], started: float) -> None:
    """Embed the ``pending`` shards, reading the input as a stream: only one shard's texts are held at a time."""
    from tqdm.auto import tqdm

    todo = {shard.index for shard in pending}
    records = _records(args)
    with tqdm(total=sharded.num_rows, initial=done_before, desc="Embedding", unit="doc",
              disable=args.quiet) as progress:
        for shard in sharded.shards():
            chunk = list(itertools.islice(records, shard.rows))
            if len(chunk) != shard.rows:
                raise UsageError(f"{args.input} changed while it was read: it has fewer than {sharded.num_rows} "
                                 "documents now")
            if shard.index not in todo:
                continue
            # the bar advances batch by batch inside the core; tqdm itself shows documents/s
            parts = embedder.encode_parts([record.text for record in chunk], progress=progress)
            sharded.write(shard, embedder.combine(parts, dimensions=args.dimensions))
            counters["documents"] += shard.rows
            counters["tokens"] += int(np.sum(parts.num_tokens))
            elapsed = max(time.perf_counter() - started, 1e-9)
            progress.set_postfix(tokens_per_s=f"{counters['tokens'] / elapsed:.0f}")
            todo.discard(shard.index)
            if not todo:
                break
