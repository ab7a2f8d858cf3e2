#!/bin/sh
# tests/fuzz/run.sh - runs every libFuzzer harness (make fuzz / make fuzz-long).
#   sh tests/fuzz/run.sh BUILD_DIR SECONDS [NAME...]
# Each harness BUILD_DIR/fuzz/fuzz_NAME starts from the committed seeds
# (tests/fuzz/corpus/NAME) and regression cases (tests/fuzz/regress/NAME);
# what it finds is kept in BUILD_DIR/fuzz-corpus/NAME (not in the tree).
# A crash leaves its input in BUILD_DIR/fuzz-crashes/NAME-*: minimise it
# (fuzz_NAME -minimize_crash=1 -runs=10000 FILE), fix the bug, and commit
# the input to tests/fuzz/regress/NAME/ so make test replays it for good.
# JSON parsers get tests/fuzz/json.dict. Exit 1 when any harness failed.
set -u
cd "$(dirname "$0")/../.."
B="${1:-build-fuzz}"; SECS="${2:-30}"; shift 2 2>/dev/null || shift $#
names="$*"
[ -n "$names" ] || names=$(ls "$B"/fuzz/ 2>/dev/null | sed -n 's/^fuzz_//p')
[ -n "$names" ] || { echo "fuzz: no harnesses in $B/fuzz (make fuzz builds them)" >&2; exit 1; }
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
mkdir -p "$B/fuzz-crashes" "$B/fuzz-logs"
failed=""
for n in $names; do
  mkdir -p "$B/fuzz-corpus/$n"
  dict=""
  case "$n" in request|tokenizer_load|hfconfig|config|chat) dict="-dict=tests/fuzz/json.dict" ;;
               jinja) dict="-dict=tests/fuzz/jinja.dict" ;; esac
  seeds="tests/fuzz/corpus/$n"; reg=""
  [ -d "tests/fuzz/regress/$n" ] && reg="tests/fuzz/regress/$n"
  echo "fuzz: $n for ${SECS}s"
  # shellcheck disable=SC2086
  if "$B/fuzz/fuzz_$n" "$B/fuzz-corpus/$n" "$seeds" $reg $dict -max_total_time="$SECS" \
       -max_len=65536 -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
       -artifact_prefix="$B/fuzz-crashes/$n-" > "$B/fuzz-logs/$n.log" 2>&1; then
    grep -E "^stat::number_of_executed_runs|^#[0-9]+ *DONE" "$B/fuzz-logs/$n.log" | tail -n 2 | sed 's/^/  /'
  else
    failed="$failed $n"
    echo "fuzz: $n FAILED (log $B/fuzz-logs/$n.log):"
    grep -E -A 12 "ERROR:|runtime error:|invariant broken" "$B/fuzz-logs/$n.log" | head -n 30 | sed 's/^/  /'
  fi
done
if [ -n "$failed" ]; then echo "fuzz: failed:$failed (inputs in $B/fuzz-crashes/)"; exit 1; fi
echo "fuzz: every harness ran ${SECS}s without a finding"
