#!/bin/sh
# t_grammar_bench.sh - smoke run of the structured-outputs benchmark
# (tests/bench/grammar_bench.sh): one short round at batch 1 and 2 on the
# default model; checks only the report's shape (every format and batch,
# positive timings, equal token counts). It judges no speed.
set -u
cd "$(dirname "$0")/.."
BUILD="${CAPMOE_BUILD:-build}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
CAPMOE_BUILD="$BUILD" sh tests/bench/grammar_bench.sh --threads 1 --batches 1,2 --repeat 1 \
  --max-tokens 24 --out "$tmp/r.json" > /dev/null || { echo "t_grammar_bench: the benchmark failed"; exit 1; }
node -e '
const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
const want = ["json_object", "nested", "enums", "arrays"];
const fail = (m) => { console.log("t_grammar_bench: " + m); process.exit(1); };
if (r.threads !== 1 || !r.model || r.max_tokens !== 24) fail("header: " + JSON.stringify(r).slice(0, 200));
for (const b of [1, 2])
  for (const f of want) {
    const x = r.results.find((e) => e.batch === b && e.format === f);
    if (!x) fail(`no row for batch ${b} ${f}`);
    for (const k of ["constrained_ms_per_token", "unconstrained_ms_per_token", "ratio_median", "tokens_per_request"])
      if (!(typeof x[k] === "number" && x[k] > 0)) fail(`batch ${b} ${f}: ${k} = ${x[k]}`);
    if (typeof x.overhead_pct !== "number" || x.ratios.length !== 1) fail(`batch ${b} ${f}: ${JSON.stringify(x)}`);
  }
' "$tmp/r.json" || exit 1
echo "t_grammar_bench: ok"
