#!/bin/sh
# bench_short.sh - the short benchmark behind `make bench`: prints the
# markdown table of `capmoe bench` (machine ceilings, prefill and decode
# throughput per dispatch policy and capacity factor, expert loads, dropped
# routing mass, modelled expert-parallel speedups, prefill/decode ratios).
#
#   sh tests/bench/bench_short.sh [extra capmoe bench options]
#
# The model is a random Mixtral-layout checkpoint written by `capmoe synth`
# into build/bench-model (re-made when its synth options change): hidden 1024,
# 2 layers, 8 experts, top-2, expert width 2048, 16 heads / 4 KV heads,
# vocab 4096, skewed routers (skew 8). About 460 MB as float32.
# Environment: CAPMOE_BUILD (default build), BENCH_MODEL (another model
# directory to use instead). Extra options are passed on (e.g. --format json).
# It takes about a minute on 2 cores. The full table of the README comes from
#   build/capmoe bench --model build/bench-model --format table
# (prefill 64..8192, decode 1,16,64, gammas 1.0,1.5,2.0: several minutes).
set -eu
cd "$(dirname "$0")/../.."
BUILD="${CAPMOE_BUILD:-build}"
CAPMOE="$BUILD/capmoe"
[ -x "$CAPMOE" ] || { echo "bench_short.sh: $CAPMOE is missing (run make)" >&2; exit 1; }
MODEL="${BENCH_MODEL:-$BUILD/bench-model}"
if [ -z "${BENCH_MODEL:-}" ]; then
  . tests/bench/synth_model.sh
  synth_model "$CAPMOE" "$MODEL" "--arch mixtral --hidden 1024 --layers 2 --experts 8 --top-k 2 \
--intermediate 2048 --heads 16 --kv-heads 4 --vocab 4096 --context 8192 --skew 8 --seed 0"
fi
OPTS="--prefill 512,2048 --decode 1,16 --policies none,drop,expanded,reroute --gammas 1.0,1.5 --repeat 2"
"$CAPMOE" bench --model "$MODEL" $OPTS --format table "$@"
