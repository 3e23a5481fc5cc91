"""``moee embed``: embed a corpus file into a ``.npy`` matrix or a ``.parquet`` table, resumably.

Row ``i`` of the output is input document ``i``. Documents are embedded shard by shard (``--shard-size``
documents each); every finished shard is saved into ``OUTPUT.shards/`` at once, so an interrupted run
(Ctrl-C, crash, preemption) continues with ``--resume`` where it stopped: finished shards are never
recomputed, no row is lost or duplicated, and the output is the same as that of an uninterrupted run.
Inside a shard the core sorts documents by length and batches them under a row cap and a token budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._options import add_model_options, embedder_kwargs

DEFAULT_SHARD_SIZE = 1024


class EmbedError(Exception):
    """A problem with the user's input or options, reported without a traceback."""


def register(subparsers: Any) -> None:
    """Add the ``embed`` sub-command."""
    parser = subparsers.add_parser(
        "embed",
        help="embed a corpus into a .npy matrix or a .parquet table (resumable)",
        description="Embed every document of INPUT with MoEE. Row i of OUTPUT is document i. Shards are saved "
        "as they are computed into OUTPUT.shards/, so an interrupted run continues with --resume.",
    )
    parser.add_argument("input",
                        help="corpus: .txt (one document a line), .jsonl (--text-field), .csv/.parquet (--text-column)")
    parser.add_argument("-o", "--output", required=True,
                        help="OUTPUT.npy (float32, one row per document) or OUTPUT.parquet (columns id, vector)")
    add_model_options(parser)
    parser.add_argument("--text-field", default="text", help="jsonl field holding the text (default: %(default)s)")
    parser.add_argument("--text-column", default=None, help="csv/parquet column holding the text (default: --text-field)")
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
    ray_options.add_argument("--id-field", default=None,
                             help="field/column whose values become the ids (default: row position)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``moee embed``: 0 on success, 2 on a bad input or option, 130 when interrupted."""
    from ..sharded import ShardError

    try:
        return _run(args)
    except (EmbedError, ShardError) as exc:
        sys.stderr.write(f"moee embed: error: {exc}\n")
        return 2


# ---------------------------------------------------------------------- pieces (also used by tests)
def build_embedder(args: argparse.Namespace) -> Any:
    """The embedder the options describe (loads the model)."""
    from ..core import MoEEmbedder

    try:
        return MoEEmbedder(args.model, **embedder_kwargs(args))
    except (OSError, ValueError, TypeError, ImportError) as exc:  # unknown model/alias, bad prompt or dtype
        raise EmbedError(f"cannot load model {args.model!r}: {exc}") from exc


def settings_fingerprint(embedder: Any) -> dict[str, Any]:
    """Everything that determines the vectors: the embedder's config with its dtype resolved.

    Batch size and token budget only regroup the same computation, so a resumed run may change them
    (e.g. after running out of memory); the statistics are stored separately and reused as they are.
    """
    config = dict(embedder.config)
    for key in ("statistics", "batch_size", "max_tokens_per_batch"):
        config.pop(key, None)
    config["dtype"] = str(embedder.dtype).removeprefix("torch.")
    config["dim"] = int(embedder.dim)
    return config


def input_fingerprint(args: argparse.Namespace) -> dict[str, Any]:
    """The input's content (size and SHA-256, not its name or date) and how documents are read from it."""
    from ..sharded import file_fingerprint

    suffix = args.input.suffix.lower()
    field = None if suffix == ".txt" else args.text_field if suffix == ".jsonl" else args.text_column or args.text_field
    fingerprint = file_fingerprint(args.input)
    fingerprint.pop("path")
    return {**fingerprint, "field": field}


def _validate(args: argparse.Namespace) -> None:
    from ..sharded import output_format

    output_format(args.output)
    for name in ("batch_size", "max_length", "max_tokens_per_batch", "shard_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise EmbedError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.resume and args.overwrite:
        raise EmbedError("--resume and --overwrite contradict each other: choose one")
    if args.output.exists() and args.output.is_dir():
        raise EmbedError(f"output {args.output} is a directory; give a file name ending in .npy or .parquet")


def _read(args: argparse.Namespace) -> list[str]:
    from ..core.corpus import read_corpus

    try:
        texts = read_corpus(args.input, text_field=args.text_field, text_column=args.text_column)
    except (OSError, ValueError, TypeError) as exc:  # missing file, unknown format, missing field/column
        raise EmbedError(str(exc)) from exc
    if not texts:
        raise EmbedError(f"{args.input} holds no documents")
    return texts


def _ensure_statistics(embedder: Any) -> None:
    """Fix the standardisation statistics before the first shard, so the manifest can record them."""
    embedder.ensure_statistics()


def _load_quietly(args: argparse.Namespace) -> Any:
    """``build_embedder`` without transformers' checkpoint-loading bar."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return build_embedder(args)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")


# ---------------------------------------------------------------------- the command
def _run_on_ray(args: argparse.Namespace) -> int:
    """The same job on a Ray cluster (see moee_plugins.ray): parquet shards with the columns id, vector."""
    if args.resume or args.shard_size is not None:
        raise EmbedError("--resume and --shard-size apply to --engine local only")
    from ..ray import embed_files

    try:
        options = embedder_kwargs(args)
        summary = embed_files(
            str(args.input), str(args.output), args.model, text_field=args.text_field, text_column=args.text_column,
            id_field=args.id_field, address=args.address, concurrency=args.actors, num_gpus=args.num_gpus,
            num_cpus=args.num_cpus, batch_size=args.ray_batch_size, forward_batch_size=options.pop("batch_size"),
            overwrite=args.overwrite, progress=not args.quiet, **options,
        )
    except (OSError, ValueError, TypeError, ImportError) as exc:
        raise EmbedError(str(exc)) from exc
    sys.stdout.write(f"wrote {summary['rows']} x {summary['dim']} float32 vectors to {summary['output_dir']} "
                     f"({len(summary['files'])} parquet shards)\n")
    return 0


def _run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..sharded import ShardedOutput, shard_dir_for

    if args.engine == "ray":  # paths stay strings: Ray reads object-store URIs (s3://...) too
        return _run_on_ray(args)
    args.input, args.output = Path(args.input), Path(args.output)
    _validate(args)
    shard_dir = shard_dir_for(args.output)
    resuming = args.resume and shard_dir.exists()
    if args.overwrite:
        ShardedOutput.check_removable(args.output)  # before anything slow; removed only once the model loads
    elif not resuming:
        if shard_dir.exists():
            raise EmbedError(f"{shard_dir} holds an unfinished run: pass --resume to continue it, "
                             "or --overwrite to start over")
        if args.output.exists():
            if args.resume:
                _say(f"moee embed: {args.output} is complete and there is no unfinished run to resume; nothing to do "
                     "(pass --overwrite to recompute it)")
                return 0
            raise EmbedError(f"{args.output} exists: pass --overwrite to replace it")

    texts = _read(args)
    source = input_fingerprint(args)
    sharded = ShardedOutput.open(args.output) if resuming else None
    if sharded is not None:  # check the input before spending time on loading a model
        sharded.check({"input": source}, num_rows=len(texts))
        if args.shard_size is not None and args.shard_size != sharded.shard_size:
            raise EmbedError(f"--shard-size {args.shard_size} differs from the interrupted run's "
                             f"{sharded.shard_size}; leave it out to resume")

    embedder = _load_quietly(args) if args.quiet else build_embedder(args)
    settings = settings_fingerprint(embedder)
    if sharded is not None:
        sharded.check({"settings": settings})
        if sharded.manifest.get("statistics") is not None:
            embedder.set_statistics(sharded.manifest["statistics"])  # the very statistics of the finished shards
    else:
        if args.overwrite:
            ShardedOutput.remove(args.output)
        _ensure_statistics(embedder)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        sharded = ShardedOutput.create(
            args.output, num_rows=len(texts), shard_size=args.shard_size or DEFAULT_SHARD_SIZE, dim=embedder.dim,
            fingerprint={"input": source, "settings": settings},
            extra={"input_path": str(args.input.resolve()), "statistics": embedder.config["statistics"]},
        )

    pending = sharded.pending()
    done_before = sharded.num_rows - sum(shard.rows for shard in pending)
    if done_before:
        _say(f"moee embed: resuming: {sharded.num_shards - len(pending)} of {sharded.num_shards} shards "
             f"({done_before} documents) already done")
    documents = tokens = 0
    started = time.perf_counter()
    try:
        with tqdm(total=sharded.num_rows, initial=done_before, desc="Embedding", unit="doc",
                  disable=args.quiet) as progress:
            for shard in pending:
                # the bar advances batch by batch inside the core; tqdm itself shows documents/s
                parts = embedder.encode_parts(texts[shard.start : shard.stop], progress=progress)
                sharded.write(shard, embedder.combine(parts))
                documents += shard.rows
                tokens += int(np.sum(parts.num_tokens))
                elapsed = max(time.perf_counter() - started, 1e-9)
                progress.set_postfix(tokens_per_s=f"{tokens / elapsed:.0f}")
    except KeyboardInterrupt:
        remaining = len(sharded.pending())
        _say(f"\nmoee embed: interrupted; {sharded.num_shards - remaining} of {sharded.num_shards} shards are saved "
             f"in {shard_dir}. Run the same command with --resume to finish.")
        return 130
    sharded.finish()
    elapsed = max(time.perf_counter() - started, 1e-9)
    sys.stdout.write(f"wrote {sharded.num_rows} x {sharded.dim} float32 vectors to {args.output} "
                     f"({documents} computed now: {documents / elapsed:.1f} documents/s, {tokens / elapsed:.0f} "
                     "tokens/s)\n")
    return 0
