#!/bin/sh
# t_promtool.sh - the metrics exposition passes `promtool check metrics`
# (Prometheus' own parser and linter) with exit 0 and no lint output, both
# with experts aggregated and with per-(layer, expert) series.
# The populated exposition comes from `check_metrics --dump`; then a live
# server's /metrics (after a completion) must pass too, with the standard
# process_* metrics present and plausible, capmoe_build_info naming this
# build's version and revision, and the 0-1 fractions named _ratio.
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
  grep -q '^capmoe_moe_dispatches_total{limited="true",regime="main"} 1$' "$tmp/$mode.txt"
  rc=0
  promtool check metrics < "$tmp/$mode.txt" > "$tmp/$mode.out" 2>&1 || rc=$?
  if [ "$rc" != 0 ] || [ -s "$tmp/$mode.out" ]; then
    echo "t_promtool: promtool check metrics ($mode) exit $rc:"
    cat "$tmp/$mode.out"
    exit 1
  fi
  echo "promtool check metrics ($mode): ok, $(grep -c '^capmoe_' "$tmp/$mode.txt") samples"
done

# A live server.
. tests/server/common.sh
trap 'srv_kill; rm -rf "$tmp"' EXIT
srv_start "$BUILD/capmoe-server" "$tmp/server.log" --model tests/fixtures/qwen3moe-tiny
node -e '
  const u = process.argv[1];
  fetch(u + "/v1/completions", {method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({prompt: "hello", max_tokens: 4, n: 2})})
  .then(async (r) => { if (!r.ok) throw new Error(String(r.status)); return fetch(u + "/metrics"); })
  .then(async (r) => process.stdout.write(await r.text()))
  .catch((e) => { console.error(e); process.exit(1); });' "$SRV_URL" > "$tmp/live.txt"
rc=0
promtool check metrics < "$tmp/live.txt" > "$tmp/live.out" 2>&1 || rc=$?
if [ "$rc" != 0 ] || [ -s "$tmp/live.out" ]; then
  echo "t_promtool: promtool check metrics (live server) exit $rc:"; cat "$tmp/live.out"; exit 1
fi
pid=$SRV_PID
kill -TERM "$SRV_PID"; srv_wait_exit 20
node -e '
  const t = require("fs").readFileSync(process.argv[1], "utf8");
  const v = (n) => { const m = t.match(new RegExp("^" + n.replace(/[{}"]/g, "\\$&") + " (\\S+)$", "m")); return m ? Number(m[1]) : NaN; };
  const now = Date.now() / 1000, checks = {
    "process_start_time_seconds within the last 10 minutes": v("process_start_time_seconds") > now - 600 && v("process_start_time_seconds") <= now + 1,
    "process_resident_memory_bytes 1 MB..8 GB": v("process_resident_memory_bytes") > 1e6 && v("process_resident_memory_bytes") < 8e9,
    "process_cpu_seconds_total > 0": v("process_cpu_seconds_total") > 0,
    "process_open_fds in 4..max": v("process_open_fds") >= 4 && v("process_open_fds") <= v("process_max_fds"),
    "capmoe_build_info of this build (version, revision, then the machine report)": t.split("\n").some((l) =>
      l.startsWith(`capmoe_build_info{version="${process.argv[2]}",revision="${process.argv[3]}",`) &&
      /,blas_core="[^"]+",/.test(l) && l.endsWith("} 1")),
    "2 finished sequences of reason length": v(`capmoe_request_success_total{finished_reason="length"}`) === 2,
    "generation token histogram": v("capmoe_request_generation_tokens_sum") === 8,
    "no 0-1 fraction without _ratio": !/^# TYPE capmoe_moe_dropped_mass /m.test(t),
  };
  let ok = true;
  for (const [k, c] of Object.entries(checks)) if (!c) { console.error("t_promtool: live /metrics: " + k + ": no"); ok = false; }
  process.exit(ok ? 0 : 1);' "$tmp/live.txt" "$("$BUILD/capmoe-server" --version | sed -n 's/^capmoe-server \([^ ]*\) .*/\1/p')" \
  "$("$BUILD/capmoe-server" --version | sed -n 's/.*(revision \(.*\))$/\1/p')"
echo "promtool check metrics (live server $pid): ok, $(grep -c '^[a-z]' "$tmp/live.txt") samples"

# The check itself works: a counter without _total is reported (exit 3).
printf '# HELP capmoe_bad A counter.\n# TYPE capmoe_bad counter\ncapmoe_bad 1\n' > "$tmp/bad.txt"
if promtool check metrics < "$tmp/bad.txt" > /dev/null 2>&1; then
  echo "t_promtool: promtool accepted a lint error; the test would not detect one"
  exit 1
fi
echo "t_promtool: ok"
