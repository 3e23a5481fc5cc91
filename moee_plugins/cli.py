"""The ``moee`` command line.

Each sub-command lives in ``moee_plugins/commands/<name>.py`` and exposes
``register(subparsers) -> None``, which adds its parser and sets ``func`` to a callable taking the
parsed arguments and returning an exit code. Modules listed in ``COMMANDS`` come first in ``moee --help``;
any other public module of ``moee_plugins.commands`` with a ``register`` function follows, by name.

Errors: a problem with the user's input or options is one line, ``moee <command>: error: <what>``, and exit
code 2; anything else is one line and exit code 1. ``--debug`` (or ``-v``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence
from typing import Any

from .aliases import list_aliases

# sub-command modules under moee_plugins.commands, in the order `moee --help` lists them
COMMANDS = ("embed", "topics", "eval", "serve", "demo")

logger = logging.getLogger("moee_plugins")


def _models(args: argparse.Namespace) -> int:
    rows = [(f"moee:{a.name}", a.model_id, a.description) for a in list_aliases()]
    width = max(len(r[0]) for r in rows)
    id_width = max(len(r[1]) for r in rows)
    for name, model_id, description in rows:
        sys.stdout.write(f"{name:<{width}}  {model_id:<{id_width}}  {description}\n")
    return 0


def _command_modules() -> list[str]:
    """``COMMANDS`` first, then every other ``moee_plugins.commands.<name>`` (not starting with ``_``), by name."""
    from . import commands

    found = sorted(info.name for info in pkgutil.iter_modules(commands.__path__) if not info.name.startswith("_"))
    return list(COMMANDS) + [name for name in found if name not in COMMANDS]


def _add_debug_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--debug`` / ``-v``: before or after the sub-command's name."""
    default: Any = False if top else argparse.SUPPRESS
    for flags, help_text in ((("--debug",), "show the full traceback of an error, and debug logging"),
                             (("-v", "--verbose"), "show the full traceback of an error, and info logging")):
        with contextlib.suppress(argparse.ArgumentError):  # the sub-command defines the flag itself
            parser.add_argument(*flags, dest=flags[-1].lstrip("-"), action="store_true", default=default,
                                help=help_text)


def build_parser() -> argparse.ArgumentParser:
    from .core.version import __version__

    parser = argparse.ArgumentParser(prog="moee", description="MoE LLMs as training-free embedding models.")
    parser.add_argument("--version", action="version", version=f"moee-plugins {__version__}")
    _add_debug_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="list the moee:<alias> model names")
    models.set_defaults(func=_models)
    for name in _command_modules():
        try:
            module = importlib.import_module(f"moee_plugins.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"moee_plugins.commands.{name}":
                raise
            continue
        if callable(getattr(module, "register", None)):
            module.register(sub)
    for subparser in sub.choices.values():
        _add_debug_options(subparser, top=False)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (tests swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _one_line(exc: BaseException) -> tuple[str, int] | None:
    """(prefix, exit code) of an error written to be read (shown whole); None for any other."""
    from .commands._common import CommandError
    from .io import CorpusError, ShardError

    if isinstance(exc, CommandError):
        return exc.prefix, exc.exit_code
    return ("error: ", 2) if isinstance(exc, (CorpusError, ShardError)) else None  # the readers' user errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    verbose = debug or bool(getattr(args, "verbose", False))
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("moee: %(message)s" if not debug else "%(levelname)s %(name)s: %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    quiet = bool(getattr(args, "quiet", False) or getattr(args, "no_progress", False))
    logger.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    try:
        from .commands._common import quiet_libraries

        with quiet_libraries(quiet):  # -q also hides transformers', the Hub's and every other library's bars
            return int(args.func(args))
    except KeyboardInterrupt:
        sys.stderr.write(f"\nmoee {args.command}: interrupted\n")
        return 130
    except Exception as exc:
        if verbose:
            raise
        shown = _one_line(exc)
        if shown is not None:
            sys.stderr.write(f"moee {args.command}: {shown[0]}{exc}\n")
            return shown[1]
        lines = str(exc).strip().splitlines()
        sys.stderr.write(f"moee {args.command}: error: {type(exc).__name__}: {lines[0] if lines else ''} "
                         "(run again with --debug for the full traceback)\n")
        return 1
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
