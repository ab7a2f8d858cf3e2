#!/bin/sh
# t_fp8.sh - FP8 block-quantized checkpoints (issue 13), beyond the
# transformers parity fixture (tests/fixtures/qwen3moe-fp8-tiny, checked by
# t_parity.sh when present):
#  1. tests/fp8_convert.py writes mixtral-tiny in the published FP8 format
#     (F8_E4M3 projections + float32 weight_scale_inv blocks) and the same
#     model with those matrices dequantized in float64 as an F32 checkpoint:
#     capmoe's logits of the two agree within 1e-5 (the FP8 bytes are kept
#     and widened exactly in the kernels),
#     the routing too; --weights q8 on the FP8 model equals --weights q8 on
#     the dequantized one (the same float32 values are quantized);
#  2. bad checkpoints fail with a message naming the problem, never a crash
#     (AddressSanitizer build): a missing scale tensor, a misshaped one, an
#     unknown quant_method, an unsupported block size.
set -u
cd "$(dirname "$0")/.."
B="${CAPMOE_BUILD:-build}/capmoe"
A="${CAPMOE_ASAN:-build-asan}/capmoe"
[ -x "$A" ] || A="$B"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
FX=tests/fixtures/mixtral-tiny
python3 tests/fp8_convert.py $FX "$tmp/fp8" --dequant "$tmp/deq" || { echo "FAIL converter"; exit 1; }
python3 - "$B" "$A" "$tmp" <<'PY' || fail=1
import json, struct, subprocess, sys
B, A, T = sys.argv[1:4]
ids = ["--ids", "5,9,12,40,7,33,2,90,14", "--ids", "3,4,5", "--ids", ",".join(str(i % 500 + 3) for i in range(70))]
def run(binary, model, extra=()):
    out = T + "/o.bin"
    p = subprocess.run([binary, "logits", "--model", model] + ids + ["--out", out] + list(extra),
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit("logits on %s failed: %s" % (model, p.stderr))
    d = open(out, "rb").read()
    return json.loads(p.stdout), struct.unpack("<%df" % (len(d) // 4), d)
bad = 0
rd, ld = run(B, T + "/deq")
for binary in (B, A):
    rf, lf = run(binary, T + "/fp8")
    e = max(abs(a - b) for a, b in zip(lf, ld)) / max(abs(x) for x in ld)
    ok = e < 1e-5 and rf["loads"] == rd["loads"]
    print("%s FP8 vs dequantized F32 (%s): relative error %.3g, loads %s" % ("ok  " if ok else "FAIL", binary, e,
          "equal" if rf["loads"] == rd["loads"] else "DIFFER"))
    bad += not ok
# --weights q8 quantizes the experts from their FP8 values times the scales:
# the same float32 values as the dequantized checkpoint's, so the same Q8
_, lq = run(B, T + "/fp8", ["--weights", "q8"])
_, lqd = run(B, T + "/deq", ["--weights", "q8"])
e = max(abs(a - b) for a, b in zip(lq, lqd)) / max(abs(x) for x in lqd)
e0 = max(abs(a - b) for a, b in zip(lq, ld)) / max(abs(x) for x in ld)
ok = e < 1e-5 and e0 > 1e-4
print("%s FP8 checkpoint with --weights q8: %.3g from the dequantized one's q8, %.3g from its float" % (
      "ok  " if ok else "FAIL", e, e0))
bad += not ok
sys.exit(1 if bad else 0)
PY

expect_err() { # WORD DIR
  "$A" logits --model "$2" --ids 1,2 --out "$tmp/x" >"$tmp/out" 2>"$tmp/err"; rc=$?
  if [ "$rc" -eq 0 ] || ! grep -q -- "$1" "$tmp/err" || grep -q -E "Sanitizer|runtime error" "$tmp/err"; then
    echo "FAIL (rc=$rc, want '$1'):"; head -5 "$tmp/err"; fail=1
  else
    echo "ok   $(head -1 "$tmp/err")"
  fi
}
for k in no-scale scale-shape method block; do
  python3 tests/fp8_convert.py $FX "$tmp/bad-$k" --break $k || fail=1
done
expect_err "_scale_inv are missing" "$tmp/bad-no-scale"
expect_err "must be F32 of shape" "$tmp/bad-scale-shape"
expect_err 'quant_method "gptq" is not supported' "$tmp/bad-method"
expect_err "weight_block_size \[100, 128\] is not supported" "$tmp/bad-block"
[ "$fail" = 0 ] && echo "t_fp8: ok"
exit $fail
