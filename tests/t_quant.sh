#!/bin/sh
# t_quant.sh - --weights q8|q4 end to end (issue 13): the experts quantized at
# load, through the CLI, against the transformers reference of a parity fixture.
#  1. logits of mixtral-tiny's parity batch under q8 / q4: close to the
#     float64 transformers reference (relative error within the formats'
#     budgets, and not zero: the experts really are quantized), the first MoE
#     layer's routing identical (the router is not quantized, and its input
#     does not depend on the experts), --weights bf16 bit-identical to the
#     default;
#  2. CAPMOE_WEIGHTS gives the same bytes as --weights; a sequence's logits
#     alone and in the batch agree (the int8 products of a row do not depend
#     on the other rows; the float32 attention may round differently);
#  3. perplexity of the default model: q8 within 0.5% of bf16 and q4 within
#     5% (the issue's goals), measured on the first 4096 held-out tokens;
#  5. capmoe-server started with CAPMOE_WEIGHTS=q8: its greedy completion of
#     token ids equals `capmoe generate --weights q8` (ASan build when built);
#  4. bad input: an unknown format (flag and environment), dimensions that
#     are not multiples of the block (qwen3moe-tiny: moe_intermediate_size 48;
#     under --quantize all a shared expert of width 80), --quantize all
#     without q8|q4 (CLI and server), an unknown scope: errors naming the
#     problem, under AddressSanitizer.
#  --quantize all (attention, shared/dense MLPs, lm_head quantized too) in
#  1, 3 and 5: logits within their budgets of the reference, perplexity within
#  the same goals, the server (CAPMOE_QUANTIZE=all) equal to the CLI and
#  labelled quantize="all" in capmoe_build_info.
set -u
cd "$(dirname "$0")/.."
B="${CAPMOE_BUILD:-build}/capmoe"
A="${CAPMOE_ASAN:-build-asan}/capmoe"
[ -x "$A" ] || A="$B"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
FX=tests/fixtures/mixtral-tiny

python3 - "$B" "$A" "$FX" "$tmp" <<'PY' || fail=1
import json, os, struct, subprocess, sys
B, A, FX, T = sys.argv[1:5]
man = json.load(open(os.path.join(FX, "parity", "cases.json")))
none = [c for c in man["cases"] if c["name"] == "none"][0]
ids = []
for p in man["prompts"]:
    ids += ["--ids", ",".join(map(str, p))]
def f32(path):
    d = open(path, "rb").read()
    return struct.unpack("<%df" % (len(d) // 4), d)
ref = f32(os.path.join(FX, "parity", none["logits"]))
scale = max(abs(x) for x in ref)
bad = 0
def logits(binary, extra, env=None, name="x"):
    out = os.path.join(T, name + ".bin")
    p = subprocess.run([binary, "logits", "--model", FX] + ids + ["--out", out] + extra,
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit("logits %s failed: %s" % (extra, p.stderr))
    return json.loads(p.stdout), open(out, "rb").read(), p.stderr
_, plain, _ = logits(B, [], name="plain")
_, bf, _ = logits(B, ["--weights", "bf16"], name="bf16")
if plain != bf:
    print("FAIL --weights bf16 differs from the default"); bad += 1
budget = {"q8": (1e-4, 0.03), "q4": (1e-3, 0.3)}
for w, (lo, hi) in budget.items():
    res, raw, err = logits(B, ["--weights", w], name=w)
    got = struct.unpack("<%df" % (len(raw) // 4), raw)
    e = max(abs(a - b) for a, b in zip(got, ref)) / scale
    ok = lo < e < hi and res["loads"][0] == none["loads"][0] and ("experts quantized to " + w) in err
    print("%s %s: relative error %.4f (budget %g), first layer loads %s" % ("ok  " if ok else "FAIL", w, e, hi,
          "equal" if res["loads"][0] == none["loads"][0] else "DIFFER"))
    bad += not ok
    # --quantize all: every matrix but the router (and the embedding); the
    # attention's q|k|v are one stacked matrix quantized panel by panel
    _, raw_all, err_all = logits(B, ["--weights", w, "--quantize", "all"], name=w + "all")
    ga = struct.unpack("<%df" % (len(raw_all) // 4), raw_all)
    ea = max(abs(a - b) for a, b in zip(ga, ref)) / scale
    ok = e < ea < 2 * hi and raw_all != raw and ("every matrix but the router quantized to " + w) in err_all
    print("%s %s --quantize all: relative error %.4f (budget %g; experts only %.4f)" % (
          "ok  " if ok else "FAIL", w, ea, 2 * hi, e))
    bad += not ok
    env = dict(os.environ, CAPMOE_WEIGHTS=w)
    _, raw_env, _ = logits(B, [], env=env, name=w + "env")
    if raw_env != raw:
        print("FAIL CAPMOE_WEIGHTS=%s differs from --weights %s" % (w, w)); bad += 1
    # the first sequence alone: the same bits as its rows in the batch
    first = man["prompts"][0]
    out = os.path.join(T, "alone.bin")
    subprocess.run([B, "logits", "--model", FX, "--ids", ",".join(map(str, first)), "--out", out,
                    "--weights", w], check=True, capture_output=True)
    alone = open(out, "rb").read()
    ga = struct.unpack("<%df" % (len(alone) // 4), alone)
    eb = max(abs(a - b) for a, b in zip(ga, got)) / scale
    if not eb < 1e-5:  # the float32 parts (attention) may round differently, never more
        print("FAIL %s: the first sequence's logits depend on its batch (%.3g)" % (w, eb)); bad += 1
    # the ASan build computes the same (portable or vector code, same integers)
    if A != B:
        _, raw_a, _ = logits(A, ["--weights", w], name=w + "asan")
        ga = struct.unpack("<%df" % (len(raw_a) // 4), raw_a)
        ea = max(abs(a - b) for a, b in zip(ga, got)) / scale
        if not ea < 1e-5:
            print("FAIL %s: ASan build differs by %.3g" % (w, ea)); bad += 1
sys.exit(1 if bad else 0)
PY

# 3. perplexity of the default model at bf16 / q8 / q4
python3 - "$B" "$tmp" <<'PY' || fail=1
import json, subprocess, sys
B, T = sys.argv[1:3]
ppl = {}
for w, scope in (("bf16", "experts"), ("q8", "experts"), ("q4", "experts"), ("q8", "all"), ("q4", "all")):
    p = subprocess.run([B, "perplexity", "--model", "config/model", "--file", "tests/train/heldout.txt",
                        "--max-tokens", "4096", "--weights", w] + (["--quantize", "all"] if scope == "all" else []),
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit("perplexity %s %s failed: %s" % (w, scope, p.stderr))
    r = json.loads(p.stdout)
    assert r["weights"] == w and (w == "bf16" or r["quantize"] == scope), r
    ppl[w if scope == "experts" else w + " all"] = r["perplexity"]
bad = 0
for w, goal in (("q8", 0.005), ("q4", 0.05), ("q8 all", 0.005), ("q4 all", 0.05)):
    rel = ppl[w] / ppl["bf16"] - 1
    ok = abs(rel) < goal
    print("%s perplexity %s %.4f vs bf16 %.4f (%+.2f%%, goal %g%%)" % ("ok  " if ok else "FAIL", w, ppl[w],
          ppl["bf16"], 100 * rel, 100 * goal))
    bad += not ok
sys.exit(1 if bad else 0)
PY

# 5. the server: weights from CAPMOE_WEIGHTS and CAPMOE_QUANTIZE, a greedy
#    completion of token ids equal to `capmoe generate --weights q8 --quantize
#    all` (ASan build when built), the scope in capmoe_build_info
. tests/server/common.sh
SRVB="${CAPMOE_ASAN:-build-asan}/capmoe-server"; [ -x "$SRVB" ] || SRVB="${CAPMOE_BUILD:-build}/capmoe-server"
trap 'srv_kill; rm -rf "$tmp"' EXIT
if CAPMOE_WEIGHTS=q8 CAPMOE_QUANTIZE=all srv_start "$SRVB" "$tmp/srv.log" --model $FX; then
  want=$("$B" generate --model $FX --ids 5,9,12,40 --max-tokens 6 --weights q8 --quantize all 2>/dev/null |
         python3 -c 'import json,sys; print(json.load(sys.stdin)["ids"])')
  got=$(python3 - "$SRV_URL" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/v1/completions", data=json.dumps(
    {"prompt": [5, 9, 12, 40], "max_tokens": 6, "temperature": 0, "ignore_eos": True,
     "logprobs": 1}).encode(), headers={"Content-Type": "application/json"})
r = json.load(urllib.request.urlopen(req, timeout=60))
print(r["choices"][0].get("text"), r["usage"]["completion_tokens"])
PY
)
  text=$("$B" detokenize --model $FX --ids "$(echo "$want" | tr -d '[] ')" | python3 -c 'import json,sys; print(json.load(sys.stdin)["text"])')
  if [ "$got" = "$text 6" ]; then echo "ok   server (CAPMOE_WEIGHTS=q8 CAPMOE_QUANTIZE=all): greedy completion equals capmoe generate --weights q8 --quantize all"
  else echo "FAIL server completion '$got', CLI '$text 6' ($want)"; fail=1; fi
  if python3 -c 'import sys, urllib.request; t = urllib.request.urlopen(sys.argv[1] + "/metrics").read().decode()
l = [x for x in t.split("\n") if x.startswith("capmoe_build_info{")][0]
sys.exit(0 if "weights=\"q8\"" in l and "quantize=\"all\"" in l else 1)' "$SRV_URL"; then
    echo "ok   capmoe_build_info says weights=\"q8\" quantize=\"all\""
  else echo "FAIL capmoe_build_info lacks weights/quantize labels"; fail=1; fi
  kill -TERM "$SRV_PID"; srv_wait_exit 30
  if grep -q -E "ERROR: (Address|Leak)Sanitizer|runtime error:" "$tmp/srv.log"; then echo "FAIL server sanitizer report"; fail=1; fi
else
  echo "FAIL the server did not start with CAPMOE_WEIGHTS=q8"; tail -5 "$tmp/srv.log"; fail=1
fi

# 4. bad input (AddressSanitizer build)
expect_err() { # WORD, env assignment or "", args...
  word="$1"; envset="$2"; shift 2
  if [ -n "$envset" ]; then env "$envset" "$A" "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?
  else "$A" "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?; fi
  if [ "$rc" -eq 0 ] || ! grep -q -- "$word" "$tmp/err" || grep -q -E "Sanitizer|runtime error" "$tmp/err"; then
    echo "FAIL (rc=$rc, want '$word'): $envset capmoe $*"; head -5 "$tmp/err"; fail=1
  else
    echo "ok   $(head -1 "$tmp/err")"
  fi
}
expect_err "--weights: 'q5'" "" logits --model $FX --ids 1,2 --out "$tmp/x" --weights q5
expect_err "CAPMOE_WEIGHTS: 'int3'" CAPMOE_WEIGHTS=int3 logits --model $FX --ids 1,2 --out "$tmp/x"
expect_err "not a multiple of the quantization block" "" logits --model tests/fixtures/qwen3moe-tiny \
  --ids 1,2 --out "$tmp/x" --weights q4
expect_err "--weights: 'fp4'" "" perplexity --model $FX --file tests/train/heldout.txt --weights fp4
expect_err "--weights: 'q2'" "" bench --model $FX --weights q2
expect_err "--quantize: 'most'" "" logits --model $FX --ids 1,2 --out "$tmp/x" --weights q8 --quantize most
expect_err "CAPMOE_QUANTIZE: 'every'" CAPMOE_QUANTIZE=every logits --model $FX --ids 1,2 --out "$tmp/x" --weights q8
expect_err "--quantize all: needs --weights q8 or q4" "" perplexity --model $FX --file tests/train/heldout.txt \
  --quantize all
"$B" synth --arch qwen2_moe --out "$tmp/sh80" --hidden 64 --layers 1 --experts 4 --top-k 2 --intermediate 64 \
  --shared-intermediate 80 --heads 4 --kv-heads 2 --vocab 300 > /dev/null 2>&1
expect_err "layer 0's shared expert projection has 80 inputs" "" logits --model "$tmp/sh80" --ids 1,2 \
  --out "$tmp/x" --weights q4 --quantize all
"$A" logits --model "$tmp/sh80" --ids 1,2 --out "$tmp/x" --weights q4 > /dev/null 2>&1 \
  && echo "ok   the same model loads with --quantize experts" || { echo "FAIL sh80 --weights q4"; fail=1; }
rc=0; "$SRVB" --model $FX --quantize all > "$tmp/srv2.log" 2>&1 || rc=$?
if [ "$rc" != 0 ] && grep -q "quantize: all needs weights q8 or q4" "$tmp/srv2.log"; then
  echo "ok   the server refuses quantize all without weights q8|q4"
else echo "FAIL server --quantize all (rc $rc)"; head -3 "$tmp/srv2.log"; fail=1; fi
[ "$fail" = 0 ] && echo "t_quant: ok"
exit $fail
