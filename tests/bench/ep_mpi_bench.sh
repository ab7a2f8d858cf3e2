#!/bin/sh
# ep_mpi_bench.sh - the README's measured expert-parallel table: does
# capacity buy wall-clock time when experts live in separate processes?
#
#   sh tests/bench/ep_mpi_bench.sh [BIN_DIR [OUT_DIR]]
#
# Makes (once) a Mixtral-layout checkpoint of about 1 B parameters with
# `capmoe synth` (hidden 2048, 4 layers, 8 experts of width 4352, top-2,
# 16 query / 4 KV heads, BF16, trained-like router skew), then runs
#   mpirun -np 8 capmoe bench --ep mpi --tokens 4096 --seq-len 512
# (one expert per rank, 8 x 512 prefill tokens per rank, the paper's
# 8-way data-parallel attention + 8-way expert parallelism) over policies
# none, drop, reroute, expanded at gamma 1.0, 1.5, 2.0, and writes
# OUT_DIR/ep_bench.json and ep_bench.md (the table). Meant for a machine
# with at least 16 cores (2 per rank; the engine uses cores / ranks-per-host
# threads per rank); NP, REPEAT, TOKENS, POLICIES, GAMMAS override.
set -eu
cd "$(dirname "$0")/../.."
BIN="${1:-build}"; OUT="${2:-build/ep-bench}"
NP="${NP:-8}"; REPEAT="${REPEAT:-1}"; TOKENS="${TOKENS:-4096}"
POLICIES="${POLICIES:-none,drop,reroute,expanded}"; GAMMAS="${GAMMAS:-1.0,1.5,2.0}"
MODEL="${MODEL:-$OUT/model}"
mkdir -p "$OUT"
. tests/mpi_env.sh
if [ ! -f "$MODEL/config.json" ]; then
  "$BIN/capmoe" synth --arch mixtral --out "$MODEL" --hidden 2048 --layers 4 --experts 8 \
    --top-k 2 --intermediate 4352 --heads 16 --kv-heads 4 --vocab 32000 --dtype bf16 \
    --context 4096 > "$OUT/synth.json"
fi
cores=$(nproc)
echo "ep_mpi_bench: $NP ranks on $cores cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))" >&2
# shellcheck disable=SC2086
"$MPIRUN" $MPIRUN_ARGS ${MPIRUN_EXTRA:-} -np "$NP" "$BIN/capmoe" bench --ep mpi --model "$MODEL" \
  --tokens "$TOKENS" --seq-len 512 --policies "$POLICIES" --gammas "$GAMMAS" --repeat "$REPEAT" \
  --format json > "$OUT/ep_bench.json"
python3 - "$OUT/ep_bench.json" > "$OUT/ep_bench.md" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s, m = d["settings"], d["model"]
print("%d ranks (%d per host, %s), %d experts of width %d (%d per rank), hidden %d, %d MoE layers, "
      "%d prefill tokens per rank in sequences of %d; best of %d run(s) per row." %
      (s["ranks"], s["ranks_per_host"], s["host"], m["experts"], m["expert_width"], s["experts_per_rank"],
       m["hidden_size"], m["moe_layers"], s["tokens_per_rank"], s["seq_len"], s["repeat"]))
print()
print("| policy | gamma | MoE layer ms | measured speedup | modelled speedup | measured / modelled "
      "| straggler (expert max / mean) | all-to-all ms (share of layer) | max rank load | dropped |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in d["runs"]:
    g = "-" if r["gamma"] is None else "%g" % r["gamma"]
    print("| %s | %s | %.1f | %.2fx | %.2fx | %.0f%% | %.2f | %.1f (%.1f%%) | %d | %.3f |" % (
        r["policy"], g, r["moe_layer_ms"], r["speedup_measured"], r["speedup_modelled"],
        100 * r["measured_over_modelled"], r["straggler_ratio"], r["alltoall_ms"],
        100 * r["alltoall_share"], r["max_rank_load"], r["dropped_fraction"]))
PY
cat "$OUT/ep_bench.md"
