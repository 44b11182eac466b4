#!/usr/bin/env bash
# Make ./.venv in the checkout and install berthing into it.
#   bash scripts/install.sh          # serve: berthing + what exporting a checkpoint to ONNX needs
#   bash scripts/install.sh test     # and the test tools (pytest, sentence-transformers, ruff, the clients, chromium)
# torch is pinned to 2.13.0: that CPU wheel lies on this kind of machine; an unpinned torch pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-export}"
# The playground's browser tests drive Debian's chromium (Playwright's own browser download does not work here);
# the supervisor test checks deploy/systemd/berthing.service with systemd-analyze.
if [ "$extra" = test ] && { ! command -v chromium >/dev/null || ! command -v systemd-analyze >/dev/null; }; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver systemd >/dev/null; } ||
            echo "warning: chromium or systemd could not be installed: the browser tests and the unit check skip" >&2
    else
        echo "note: install chromium (e.g. apt-get install chromium chromium-driver) for the browser tests" >&2
    fi
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[${extra}]"
echo "installed berthing into $(pwd)/.venv (extras: ${extra})"
