#!/bin/sh
# t_cli_tools.sh - `capmoe synth`, `capmoe bench` and `capmoe perplexity`.
#
#   sh tests/t_cli_tools.sh        (env CAPMOE_BUILD=build CAPMOE_ASAN=build-asan)
#
# 1. synth writes a small checkpoint of each architecture (f32 and bf16/f16);
#    each loads and gives finite logits under two policies (`capmoe logits`);
#    synth is deterministic per seed; the skew option skews the expert loads;
#    the built-in tokenizer round-trips bytes (and, when tests/tokenizer has
#    its node modules, encodes exactly as the JavaScript port of HF tokenizers).
# 2. bench on a small model prints JSON with every documented key, and its
#    numbers are consistent (capacity formula, pair counts, speedup ratios).
# 3. perplexity equals an independent computation from `capmoe logits` rows
#    (same windows, same batches) and reports drops only when capacity applies.
# 4. bad arguments of the three commands fail with a message naming the option,
#    with the plain and the AddressSanitizer build; one small ASan run of each.
set -eu
cd "$(dirname "$0")/.."
B="${CAPMOE_BUILD:-build}/capmoe"
A="${CAPMOE_ASAN:-build-asan}/capmoe"
[ -x "$B" ] || { echo "missing $B (make)"; exit 1; }
[ -x "$A" ] || { echo "missing $A (make BUILD=build-asan SAN=1 build-asan/capmoe)"; exit 1; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT INT TERM
fail() { echo "FAIL: $*"; exit 1; }
SMALL="--hidden 64 --layers 2 --experts 8 --top-k 2 --intermediate 32 --heads 4 --kv-heads 2 --vocab 320 --context 512"

# ---- 1. synth -----------------------------------------------------------------
: > "$T/runs.txt"
for arch in mixtral qwen2_moe olmoe qwen3_moe; do
  for dt in f32 bf16 f16; do
    case "$arch-$dt" in mixtral-f16|olmoe-bf16|qwen2_moe-f32) continue ;; esac
    d="$T/$arch-$dt"
    "$B" synth --arch "$arch" --out "$d" $SMALL --dtype "$dt" --seed 3 > "$d.synth.json"
    for f in config.json model.safetensors tokenizer.json tokenizer_config.json generation_config.json; do
      [ -s "$d/$f" ] || fail "$arch: $f missing"
    done
    i=0
    for pol in "--policy none" "--policy drop --capacity-factor 1.0 --min-tokens 0" \
               "--policy expanded --capacity-factor 1.5 --ep-ranks 4 --min-tokens 0"; do
      i=$((i + 1))
      "$B" logits --model "$d" --ids 1,2,3,4,5,6,7,8,9 --ids 300,301,302,9,9 $pol \
        --out "$d.$i.bin" > "$d.$i.json" || fail "$arch-$dt: logits $pol"
      echo "$arch $d.synth.json $d.$i.json $d.$i.bin $pol" >> "$T/runs.txt"
    done
  done
done
python3 - "$T/runs.txt" <<'EOF'
import json, math, struct, sys
for line in open(sys.argv[1]):
    arch, synth, rep_path, bin_path, *pol = line.split()
    o = json.load(open(synth))
    assert o['arch'] == arch and o['tensors'] > 0, o
    rep = json.load(open(rep_path))
    raw = open(bin_path, 'rb').read()
    v = struct.unpack('<%df' % (len(raw) // 4), raw)
    assert rep['tokens'] == 14 and len(v) == 14 * 320, (rep, len(v))
    assert all(math.isfinite(x) for x in v), (line, 'non-finite logits')
    assert max(abs(x) for x in v) > 0, (line, 'all-zero logits')
    loads = rep['loads']
    assert len(loads) == 2 and all(len(l) == 8 for l in loads), loads
    if pol[1] == 'none':
        assert all(sum(l) == 14 * 2 for l in loads) and rep['dropped'] == 0, (line, rep)
    if pol[1] == 'drop':
        assert rep['capacity'] == [4, 4] and all(max(l) <= 4 for l in loads), (line, rep)
print('synth: %d logits runs ok' % sum(1 for _ in open(sys.argv[1])))
EOF
# The config is the transformers 5 layout and names the architecture.
python3 - "$T" <<'EOF'
import json, sys
t = sys.argv[1]
c = json.load(open(t + '/qwen3_moe-bf16/config.json'))
assert c['architectures'] == ['Qwen3MoeForCausalLM'] and c['dtype'] == 'bfloat16', c
assert c['rope_parameters']['rope_type'] == 'default' and c['norm_topk_prob'] is True, c
assert c['num_experts'] == 8 and c['moe_intermediate_size'] == 32 and c['head_dim'] == 16, c
c = json.load(open(t + '/mixtral-f32/config.json'))
assert c['num_local_experts'] == 8 and c['intermediate_size'] == 32, c
c = json.load(open(t + '/qwen2_moe-bf16/config.json'))
assert c['shared_expert_intermediate_size'] == 128 and c['qkv_bias'] is True, c
# Hub tensor names, read from the safetensors header.
def names(d):
    raw = open(t + '/' + d + '/model.safetensors', 'rb').read(1 << 20)
    n = int.from_bytes(raw[:8], 'little')
    return set(json.loads(raw[8:8 + n])) - {'__metadata__'}
m = names('mixtral-f32')
assert 'model.layers.1.block_sparse_moe.experts.7.w3.weight' in m and 'lm_head.weight' in m
q = names('qwen2_moe-bf16')
assert 'model.layers.0.mlp.shared_expert_gate.weight' in q
assert 'model.layers.0.self_attn.q_proj.bias' in q and 'model.layers.1.mlp.experts.3.down_proj.weight' in q
assert 'model.layers.0.self_attn.q_norm.weight' in names('olmoe-f32')
assert 'model.layers.1.self_attn.k_norm.weight' in names('qwen3_moe-f16')
EOF

# Deterministic per seed.
"$B" synth --arch mixtral --out "$T/again" $SMALL --seed 3 > /dev/null
cmp -s "$T/again/model.safetensors" "$T/mixtral-f32/model.safetensors" || fail "synth is not deterministic"
"$B" synth --arch mixtral --out "$T/again" $SMALL --seed 4 > /dev/null
if cmp -s "$T/again/model.safetensors" "$T/mixtral-f32/model.safetensors"; then fail "--seed has no effect"; fi

# Skew: balanced routers at skew 1, concentrated loads at skew 16.
IDS=$(python3 -c "import random; r=random.Random(7); print(','.join(str(r.randrange(320)) for _ in range(512)))")
for s in 1 16; do
  "$B" synth --arch mixtral --out "$T/skew$s" $SMALL --skew $s > /dev/null
  "$B" logits --model "$T/skew$s" --ids "$IDS" --out "$T/logits.bin" > "$T/skew$s.json"
done
python3 - "$T/skew1.json" "$T/skew16.json" <<'EOF'
import json, sys
def imb(p):
    ls = json.load(open(p))['loads']
    return sum(max(l) / (sum(l) / len(l)) for l in ls) / len(ls)
a, b = imb(sys.argv[1]), imb(sys.argv[2])
print('max/mean load: skew 1 %.2f, skew 16 %.2f' % (a, b))
assert a < 1.5 and b > 2.0, (a, b)
EOF

# Built-in tokenizer: bytes round-trip, specials are single tokens, ChatML.
"$B" tokenize --model "$T/mixtral-f32" --text 'Hi wörld<|im_end|>' > "$T/tok.json"
python3 -c "import json,sys; assert json.load(open(sys.argv[1]))['ids']==[72,105,32,119,195,182,114,108,100,258], open(sys.argv[1]).read()" "$T/tok.json"
"$B" detokenize --model "$T/mixtral-f32" --ids 72,105,32,119,195,182,257 > "$T/detok.json"
python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['text']; assert t=='Hi w\u00f6<|im_start|>', repr(t)" "$T/detok.json"
grep -q 'im_start' "$T/mixtral-f32/tokenizer_config.json" || fail "no chat template"
JS=tests/tokenizer/node_modules/@lenml/tokenizers
if command -v node > /dev/null 2>&1 && [ -d "$JS" ]; then
  node - "$T/mixtral-f32" "$PWD/$JS" > "$T/js.json" <<'EOF'
const fs = require('fs');
const [dir, mod] = process.argv.slice(2);
const { TokenizerLoader } = require(mod);
const tok = TokenizerLoader.fromPreTrained({
  tokenizerJSON: JSON.parse(fs.readFileSync(dir + '/tokenizer.json')),
  tokenizerConfig: JSON.parse(fs.readFileSync(dir + '/tokenizer_config.json')),
});
console.log(JSON.stringify({ids: tok.encode('Hi wörld<|im_end|>')}));
EOF
  cmp -s "$T/js.json" "$T/tok.json" || fail "synth tokenizer: JS tokenizers gives $(cat "$T/js.json")"
else
  echo "note: node or $JS missing, JS tokenizer check skipped"
fi

# --tokenizer-from copies the tokenizer and sizes the vocabulary from it.
"$B" synth --arch olmoe --out "$T/copied" --hidden 32 --heads 2 --kv-heads 1 --intermediate 16 \
  --experts 4 --tokenizer-from "$T/mixtral-f32" > /dev/null
cmp -s "$T/copied/tokenizer.json" "$T/mixtral-f32/tokenizer.json" || fail "tokenizer not copied"
python3 -c "import json,sys; assert json.load(open(sys.argv[1]))['vocab_size']==320" "$T/copied/config.json"

# ---- 2. bench -------------------------------------------------------------------
M="$T/mixtral-f32"
"$B" bench --model "$M" --prefill 32,96 --decode 1,16 --policies none,drop,reroute,expanded \
  --gammas 1.0,1.5 --repeat 1 --decode-steps 2 --decode-context 8 --sgemm-size 128 \
  --copy-mib 8 > "$T/bench.json" || fail "bench"
python3 - "$T/bench.json" <<'EOF'
import json, math, sys
o = json.load(open(sys.argv[1]))
def keys(d, ks, where):
    miss = [k for k in ks if k not in d]
    assert not miss, '%s: missing %s' % (where, miss)
keys(o, ['model', 'machine', 'settings', 'prefill', 'decode', 'ratios', 'definitions'], 'top')
keys(o['model'], ['dir', 'arch', 'hidden_size', 'layers', 'moe_layers', 'experts', 'top_k',
                  'moe_intermediate_size', 'shared_expert_intermediate_size', 'vocab_size',
                  'active_params_per_token', 'active_bytes_per_token'], 'model')
keys(o['machine'], ['cores', 'ep_ranks', 'experts_per_rank', 'ranks_exceed_cores', 'note',
                    'threads', 'sgemm_size', 'sgemm_gflops', 'sgemm_gflops_start_end',
                    'memcpy_bytes', 'memcpy_gbs_1thread', 'memcpy_gbs', 'bandwidth_gbs',
                    'bandwidth_gbs_start_end'], 'machine')
keys(o['ratios'], ['prefill_tokens', 'prefill_gflops', 'prefill_fraction_of_sgemm',
                   'prefill_target_met', 'sgemm_gflops', 'decode_bytes_per_token',
                   'decode_time_per_token_s', 'decode_gbs', 'decode_fraction_of_bandwidth',
                   'decode_target_met', 'bandwidth_gbs', 'target'], 'ratios')
ma = o['machine']
assert ma['ep_ranks'] == 8 and ma['sgemm_gflops'] > 0 and ma['bandwidth_gbs'] > 0, ma
assert ma['sgemm_gflops'] == max(ma['sgemm_gflops_start_end']), ma
assert ma['bandwidth_gbs'] == max(ma['bandwidth_gbs_start_end']) >= ma['memcpy_gbs_1thread'], ma
assert ma['ranks_exceed_cores'] == (ma['cores'] < 8) and (ma['note'] is not None) == ma['ranks_exceed_cores']
ra = o['ratios']
assert ra['prefill_tokens'] == 96 and 0 < ra['prefill_fraction_of_sgemm'], ra
assert 0 < ra['decode_fraction_of_bandwidth'] and ra['decode_time_per_token_s'] > 0, ra
run_keys = ['policy', 'capacity_factor', 'capacity', 'time_s', 'tokens_per_s', 'attn_time_s',
            'moe_time_s', 'moe_layer_time_s', 'router_time_s', 'expert_time_s', 'max_mean_load',
            'max_load', 'mean_load', 'max_rank_load', 'straggler_ratio', 'dropped_mass',
            'routed_pairs', 'computed_pairs', 'dropped_pairs', 'rerouted_pairs',
            'dropped_fraction', 'modelled_ep_layer_time_s', 'gflops', 'speedup_wall',
            'speedup_moe_wall', 'speedup_modelled']
assert [g['tokens'] for g in o['prefill']] == [32, 96]
assert [g['batch'] for g in o['decode']] == [1, 16]
for kind, groups, size in (('prefill', o['prefill'], 'tokens'), ('decode', o['decode'], 'batch')):
    for g in groups:
        T = g[size]
        keys(g, [size, 'runs', 'per_pair_cost_s'], kind)
        runs = g['runs']
        assert [(r['policy'], r['capacity_factor']) for r in runs] == [('none', None)] + [
            (p, x) for p in ('drop', 'reroute', 'expanded') for x in (1.0, 1.5)], runs
        none = runs[0]
        steps = g.get('steps', 1)
        for r in runs:
            keys(r, run_keys, '%s %s' % (kind, r['policy']))
            for k in run_keys[3:]:
                assert isinstance(r[k], (int, float)) and math.isfinite(r[k]) and r[k] >= 0, (k, r)
            assert r['routed_pairs'] == 2 * T * 2 * steps, r  # 2 MoE layers, k = 2
            limited = r['policy'] != 'none' and T >= 16
            if not limited:
                assert r['capacity'] is None and r['dropped_pairs'] == 0, r
                assert r['computed_pairs'] == r['routed_pairs'], r
                continue
            C = math.ceil(r['capacity_factor'] * 2 * T / 8)
            assert r['capacity'] == C, (C, r)
            assert r['max_load'] <= C, r
            if r['policy'] == 'drop':
                assert r['computed_pairs'] + r['dropped_pairs'] == r['routed_pairs'], r
            if r['policy'] == 'reroute':
                assert r['computed_pairs'] + r['dropped_pairs'] == r['routed_pairs'], r
            if r['policy'] == 'expanded':
                assert r['rerouted_pairs'] == 0, r
            assert abs(r['speedup_modelled'] - none['max_rank_load'] / r['max_rank_load']) < 1e-9, r
            assert abs(r['speedup_wall'] - none['time_s'] / r['time_s']) < 1e-9, r
        assert none['speedup_wall'] == 1 and none['speedup_modelled'] == 1, none
# Skewed routers: at gamma 1 the cap binds and the modelled EP time improves.
big = o['prefill'][1]['runs']
assert big[0]['max_mean_load'] > 1.5, big[0]
assert big[1]['dropped_pairs'] > 0 and big[1]['speedup_modelled'] > 1.2, big[1]
print('bench json ok')
EOF
"$B" bench --model "$M" --prefill 32 --decode 1 --policies drop --gammas 1 --repeat 1 \
  --decode-steps 1 --sgemm-size 64 --copy-mib 4 --format table > "$T/bench.md"
grep -q '^| 32 | drop | 1 |' "$T/bench.md" || fail "bench table: $(cat "$T/bench.md")"
grep -q 'GFLOP/s' "$T/bench.md" || fail "bench table without ceilings"

# ---- 3. perplexity ----------------------------------------------------------------
TXT="$T/text.txt"
printf 'The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!\n%s\n%s\n' \
  'Sphinx of black quartz, judge my vow; how vexingly quick daft zebras jump.' \
  'Über naïve café owners, 12345 + 678 = 13023; the end.' > "$TXT"
for pol in "--policy none" "--policy drop --capacity-factor 0.5" "--policy reroute --capacity-factor 1.0 --ep-ranks 2"; do
  "$B" perplexity --model "$M" --file "$TXT" --context 48 --stride 20 --batch 3 $pol \
    > "$T/ppl.json" || fail "perplexity $pol"
  python3 - "$B" "$M" "$TXT" "$T" "$T/ppl.json" $pol <<'EOF'
import json, math, struct, subprocess, sys
capmoe, model, txt, tmp, out = sys.argv[1:6]
pol = sys.argv[6:]
rep = json.load(open(out))
text = open(txt, encoding='utf-8').read()
ids = json.loads(subprocess.check_output([capmoe, 'tokenize', '--model', model, '--text', text]))['ids']
ctx, stride, B, V = 48, 20, 3, 320
wins, prev = [], 0
for begin in range(0, len(ids), stride):  # the Hugging Face recipe
    end = min(begin + ctx, len(ids))
    wins.append((begin, end, max(prev, begin + 1)))
    prev = end
    if end == len(ids):
        break
nll, n = 0.0, 0
for g in range(0, len(wins), B):
    group = wins[g:g + B]
    args = [capmoe, 'logits', '--model', model, '--out', tmp + '/w.bin'] + pol
    for b, e, _ in group:
        args += ['--ids', ','.join(map(str, ids[b:e]))]
    subprocess.check_output(args)
    raw = open(tmp + '/w.bin', 'rb').read()
    v = struct.unpack('<%df' % (len(raw) // 4), raw)
    row = 0
    for b, e, f in group:
        for j in range(f, e):
            r = v[(row + j - 1 - b) * V:(row + j - b) * V]
            m = max(r)
            nll += m + math.log(sum(math.exp(x - m) for x in r)) - r[ids[j]]
            n += 1
        row += e - b
assert rep['tokens'] == n == len(ids) - 1 and rep['windows'] == len(wins), (rep, n, len(wins))
ref = math.exp(nll / n)
assert abs(rep['perplexity'] - ref) <= 1e-6 * ref, (rep['perplexity'], ref)
print('perplexity %s: %.4f (reference %.4f)' % (' '.join(pol), rep['perplexity'], ref))
if pol[1] == 'none':
    assert rep['dropped_fraction'] == 0 and rep['dropped_mass'] == 0 and rep['capacity_factor'] is None, rep
    assert rep['limited_dispatches'] == 0, rep
elif pol[1] == 'drop':
    assert rep['dropped_fraction'] > 0 and rep['dropped_mass'] > 0 and rep['capacity_factor'] == 0.5, rep
    assert rep['rerouted_fraction'] == 0, rep
else:
    assert rep['rerouted_fraction'] > 0, rep
for k in ('perplexity', 'nll', 'tokens', 'windows', 'policy', 'capacity_factor', 'dropped_fraction',
          'dropped_mass', 'rerouted_fraction'):
    assert k in rep, k
EOF
done
"$B" perplexity --model "$M" --file "$TXT" --capacity-factor auto --policy drop > "$T/ppl.json"
python3 -c "import json,math,sys; o=json.load(open(sys.argv[1])); assert o['capacity_factor']=='auto' and math.isfinite(o['perplexity']) and o['mean_gamma'] is not None, o" "$T/ppl.json"

# ---- 4. bad arguments (plain and ASan builds) -------------------------------------
expect_fail() { # binary, word the message must name, args...
  bin="$1"; word="$2"; shift 2
  if "$bin" "$@" > "$T/out.txt" 2> "$T/err.txt"; then fail "$bin $* succeeded"; fi
  grep -q -- "$word" "$T/err.txt" || fail "$bin $*: message does not name $word: $(cat "$T/err.txt")"
  if grep -qi 'sanitizer\|runtime error' "$T/err.txt"; then fail "$bin $*: $(cat "$T/err.txt")"; fi
  [ ! -s "$T/out.txt" ] || fail "$bin $*: wrote to stdout"
}
touch "$T/afile"
printf 'x' > "$T/one.txt"
for bin in "$B" "$A"; do
  expect_fail "$bin" --arch synth --arch gpt2 --out "$T/x"
  expect_fail "$bin" --out synth --arch mixtral
  expect_fail "$bin" --hidden synth --arch mixtral --out "$T/x" --hidden 0
  expect_fail "$bin" --hidden synth --arch mixtral --out "$T/x" --hidden abc
  expect_fail "$bin" --heads synth --arch mixtral --out "$T/x" --hidden 64 --heads 5
  expect_fail "$bin" --kv-heads synth --arch mixtral --out "$T/x" --heads 16 --kv-heads 3
  expect_fail "$bin" --top-k synth --arch olmoe --out "$T/x" --experts 4 --top-k 5
  expect_fail "$bin" --dtype synth --arch qwen3_moe --out "$T/x" --dtype fp8
  expect_fail "$bin" --skew synth --arch qwen3_moe --out "$T/x" --skew 0.5
  expect_fail "$bin" --vocab synth --arch qwen3_moe --out "$T/x" --vocab 100
  expect_fail "$bin" --out synth --arch mixtral --out "$T/afile" $SMALL
  expect_fail "$bin" --out synth --arch mixtral --out "$T/afile/sub" $SMALL
  expect_fail "$bin" --shared-intermediate synth --arch mixtral --out "$T/x" --shared-intermediate 8
  expect_fail "$bin" --bogus synth --arch mixtral --out "$T/x" --bogus 1
  expect_fail "$bin" --model bench --prefill 16
  expect_fail "$bin" --policies bench --model "$M" --policies none,fast
  expect_fail "$bin" --gammas bench --model "$M" --gammas 1,x
  expect_fail "$bin" --gammas bench --model "$M" --gammas 0
  expect_fail "$bin" --prefill bench --model "$M" --prefill 0
  expect_fail "$bin" --decode bench --model "$M" --decode 1.5
  expect_fail "$bin" --format bench --model "$M" --format xml
  expect_fail "$bin" --repeat bench --model "$M" --repeat 0
  expect_fail "$bin" --ep-ranks bench --model "$M" --ep-ranks 3 --prefill 16 --decode ""
  expect_fail "$bin" --bogus bench --model "$M" --bogus
  expect_fail "$bin" config.json bench --model "$T/nonexistent" --prefill 16
  expect_fail "$bin" nonexistent.txt bench --model "$M" --text "$T/nonexistent.txt" --prefill 16 --decode "" --sgemm-size 16 --copy-mib 1
  expect_fail "$bin" --file perplexity --model "$M"
  expect_fail "$bin" --model perplexity --file "$TXT"
  expect_fail "$bin" --context perplexity --model "$M" --file "$TXT" --context 1
  expect_fail "$bin" --context perplexity --model "$M" --file "$TXT" --context 100000
  expect_fail "$bin" --stride perplexity --model "$M" --file "$TXT" --context 32 --stride 33
  expect_fail "$bin" --batch perplexity --model "$M" --file "$TXT" --batch 0
  expect_fail "$bin" --policy perplexity --model "$M" --file "$TXT" --policy fast
  expect_fail "$bin" --capacity-factor perplexity --model "$M" --file "$TXT" --policy drop --capacity-factor -1
  expect_fail "$bin" nonexistent.txt perplexity --model "$M" --file "$T/nonexistent.txt"
  expect_fail "$bin" one.txt perplexity --model "$M" --file "$T/one.txt"
  expect_fail "$bin" --bogus perplexity --model "$M" --file "$TXT" --bogus 2
done

# ---- one small run of each command under ASan ----------------------------------------
"$A" synth --arch qwen2_moe --out "$T/asan" --hidden 32 --layers 2 --experts 4 --top-k 2 \
  --intermediate 16 --heads 2 --kv-heads 1 --vocab 300 --context 128 --dtype bf16 > /dev/null
"$A" bench --model "$T/asan" --prefill 24 --decode 1,16 --policies none,reroute,expanded \
  --gammas 1 --repeat 1 --decode-steps 1 --decode-context 4 --sgemm-size 32 --copy-mib 1 \
  --text "$TXT" > "$T/asan-bench.json"
python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$T/asan-bench.json"
"$A" perplexity --model "$T/asan" --file "$TXT" --context 40 --batch 2 --policy expanded \
  --capacity-factor 1 --ep-ranks 2 --min-tokens 0 > "$T/asan-ppl.json"
python3 -c "import json,sys,math; assert math.isfinite(json.load(open(sys.argv[1]))['perplexity'])" "$T/asan-ppl.json"
echo "t_cli_tools: ok"
