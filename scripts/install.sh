#!/usr/bin/env bash
# Make ./.venv in the checkout and install berthing into it.
#   bash scripts/install.sh          # serve: berthing + what exporting a checkpoint to ONNX needs
#   bash scripts/install.sh test     # and the test tools (pytest, sentence-transformers, ruff)
# torch is pinned to 2.13.0: that CPU wheel lies on this kind of machine; an unpinned torch pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-export}"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[${extra}]"
echo "installed berthing into $(pwd)/.venv (extras: ${extra})"
