#!/usr/bin/env bash
# Make one virtual environment per peer under .cache/peers/<peer>/venv (gitignored), every version pinned.
#   bash benchmarks/peers/setup.sh                 # all peers
#   bash benchmarks/peers/setup.sh torchserve      # one (torchserve | infinity); berthing and sentence-transformers
#                                                  # run from the project's .venv (bash scripts/install.sh test)
# Why separate venvs: the peers pin conflicting versions (Infinity wants numpy<2 and sentence-transformers<4;
# berthing's own venv has numpy 2 and sentence-transformers 6), and none of them may disturb .venv.
# torch is always pinned to 2.13.0 (a CPU wheel on this machine); an unpinned torch pulls multi-GB CUDA wheels.
# Idempotent: a peer whose venv already has its marker file is skipped (delete .cache/peers/<peer> to redo it).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(pwd)/.cache/peers"
PY="${PEERS_PYTHON:-python3.11}"

pip_quiet() {  # pip warns once per package about this machine's empty local index folders: drop that noise only
  "$@" 2>&1 | sed '/is neither a file nor a directory/d'
}

make_venv() {  # $1 = peer; the rest = pip requirements
  local peer="$1"; shift
  local dir="$ROOT/$peer/venv"
  if [[ -f "$dir/.berthing-peer-ok" ]]; then echo "$peer: already set up ($dir)"; return; fi
  echo "$peer: creating $dir"
  rm -rf "$dir"; mkdir -p "$ROOT/$peer"
  "$PY" -m venv "$dir"
  pip_quiet "$dir/bin/python" -m pip install --quiet --upgrade pip
  pip_quiet "$dir/bin/python" -m pip install --quiet "torch==2.13.0"
  pip_quiet "$dir/bin/python" -m pip install --quiet "torch==2.13.0" "$@"
  "$dir/bin/python" -m pip freeze > "$ROOT/$peer/freeze.txt"
  touch "$dir/.berthing-peer-ok"
  echo "$peer: done"
}

setup_torchserve() {
  make_venv torchserve "torchserve==0.12.0" "torch-model-archiver==0.12.0" "transformers==4.57.6"
  java -version 2>&1 | head -1
}

setup_infinity() {
  # [server,torch,optimum]: the REST server, the torch engine and the optimum (ONNX Runtime) engine. [all] adds
  # vision/audio/ct2 stacks (colpali, timm, torchvision, ctranslate2) that an embedding benchmark does not use.
  # Pinned to the set pip resolves for it (optimum 2.1 + optimum-onnx 0.1, transformers 4.57, numpy<2 as Infinity asks).
  # Not optimum 1.x: 1.27 cannot import optimum.onnxruntime under torch 2.13 (torch.onnx moved _attention_scale),
  # and its BetterTransformer, imported by Infinity at start-up, refuses transformers >= 4.49. Under optimum 2.x
  # Infinity's ORT graph optimization step fails (OptimizationConfig(optimize_with_onnxruntime_only=...) was removed):
  # it logs a warning and serves the plain optimum export, as any user of this version gets.
  make_venv infinity "infinity-emb[server,torch,optimum]==0.0.78" "optimum==2.1.0" "optimum-onnx==0.1.0" \
    "transformers==4.57.6" "sentence-transformers==3.4.1" "numpy==1.26.4"
}


peers=("$@")
[[ ${#peers[@]} -eq 0 ]] && peers=(torchserve infinity)
for p in "${peers[@]}"; do
  case "$p" in
    torchserve) setup_torchserve ;;
    infinity) setup_infinity ;;
    berthing|st) echo "$p: uses the project's .venv (bash scripts/install.sh test)" ;;
    *) echo "unknown peer $p (torchserve | infinity)" >&2; exit 2 ;;
  esac
done
