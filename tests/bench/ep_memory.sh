#!/bin/sh
# ep_memory.sh - resident memory of each rank of `capmoe-server --ep mpi`
# for 1, 2 and 4 ranks, on the 0.5 GB Mixtral-layout checkpoint of
# serve_bench.sh --synth (hidden 768, 6 layers, 8 experts of width 2048,
# BF16): the README's measured example of the memory per rank.
#   sh tests/bench/ep_memory.sh [BUILD]
# Prints a markdown table: ranks, rank, experts held, weights the process
# reports, RSS after load (idle, no sequence) from /proc.
set -eu
cd "$(dirname "$0")/../.."
BUILD="${1:-build}"
. tests/bench/synth_model.sh
. tests/mpi_env.sh
model=build/serve-model
synth_model "$BUILD/capmoe" "$model" "--arch mixtral --hidden 768 --layers 6 --experts 8 --top-k 2 \
--intermediate 2048 --heads 12 --kv-heads 4 --vocab 8192 --context 4096 --dtype bf16 --skew 8 --seed 0 \
--tokenizer-from config/model"
echo "| ranks | rank | experts held | weights reported (MiB) | RSS after load (MiB) |"
echo "|---:|---:|---|---:|---:|"
for np in 1 2 4; do
  log=$(mktemp)
  port=$((18900 + np))
  # shellcheck disable=SC2086
  "$MPIRUN" $MPIRUN_ARGS -np "$np" "$BUILD/capmoe-server" --ep mpi --model "$model" \
    --port "$port" > "$log" 2>&1 &
  pid=$!
  t=0
  until grep -q "ready" "$log" && [ "$(grep -c "weights .* MiB" "$log")" -ge "$np" ]; do
    t=$((t + 1)); [ $t -gt 600 ] && { cat "$log"; kill "$pid"; exit 1; }
    sleep 0.2
  done
  sleep 1
  # the ranks' own lines name their pid, experts and weights
  grep -o "rank [0-9]* of [0-9]* (pid [0-9]*).*" "$log" | while read -r line; do
    r=$(echo "$line" | sed 's/rank \([0-9]*\) of.*/\1/')
    p=$(echo "$line" | sed 's/.*(pid \([0-9]*\)).*/\1/')
    ex=$(echo "$line" | sed 's/.*experts \(\[[0-9]*, [0-9]*)\).*/\1/')
    w=$(echo "$line" | sed 's/.*weights \([0-9.]*\) MiB.*/\1/')
    rss=$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$p/status")
    echo "| $np | $r | $ex | $w | $rss |"
  done | sort -t'|' -k3n
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$log"
done
