#!/bin/sh
# Parity with Hugging Face transformers: every fixture under tests/fixtures/
# that has parity/cases.json, every dispatch policy (plain build), plus a
# quick subset under AddressSanitizer.
set -eu
cd "$(dirname "$0")/.."
B="${CAPMOE_BUILD:-build}"; A="${CAPMOE_ASAN:-build-asan}"
n=0
for f in tests/fixtures/*/parity/cases.json; do
  [ -f "$f" ] || continue
  dir=$(dirname "$(dirname "$f")")
  python3 tests/parity_check.py "$dir" "$B/capmoe"
  if [ -x "$A/capmoe" ]; then python3 tests/parity_check.py "$dir" "$A/capmoe" --quick; fi
  n=$((n + 1))
done
[ "$n" -ge 8 ] || { echo "expected at least 8 parity fixtures, found $n"; exit 1; }
echo "parity: $n fixtures ok"
