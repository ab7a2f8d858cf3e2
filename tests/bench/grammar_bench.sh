#!/bin/sh
# grammar_bench.sh - what structured outputs cost per token: constrained
# (response_format json_object and three json_schema shapes: nested objects,
# enums, arrays of objects) vs unconstrained generation of the same number of
# tokens, through capmoe-server's /v1/chat/completions (streaming off), at
# batch sizes 1 and 8, measured in the same run (tests/bench/grammar_bench.mjs
# says how). Not a test: it reports, it does not judge.
#
#   sh tests/bench/grammar_bench.sh [--model DIR] [--threads N] [--batches 1,8]
#        [--max-tokens N] [--repeat N] [--formats LIST] [--out FILE.json]
#        [-- extra capmoe-server flags]
#
# Defaults: the default model (config/model), --threads 2, --max-tokens 160,
# 5 rounds after a warm-up (medians reported). It starts $CAPMOE_BUILD/
# capmoe-server (default build/) on a free 127.0.0.1 port with --max-running
# at least the largest batch, and stops it at the end. Output: the JSON report
# on stdout (and in --out); the ratio is constrained / unconstrained wall time
# for the same tokens, overhead_pct = 100 * (ratio - 1); cpu_ratio_median and
# cpu_overhead_pct the same for the CPU time of the server's threads, which a
# machine shared with other work disturbs less.
set -u
cd "$(dirname "$0")/../.."
. tests/client/server.sh
BUILD="${CAPMOE_BUILD:-build}"
model=config/model; threads=2; batches="1,8"; max_tokens=160; repeat=5; formats=""; out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --batches) batches="$2"; shift 2 ;;
    --max-tokens) max_tokens="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --formats) formats="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "grammar_bench: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
tmp=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1; rm -rf "$tmp"' EXIT
max_b=$(echo "$batches" | tr ',' '\n' | sort -n | tail -n 1)
start_server "$BUILD/capmoe-server" "$tmp/server.log" --model "$model" --threads "$threads" \
  --max-running "$max_b" "$@" >&2 || exit 1
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
info="{\"server\":\"$BUILD/capmoe-server\",\"model_dir\":\"$model\",\"threads\":$threads,\"cpus\":$(nproc),\"cpu\":\"$cpu\",\"revision\":\"$(git rev-parse --short HEAD 2>/dev/null)\"}"
CAPMOE_URL="$SERVER_URL" BENCH_SERVER_PID="$SERVER_PID" BENCH_BATCHES="$batches" BENCH_MAX_TOKENS="$max_tokens" BENCH_REPEAT="$repeat" \
  BENCH_FORMATS="$formats" BENCH_INFO="$info" node tests/bench/grammar_bench.mjs > "$tmp/report.json" ||
  { echo "grammar_bench: failed; server log:" >&2; tail -n 20 "$tmp/server.log" >&2; exit 1; }
cat "$tmp/report.json"
[ -n "$out" ] && cp "$tmp/report.json" "$out"
stop_server || true
