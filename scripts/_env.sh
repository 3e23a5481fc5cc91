# Shared by scripts/test.sh, scripts/demo.sh and scripts/lock.sh (sourced, not run).
# make_venv DIR: create a virtual environment at DIR (if missing), activate it, upgrade pip.
# install_torch: the torch the project is tested with, CPU build unless an NVIDIA GPU is visible.

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
CONSTRAINTS="${CONSTRAINTS:-constraints/ci.txt}"

make_venv() {
    if [ ! -x "$1/bin/python" ]; then
        "$PYTHON" -m venv "$1"
    fi
    # shellcheck disable=SC1091
    . "$1/bin/activate"
    python -m pip install -q --upgrade pip
}

install_torch() {
    if python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
        return 0  # already there (a re-run)
    fi
    if [ -n "${TORCH_INDEX_URL:-}" ]; then  # e.g. https://download.pytorch.org/whl/cu128
        python -m pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        python -m pip install -q "torch==$TORCH_VERSION"  # PyPI's Linux wheel is the CUDA build
    elif python -m pip install -q --no-deps --no-index "torch==$TORCH_VERSION" 2>/dev/null; then
        python -m pip install -q "torch==$TORCH_VERSION"  # a wheel on local disk (pip's find-links): now its dependencies
    else  # no GPU: the CPU build (PyPI's default Linux wheel would pull several GB of CUDA libraries)
        python -m pip install -q "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu \
            --extra-index-url https://pypi.org/simple
    fi
}
