#!/bin/sh
# t_bad_models.sh - about 60 malformed model directories (tests/bad_models.py:
# truncated and inconsistent safetensors, wrong dtypes and shapes, missing
# tensors and shards, bad or implausible config.json values, broken
# tokenizer.json / tokenizer_config.json, FIFOs and devices in place of
# files). Loading each one (capmoe generate, AddressSanitizer + UBSan build)
# must fail at once with exit 1 and an error naming the file, tensor or key,
# never crash or hang. Then capmoe-server on a few of them: exit 1 and the
# error as the server's logger writes it ("<time> error model: <message>"
# when config.json is refused before listening, "<time> error cannot load
# the model: <message>" when loading fails, and the JSON record with
# --log-format json).
set -u
cd "$(dirname "$0")/.."
BIN="${CAPMOE_ASAN:-build-asan}/capmoe"
[ -x "$BIN" ] || BIN="${CAPMOE_BUILD:-build}/capmoe"
SRV="${CAPMOE_ASAN:-build-asan}/capmoe-server"
[ -x "$SRV" ] || SRV="${CAPMOE_BUILD:-build}/capmoe-server"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 tests/bad_models.py "$tmp" > /dev/null || { echo "t_bad_models: bad_models.py failed"; exit 1; }
n=0; fails=0
TAB=$(printf '\t')
while IFS="$TAB" read -r dir word; do
  n=$((n + 1)); name=$(basename "$dir")
  # a FIFO must not block: timeout turns a hang into a failure (status 124)
  timeout 60 "$BIN" generate --model "$dir" --prompt hi --max-tokens 1 > "$tmp/out" 2> "$tmp/err" < /dev/null
  rc=$?
  if [ "$rc" != 1 ] || ! grep -q -F -- "$word" "$tmp/err" || grep -q -E "Sanitizer|runtime error" "$tmp/err"; then
    echo "FAIL $name (exit $rc, want 1 and '$word'):"; head -n 5 "$tmp/err" | sed 's/^/    /'
    fails=$((fails + 1))
  else
    echo "ok   $name: $(head -n 1 "$tmp/err" | cut -c1-160)"
  fi
done < "$tmp/cases.tsv"

# the server: the load fails, the logger writes the error, exit status 1
for c in cfg_head_dim_huge:head_dim st_offsets_past_end:model.layers.0 tok_post_negative:'not a token id'; do
  name=${c%%:*}; word=${c#*:}; n=$((n + 1))
  timeout 120 "$SRV" --model "$tmp/$name" --port 0 > "$tmp/srv" 2>&1 < /dev/null; rc=$?
  if [ "$rc" = 1 ] && grep -q -E "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z error (model|cannot load the model): .*$word" "$tmp/srv" &&
     ! grep -q -E "Sanitizer|runtime error" "$tmp/srv"; then
    echo "ok   server $name: $(grep -E ' error (model|cannot load the model): ' "$tmp/srv" | head -n 1 | cut -c1-160)"
  else
    echo "FAIL server $name (exit $rc, want 1 and an error record with '$word'):"; tail -n 5 "$tmp/srv" | sed 's/^/    /'
    fails=$((fails + 1))
  fi
done
n=$((n + 1))
timeout 120 "$SRV" --model "$tmp/cfg_fifo" --port 0 --log-format json > "$tmp/srv" 2>&1 < /dev/null; rc=$?
if [ "$rc" = 1 ] && grep -q '^{"time":"[^"]*","level":"error","msg":"model: .*config.json: is a FIFO, not a regular file"' "$tmp/srv"; then
  echo "ok   server cfg_fifo (json): $(grep '"level":"error"' "$tmp/srv" | head -n 1 | cut -c1-160)"
else
  echo "FAIL server cfg_fifo --log-format json (exit $rc):"; tail -n 5 "$tmp/srv" | sed 's/^/    /'; fails=$((fails + 1))
fi
echo "t_bad_models: $n cases, $fails failed ($BIN)"
[ "$fails" = 0 ]
