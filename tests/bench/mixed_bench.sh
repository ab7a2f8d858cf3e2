#!/bin/sh
# mixed_bench.sh - per-batch dispatch tuning end to end: capmoe-server under a
# mixed load (long prompts arriving while other sequences decode), once per
# configuration, all in one run:
#   A  --policy none
#   B  --policy drop --capacity-factor auto --decode-policy piggyback --regime-tokens auto
#   C  B with --piggyback-k0 6
# Per configuration: generated tokens/s, TTFT p50/p90/p99 (decode streams and
# long prompts apart), ITL p50/p90/p99 of the decode streams, and from /metrics
# the dispatches per regime, activated experts, piggybacked and dropped pairs;
# then the quality of the same flags on the trained fine-grained model
# (config/model-fine): `capmoe perplexity --decode --batch STREAMS` (decode-like
# dispatches) and the one-pass perplexity (prefill-like dispatches), with
# `--regime-tokens auto` replaced by the crossover the server measured, so the
# quality run splits regimes where the server did. Not a test: it reports.
#
#   sh tests/bench/mixed_bench.sh [--model DIR] [--duration S] [--threads N]
#        [--streams S] [--max-tokens N] [--long N] [--long-min N] [--long-max N]
#        [--configs A,B,C] [--regime-tokens auto|N] [--ppl-tokens N] [--no-ppl] [--seed N]
#        [--out FILE.json] [--md FILE.md] [-- extra capmoe-server flags]
#
# Without --model it serves a fine-grained random checkpoint big enough that
# weights stream from DRAM (Qwen3-MoE layout, hidden 1024, 6 layers, 64
# experts top-8 of width 256, BF16, 0.64 GB, skewed routers, the default
# model's tokenizer), written into $CAPMOE_BUILD/mixed-model the first time.
# Its text is noise: ignore_eos keeps every request at its max_tokens.
# Defaults: --duration 60, --threads 0 (one per CPU), --streams 16,
# --max-tokens 64, --long 6 prompts of 1000..2000 tokens (16 tokens each),
# --regime-tokens auto (a number replaces auto in B and C: the crossover
# measured at start is noisy on a loaded machine), --ppl-tokens 12288 of
# tests/train/heldout.txt (as the README's piggyback quality table).
# Binaries: $CAPMOE_BUILD (default build/) capmoe-server and capmoe. Each
# server gets --max-running streams + long. Output: the JSON report on stdout (and in --out), the
# markdown tables on stderr (or in --md).
set -u
cd "$(dirname "$0")/../.." || exit 1
. tests/client/server.sh
BUILD="${CAPMOE_BUILD:-build}"
model=""; duration=60; threads=0; streams=16; max_tokens=64; nlong=6; long_min=1000; long_max=2000
long_tokens=16; configs="A,B,C"; regime=auto; ppl_tokens=12288; ppl=1; seed=1; out=""; md=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --streams) streams="$2"; shift 2 ;;
    --max-tokens) max_tokens="$2"; shift 2 ;;
    --long) nlong="$2"; shift 2 ;;
    --long-min) long_min="$2"; shift 2 ;;
    --long-max) long_max="$2"; shift 2 ;;
    --configs) configs="$2"; shift 2 ;;
    --regime-tokens) regime="$2"; shift 2 ;;
    --ppl-tokens) ppl_tokens="$2"; shift 2 ;;
    --no-ppl) ppl=0; shift ;;
    --seed) seed="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --md) md="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "mixed_bench: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$model" ]; then
  model="$BUILD/mixed-model"
  . tests/bench/synth_model.sh
  synth_model "$BUILD/capmoe" "$model" "--arch qwen3_moe --hidden 1024 --layers 6 --experts 64 --top-k 8 \
--intermediate 256 --heads 16 --kv-heads 4 --vocab 8192 --context 4096 --dtype bf16 --skew 8 --seed 0 \
--tokenizer-from config/model" || { echo "mixed_bench: capmoe synth failed" >&2; exit 1; }
fi
vocab=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1]+"/config.json")).vocab_size)' "$model") ||
  { echo "mixed_bench: cannot read $model/config.json" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1; rm -rf "$tmp"' EXIT

flags_of() {
  case "$1" in
    A) echo "--policy none" ;;
    B) echo "--policy drop --capacity-factor auto --decode-policy piggyback --regime-tokens $regime" ;;
    C) echo "--policy drop --capacity-factor auto --decode-policy piggyback --regime-tokens $regime --piggyback-k0 6" ;;
    *) return 1 ;;
  esac
}

names=""
for c in $(echo "$configs" | tr ',' ' '); do
  flags=$(flags_of "$c") || { echo "mixed_bench: unknown configuration $c (A, B or C)" >&2; exit 2; }
  echo "$flags" > "$tmp/$c.flags"
  echo "mixed_bench: $c: capmoe-server $flags" >&2
  # shellcheck disable=SC2086 # the flags are words
  start_server "$BUILD/capmoe-server" "$tmp/$c.server.log" --model "$model" --threads "$threads" \
    --max-running $((streams + nlong)) $flags "$@" >&2 || exit 1
  CAPMOE_URL="$SERVER_URL" MIX_LABEL="$c" MIX_DURATION="$duration" MIX_STREAMS="$streams" \
    MIX_MAX_TOKENS="$max_tokens" MIX_LONG="$nlong" MIX_LONG_MIN="$long_min" MIX_LONG_MAX="$long_max" \
    MIX_LONG_MAX_TOKENS="$long_tokens" MIX_VOCAB="$vocab" MIX_SEED="$seed" \
    node tests/bench/mixed_bench.mjs > "$tmp/$c.load.json" || { echo "mixed_bench: $c: load failed" >&2; exit 1; }
  stop_server >/dev/null 2>&1
  if [ "$ppl" = 1 ]; then
    cross=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).metrics.regime_crossover_tokens ?? 0)' "$tmp/$c.load.json")
    pflags=$(echo "$flags" | sed "s/--regime-tokens auto/--regime-tokens $cross/")
    for mode in decode prefill; do
      if [ "$mode" = decode ]; then extra="--decode --batch $streams"; else extra="--batch 8"; fi
      echo "mixed_bench: $c: capmoe perplexity $extra $pflags" >&2
      # shellcheck disable=SC2086
      "$BUILD/capmoe" perplexity --model config/model-fine --file tests/train/heldout.txt --context 256 \
        --stride 256 --max-tokens "$ppl_tokens" --threads "$threads" $extra $pflags > "$tmp/$c.ppl_$mode.json" ||
        { echo "mixed_bench: $c: capmoe perplexity failed" >&2; exit 1; }
    done
  fi
  names="$names $c"
done

info="{\"server\":\"$BUILD/capmoe-server\",\"model_dir\":\"$model\",\"extra_server_args\":\"$*\",\"threads\":$threads,\"cpus\":$(nproc),\"ppl_model\":\"config/model-fine\",\"ppl_tokens\":$ppl_tokens}"
# shellcheck disable=SC2086
MIX_INFO="$info" MIX_MD="$md" node tests/bench/mixed_table.mjs "$tmp" $names > "$tmp/report.json" ||
  { echo "mixed_bench: report failed" >&2; exit 1; }
cat "$tmp/report.json"
[ -n "$out" ] && cp "$tmp/report.json" "$out"
exit 0
