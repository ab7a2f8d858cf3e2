#!/bin/sh
# The random piggyback cases that check_dispatch compares core/dispatch.c
# with (tests/data/piggyback_cases.json) are what the independent Python
# reference (tests/fixtures/gen/dispatch_ref.py) answers today.
set -eu
cd "$(dirname "$0")/.."
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
python3 tests/fixtures/gen/piggyback_cases.py > "$tmp"
cmp "$tmp" tests/data/piggyback_cases.json || {
  echo "tests/data/piggyback_cases.json differs from what piggyback_cases.py generates"; exit 1; }
echo "piggyback reference cases: up to date"
