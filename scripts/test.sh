#!/usr/bin/env bash
# Set up and run the checks CI runs, from nothing but this checkout: a virtual environment (VENV, default .venv-test),
# torch, the project with every extra at the versions in constraints/ci.txt, then ruff, the import contracts, the
# docs build and the tests.
# Usage: scripts/test.sh [pytest args...]     (or: make test)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_env.sh
. scripts/_env.sh

make_venv "${VENV:-.venv-test}"
install_torch
python -m pip install -q -c "$CONSTRAINTS" -e ".[all,dev]"
python -m pip check

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NO_MKDOCS_2_WARNING=1  # mkdocs-material's end-of-life banner

echo "== ruff check ."
ruff check .
echo "== lint-imports (the layers in pyproject.toml [tool.importlinter], drawn in docs/development.md)"
lint-imports --no-cache
echo "== mkdocs build --strict"
site="$(mktemp -d)"
mkdocs build --quiet --strict --site-dir "$site"
rm -rf "$site"
echo "== pytest"
python -m pytest -q --durations=15 "$@"
