#!/bin/sh
# tests/run.sh - runs every test of capmoe and prints "N passed, N failed".
#  1. every Check suite (tests/check_*.c), built with AddressSanitizer + UBSan
#  2. every script test tests/t_*.sh (they find the binaries through
#     CAPMOE_BUILD=build and CAPMOE_ASAN=build-asan)
# A single test can be chosen: sh tests/run.sh t_cli_errors
set -u
cd "$(dirname "$0")/.."
export CAPMOE_BUILD="${CAPMOE_BUILD:-build}"
export CAPMOE_ASAN="${CAPMOE_ASAN:-build-asan}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
filter="${1:-}"
pass=0; fail=0; failed=""
log_dir="$CAPMOE_BUILD/test-logs"; mkdir -p "$log_dir"

run_one() { # name, command...
  name="$1"; shift
  case "$name" in *"$filter"*) ;; *) return 0 ;; esac
  start=$(date +%s)
  if "$@" > "$log_dir/$name.log" 2>&1; then
    pass=$((pass + 1)); echo "PASS $name ($(( $(date +%s) - start ))s)"
  else
    fail=$((fail + 1)); failed="$failed $name"
    echo "FAIL $name ($(( $(date +%s) - start ))s) -- last lines of $log_dir/$name.log:"
    tail -n 30 "$log_dir/$name.log" | sed 's/^/    /'
  fi
}

for t in "$CAPMOE_ASAN"/tests/check_*; do
  [ -x "$t" ] || continue
  run_one "$(basename "$t")" "$t"
done
for t in tests/t_*.sh; do
  [ -f "$t" ] || continue
  run_one "$(basename "$t" .sh)" sh "$t"
done
[ -n "$failed" ] && echo "failed:$failed"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
