#!/bin/sh
# Bad input to the capmoe CLI (arguments, ids, model files) must give a clear
# error naming the problem and a non-zero exit, never a crash: every case runs
# against the AddressSanitizer + UBSan build.
set -u
cd "$(dirname "$0")/.."
BIN="${CAPMOE_ASAN:-build-asan}/capmoe"
[ -x "$BIN" ] || BIN="${CAPMOE_BUILD:-build}/capmoe"
FX=tests/fixtures/mixtral-tiny
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fails=0; n=0

# expect_err WORD ARGS...: non-zero exit, stderr mentions WORD, no sanitizer report
expect_err() {
  word="$1"; shift; n=$((n + 1))
  "$BIN" "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?
  if [ "$rc" -eq 0 ] || ! grep -qi -- "$word" "$tmp/err" || grep -q -E "Sanitizer|runtime error" "$tmp/err"; then
    echo "FAIL (rc=$rc, want '$word'): capmoe $*"; sed 's/^/    /' "$tmp/err" | head -5; fails=$((fails + 1))
  else
    echo "ok   $(head -c 150 "$tmp/err" | head -1)"
  fi
}

expect_err "unknown command" frobnicate
expect_err "--model" logits --ids 1,2 --out "$tmp/x"
expect_err "does-not-exist" logits --model tests/fixtures/does-not-exist --ids 1,2 --out "$tmp/x"
expect_err "--out" logits --model $FX --ids 1,2
expect_err "--ids" logits --model $FX --out "$tmp/x"
expect_err "--ids" logits --model $FX --ids 1,,2 --out "$tmp/x"
expect_err "--ids" logits --model $FX --ids 1,x --out "$tmp/x"
expect_err "--ids" logits --model $FX --ids -4 --out "$tmp/x"
expect_err "out of range" logits --model $FX --ids 1,999999 --out "$tmp/x"
expect_err "--policy" logits --model $FX --ids 1,2 --out "$tmp/x" --policy fastest
expect_err "--capacity-factor" logits --model $FX --ids 1,2 --out "$tmp/x" --capacity-factor -1
expect_err "--capacity-factor" logits --model $FX --ids 1,2 --out "$tmp/x" --capacity-factor abc
expect_err "--ep-ranks" logits --model $FX --ids 1,2 --out "$tmp/x" --ep-ranks 0
expect_err "divisible" logits --model $FX --ids 1,2 --out "$tmp/x" --policy expanded --ep-ranks 3
expect_err "--min-tokens" logits --model $FX --ids 1,2 --out "$tmp/x" --min-tokens -2
expect_err "--drop-budget" logits --model $FX --ids 1,2 --out "$tmp/x" --drop-budget 2
expect_err "--regime-tokens" logits --model $FX --ids 1,2 --out "$tmp/x" --decode-policy piggyback
expect_err "--decode-policy" logits --model $FX --ids 1,2 --out "$tmp/x" --decode-policy fast --regime-tokens 4
expect_err "--regime-tokens" logits --model $FX --ids 1,2 --out "$tmp/x" --decode-policy piggyback --regime-tokens x
expect_err "--piggyback-k0" logits --model $FX --ids 1,2 --out "$tmp/x" --policy piggyback --piggyback-k0 0
expect_err "k0=3" logits --model $FX --ids 1,2 --out "$tmp/x" --policy piggyback --piggyback-k0 3
expect_err "unknown option" logits --model $FX --ids 1,2 --out "$tmp/x" --frobnicate 3
expect_err "needs a value" logits --model $FX --ids
expect_err "$tmp/nodir/x" logits --model $FX --ids 1,2 --out "$tmp/nodir/x"
expect_err "--max-tokens" generate --model $FX --ids 1,2
expect_err "exactly one" generate --model $FX --max-tokens 2
expect_err "context" generate --model $FX --ids 1,2 --max-tokens 100000
expect_err "--text" tokenize --model $FX
expect_err "999999" detokenize --model $FX --ids 1,999999

# broken model directories
mk() { rm -rf "$tmp/m"; mkdir -p "$tmp/m"; cp tests/fixtures/olmoe-tiny/*.json tests/fixtures/olmoe-tiny/model.safetensors "$tmp/m/"; }
mk; head -c 5000 tests/fixtures/olmoe-tiny/model.safetensors > "$tmp/m/model.safetensors"
expect_err "model.safetensors" logits --model "$tmp/m" --ids 1,2 --out "$tmp/x"
mk; printf '{"architectures": ["OlmoeForCausalLM"], "hidden_size": ' > "$tmp/m/config.json"
expect_err "config.json" logits --model "$tmp/m" --ids 1,2 --out "$tmp/x"
mk; sed 's/OlmoeForCausalLM/LlamaForCausalLM/; s/"olmoe"/"llama"/' tests/fixtures/olmoe-tiny/config.json > "$tmp/m/config.json"
expect_err "LlamaForCausalLM" logits --model "$tmp/m" --ids 1,2 --out "$tmp/x"
mk; rm "$tmp/m/model.safetensors"
expect_err "model.safetensors" logits --model "$tmp/m" --ids 1,2 --out "$tmp/x"
# a shard missing from a sharded checkpoint
rm -rf "$tmp/s"; cp -r tests/fixtures/mixtral-tiny "$tmp/s"; rm "$tmp/s/model-00003-of-00009.safetensors"
expect_err "model-00003-of-00009.safetensors" logits --model "$tmp/s" --ids 1,2 --out "$tmp/x"
# weights stored as an integer dtype
mk; python3 - "$tmp/m/model.safetensors" <<'PY'
import json, struct, sys
p = sys.argv[1]; b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n]); h["model.norm.weight"]["dtype"] = "I16"
s = json.dumps(h).encode(); s += b" " * ((8 - len(s) % 8) % 8)
open(p, "wb").write(struct.pack("<Q", len(s)) + s + b[8 + n:])
PY
expect_err "model.norm.weight" logits --model "$tmp/m" --ids 1,2 --out "$tmp/x"
mk; printf 'not json' > "$tmp/m/tokenizer.json"
expect_err "tokenizer.json" tokenize --model "$tmp/m" --text hi

# DeepSeek: latent attention and router options, broken checkpoints
DS=tests/fixtures/deepseekv3-tiny
expect_err "--mla-form" logits --model $DS --ids 1,2 --out "$tmp/x" --mla-form fastest
expect_err "--mla-form" generate --model $DS --ids 1,2 --max-tokens 2 --mla-form 1
mkds() { rm -rf "$tmp/d"; cp -r tests/fixtures/deepseekv2-tiny "$tmp/d"; }
mkds; sed 's/"greedy"/"noaux_tc"/' tests/fixtures/deepseekv2-tiny/config.json > "$tmp/d/config.json"
expect_err "topk_method 'noaux_tc'" logits --model "$tmp/d" --ids 1,2 --out "$tmp/x"
mkds; sed 's/"kv_lora_rank": 24/"kv_lora_rank": 20/' tests/fixtures/deepseekv2-tiny/config.json > "$tmp/d/config.json"
expect_err "kv_a_proj_with_mqa" logits --model "$tmp/d" --ids 1,2 --out "$tmp/x"
mkds; sed 's/"first_k_dense_replace": 1/"first_k_dense_replace": 0/' tests/fixtures/deepseekv2-tiny/config.json > "$tmp/d/config.json"
expect_err "model.layers.0.mlp" logits --model "$tmp/d" --ids 1,2 --out "$tmp/x"
expect_err "--groups" synth --arch deepseek_v3 --out "$tmp/y" --experts 8 --groups 3
expect_err "--kv-heads" synth --arch deepseek_v2 --out "$tmp/y" --kv-heads 2
expect_err "only deepseek_v2 and deepseek_v3" synth --arch mixtral --out "$tmp/y" --kv-lora-rank 64

echo "cli errors: $n cases, $fails failed"
[ "$fails" -eq 0 ]
