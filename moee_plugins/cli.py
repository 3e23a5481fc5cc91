"""The ``moee`` command line.

Each sub-command lives in ``moee_plugins/commands/<name>.py`` and exposes
``register(subparsers) -> None``, which adds its parser and sets ``func`` to a callable taking the
parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .aliases import list_aliases

# sub-command modules under moee_plugins.commands, in the order `moee --help` lists them
COMMANDS = ("embed", "topics", "eval", "demo")


def _models(args: argparse.Namespace) -> int:
    rows = [(f"moee:{a.name}", a.model_id, a.description) for a in list_aliases()]
    width = max(len(r[0]) for r in rows)
    id_width = max(len(r[1]) for r in rows)
    for name, model_id, description in rows:
        sys.stdout.write(f"{name:<{width}}  {model_id:<{id_width}}  {description}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moee", description="MoE LLMs as training-free embedding models.")
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="list the moee:<alias> model names")
    models.set_defaults(func=_models)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"moee_plugins.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"moee_plugins.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
