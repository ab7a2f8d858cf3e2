#!/bin/sh
# t_promtool.sh - the metrics exposition passes `promtool check metrics`
# (Prometheus' own parser and linter) with exit 0 and no lint output, both
# with experts aggregated and with per-(layer, expert) series.
# The populated exposition comes from `check_metrics --dump`.
set -eu
cd "$(dirname "$0")/.."
BUILD="${CAPMOE_BUILD:-build}"
bin="$BUILD/tests/check_metrics"
[ -x "$bin" ] || { echo "t_promtool: $bin not built (make tests)"; exit 1; }
command -v promtool >/dev/null 2>&1 || { echo "t_promtool: promtool not installed (Debian package prometheus)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for mode in aggregated per-layer; do
  "$bin" --dump "$mode" > "$tmp/$mode.txt"
  # Sanity: the dump really is a populated exposition.
  grep -q '^capmoe_generation_tokens_total 20$' "$tmp/$mode.txt"
  grep -q '^capmoe_moe_dispatches_total{limited="true"} 1$' "$tmp/$mode.txt"
  rc=0
  promtool check metrics < "$tmp/$mode.txt" > "$tmp/$mode.out" 2>&1 || rc=$?
  if [ "$rc" != 0 ] || [ -s "$tmp/$mode.out" ]; then
    echo "t_promtool: promtool check metrics ($mode) exit $rc:"
    cat "$tmp/$mode.out"
    exit 1
  fi
  echo "promtool check metrics ($mode): ok, $(grep -c '^capmoe_' "$tmp/$mode.txt") samples"
done

# The check itself works: a counter without _total is reported (exit 3).
printf '# HELP capmoe_bad A counter.\n# TYPE capmoe_bad counter\ncapmoe_bad 1\n' > "$tmp/bad.txt"
if promtool check metrics < "$tmp/bad.txt" > /dev/null 2>&1; then
  echo "t_promtool: promtool accepted a lint error; the test would not detect one"
  exit 1
fi
echo "t_promtool: ok"
