#!/bin/sh
# t_perplexity_decode.sh - `capmoe perplexity --decode` (windows run one
# position at a time, so each dispatch sees B tokens, as decode does):
#  - under policy none it scores the same tokens as the one-pass run with the
#    same perplexity (relative 1e-6: only float summation order differs);
#  - piggyback with k0 = k keeps every token's own top-k: same perplexity;
#  - piggyback with k0 = 1 activates fewer experts per dispatch and reports
#    piggybacked pairs; --decode-policy piggyback below B+1 tokens is the same
#    run as --policy piggyback.
set -eu
cd "$(dirname "$0")/.."
B="${CAPMOE_BUILD:-build}/capmoe"
M=tests/fixtures/olmoe-tiny   # 16 experts, top-4
run() { "$B" perplexity --model $M --file tests/train/heldout.txt --context 48 --stride 48 --batch 4 --max-tokens 400 "$@"; }
run > /tmp/ppl_a.$$
run --decode > /tmp/ppl_b.$$
run --decode --policy piggyback --piggyback-k0 4 > /tmp/ppl_c.$$
run --decode --policy piggyback --piggyback-k0 1 > /tmp/ppl_d.$$
run --decode --policy drop --capacity-factor 0.5 --min-tokens 0 --decode-policy piggyback --piggyback-k0 1 --regime-tokens 5 > /tmp/ppl_e.$$
python3 - /tmp/ppl_a.$$ /tmp/ppl_b.$$ /tmp/ppl_c.$$ /tmp/ppl_d.$$ /tmp/ppl_e.$$ <<'PY'
import json, sys
a, b, c, d, e = (json.load(open(f)) for f in sys.argv[1:])
rel = lambda x, y: abs(x - y) / y
assert a["tokens"] == b["tokens"] == c["tokens"] == d["tokens"], (a["tokens"], b["tokens"])
assert rel(b["perplexity"], a["perplexity"]) < 1e-6, (a["perplexity"], b["perplexity"])
assert b["decode"] and not a["decode"] and b["forwards"] > a["forwards"]
assert rel(c["perplexity"], b["perplexity"]) < 1e-6 and c["piggybacked_pairs"] == 0, c
assert d["activated_experts"] < b["activated_experts"] and d["piggybacked_pairs"] > 0, (b, d)
assert e["perplexity"] == d["perplexity"] and e["decode_policy"] == "piggyback" and e["limited_dispatches"] == 0, e
print("perplexity none %.4f, --decode %.4f; piggyback k0=k %.4f; k0=1 %.4f (activated %.2f -> %.2f)" % (
    a["perplexity"], b["perplexity"], c["perplexity"], d["perplexity"], b["activated_experts"], d["activated_experts"]))
PY
rm -f /tmp/ppl_?.$$
echo "t_perplexity_decode: ok"
