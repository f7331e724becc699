#!/usr/bin/env bash
# Creates the Python venv for the PyTorch SimSiam reference baseline, OUTSIDE the project tree.
# Idempotent: re-running only installs what is missing or at the wrong version.
#   REF_VENV   venv location (default /work/refvenv)
#   PYTHON     interpreter used to create it (default python3)
set -euo pipefail

REF_VENV="${REF_VENV:-/work/refvenv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.11.0"
TORCHVISION_VERSION="0.26.0"   # torchvision 0.26.0's metadata pins torch==2.11.0

if [ ! -x "$REF_VENV/bin/python" ]; then
    echo "setup: creating venv at $REF_VENV"
    "$PYTHON" -m venv "$REF_VENV"
else
    echo "setup: reusing venv at $REF_VENV"
fi

PY="$REF_VENV/bin/python"

have() {  # have <dist> <version|any>: is <dist> installed in the venv at that version?
    "$PY" - "$1" "$2" <<'PYEOF'
import sys
from importlib import metadata
name, want = sys.argv[1], sys.argv[2]
try:
    got = metadata.version(name)
except metadata.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if want == "any" or got.split("+")[0] == want else 1)
PYEOF
}

need=()
have torch "$TORCH_VERSION"             || need+=("torch==$TORCH_VERSION")
have torchvision "$TORCHVISION_VERSION" || need+=("torchvision==$TORCHVISION_VERSION")
have scipy any                          || need+=("scipy")
have pillow any                         || need+=("pillow")
have numpy any                          || need+=("numpy")

if [ "${#need[@]}" -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    # The default PyPI torch wheel is the CUDA build (pulls ~4.7 GB of nvidia-* wheels);
    # it runs fine on CPU, which is what the benchmark uses.
    "$PY" -m pip install --no-input "${need[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
else
    echo "setup: all packages present"
fi

"$PY" -c 'import torch, torchvision, scipy, PIL; print("setup: ok  torch", torch.__version__, "torchvision", torchvision.__version__, "scipy", scipy.__version__, "pillow", PIL.__version__, "threads", torch.get_num_threads())'
