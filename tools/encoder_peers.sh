#!/usr/bin/env bash
# Runs tools/encoder_peers.py (the PyTorch / ONNX Runtime peers of `fff bench encoder`)
# in its own virtual environment, creating it from tools/requirements-peers.txt when
# torch, transformers, onnxruntime, sentence-transformers, scipy or scikit-learn cannot
# be imported from it.  The environment is ~/.cache/fff-peers-venv, or $FFF_PEERS_VENV.
# Every argument is passed on:  tools/encoder_peers.sh --model DIR --inputs IN.json --out OUT.json ...
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${FFF_PEERS_VENV:-$HOME/.cache/fff-peers-venv}"
check='import torch, transformers, onnxruntime, sentence_transformers, scipy, sklearn'
if ! "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
    echo "encoder_peers.sh: creating $venv from $here/requirements-peers.txt (downloads about 3 GB)" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet -r "$here/requirements-peers.txt" >&2
    "$venv/bin/python" -c "$check"
fi
exec "$venv/bin/python" "$here/encoder_peers.py" "$@"
