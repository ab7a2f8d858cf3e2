#!/bin/sh
# t_bench_regime.sh - `capmoe bench` with policy piggyback: one run per k0
# (1, k/4, k/2 by default), activated experts and bytes read per run, the
# decode step time against activated experts, and the memory/compute
# crossover (the "regime" object, printed on stderr too). Structure and
# consistency only: no timing is asserted.
set -eu
cd "$(dirname "$0")/.."
B="${CAPMOE_BUILD:-build}/capmoe"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$B" bench --model tests/fixtures/olmoe-tiny --policies none,piggyback --prefill 32 --decode 2,8 \
  --ep-ranks 1 --repeat 1 --decode-steps 2 --sgemm-size 64 --copy-mib 4 --threads 2 --regime-max 32 \
  > "$tmp/b.json" 2> "$tmp/err"
grep -q "memory/compute crossover: [0-9]* tokens per dispatch" "$tmp/err"
python3 - "$tmp/b.json" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
E, k = o["model"]["experts"], o["model"]["top_k"]
for grp in o["decode"] + o["prefill"]:
    runs = grp["runs"]
    pols = [(r["policy"], r.get("piggyback_k0")) for r in runs]
    assert pols == [("none", None), ("piggyback", 1), ("piggyback", 2)], pols  # k = 4: 1, k/4, k/2
    for r in runs:
        assert 0 < r["activated_experts"] <= E, r
        assert r["piggybacked_pairs"] >= 0 and r["capacity_factor"] is None
        assert abs(r["expert_bytes_per_forward"] -
                   r["activated_experts"] * o["model"]["moe_layers"] *
                   o["decode_time_vs_activated"]["expert_bytes"]) < 1e-6 * r["expert_bytes_per_forward"]
    assert runs[0]["piggybacked_pairs"] == 0
pts = o["decode_time_vs_activated"]["points"]
assert len(pts) == 3 * len(o["decode"]) and all(p["step_time_s"] > 0 for p in pts), pts
assert o["decode_time_vs_activated"]["expert_bytes"] >= 3 * 64 * 48 * 2  # H 64, width 48, >= 2 bytes
rg = o["regime"]
assert rg["tokens"] == [1, 2, 3, 4, 6, 8, 11, 16, 23, 32], rg  # powers of sqrt 2
assert 1 <= rg["crossover_tokens"] <= 32
assert all(0 < a <= E for a in rg["activated_experts"])
print("bench regime: crossover %d tokens; decode activated none/piggyback %s" % (
    rg["crossover_tokens"], [round(r["activated_experts"], 2) for g in o["decode"] for r in g["runs"]]))
PY
echo "t_bench_regime: ok"
