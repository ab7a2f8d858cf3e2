#!/bin/sh
# serve_bench.sh - serving benchmark of capmoe-server: throughput and latency
# percentiles (TTFT, ITL, TPOT, end-to-end) at 1, 4, 16 and 64 concurrent
# streams against one model, in one run, plus the ratio of generated tokens/s
# at 16 streams over 1 stream. Not a test: it reports, it does not judge.
#
#   sh tests/bench/serve_bench.sh [--model DIR | --synth] [--url URL] [--levels 1,4,16,64]
#        [--max-tokens N] [--prompt-words N] [--requests-per-stream N] [--min-seconds S]
#        [--out FILE.json] [--md FILE.md] [-- extra capmoe-server flags]
#
# --synth serves a random checkpoint of Mixtral's layout at a size that
# does not fit in a CPU cache, as deployed MoE models do not: hidden 768,
# 6 layers, 8 experts (top-2) of width 2048, 12 query / 4 KV heads, BF16,
# 0.5 GB, the default model's tokenizer (vocab 8192), skewed routers (the
# `capmoe synth` default). It is written into $CAPMOE_BUILD/serve-model the
# first time (about 10 s). Its text is noise; ignore_eos keeps every
# request at max_tokens.
# Without --url it starts $CAPMOE_BUILD/capmoe-server (default build/) on a
# free 127.0.0.1 port with --max-running at least the largest level, so that
# every stream can join the running batch, and stops it at the end.
# Output: the JSON report on stdout (and in --out), the markdown table on
# stderr (or in --md).
set -u
cd "$(dirname "$0")/../.."
. tests/client/server.sh
BUILD="${CAPMOE_BUILD:-build}"
model=""; synth=0; url=""; levels="1,4,16,64"; max_tokens=64; words=8; per_stream=2; min_s=5; out=""; md=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --synth) model="$BUILD/serve-model"; synth=1; shift ;;
    --url) url="$2"; shift 2 ;;
    --levels) levels="$2"; shift 2 ;;
    --max-tokens) max_tokens="$2"; shift 2 ;;
    --prompt-words) words="$2"; shift 2 ;;
    --requests-per-stream) per_stream="$2"; shift 2 ;;
    --min-seconds) min_s="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --md) md="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "serve_bench: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$synth" = 1 ]; then
  . tests/bench/synth_model.sh
  synth_model "$BUILD/capmoe" "$model" "--arch mixtral --hidden 768 --layers 6 --experts 8 --top-k 2 \
--intermediate 2048 --heads 12 --kv-heads 4 --vocab 8192 --context 4096 --dtype bf16 --skew 8 --seed 0 \
--tokenizer-from config/model" || { echo "serve_bench: capmoe synth failed" >&2; exit 1; }
fi
tmp=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1; rm -rf "$tmp"' EXIT

max_level=$(echo "$levels" | tr ',' '\n' | sort -n | tail -n 1)
if [ -z "$url" ]; then
  set -- --max-running "$max_level" "$@"
  [ -n "$model" ] && set -- --model "$model" "$@"
  start_server "$BUILD/capmoe-server" "$tmp/server.log" "$@" || exit 1
  url="$SERVER_URL"
  info="{\"server\":\"$BUILD/capmoe-server\",\"server_args\":\"$*\",\"cpus\":$(nproc)}"
else
  info="{\"server\":\"$url\",\"cpus\":$(nproc)}"
fi

CAPMOE_URL="$url" BENCH_LEVELS="$levels" BENCH_MAX_TOKENS="$max_tokens" BENCH_PROMPT_WORDS="$words" \
  BENCH_REQUESTS_PER_STREAM="$per_stream" BENCH_MIN_SECONDS="$min_s" BENCH_MD="$md" BENCH_INFO="$info" \
  node tests/bench/serve_bench.mjs > "$tmp/report.json" || { echo "serve_bench: failed" >&2; exit 1; }
cat "$tmp/report.json"
[ -n "$out" ] && cp "$tmp/report.json" "$out"
stop_server || true
