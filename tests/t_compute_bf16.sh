#!/bin/sh
# t_compute_bf16.sh - --compute bf16 (experts' products in BF16 through
# oneDNN) and --kv-dtype bf16 (a BF16 KV cache): every parity fixture's
# logits within the stated bound of the transformers float64 reference and
# different from float32 (tests/bf16_check.py; the cache's bound is
# tests/check_kvbf16.c's); both paths under AddressSanitizer; the options
# checked, reported by bench, and taken by the server (CAPMOE_COMPUTE,
# CAPMOE_KV_DTYPE, capmoe_build_info's compute and kv_dtype labels).
set -eu
cd "$(dirname "$0")/.."
BUILD="${CAPMOE_BUILD:-build}"
ASAN="${CAPMOE_ASAN:-build-asan}"
M=tests/fixtures/mixtral-tiny
tmp=$(mktemp -d)
. tests/server/common.sh
trap 'srv_kill; rm -rf "$tmp"' EXIT
fail() { echo "t_compute_bf16: $*"; exit 1; }

python3 tests/bf16_check.py "$BUILD/capmoe" tests/fixtures/*-tiny

[ -x "$ASAN/capmoe" ] || fail "$ASAN/capmoe not built (make asan)"
"$ASAN/capmoe" logits --model tests/fixtures/qwen2moe-tiny --ids 5,9,12,4,4,4,4,8,9,10 --ids 7,3,3,5,6 \
  --out "$tmp/a.bin" --compute bf16 --bf16-min-rows 1 > /dev/null || fail "ASan logits --compute bf16"
"$ASAN/capmoe" generate --model $M --ids 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18 --max-tokens 3 \
  --compute bf16 --bf16-min-rows 4 > /dev/null || fail "ASan generate --compute bf16"
"$ASAN/capmoe" generate --model tests/fixtures/qwen2moe-tiny --ids 1,2,3,4,5,6,7,8 --max-tokens 4 \
  --kv-dtype bf16 > /dev/null || fail "ASan generate --kv-dtype bf16"
rc=0; "$BUILD/capmoe" generate --model tests/fixtures/deepseekv2-tiny --ids 1,2 --max-tokens 1 \
  --kv-dtype bf16 2> "$tmp/e.txt" > /dev/null || rc=$?
[ "$rc" = 1 ] && grep -q "kv-dtype bf16: not for latent attention" "$tmp/e.txt" || fail "latent attention + --kv-dtype bf16 not refused (rc $rc)"

rc=0; "$BUILD/capmoe" logits --model $M --ids 1,2 --out "$tmp/l.bin" --compute fp8 2> "$tmp/e.txt" > /dev/null || rc=$?
[ "$rc" = 2 ] && grep -q -- "--compute: 'fp8'" "$tmp/e.txt" || fail "--compute fp8 not refused (rc $rc)"
rc=0; CAPMOE_COMPUTE=half "$BUILD/capmoe" logits --model $M --ids 1,2 --out "$tmp/l.bin" 2> /dev/null > /dev/null || rc=$?
[ "$rc" = 2 ] || fail "CAPMOE_COMPUTE=half not refused (rc $rc)"

# tests/bench/matmul_shapes at a small shape: every way of running an MoE
# layer's products (BF16 items at several chunk widths, one OpenMP team, f32
# on BF16 weights, OpenBLAS threaded) against ops.h's float32 product on the
# same values; BF16 activations bound the BF16 modes' error.
"$BUILD/tests/bench/matmul_shapes" --threads 2 --rows 8,40 --hidden 96 --inter 80 --experts 3 \
  --cw 16,32,48 --reps 1 > "$tmp/mm.json" || fail "matmul_shapes failed"
python3 - "$tmp/mm.json" <<'PY' || fail "matmul_shapes: a mode differs from the float32 product"
import json, sys
runs = json.load(open(sys.argv[1]))
modes = {r["mode"] for r in runs}
want = {"f32_f32w", "f32_bf16w", "sgemm_team", "bf16_items_cw16", "bf16_items_cw32", "bf16_items_cw48", "bf16_team"}
assert want <= modes, modes
for r in runs:
    bound = 2e-2 if r["mode"].startswith("bf16") else 1e-5
    assert r["rel_diff"] <= bound, r
    # bf16 modes differ from float32 (BF16 activations): a zero would mean the
    # reference was compared with itself
    if r["mode"].startswith("bf16"):
        assert r["rel_diff"] > 0, r
print("matmul_shapes: %d runs within bounds" % len(runs))
PY

"$BUILD/capmoe" bench --model $M --policies none --gammas 1.0 --prefill 64 --decode "" --repeat 1 \
  --sgemm-size 64 --copy-mib 1 --compute bf16 --kv-dtype bf16 > "$tmp/b.json"
grep -q '"compute":"bf16"' "$tmp/b.json" || fail "bench JSON does not say compute bf16"
grep -q '"kv_dtype":"bf16"' "$tmp/b.json" || fail "bench JSON does not say kv_dtype bf16"

CAPMOE_COMPUTE=bf16 CAPMOE_KV_DTYPE=bf16 srv_start "$BUILD/capmoe-server" "$tmp/s.log" --model $M
node -e '
  fetch(process.argv[1] + "/metrics").then((r) => r.text()).then((t) => {
    const l = t.split("\n").find((x) => x.startsWith("capmoe_build_info{"));
    if (!l || !/compute="bf16"/.test(l) || !/kv_dtype="bf16"/.test(l)) { console.error(l); process.exit(1); }
  });' "$SRV_URL" || fail "capmoe_build_info has no compute=\"bf16\" or kv_dtype=\"bf16\""
node -e '
  fetch(process.argv[1] + "/v1/completions", {method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({prompt: "hello world, this is a longer prompt for the experts", max_tokens: 4})})
  .then(async (r) => { if (!r.ok) throw new Error(String(r.status)); const j = await r.json();
    if (!j.choices || !j.choices[0]) throw new Error("no choice"); })
  .catch((e) => { console.error(e); process.exit(1); });' "$SRV_URL" || fail "completion under bf16"
echo "t_compute_bf16: ok"
