#!/usr/bin/env bash
# Builds the fffast wheel, installs it into a cached virtual environment and runs the pytest
# suite against it. The environment (torch, numpy, pytest, safetensors, maturin from the package
# index; torch is large) is made on first use at $FFFAST_VENV, default ~/.cache/fff-torch-venv.
# Arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${FFFAST_VENV:-$HOME/.cache/fff-torch-venv}"
py="$venv/bin/python"

if ! "$py" -c "import torch, numpy, pytest, safetensors, maturin" 2>/dev/null; then
    echo "fffast tests: making the virtual environment $venv (torch, numpy, pytest, safetensors, maturin)"
    python3 -m venv "$venv"
    "$py" -m pip install --quiet --upgrade pip
    "$py" -m pip install --quiet torch numpy pytest safetensors maturin
fi

wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT
"$venv/bin/maturin" build --release --quiet --manifest-path "$here/Cargo.toml" \
    --interpreter "$py" --out "$wheels"
"$py" -m pip install --quiet --force-reinstall --no-deps "$wheels"/fffast-*.whl

cd "$here"
# From here the installed wheel is what `import fffast` finds, not the source folder.
"$py" -m pytest -q -p no:cacheprovider "$@"
