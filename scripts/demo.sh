#!/usr/bin/env bash
# Set up and run the offline demo from nothing but this checkout: a virtual environment (VENV, default .venv-demo),
# torch, the project with the extras the demo uses (at the versions in constraints/ci.txt), then `moee demo`.
# Usage: scripts/demo.sh [moee demo args...]     (or: make demo)  -- the output lands in demo-output/ by default.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_env.sh
. scripts/_env.sh

make_venv "${VENV:-.venv-demo}"
install_torch
python -m pip install -q -c "$CONSTRAINTS" -e ".[bertopic,cli]"

export TOKENIZERS_PARALLELISM=false
case " $* " in
    *" --model"*) ;;                                   # a real model: it may come from the Hub
    *) export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ;;  # the tiny random model needs nothing from the network
esac
case " $* " in
    *" -o "* | *" --output"*) ;;
    *) set -- -o demo-output "$@" ;;
esac
moee demo "$@"
