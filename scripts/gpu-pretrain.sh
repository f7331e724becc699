#!/usr/bin/env bash
# Pretraining and fine-tuning on a GPU host that has PyTorch's libraries but no Rust
# toolchain, in one command of a few minutes, prepared and checked here.
#
#   scripts/gpu-pretrain.sh prepare         here: build the trainer, strip and compress it,
#                                            pack the training split, into .gpu/ (ignored)
#   scripts/gpu-pretrain.sh remote          there, the one command: measure the data pipeline,
#                                            compute and end to end per image size (< 1 min),
#                                            pretrain as long as BUDGET_S allows at the size the
#                                            measurement favours, fine-tune the result on the
#                                            labels for FT_BUDGET_S, and leave the fine-tuned
#                                            run in $OUT as pieces of at most 15 MiB with
#                                            SHA256SUMS, bench.json and log.txt (8 files at most)
#   scripts/gpu-pretrain.sh fetch DIR [RUN] here: check and reassemble the pieces from DIR into
#                                            runs/RUN (default runs/gpu)
#   scripts/gpu-pretrain.sh dry-run         here, on CPU: all three, tiny, end to end
#
# The host runs `remote` in the project folder with .gpu/ copied beside it, and $OUT set to
# a folder that you copy back. It needs PyTorch 2.11.0's libraries for CUDA 13 (libtorch
# and the nvidia-* cuDNN and cuBLAS wheels) in a Python environment, TORCH_VENV (default
# /opt/torch/.venv). The payload is kept small for hosts reached through narrow copies
# (at most 64 MiB in with the tracked files, 8 files of 16 MiB back): the xz-compressed
# trainer (about 2.5 MiB) and the training split re-encoded at 96 px, JPEG quality 60
# (about 29 MiB).
#
# Settings (environment): SIZES="64 80 96" candidate image sizes; BUDGET_S=300 seconds of
# pretraining; FT_BUDGET_S=150 seconds of fine-tuning; BATCH=256; PRECISION=bf16;
# DEVICE=cuda; MIN_EPOCHS=40 (the largest size that still gets this many pretraining epochs
# in the budget wins); EPOCHS, FT_EPOCHS (skip the choice: fixed counts);
# CONFIG=config/gpu-model.toml; BREEDS (keep only the first N breeds, for dry runs).
set -euo pipefail
cd "$(dirname "$0")/.."

GPU_DIR=.gpu
PACK_SIDE=${PACK_SIDE:-96}
PACK_QUALITY=${PACK_QUALITY:-60}
DATA=${DATA:-../shared/data/stanford-dogs}
PIECE=15M

say() { printf '[gpu-pretrain] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

prepare() {
  bash scripts/setup.sh
  cargo build --release -p simsiam-trainer --bin trainer
  rm -rf "$GPU_DIR"
  mkdir -p "$GPU_DIR"
  # Stripped, the trainer is about 7 MB; xz makes that about 2.5 MB.
  strip -o "$GPU_DIR/trainer" target/release/trainer
  xz -9 -T0 "$GPU_DIR/trainer"
  local breeds=()
  [[ -n "${BREEDS:-}" ]] && breeds=(--breeds "$BREEDS")
  target/release/trainer pack --data "$DATA" --out "$GPU_DIR/pack" --split train \
    --side "$PACK_SIDE" --quality "$PACK_QUALITY" "${breeds[@]}"
  local carried tracked
  carried=$(du -sb "$GPU_DIR" | cut -f1)
  tracked=$(git ls-files -z | xargs -0 du -cb | tail -n 1 | cut -f1)
  say "payload $GPU_DIR: $((carried >> 20)) MiB; tracked files: $((tracked >> 20)) MiB; together $(((carried + tracked) >> 20)) MiB (keep it under 64 MiB for hosts reached through narrow copies)"
  (( carried + tracked < 64 << 20 )) || die "the payload and the tracked files exceed 64 MiB: lower PACK_QUALITY or PACK_SIDE"
  say "next, on the GPU host: bash scripts/gpu-pretrain.sh remote (with $GPU_DIR beside it, OUT set)"
}

# The host's PyTorch 2.11.0 (CUDA 13) environment: its torch/lib holds libtorch, and the
# nvidia-* packages beside it cuDNN and cuBLAS. The trainer's RUNPATH points at the build
# machine's paths, so the loader is told where they are.
use_machine_libtorch() {
  local py=${TORCH_VENV:-/opt/torch/.venv}/bin/python
  [[ -x "$py" ]] || return 0
  local site
  site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  local dirs="$site/torch/lib"
  for d in "$site"/nvidia/*/lib; do dirs="$dirs:$d"; done
  export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  say "libtorch from $site/torch"
}

# Epochs at `rate` images/s in the budget, from the pack's image count.
epochs_in_budget() {
  awk -v rate="$1" -v n="$2" -v budget="$BUDGET_S" 'BEGIN { e = int(budget * rate / n); print (e < 1 ? 1 : e) }'
}

remote() {
  local out=${OUT:?set OUT to the folder that goes back (you copy it back)}
  mkdir -p "$out"
  local device=${DEVICE:-cuda} batch=${BATCH:-256} precision=${PRECISION:-bf16}
  local sizes=${SIZES:-64 80 96} config=${CONFIG:-config/gpu-model.toml}
  BUDGET_S=${BUDGET_S:-300}
  local ft_budget=${FT_BUDGET_S:-150}
  local min_epochs=${MIN_EPOCHS:-40}
  local t0=$SECONDS
  use_machine_libtorch
  local trainer="$GPU_DIR/bin/trainer"
  mkdir -p "$GPU_DIR/bin"
  xz -dc "$GPU_DIR/trainer.xz" > "$trainer" 2>/dev/null \
    || python3 -c 'import lzma,sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' "$GPU_DIR/trainer.xz" > "$trainer"
  chmod +x "$trainer"
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sed 's/^/[gpu-pretrain] gpu: /' >&2 || true
  fi
  local cores
  cores=$(nproc)
  local workers=$(( cores > 1 ? cores - 1 : 1 ))
  # The pack has no test split; the kNN monitor is skipped for it.
  export SIMSIAM_DATA__TEST_FRACTION=0 SIMSIAM_RUN__PRECISION="$precision" SIMSIAM_DATA__WORKERS="$workers"
  [[ -n "${BREEDS:-}" ]] && export SIMSIAM_DATA__BREEDS="$BREEDS"
  local n
  n=$(find "$GPU_DIR/pack" -name '*.jpg' | wc -l)
  (( n > 0 )) || die "no packed images in $GPU_DIR/pack: run prepare here and carry $GPU_DIR"
  say "$n packed images, $cores cores ($workers augmentation workers), batch $batch, $precision, device $device"

  # 1. Measure: data pipeline alone, compute alone, end to end, per size.
  local best="" best_epochs=0 best_rate=1 size rate e
  for size in $sizes; do
    "$trainer" bench --config "$config" --data "$GPU_DIR/pack" --device "$device" \
      --image-size "$size" --batch "$batch" --steps "${BENCH_STEPS:-20}" \
      --json "$GPU_DIR/bench-$size.json" > "$GPU_DIR/bench-$size.txt" 2> "$GPU_DIR/bench-$size.log" \
      || { tail -n 20 "$GPU_DIR/bench-$size.log" >&2; die "bench at $size px failed"; }
    rate=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end_to_end_img_per_s"])' "$GPU_DIR/bench-$size.json")
    e=$(epochs_in_budget "$rate" "$n")
    { echo "== $size px: $e epochs in ${BUDGET_S} s"; cat "$GPU_DIR/bench-$size.txt"; } | tee -a "$out/log.txt" >&2
    # The largest size that still gets MIN_EPOCHS; the smallest one otherwise.
    if [[ -z "$best" ]] || (( e >= min_epochs )); then best=$size; best_epochs=$e; best_rate=$rate; fi
  done
  python3 -c 'import json,sys; print(json.dumps({f.split("-")[-1][:-5]: json.load(open(f)) for f in sys.argv[1:]}, indent=1))' \
    "$GPU_DIR"/bench-*.json > "$out/bench.json"
  local epochs=${EPOCHS:-$best_epochs}
  # A short linear warm-up, a twentieth of the schedule, as large batches want.
  export SIMSIAM_OPTIM__WARMUP_EPOCHS=$((epochs / 20))
  say "measured in $((SECONDS - t0)) s; pretraining at $best px for $epochs epochs" 2>&1 | tee -a "$out/log.txt"

  # 2. Pretrain.
  local run="$GPU_DIR/run"
  rm -rf "$run"
  "$trainer" pretrain --config "$config" --data "$GPU_DIR/pack" --device "$device" \
    --image-size "$best" --batch "$batch" --epochs "$epochs" --knn-every 0 --out "$run" \
    2> "$GPU_DIR/pretrain.log" | tee -a "$out/log.txt" >&2 \
    || { tail -n 30 "$GPU_DIR/pretrain.log" >&2; die "pretraining failed"; }
  # The epoch lines (loss, std, img/s, data wait) without the progress bars.
  grep -a 'INFO' "$GPU_DIR/pretrain.log" | sed 's/.*\] //' >> "$out/log.txt" || true

  # 3. Fine-tune on the labels: one view per image, about twice pretraining's rate; a
  # tenth of the epochs warms up (none for a run of under ten).
  local ft="$GPU_DIR/ft" ft_rate ft_epochs
  ft_rate=$(awk -v r="$best_rate" 'BEGIN { print 2 * r }')
  ft_epochs=$(BUDGET_S=$ft_budget epochs_in_budget "$ft_rate" "$n")
  ft_epochs=${FT_EPOCHS:-$ft_epochs}
  say "fine-tuning for $ft_epochs epochs" 2>&1 | tee -a "$out/log.txt"
  rm -rf "$ft"
  "$trainer" finetune --run "$run" --config "$config" --data "$GPU_DIR/pack" --device "$device" \
    --epochs "$ft_epochs" --warmup-epochs "$((ft_epochs / 10))" --out "$ft" \
    2> "$GPU_DIR/finetune.log" | tee -a "$out/log.txt" >&2 \
    || { tail -n 30 "$GPU_DIR/finetune.log" >&2; die "fine-tuning failed"; }
  grep -a 'INFO' "$GPU_DIR/finetune.log" | sed 's/.*\] //' >> "$out/log.txt" || true

  # 4. What eval and export need, in pieces: the fine-tuned run's weights and metadata (which
  # record the pretraining stage), its history and plots, and pretraining's curves.
  local weights
  weights=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["files"]["weights"])' "$ft/checkpoint-last.json")
  cp "$run/metrics.jsonl" "$ft/pretrain-metrics.jsonl"
  cp "$run/training.png" "$ft/pretrain-training.png"
  tar -C "$ft" -cf "$GPU_DIR/run.tar" checkpoint-last.json "$weights" metrics.jsonl \
    config.json labelled.json finetune.png pretrain-metrics.jsonl pretrain-training.png
  split -b "$PIECE" -d -a 2 "$GPU_DIR/run.tar" "$out/run.tar.part-"
  (cd "$out" && sha256sum run.tar.part-* > SHA256SUMS)
  (cd "$GPU_DIR" && sha256sum run.tar) >> "$out/SHA256SUMS"
  say "done in $((SECONDS - t0)) s: $(ls "$out" | wc -l) files in $out" 2>&1 | tee -a "$out/log.txt"
}

fetch() {
  local from=${1:?usage: scripts/gpu-pretrain.sh fetch DIR [RUN]} name=${2:-gpu}
  local run="runs/$name"
  (cd "$from" && sha256sum -c --quiet <(grep 'run.tar.part-' SHA256SUMS)) || die "a piece does not match SHA256SUMS"
  mkdir -p "$run"
  cat "$from"/run.tar.part-* > "$run.tar"
  local want got
  want=$(awk '$2 == "run.tar" { print $1 }' "$from/SHA256SUMS")
  got=$(sha256sum "$run.tar" | cut -d' ' -f1)
  [[ -n "$want" && "$want" == "$got" ]] || die "the reassembled run.tar does not match SHA256SUMS"
  tar -C "$run" -xf "$run.tar"
  rm "$run.tar"
  cp "$from"/bench.json "$from"/log.txt "$run"/ 2>/dev/null || true
  say "checked and unpacked into $run; next, here:"
  say "  target/release/trainer eval --run $run --data $DATA"
  say "  target/release/trainer export --run $run --data $DATA --out models/<name> --fp16"
  say "  target/release/trainer gallery --model models/<name> --data $DATA --split train --max-per-breed 15"
}

dry_run() {
  local tmp
  tmp=$(mktemp -d)
  BREEDS=${BREEDS:-3} prepare
  OUT="$tmp/out" DEVICE=cpu SIZES="${SIZES:-32 48}" BATCH=16 PRECISION=fp32 EPOCHS=1 \
    FT_EPOCHS=1 SIMSIAM_FINETUNE__BATCH=16 BENCH_STEPS=2 BREEDS=${BREEDS:-3} remote
  ls -la "$tmp/out" >&2
  fetch "$tmp/out" gpu-dry-run
  target/release/trainer eval --run runs/gpu-dry-run --data "$DATA" --breeds "${BREEDS:-3}" --threads 2 \
    | tail -n 8
  rm -rf "$tmp"
}

case "${1:-}" in
  prepare) prepare ;;
  remote) remote ;;
  fetch) shift; fetch "$@" ;;
  dry-run) dry_run ;;
  *) sed -n '2,26p' "$0"; exit 2 ;;
esac
