#!/bin/sh
# t_mixed_bench.sh - tests/bench/mixed_bench.sh end to end at toy scale on
# config/model-fine (2 s of load per configuration, 2 decode streams, one
# long prompt): the JSON report's shape, the markdown tables, and one
# invariant (under policy none the decode-like perplexity equals the one-pass
# perplexity). Structure and consistency only: no timing is asserted.
set -eu
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
sh tests/bench/mixed_bench.sh --model config/model-fine --duration 2 --threads 2 --streams 2 \
  --max-tokens 8 --long 1 --long-min 100 --long-max 150 --configs A,B --ppl-tokens 512 \
  --out "$tmp/r.json" --md "$tmp/r.md" > "$tmp/stdout" 2> "$tmp/err" || { cat "$tmp/err"; exit 1; }
cmp "$tmp/stdout" "$tmp/r.json"
node - "$tmp/r.json" <<'JS'
const o = JSON.parse(require('fs').readFileSync(process.argv[2], 'utf8'));
const assert = require('assert');
assert.deepStrictEqual(o.configurations.map((c) => c.name), ['A', 'B']);
assert.strictEqual(o.configurations[0].flags, '--policy none');
for (const c of o.configurations) {
  const l = c.load;
  assert.strictEqual(l.long_requests, 1);
  assert.ok(l.decode_requests >= 2 && l.generated_tokens === l.decode_requests * 8 + 16, JSON.stringify(l));
  for (const k of ['ttft_decode_ms', 'ttft_long_ms', 'itl_decode_ms'])
    for (const p of ['p50', 'p90', 'p99']) assert.ok(l[k][p] >= 0, k + p);
  const m = l.metrics;
  assert.ok(m.regime_crossover_tokens >= 0 && m.activated_experts_mean > 0 && m.activated_experts_mean <= 64);
  const n = Object.values(m.dispatches).reduce((a, b) => a + b, 0);
  assert.ok(n > 0 && m.routed_pairs > 0 && m.dropped_ratio >= 0 && m.dropped_ratio < 1, JSON.stringify(m));
  assert.ok(c.ppl_decode.decode === true && c.ppl_decode.batch === 2 && c.ppl_prefill.decode === false);
  assert.ok(c.ppl_decode.perplexity > 1 && c.ppl_prefill.perplexity > 1);
}
const [a, b] = o.configurations;
assert.strictEqual(a.load.metrics.piggybacked_pairs + a.load.metrics.dropped_pairs, 0);
assert.ok(Object.keys(a.load.metrics.dispatches).every((k) => k === 'main' || a.load.metrics.dispatches[k] === 0));
assert.ok(Math.abs(a.ppl_decode.perplexity / a.ppl_prefill.perplexity - 1) < 1e-4);
assert.ok(b.load.metrics.regime_crossover_tokens >= 1);
assert.strictEqual(b.ppl_decode.policy, 'drop');
assert.strictEqual(b.ppl_decode.decode_policy, 'piggyback');
assert.strictEqual(b.ppl_decode.regime_tokens, b.load.metrics.regime_crossover_tokens);
JS
# two tables, one row per configuration in each
[ "$(grep -c '^| [AB] |' "$tmp/r.md")" = 4 ]
grep -q '^Mixed load: 2 decode streams' "$tmp/r.md"
echo "t_mixed_bench: ok"
