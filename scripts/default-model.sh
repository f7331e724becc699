#!/usr/bin/env bash
# `make default-model`: trains the default model from scratch and writes it to models/default.
#
#   1. trainer pretrain   SimSiam, no labels                    -> runs/default-model
#   2. trainer finetune   encoder + breed head on the labels    -> runs/default-model-finetune
#   3. trainer eval       both runs (kNN and probe beside a random encoder), and the
#                         fine-tuned run on zoomed-out test images (the dog at half the width)
#   4. trainer export     the fine-tuned encoder, float16 weights, with the better classifier
#   5. trainer gallery    15 training images per breed, embedded by the exported encoder
#
# Every stage resumes: run the command again after an interruption and finished stages are
# skipped, an interrupted one continues from its last checkpoint. The bundle is assembled in
# runs/ and only replaces models/default once it is complete.
#
# Settings (environment): CONFIG=config/default-model.toml (config/gpu-model.toml on a GPU
# host); DATA=../shared/data/stanford-dogs; RUN=runs/default-model; OUT=models/default;
# NAME=dogs120-r18-64; GALLERY_PER_BREED=15; TRAINER=target/release/trainer.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${CONFIG:-config/default-model.toml}
DATA=${DATA:-../shared/data/stanford-dogs}
RUN=${RUN:-runs/default-model}
FT="$RUN-finetune"
OUT=${OUT:-models/default}
NAME=${NAME:-dogs120-r18-64}
GALLERY_PER_BREED=${GALLERY_PER_BREED:-15}
TRAINER=${TRAINER:-target/release/trainer}
STAGE="$RUN-bundle"

say() { printf '[default-model %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
[[ -d "$DATA" ]] || { say "error: no dataset at $DATA (set DATA)"; exit 1; }

# Epochs a run's last checkpoint has done, and the epochs its configuration asks for.
done_epochs() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["epoch"])' "$1/checkpoint-last.json" 2>/dev/null || echo 0; }
want_epochs() { python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["config"]; print(c[sys.argv[2]]["epochs"])' "$1/checkpoint-last.json" "$2" 2>/dev/null || echo 1; }

# Runs a training stage: skipped when finished, resumed when interrupted.
stage() {
  local cmd=$1 dir=$2 section=$3; shift 3
  local resume=()
  if [[ -f "$dir/checkpoint-last.json" ]]; then
    if (( $(done_epochs "$dir") >= $(want_epochs "$dir" "$section") )); then
      say "$cmd: $dir is finished ($(done_epochs "$dir") epochs), skipped"
      return
    fi
    resume=(--resume)
    say "$cmd: resuming $dir after epoch $(done_epochs "$dir")"
  fi
  "$TRAINER" "$cmd" "$@" --out "$dir" "${resume[@]}"
}

started=$(date +%s)
say "building the trainer"
make -s build >/dev/null
say "1/5 pretraining (SimSiam) with $CONFIG"
stage pretrain "$RUN" optim --config "$CONFIG" --data "$DATA"
say "2/5 fine-tuning on the labels"
stage finetune "$FT" finetune --run "$RUN" --config "$CONFIG"
say "3/5 evaluating (pretrained, fine-tuned, fine-tuned on zoomed-out test images)"
"$TRAINER" eval --run "$RUN"
"$TRAINER" eval --run "$FT" --zoom-out 0.5
"$TRAINER" eval --run "$RUN" --zoom-out 0.5
# Last, so that probe.json is the fine-tuned run's choice.
"$TRAINER" eval --run "$FT"
say "4/5 exporting"
rm -rf "$STAGE"
"$TRAINER" export --run "$FT" --out "$STAGE" --fp16 --name "$NAME"
say "5/5 embedding the gallery ($GALLERY_PER_BREED training images per breed)"
"$TRAINER" gallery --model "$STAGE" --data "$DATA" --split train --max-per-breed "$GALLERY_PER_BREED"
rm -rf "$OUT.old"
[[ -d "$OUT" ]] && mv "$OUT" "$OUT.old"
mv "$STAGE" "$OUT"
rm -rf "$OUT.old"
say "done in $(( ($(date +%s) - started) / 60 )) min: $OUT ($(du -sh "$OUT" | cut -f1)); reports in $RUN/eval.md and $FT/eval.md"
