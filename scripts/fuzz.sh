#!/usr/bin/env bash
# Runs every libFuzzer target (fuzz/fuzz_targets) for SECONDS each (default 600) and prints
# executions and findings per target. cargo-fuzz is built into .tools/ the first time.
#
# cargo fuzz wants a nightly compiler for its sanitizer flags; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them (the AddressSanitizer runtime ships with it).
# Seeds come from the shared data when it is there (JPEGs, the MAT lists, annotation
# samples) and from generated files otherwise; crashes are written to fuzz/artifacts/, and
# once fixed, kept in fuzz/regressions/<target>/, which run before each target's fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-600}
TARGETS=${TARGETS:-decode request mat voc_xml}
SHARED=${SHARED_DATA:-../shared/data}
export RUSTC_BOOTSTRAP=1

if [[ ! -x .tools/bin/cargo-fuzz ]]; then
  cargo install cargo-fuzz --locked --root .tools
fi
FUZZ=.tools/bin/cargo-fuzz

seed() {
  local target=$1 dir=fuzz/corpus/$1
  mkdir -p "$dir"
  case "$target" in
    decode)
      # An array, not `ls | head`: head closing the pipe would fail the script (pipefail).
      local jpegs=("$SHARED"/stanford-dogs/Images/n02085620-Chihuahua/*.jpg)
      if [[ -e "${jpegs[0]}" ]]; then cp -t "$dir" "${jpegs[@]:0:16}"; fi
      ;;
    request)
      printf '\x01k=5\n{"images": ["aGVsbG8="], "k": 3}' > "$dir/json"
      printf '\x00top_k=2\n--X\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\nxyz\r\n--X\r\nContent-Disposition: form-data; name="k"\r\n\r\n4\r\n--X--\r\n' > "$dir/multipart"
      ;;
    mat)
      cp "$SHARED"/stanford-dogs/lists/*.mat "$dir"/ 2>/dev/null || true
      ;;
    voc_xml)
      local notes=("$SHARED"/samples/annotation/*/*)
      for f in "${notes[@]:0:8}"; do
        if [[ -f "$f" ]]; then cp "$f" "$dir/$(basename "$f").xml"; fi
      done
      printf '<annotation><size><width>10</width><height>8</height></size><object><name>dog</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>5</xmax><ymax>6</ymax></bndbox></object></annotation>' > "$dir/minimal.xml"
      ;;
  esac
}

for target in $TARGETS; do
  features=()
  if [[ "$target" == mat || "$target" == voc_xml ]]; then
    # The trainer's link arguments (its rpath to libtorch) do not reach this crate.
    features=(--features trainer)
    export LD_LIBRARY_PATH="$PWD/.libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  seed "$target"
  # Inputs that once crashed a target (fuzz/regressions/<target>/) run first, once each.
  regressions=(fuzz/regressions/"$target"/*)
  if [[ -e "${regressions[0]}" ]]; then
    "$FUZZ" run -O "${features[@]}" "$target" "${regressions[@]}" > "fuzz/$target.regressions.log" 2>&1 \
      || { echo "$target: a regression input fails again (fuzz/$target.regressions.log)"; exit 1; }
    echo "$target: ${#regressions[@]} regression input(s) pass"
  fi
  echo "== $target: ${SECONDS_EACH} s"
  log=fuzz/$target.log
  if "$FUZZ" run -O "${features[@]}" "$target" -- -max_total_time="$SECONDS_EACH" \
      -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 > "$log" 2>&1; then
    result="no crash"
  else
    result="FINDING (see $log and fuzz/artifacts/$target/)"
  fi
  runs=$(grep -a 'stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -n 1)
  echo "$target: ${runs:-?} executions, $result"
done
