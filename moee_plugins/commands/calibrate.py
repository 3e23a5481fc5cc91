"""``moee calibrate``: compute the standardisation statistics once, ahead of time, into a JSON file that
``moee embed --statistics FILE`` reuses (no calibration pass at the start of every run). With ``--dimensions``
the file also carries the compact-vector reduction (a PCA of ``--mode`` vectors fitted on the same texts) that
``moee embed --dimensions D`` applies.

The file records the settings the statistics depend on (model, prompt, routing, layers, dtype, max length, ...);
``moee embed`` refuses a file fitted with other settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._common import UsageError, corpus_problem
from ._options import add_model_options, add_text_options, parse_sizes

FORMAT_VERSION = 1


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` sub-command."""
    from ..core import MODES

    parser = subparsers.add_parser(
        "calibrate",
        help="compute standardisation statistics once, for `moee embed --statistics FILE`",
        description="Fit MoEE's standardisation statistics (per-dimension mean and std of the hidden state and the "
        "routing weights) on the built-in calibration sentences or on your own texts, and save them to OUTPUT.json.",
    )
    parser.add_argument("-o", "--output", required=True, help="the statistics file to write (.json)")
    add_model_options(parser, mode=False)
    parser.add_argument("--texts", default=None, metavar="FILE",
                        help="calibrate on this corpus (.txt, .jsonl, .csv, .parquet) instead of the built-in sentences")
    add_text_options(parser)
    parser.add_argument("--dimensions", default=None, metavar="D[,D...]",
                        help="also fit compact vectors of these sizes (a PCA on the same texts), e.g. 256,512, for "
                        "`moee embed --dimensions D`")
    parser.add_argument("--mode", choices=MODES, default="sum",
                        help="the vectors a --dimensions reduction is fitted on; use the same with `moee embed` "
                        "(default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``moee calibrate``: 0 on success, 2 on a bad input or option."""
    from . import embed

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise UsageError(f"{output} exists: pass --overwrite to replace it")
    if output.is_dir():
        raise UsageError(f"{output} is a directory; give a file name such as statistics.json")
    dimensions = parse_sizes(args.dimensions, "--dimensions") if args.dimensions is not None else None
    texts = _read(args) if args.texts is not None else None
    embed.check_output_writable(output)
    if dimensions is None:
        args.mode = "sum"  # statistics do not depend on the mode; "sum" is one that needs them
    embedder = embed.build_embedder(args)
    if texts is None and dimensions is None:
        embed.announce_calibration(embedder, "calibrate", args.quiet)
    else:
        from ..core.standardize import calibration_sentences

        try:
            embedder.calibrate(list(calibration_sentences()) if texts is None else texts, dimensions=dimensions,
                               show_progress_bar=not args.quiet)
        except ValueError as exc:  # e.g. fewer than two texts, or fewer texts than dimensions
            raise UsageError(f"cannot calibrate on {args.texts or 'the built-in sentences'}: {exc}") from exc
    document = {"format": embed.STATISTICS_FORMAT, "version": FORMAT_VERSION,
                "settings": embed.raw_part_settings(embedder), "statistics": embedder.config["statistics"]}
    if dimensions is not None:
        document["reduction"] = embedder.config["reduction"]
    tmp = output.with_name(output.name + ".partial")
    tmp.write_text(json.dumps(document), encoding="utf-8")
    tmp.replace(output)
    statistics = embedder.config["statistics"]
    compact = f" and a {args.mode} reduction to {', '.join(map(str, dimensions))} dimensions" if dimensions else ""
    sys.stdout.write(f"wrote statistics{compact} of {statistics['num_texts']} texts ({statistics['source']}) to "
                     f"{output}\n")
    return 0


def _read(args: argparse.Namespace) -> list[str]:
    from ..io import CorpusError, read_corpus

    path = Path(args.texts)
    try:
        return read_corpus(path, text_field=args.text_field, text_column=args.text_column)
    except CorpusError as exc:
        raise corpus_problem(exc, path.suffix.lower()) from exc
