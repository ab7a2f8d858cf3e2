#!/bin/bash
# quant_side_by_side.sh - capmoe --weights bf16|q8|q4 against llama.cpp at
# BF16 / Q8_0 / Q4_0 / Q4_1 on the same weights, the same machine, the same
# thread count, in one run: the README's quantized speed table (issue 13).
#
#   bash tests/bench/quant_side_by_side.sh --llama-tar llama.cpp.tar.xz | --llama-dir DIR
#        [--capmoe build/capmoe] [--out DIR] [--work DIR] [--threads N]
#        [--size big|small] [--budget-s 440]
#
# The model: `capmoe synth --arch mixtral`, BF16, hidden 2048, 6 layers,
# 8 experts of width 4096 (top-2), 2.4 GB (--size small: hidden 768,
# 4 layers, 8 experts of 2048: 0.3 GB, for machines with little time),
# with this project's tokenizer. llama.cpp is built from a source snapshot
# OUTSIDE this repository (-DGGML_NATIVE=ON; never committed); its own
# convert_hf_to_gguf.py makes the BF16 GGUF (an unknown BPE pre-tokenizer
# hash is mapped to "gpt-2": the runs feed token ids, not text) and its own
# llama-quantize makes Q8_0, Q4_0 and Q4_1 from it.
# Runs, each once, in priority order until --budget-s has passed:
#  - capmoe bench --ep-ranks 1 --policies none: prefill of 512 tokens (one
#    sequence), decode at batch 1 and 16 (context 64, median step), with the
#    same-run memory bandwidth ceiling; --weights bf16, q8, q4 (the experts
#    quantized) and q8, q4 with --quantize all (every matrix but the router
#    and the embedding, as llama.cpp's formats; runs capmoe_q8all, q4all);
#  - llama-bench -p 512 -n 64 (prefill 512, batch-1 decode) per GGUF;
#  - llama-batched-bench -npp 64 -ntg 32 -npl 16 (16 sequences decoding)
#    per GGUF.
# Peak RSS (GNU time): llama-bench's run, and for capmoe a `capmoe logits`
# of 8 tokens per format (the bench's own buffers would count). Results: OUT/res/*.json|txt,
# the table OUT/table.md (tests/bench/quant_table.py).
set -u
llama_tar=""; llama_dir=""; out=build/quant-sbs; work=/tmp/capmoe-qsbs; threads=$(nproc)
size=big; budget=440; capmoe=build/capmoe
while [ $# -gt 0 ]; do
  case "$1" in
    --llama-tar) llama_tar="$2"; shift 2 ;;
    --llama-dir) llama_dir="$2"; shift 2 ;;
    --capmoe) capmoe="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --budget-s) budget="$2"; shift 2 ;;
    *) echo "quant_side_by_side: unknown option $1" >&2; exit 2 ;;
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
log="$out/run.log"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
say() { echo "[$(elapsed) s] $*" | tee -a "$log"; }
over() { [ "$(elapsed)" -ge "$budget" ]; }
ncpu=$(nproc)
# timed FILE CMD...: CMD's peak RSS in KB into FILE (GNU time, when there is one)
timed() { local f="$1"; shift; if [ -x /usr/bin/time ]; then /usr/bin/time -f %M -o "$f" "$@"; else "$@"; fi; }

# 1. llama.cpp, built in the background while the model is made
if [ -z "$llama_dir" ] && [ -n "$llama_tar" ]; then
  llama_dir="$work/llama.cpp"
  [ -d "$llama_dir" ] || { mkdir -p "$llama_dir" && tar -xJf "$llama_tar" -C "$llama_dir"; } || { say "cannot unpack $llama_tar"; llama_dir=none; }
fi
[ -z "$llama_dir" ] && llama_dir=none
bin="$llama_dir/build/bin"
build_pid=""
if [ "$llama_dir" != none ] && [ ! -x "$bin/llama-bench" ]; then
  ( cd "$llama_dir" && cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON && \
    cmake --build build -j "$ncpu" --target llama-bench llama-quantize llama-batched-bench ) \
    > "$out/llama_build.log" 2>&1 &
  build_pid=$!
fi

# 2. the checkpoint, its GGUFs
case "$size" in
  big) sargs="--hidden 2048 --layers 6 --experts 8 --top-k 2 --intermediate 4096 --heads 16 --kv-heads 4" ;;
  *) sargs="--hidden 768 --layers 4 --experts 8 --top-k 2 --intermediate 2048 --heads 12 --kv-heads 4" ;;
esac
M="$work/model-$size"
if [ ! -f "$M/config.json" ]; then
  # shellcheck disable=SC2086
  "$capmoe" synth --arch mixtral --out "$M" $sargs --vocab 8192 --context 4096 --dtype bf16 --skew 8 \
    --seed 0 --tokenizer-from "$repo/config/model" > "$out/res/synth.json" 2>>"$log" || { say "synth failed"; exit 1; }
fi
say "model: $(du -sh "$M" | cut -f1) ($sargs)"
if [ -n "$build_pid" ]; then
  wait "$build_pid" || { say "llama.cpp build failed:"; tail -n 20 "$out/llama_build.log" | tee -a "$log"; }
fi
say "llama.cpp: $([ -x "$bin/llama-bench" ] && echo built || echo MISSING)"
G="$work/model-$size"
if [ -x "$bin/llama-quantize" ] && [ ! -s "$G-bf16.gguf" ]; then
  "$convert_py" "$repo/tests/bench/gguf_convert.py" "$llama_dir" "$M" "$G-bf16.gguf" --outtype bf16 \
    > "$out/convert.log" 2>&1 || say "conversion failed: $(tail -n 3 "$out/convert.log")"
fi
for q in Q8_0 Q4_0 Q4_1; do
  [ -s "$G-bf16.gguf" ] && [ ! -s "$G-$q.gguf" ] && \
    "$bin/llama-quantize" "$G-bf16.gguf" "$G-$q.gguf" "$q" "$threads" > "$out/quantize_$q.log" 2>&1
  say "gguf $q: $(du -sh "$G-$q.gguf" 2>/dev/null | cut -f1)"
done
{ "$capmoe" --version; grep -m1 "model name" /proc/cpuinfo; echo "nproc $ncpu threads $threads";
  grep -o -m1 -w 'avx512_vnni\|amx_int8' /proc/cpuinfo | sort -u; echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}";
  grep -i "AVX512\|AMX\|GGML_NATIVE" "$out/llama_build.log" 2>/dev/null | head -n 8; } > "$out/res/system.txt" 2>&1

# 3. the runs
run_capmoe() { # weights, or q8all / q4all (--quantize all)
  local f="$out/res/capmoe_$1.json" w="${1%all}" scope=experts
  [ "$w" != "$1" ] && scope=all
  "$capmoe" bench --model "$M" --ep-ranks 1 --policies none --gammas 1.0 \
    --prefill 512 --decode 1,16 --decode-context 64 --decode-steps 16 --repeat 2 --threads "$threads" \
    --weights "$w" --quantize "$scope" --sgemm-size 1024 --copy-mib 512 > "$f" 2>>"$log" || { say "capmoe $1 failed"; rm -f "$f"; }
}
run_rss() { # weights (q8all, q4all: --quantize all): peak RSS of loading the model and one short forward (the bench's
  # own copy and sgemm buffers would count in its RSS)
  local w="${1%all}" scope=experts
  [ "$w" != "$1" ] && scope=all
  timed "$out/res/capmoe_$1.rss" "$capmoe" logits --model "$M" --ids 1,2,3,4,5,6,7,8 --out "$work/x.bin" \
    --weights "$w" --quantize "$scope" --threads "$threads" > /dev/null 2>>"$log" || say "capmoe logits $1 failed"
}
run_llama() { # quant
  local g="$G-$1.gguf"
  [ -x "$bin/llama-bench" ] && [ -s "$g" ] || { say "llama $1: no binary or gguf"; return; }
  timed "$out/res/llama_$1.rss" "$bin/llama-bench" -m "$g" -p 512 -n 64 -t "$threads" -r 2 -o json \
    > "$out/res/llama_$1.json" 2>>"$log" || say "llama-bench $1 failed"
}
run_batched() { # quant
  local g="$G-$1.gguf"
  [ -x "$bin/llama-batched-bench" ] && [ -s "$g" ] || return
  "$bin/llama-batched-bench" -m "$g" -c 2048 -b 2048 -ub 512 -npp 64 -ntg 32 -npl 16 -t "$threads" \
    > "$out/res/llama_batched_$1.txt" 2>>"$log" || say "batched-bench $1 failed"
}
for job in capmoe:q8 llama:Q8_0 capmoe:q4 llama:Q4_0 capmoe:bf16 llama:bf16 llama:Q4_1 \
           capmoe:q8all capmoe:q4all batched:Q8_0 batched:Q4_0 batched:bf16 batched:Q4_1 \
           rss:bf16 rss:q8 rss:q4 rss:q8all rss:q4all; do
  what=${job%%:*}; w=${job##*:}
  if over; then say "over budget: skipped $job"; echo "$job" >> "$out/res/skipped.txt"; continue; fi
  case "$what" in
    capmoe) run_capmoe "$w" ;; llama) run_llama "$w" ;; batched) run_batched "$w" ;; rss) run_rss "$w" ;;
  esac
  say "done $job"
done
python3 "$repo/tests/bench/quant_table.py" "$out/res" > "$out/table.md" 2>>"$log"
cat "$out/table.md"
say "total $(elapsed) s"
