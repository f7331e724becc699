#!/usr/bin/env bash
# Serving on a GPU host through ONNX Runtime's CUDA provider, prepared here.
#
# Made for a host that has CUDA 13, cuDNN and cuBLAS (in a PyTorch 2.11 environment,
# TORCH_VENV, default /opt/torch/.venv) but only the CPU build of onnxruntime, reached by
# copies of at most 64 MiB at a time, tracked files included (about 27 MiB).
# The CUDA build's libraries (onnxruntime-gpu 1.31.1: libonnxruntime, the shared-provider
# bridge and the CUDA provider, 284 MB alone) travel compressed, in parts, one per copy;
# `receive` on the host says which have arrived.
#
#   scripts/gpu-serve.sh prepare      here: build and strip the server and server-bench,
#                                      fetch the onnxruntime-gpu wheel from PyPI, compress its
#                                      libraries into parts under .gpu-serve/, carry 64 real
#                                      request JPEGs; prints the copies and commands, in order
#   scripts/gpu-serve.sh receive      there: check the parts that have arrived (sha256), say
#                                      which are still missing and how long the copies took
#   scripts/gpu-serve.sh remote       there, after the last copy: reassemble the CUDA build, then the
#                                      provider parity, the decode-bound limit and server-bench
#                                      at concurrency 1, 8, 32, 128 beside a bare CUDA
#                                      session; results in $OUT/log.txt
#   scripts/gpu-serve.sh dry-run      here, on CPU: the same with the CPU onnxruntime wheel
#                                      standing in for the GPU one, tiny benchmark
#
# Only the kernels for one GPU architecture travel (Hopper, H100/H200, by default) (`scripts/prune_fatbin.py`, KEEP_SM=90;
# PRUNE=0 carries all six generations, in about three times as many copies).
#
# Settings (environment): PART_MIB=30 (part size); ROUNDS=5, REQUESTS=640,
# CONCURRENCY=1,8,32,128 (server-bench); PROVIDER=cuda; ORT_WHEEL (a wheel file to use
# instead of downloading onnxruntime-gpu); DATA (the request images' dataset).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=.gpu-serve
ORT_VERSION=1.31.1
DATA=${DATA:-../shared/data/stanford-dogs}
PART_MIB=${PART_MIB:-30}

say() { printf '[gpu-serve] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# The libraries of an onnxruntime wheel that the server needs: the runtime itself and,
# in the GPU build, the provider bridge and the CUDA provider (not TensorRT's).
wheel_libs() {
  local wheel=$1 into=$2
  mkdir -p "$into"
  python3 - "$wheel" "$into" <<'PY'
import sys, zipfile, os
wheel, into = sys.argv[1:]
keep = ("libonnxruntime.so.", "libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so")
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith(keep):
            with z.open(name) as src, open(os.path.join(into, base), "wb") as dst:
                dst.write(src.read())
            print(base, file=sys.stderr)
PY
}

prepare() {
  bash scripts/setup.sh runtime
  cargo build --release -p simsiam-server -p simsiam-bench --bin server --bin server-bench
  rm -rf "$DIR"
  mkdir -p "$DIR/stage/bin" "$DIR/images"
  strip -o "$DIR/stage/bin/server" target/release/server
  strip -o "$DIR/stage/bin/server-bench" target/release/server-bench
  tar -C "$DIR/stage" -cJf "$DIR/bin.tar.xz" bin
  local wheel=${ORT_WHEEL:-}
  if [[ -z "$wheel" ]]; then
    .venv/bin/python -m pip download --no-deps --disable-pip-version-check -q \
      "onnxruntime-gpu==$ORT_VERSION" -d .whl
    wheel=$(ls .whl/onnxruntime_gpu-"$ORT_VERSION"-*.whl | head -n 1)
  fi
  say "libraries from $wheel"
  wheel_libs "$wheel" "$DIR/stage/ort"
  local cuda="$DIR/stage/ort/libonnxruntime_providers_cuda.so"
  if [[ -f "$cuda" && "${PRUNE:-1}" == 1 ]]; then
    # Only Hopper's kernels (sm_90a) travel: 284 MB of the provider are kernels for six
    # GPU generations. cuobjdump (a 0.3 MB wheel) checks that what is left still parses.
    python3 scripts/prune_fatbin.py "$cuda" "$cuda.pruned" --keep "${KEEP_SM:-90}"
    .venv/bin/python -m pip download --no-deps --disable-pip-version-check -q nvidia-cuda-cuobjdump -d .whl
    python3 -c 'import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); open(sys.argv[2],"wb").write(z.read("nvidia/cu13/bin/cuobjdump"))' \
      "$(ls .whl/nvidia_cuda_cuobjdump-*.whl | head -n 1)" "$DIR/cuobjdump"
    chmod +x "$DIR/cuobjdump"
    local archs
    archs=$("$DIR/cuobjdump" --list-elf "$cuda.pruned" | sed 's/.*\.\(sm_[0-9a-z]*\)\..*/\1/' | sort | uniq -c | tr '\n' ' ')
    [[ -n "$archs" ]] || die "cuobjdump cannot read the pruned provider"
    say "kernel images left in the CUDA provider: $archs"
    mv "$cuda.pruned" "$cuda"
  fi
  local t0=$SECONDS
  tar -C "$DIR/stage" -cf - ort | xz -9 -T0 > "$DIR/ort.tar.xz"
  say "compressed $(du -sb "$DIR/stage/ort" | cut -f1) bytes into $(stat -c %s "$DIR/ort.tar.xz") in $((SECONDS - t0)) s"
  split -b "${PART_MIB}M" -d -a 2 "$DIR/ort.tar.xz" "$DIR/ort.part-"
  rm -rf "$DIR/stage" "$DIR/ort.tar.xz"
  # Real request images: the first JPEG of 64 breeds (no dataset travels with them).
  local n=0
  for breed in "$DATA"/Images/*/; do
    [[ $n -lt 64 ]] || break
    cp "$(ls "$breed"*.jpg | head -n 1)" "$DIR/images/" && n=$((n + 1))
  done
  (( n > 0 )) || die "no request images under $DATA/Images"
  (cd "$DIR" && sha256sum bin.tar.xz ort.part-* > SHA256SUMS)
  local parts tracked
  parts=$(ls "$DIR"/ort.part-* | wc -l)
  tracked=$(git ls-files -z | xargs -0 du -cb | tail -n 1 | cut -f1)
  say "$parts parts of at most $PART_MIB MiB; with the tracked files ($((tracked >> 20)) MiB), copy to the GPU host, in order:"
  local i=0 first=1 part carry bytes
  for part in "$DIR"/ort.part-*; do
    carry="$part"
    bytes=$((tracked + $(stat -c %s "$part")))
    if (( first )); then
      carry="$DIR/SHA256SUMS $DIR/bin.tar.xz $DIR/images/ $carry"; first=0
      bytes=$((bytes + $(du -scb "$DIR/SHA256SUMS" "$DIR/bin.tar.xz" "$DIR/images" | tail -n 1 | cut -f1)))
    fi
    (( bytes < 64 << 20 )) || die "copy $((i + 1)) would be $((bytes >> 20)) MiB, more than 64: lower PART_MIB"
    i=$((i + 1))
    if (( i < parts )); then
      say "  $i. ($((bytes >> 20)) MiB) $carry, then there: bash scripts/gpu-serve.sh receive"
    else
      say "  $i. ($((bytes >> 20)) MiB) $carry, then there: OUT=<a folder to copy back> bash scripts/gpu-serve.sh remote"
    fi
  done
}

# Which parts are here and intact; the missing ones are named.
check_parts() {
  [[ -f "$DIR/SHA256SUMS" ]] || die "no $DIR/SHA256SUMS: the first copy carries it"
  local missing=0 line sum file
  while read -r sum file; do
    if [[ ! -f "$DIR/$file" ]]; then
      say "missing: $file"; missing=$((missing + 1))
    elif [[ "$(sha256sum "$DIR/$file" | cut -d' ' -f1)" != "$sum" ]]; then
      die "$file is damaged (sha256 differs)"
    fi
  done < "$DIR/SHA256SUMS"
  return "$missing"
}

receive() {
  date +%s >> "$DIR/arrivals"
  local missing=0
  check_parts || missing=$?
  say "$(ls "$DIR"/ort.part-* 2>/dev/null | wc -l) parts here, $missing missing; $(awk 'NR==1{f=$1} {l=$1} END {print l-f}' "$DIR/arrivals") s since the first copy"
}

# The host's CUDA 13 libraries (cuDNN, cuBLAS, ...) live in its PyTorch environment.
use_machine_cuda() {
  local py=${TORCH_VENV:-/opt/torch/.venv}/bin/python
  [[ -x "$py" ]] || return 0
  local site dirs=""
  site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  for d in "$site"/nvidia/*/lib "$site"/nvidia/cu*/lib; do [[ -d "$d" ]] && dirs="$dirs:$d"; done
  export LD_LIBRARY_PATH="${dirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

remote() {
  local out=${OUT:?set OUT to the folder that goes back (you copy it back)}
  mkdir -p "$out"
  local log="$out/log.txt" t0=$SECONDS
  receive 2>&1 | tee -a "$log" >&2
  check_parts || die "parts are missing: copy them first"
  mkdir -p "$DIR/run"
  cat "$DIR"/ort.part-* | xz -dc | tar -C "$DIR/run" -xf -
  tar -C "$DIR/run" -xJf "$DIR/bin.tar.xz"
  local lib
  lib=$(ls "$DIR"/run/ort/libonnxruntime.so.* | head -n 1)
  export ORT_DYLIB_PATH="$PWD/$lib"
  # The provider libraries sit beside libonnxruntime; ONNX Runtime finds them there.
  use_machine_cuda
  export SIMSIAM_SERVER_INFERENCE__PROVIDER=${PROVIDER:-cuda}
  say "unpacked in $((SECONDS - t0)) s; ONNX Runtime $lib, provider $SIMSIAM_SERVER_INFERENCE__PROVIDER" 2>&1 | tee -a "$log"
  if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"; fi
  local bench="$DIR/run/bin/server-bench" images="$DIR/images"
  local cfg=(--config config/server-gpu.toml --model models/default --images "$images")
  echo "== parity: the CUDA provider against the CPU provider on $(ls "$images" | wc -l) real images" | tee -a "$log"
  "$bench" "${cfg[@]}" --parity 1e-3 2>&1 | tee -a "$log"
  echo "== decode-bound limit: the host's cores decoding and preprocessing with the server's code" | tee -a "$log"
  "$bench" "${cfg[@]}" --decode-only 2>&1 | tee -a "$log"
  echo "== server-bench" | tee -a "$log"
  "$bench" "${cfg[@]}" --concurrency "${CONCURRENCY:-1,8,32,128}" --rounds "${ROUNDS:-5}" \
    --requests "${REQUESTS:-640}" 2>&1 | tee -a "$log"
  say "done in $((SECONDS - t0)) s" 2>&1 | tee -a "$log"
}

dry_run() {
  local tmp wheel
  tmp=$(mktemp -d)
  bash scripts/setup.sh runtime
  # The CPU wheel stands in for the GPU one: same layout, no CUDA provider.
  .venv/bin/python -m pip download --no-deps --disable-pip-version-check -q \
    "onnxruntime==$ORT_VERSION" -d .whl
  wheel=$(ls .whl/onnxruntime-"$ORT_VERSION"-*.whl | head -n 1)
  ORT_WHEEL=$wheel PART_MIB=${DRY_PART_MIB:-4} prepare
  receive
  OUT="$tmp/out" PROVIDER=cpu CONCURRENCY=1,8 ROUNDS=1 REQUESTS=64 remote
  ls -la "$tmp/out" >&2
  rm -rf "$tmp"
}

case "${1:-}" in
  prepare) prepare ;;
  receive) receive ;;
  remote) remote ;;
  dry-run) dry_run ;;
  *) sed -n '2,27p' "$0"; exit 2 ;;
esac
