"""``moee eval``: MTEB in every MoEE mode from one forward pass per text; writes results/ and summary.md."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import re
import sys
from pathlib import Path

from ._options import add_model_options, embedder_kwargs

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Evaluate a MoE LLM as a training-free embedding model on MTEB, in several MoEE modes at once.
Each unique text runs through the model once; HS, RW, concat and sum are derived from its cached raw parts
(cached on disk, so rerunning an interrupted command resumes it). Writes MTEB's result files, summary.md
(the paper's table layout, with the published figures beside ours for the models the paper evaluated),
summary.json and alphas.json to the output folder. MTEB tasks are downloaded when first used; in-memory
tasks registered by a --task-module run offline.
"""

EXAMPLES = """\
examples:
  moee eval --model moee:olmoe --benchmark moee-paper --alpha auto -o results/
  moee eval --model moee:qwen-moe --tasks STSBenchmark,SciDocsRR --modes hs,sum -o results/
  moee eval --model ./my-moe --task-module my_tasks --tasks MyTask -o results/
  moee eval --model moee:olmoe --benchmark moee-paper --hidden-layers -1,-4,-8 -o results/
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate on MTEB in every mode from one forward pass per text",
        description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(parser, model_required=True, mode=False)
    # "--hidden-layers -1,-4,-8": a comma list of negative numbers is a value, not an option (argparse's own
    # rule accepts only a single negative number)
    parser._negative_number_matcher = re.compile(r"^-\d+(,\s*-?\d+)*$|^-\d*\.\d+$")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--tasks", help="comma-separated task names (registered in-process, else MTEB's)")
    which.add_argument("--benchmark", choices=["moee-paper"], help="the paper's 19 MTEB tasks")
    parser.add_argument("--task-module", action="append", default=[], metavar="MODULE",
                        help="import MODULE (dotted name or .py file) first, e.g. one that registers "
                             "in-memory tasks; repeatable")
    parser.add_argument("--hidden-layers", default=None, metavar="K,K,...",
                        help="evaluate several hidden layers (e.g. -1,-4,-8) from one forward pass per text, side by "
                        "side (each layer's results in <output>/layer<k>/)")
    parser.add_argument("--modes", default="hs,rw,concat,sum", help="comma-separated: hs, rw, concat, sum")
    parser.add_argument("--alpha", default="1.0",
                        help="weight of cos(RW) in sum mode, or 'auto' to choose it per task without labels")
    parser.add_argument("-o", "--output", default="results", help="output folder (default: results)")
    parser.add_argument("--cache-dir", default=None, help="parts cache (default: <output>/parts-cache)")
    parser.add_argument("--overwrite", action="store_true", help="re-run tasks whose results exist")
    parser.add_argument("--keep-going", action="store_true", help="record a failing task and go on")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=_main)


def _import_task_module(name: str) -> None:
    """Import a module by dotted name (the working directory counts, as with ``python -m``) or from a .py file."""
    if name.endswith(".py") or os.sep in name:
        if not os.path.isfile(name):
            raise ImportError(f"no task module file {name!r}")
        spec = importlib.util.spec_from_file_location(Path(name).stem, name)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    importlib.import_module(name)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _what(args: argparse.Namespace) -> str:
    return f"benchmark {args.benchmark}" if args.benchmark else f"task(s) {args.tasks}"


def _main(args: argparse.Namespace) -> int:
    from ..evaluation import parse_alpha, parse_hidden_layers, parse_modes, run, run_layers

    try:
        for module in args.task_module:
            _import_task_module(module)
        parse_modes(args.modes)
        parse_alpha(args.alpha)
        if args.hidden_layers is not None:
            parse_hidden_layers(args.hidden_layers)
        kwargs = embedder_kwargs(args)
        kwargs.pop("prompt")  # run() takes the prompt itself
    except (ImportError, ValueError) as exc:
        sys.stderr.write(f"moee eval: error: {exc}\n")
        return 2
    if args.no_progress:
        try:
            from datasets.utils.logging import disable_progress_bar
        except ImportError:  # run() below names the missing extra
            pass
        else:
            disable_progress_bar()
    package_logger = logging.getLogger("moee_plugins")
    if not logging.getLogger().handlers and not package_logger.handlers:  # called from Python, not through `moee`
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if package_logger.getEffectiveLevel() > logging.INFO:  # per-task progress lines (`moee` restores the level)
        package_logger.setLevel(logging.INFO)
    try:
        common = {"tasks": args.tasks, "benchmark": args.benchmark, "modes": args.modes, "prompt": args.prompt,
                  "alpha": args.alpha, "output_dir": args.output, "cache_dir": args.cache_dir,
                  "overwrite": args.overwrite, "raise_error": not args.keep_going,
                  "show_progress": not args.no_progress, "embedder_kwargs": kwargs}
        if args.hidden_layers is not None:
            report = run_layers(args.model, hidden_layers=args.hidden_layers, **common)
        else:
            report = run(args.model, **common)
    except (KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        sys.stderr.write(f"moee eval: error: {message}\n")
        return 2
    except ConnectionError as exc:  # datasets: "Couldn't reach 'mteb/...' on the Hub"
        sys.stderr.write(f"moee eval: error: cannot download the MTEB data of {_what(args)}: {_first_line(exc)}; "
                         "run once where the Hugging Face Hub is reachable (the data is cached), or evaluate "
                         "in-memory tasks registered by a --task-module\n")
        return 2
    except OSError as exc:  # the model: an unknown path or hub id, or the Hub unreachable
        sys.stderr.write(f"moee eval: error: cannot load model {args.model!r}: {_first_line(exc)}\n")
        return 2
    sys.stdout.write(report.to_markdown())
    sys.stdout.write(f"\nwrote {report.summary_path}\n")
    return 1 if any(task.errors for task in report.tasks) else 0
