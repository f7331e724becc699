#!/usr/bin/env bash
# Installs every native dependency into the project folder, idempotently:
#   .venv/            Python venv holding the torch 2.11.0 wheel (libtorch for tch 0.24)
#                     and the onnxruntime wheel (libonnxruntime for ort)
#   .libtorch         -> .venv/.../site-packages/torch        (read by .cargo/config.toml)
#   .onnxruntime/     libonnxruntime.so -> the wheel's versioned library
#   .venv/ pgserver   PostgreSQL 16 with pgvector 0.6 (PyPI's pgserver wheel, ~11 MB): the
#                     tests of the PostgreSQL gallery start throwaway servers with it
#
# Default: the slim CPU-only route (torch without its CUDA dependencies, ~1.3 GB).
# SIMSIAM_CUDA=1: the full CUDA route (torch with all nvidia-* packages, onnxruntime-gpu).
#
# `scripts/setup.sh runtime` installs only what the server needs (ONNX Runtime, ~16 MB):
# `make serve` uses it, so starting the server never downloads libtorch. `scripts/setup.sh
# pgserver` adds pgserver to it, for `make test-server`.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
ORT_VERSION=1.31.1
PGSERVER_VERSION=0.1.4
CUDA=${SIMSIAM_CUDA:-0}
PYTHON=${PYTHON:-python3}
STAMP=".venv/.simsiam-setup"
WANT="torch=$TORCH_VERSION ort=$ORT_VERSION cuda=$CUDA pgserver=$PGSERVER_VERSION"

say() { printf '[setup] %s\n' "$*"; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -e .libtorch/lib/libtorch_cpu.so && -e .onnxruntime/libonnxruntime.so ]]; then
  say "native dependencies present ($WANT)"
  exit 0
fi
# `scripts/setup.sh pgserver`: the runtime, plus pgserver (what `make test-server` needs).
if [[ "${1:-}" == "pgserver" ]]; then
  bash "$0" runtime
  if .venv/bin/python -m pip show -q "pgserver" >/dev/null 2>&1; then
    say "pgserver present"
  else
    say "installing pgserver==$PGSERVER_VERSION (PostgreSQL with pgvector, for the gallery's tests)"
    .venv/bin/python -m pip install --disable-pip-version-check --no-input -q "pgserver==$PGSERVER_VERSION"
  fi
  exit 0
fi
RUNTIME_ONLY=0
if [[ "${1:-}" == "runtime" && "$CUDA" != "1" ]]; then
  RUNTIME_ONLY=1
  RT_STAMP=".venv/.simsiam-runtime"
  if [[ -f "$RT_STAMP" && "$(cat "$RT_STAMP")" == "ort=$ORT_VERSION" && -e .onnxruntime/libonnxruntime.so ]]; then
    say "ONNX Runtime present (ort=$ORT_VERSION)"
    exit 0
  fi
fi

if [[ -x .venv/bin/python ]] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  say "removing an incomplete .venv (no pip: an earlier setup was interrupted)"
  rm -rf .venv
fi
if [[ ! -x .venv/bin/python ]]; then
  say "creating virtual environment .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check --no-input -q)

if [[ "$RUNTIME_ONLY" == "1" ]]; then
  say "installing onnxruntime==$ORT_VERSION (server only; \`make setup\` adds libtorch)"
  "${PIP[@]}" --no-deps "onnxruntime==$ORT_VERSION"
elif [[ "$CUDA" == "1" ]]; then
  say "installing torch==$TORCH_VERSION with CUDA libraries (full route, ~4.7 GB)"
  "${PIP[@]}" "torch==$TORCH_VERSION"
  say "installing onnxruntime-gpu==$ORT_VERSION"
  "${PIP[@]}" --no-deps "onnxruntime-gpu==$ORT_VERSION"
else
  # libtorch_cpu.so links these two CUDA runtime libraries even on CPU; torch 2.11.0
  # pins exactly these versions (through cuda-toolkit==13.0.2).
  say "installing torch==$TORCH_VERSION, CPU-only slim route (~1.3 GB)"
  "${PIP[@]}" --no-deps "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  say "installing onnxruntime==$ORT_VERSION"
  "${PIP[@]}" --no-deps "onnxruntime==$ORT_VERSION"
fi

if [[ "$RUNTIME_ONLY" != "1" ]]; then
  say "installing pgserver==$PGSERVER_VERSION (PostgreSQL with pgvector, for the gallery's tests)"
  "${PIP[@]}" "pgserver==$PGSERVER_VERSION"
fi

SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [[ "$RUNTIME_ONLY" != "1" ]]; then
  [[ -e "$SITE/torch/lib/libtorch_cpu.so" ]] || { echo "setup: $SITE/torch/lib/libtorch_cpu.so missing after install" >&2; exit 1; }
  ln -sfn "$SITE/torch" .libtorch
  say "libtorch: .libtorch -> $SITE/torch"
fi

ORT_LIB=$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n 1 || true)
[[ -n "$ORT_LIB" ]] || { echo "setup: no libonnxruntime.so.* under $SITE/onnxruntime/capi" >&2; exit 1; }
mkdir -p .onnxruntime
ln -sfn "$ORT_LIB" .onnxruntime/libonnxruntime.so
say "onnxruntime: .onnxruntime/libonnxruntime.so -> $ORT_LIB"

if [[ "$RUNTIME_ONLY" == "1" ]]; then
  echo "ort=$ORT_VERSION" > "$RT_STAMP"
else
  echo "$WANT" > "$STAMP"
  echo "ort=$ORT_VERSION" > .venv/.simsiam-runtime
fi
say "done"
