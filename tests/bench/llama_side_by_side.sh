#!/bin/bash
# llama_side_by_side.sh - capmoe against llama.cpp on the same machine, the
# same BF16 weights and the same thread counts: the README's side-by-side
# table. llama.cpp is built from a source snapshot OUTSIDE this repository
# (never committed), with AVX-512 / BF16 enabled by -DGGML_NATIVE=ON; the
# checkpoints are `capmoe synth` Mixtral layouts converted to BF16 GGUF by
# llama.cpp's own converter (tests/bench/gguf_convert.py).
#
#   bash tests/bench/llama_side_by_side.sh --llama-tar llama.cpp.tar.xz | --llama-dir DIR
#        [--out DIR] [--work DIR] [--threads 2,8,16] [--models a,b] [--budget-s 420]
#        [--capmoe build/capmoe]
#
# Models: a = 0.5 GB (hidden 768, 6 layers, 8 experts of width 2048; the
# serve_bench.sh --synth shape), b = 4.3 GB (hidden 2048, 8 layers, 8 experts
# of width 4864); BF16, top-2, this project's tokenizer.
# Per model and thread count: `capmoe bench` (prefill of 512 tokens as one
# sequence, R = 1, policy none; batch-1 decode at context 64) with --compute
# f32 and with --compute bf16, and llama-bench -p 512 -n 32. The JSON of every
# run goes to OUT/res/, the table to OUT/table.md
# (tests/bench/side_by_side_table.py). Runs are skipped, in priority order,
# once --budget-s seconds have passed (the table says which).
set -u
llama_tar=""; llama_dir=""; out=build/side-by-side; work=/tmp/capmoe-sbs; threads="2,8,16"
models="a,b"; budget=420; capmoe=build/capmoe
while [ $# -gt 0 ]; do
  case "$1" in
    --llama-tar) llama_tar="$2"; shift 2 ;;
    --llama-dir) llama_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --budget-s) budget="$2"; shift 2 ;;
    --capmoe) capmoe="$2"; shift 2 ;;
    *) echo "llama_side_by_side: unknown option $1" >&2; exit 2 ;;
  esac
done
repo=$(cd "$(dirname "$0")/../.." && pwd)
# the converter's Python: the first with numpy and PyTorch (Debian's
# python3-numpy python3-torch live in /usr/bin/python3, which a pyenv or
# virtualenv python3 earlier in PATH may hide)
convert_py=python3
for py in python3 /usr/bin/python3; do
  if "$py" -c 'import numpy, torch' 2>/dev/null; then convert_py=$py; break; fi
done
mkdir -p "$out/res" "$work"
out=$(cd "$out" && pwd); work=$(cd "$work" && pwd)
log="$out/side_by_side.log"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
say() { echo "[$(elapsed) s] $*" | tee -a "$log"; }
ncpu=$(nproc)

# 1. llama.cpp, built in the background while the models are made
# (--llama-dir none: capmoe only)
if [ -z "$llama_dir" ] && [ -z "$llama_tar" ]; then echo "llama_side_by_side: give --llama-tar or --llama-dir" >&2; exit 2; fi
if [ -z "$llama_dir" ]; then
  llama_dir="$work/llama.cpp"
  if [ ! -d "$llama_dir" ]; then
    mkdir -p "$llama_dir" && tar -xJf "$llama_tar" -C "$llama_dir" || { say "cannot unpack $llama_tar"; exit 1; }
  fi
fi
bench_bin="$llama_dir/build/bin/llama-bench"
if [ "$llama_dir" != none ] && [ ! -x "$bench_bin" ]; then
  ( cd "$llama_dir" && cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF && cmake --build build -j "$ncpu" --target llama-bench ) \
    > "$out/llama_build.log" 2>&1 &
  build_pid=$!
else
  build_pid=""
fi

# 2. the checkpoints (capmoe synth) and their BF16 GGUFs
synth_args() {
  case "$1" in
    a) echo "--hidden 768 --layers 6 --experts 8 --top-k 2 --intermediate 2048 --heads 12 --kv-heads 4" ;;
    b) echo "--hidden 2048 --layers 8 --experts 8 --top-k 2 --intermediate 4864 --heads 16 --kv-heads 4" ;;
  esac
}
for m in ${models//,/ }; do
  d="$work/model-$m"
  if [ ! -f "$d/config.json" ]; then
    # shellcheck disable=SC2046
    "$capmoe" synth --arch mixtral --out "$d" $(synth_args "$m") --vocab 8192 --context 4096 \
      --dtype bf16 --skew 8 --seed 0 --tokenizer-from "$repo/config/model" > "$out/res/synth_$m.json" 2>>"$log" \
      || { say "capmoe synth $m failed"; exit 1; }
  fi
  say "model $m: $(du -sh "$d" | cut -f1)"
done
for m in ${models//,/ }; do
  g="$work/model-$m.gguf"
  [ -s "$g" ] || [ "$llama_dir" = none ] && continue
  "$convert_py" "$repo/tests/bench/gguf_convert.py" "$llama_dir" "$work/model-$m" "$g" --outtype bf16 \
    > "$out/convert_$m.log" 2>&1 || { say "conversion of $m failed:"; tail -n 20 "$out/convert_$m.log" | tee -a "$log"; }
  say "gguf $m: $(du -sh "$g" 2>/dev/null | cut -f1)"
done
if [ -n "$build_pid" ]; then
  wait "$build_pid" || { say "llama.cpp build failed:"; tail -n 30 "$out/llama_build.log" | tee -a "$log"; }
fi
say "llama-bench: $([ -x "$bench_bin" ] && echo built || echo MISSING)"
{ "$capmoe" --version; grep -m1 "model name" /proc/cpuinfo; echo "nproc $ncpu"; } > "$out/res/system.txt" 2>&1
grep -i "GGML_NATIVE\|AVX512\|BF16\|AMX" "$out/llama_build.log" 2>/dev/null | head -n 20 >> "$out/res/system.txt"

# 3. the runs, in priority order; each once, skipped when over budget
run_capmoe() { # model threads compute
  local f="$out/res/capmoe_$1_t$2_$3.json" dec="1"
  [ "$3" = bf16 ] && dec=""   # decode does not use the BF16 path (batch-1 rows stay float32)
  "$capmoe" bench --model "$work/model-$1" --ep-ranks 1 --policies none --gammas 1.0 --prefill 512 \
    --decode "$dec" --decode-context 64 --decode-steps 16 --repeat 2 --threads "$2" --compute "$3" \
    --sgemm-size 2048 --copy-mib 256 > "$f" 2>>"$log" || { say "capmoe $1 t$2 $3 failed"; rm -f "$f"; }
}
run_llama() { # model threads
  local f="$out/res/llama_$1_t$2.json"
  [ -x "$bench_bin" ] && [ -s "$work/model-$1.gguf" ] || { say "llama $1 t$2: no llama-bench or gguf"; return; }
  "$bench_bin" -m "$work/model-$1.gguf" -p 512 -n 32 -t "$2" -r 2 -o json > "$f" 2>>"$log" \
    || { say "llama $1 t$2 failed"; rm -f "$f"; }
}
# priority: per model the most and the fewest threads first, then the rest
plan=""
for m in ${models//,/ }; do
  ts=$(echo "$threads" | tr ',' '\n' | sort -rn)
  hi=$(echo "$ts" | head -n 1); lo=$(echo "$ts" | tail -n 1)
  plan="$plan $m:$hi"; [ "$lo" != "$hi" ] && plan="$plan $m:$lo"
done
for m in ${models//,/ }; do
  ts=$(echo "$threads" | tr ',' '\n' | sort -rn)
  for t in $(echo "$ts" | sed '1d;$d'); do plan="$plan $m:$t"; done
done
for job in $plan; do
  m=${job%%:*}; t=${job##*:}
  for what in f32 bf16 llama; do
    if [ "$(elapsed)" -ge "$budget" ]; then say "over budget: skipped $m t$t $what"; echo "$m $t $what" >> "$out/res/skipped.txt"; continue; fi
    if [ "$what" = llama ]; then run_llama "$m" "$t"; else run_capmoe "$m" "$t" "$what"; fi
    say "done $m t$t $what"
  done
done
python3 "$repo/tests/bench/side_by_side_table.py" "$out/res" > "$out/table.md" 2>>"$log"
cat "$out/table.md"
say "total $(elapsed) s"
