#!/usr/bin/env bash
# hnswlib and FAISS on the vectors gallery-bench wrote (bench/anchors/anchors.py), in their
# own virtual environment (ANCHOR_VENV, default .venv-anchors): numpy, faiss-cpu (a wheel) and
# hnswlib (built from its source distribution: needs a C++ compiler).
#
#   bash bench/anchors/run.sh DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${1:?usage: run.sh DIR (written by gallery-bench --vectors-out DIR)}
VENV=${ANCHOR_VENV:-.venv-anchors}
if ! "$VENV/bin/python" -c 'import numpy, hnswlib, faiss' 2>/dev/null; then
  echo "[anchors] installing numpy, hnswlib 0.8 and faiss-cpu into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q numpy pybind11 setuptools wheel
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q --no-build-isolation "hnswlib==0.8.0" "faiss-cpu>=1.15,<2"
fi
"$VENV/bin/python" bench/anchors/anchors.py "$DIR"
