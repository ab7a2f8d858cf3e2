#!/usr/bin/env python3
"""bad_models.py OUT - writes malformed model directories under OUT (one per
case, made from the tiny fixtures) and OUT/cases.tsv: "dir<TAB>word", where
word must appear in the error that loading the directory gives (it names the
file, tensor or key at fault). Used by tests/t_bad_models.sh."""
import json, os, shutil, struct, sys

OUT = sys.argv[1]
OLMOE = 'tests/fixtures/olmoe-tiny'
MIX = 'tests/fixtures/mixtral-tiny'   # sharded: model.safetensors.index.json
cases = []


def base(name, src=OLMOE):
    d = os.path.join(OUT, name)
    shutil.copytree(src, d, ignore=shutil.ignore_patterns('parity'))
    return d


def case(name, word, src=OLMOE):
    d = base(name, src)
    cases.append((d, word))
    return d


def st_read(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]


def st_write(p, hdr, data):
    s = json.dumps(hdr).encode()
    s += b' ' * ((8 - len(s) % 8) % 8)
    open(p, 'wb').write(struct.pack('<Q', len(s)) + s + data)


def edit_header(d, fn, file='model.safetensors'):
    p = os.path.join(d, file)
    h, data = st_read(p)
    fn(h)
    st_write(p, h, data)


def drop_data(d, name, new_shape=None):
    """Removes tensor NAME's bytes (and the tensor itself, unless new_shape
    is given: then it stays with that shape and no data), keeping the file
    consistent otherwise (contiguous offsets)."""
    p = os.path.join(d, ST)
    h, data = st_read(p)
    meta = h.pop('__metadata__', None)
    out, nh = b'', {}
    for k in sorted(h, key=lambda k: h[k]['data_offsets'][0]):
        a, b = h[k]['data_offsets']
        t = dict(h[k])
        if k == name:
            if new_shape is None:
                continue
            t['shape'], raw = new_shape, b''
        else:
            raw = data[a:b]
        t['data_offsets'] = [len(out), len(out) + len(raw)]
        out += raw
        nh[k] = t
    if meta is not None:
        nh['__metadata__'] = meta
    st_write(p, nh, out)


def edit_json(d, file, fn):
    p = os.path.join(d, file)
    j = json.load(open(p))
    fn(j)
    open(p, 'w').write(json.dumps(j))


def setk(k, v):
    return lambda j: j.__setitem__(k, v)


def replace_file(d, file, what):
    p = os.path.join(d, file)
    os.remove(p)
    if what == 'fifo':
        os.mkfifo(p)
    elif what == 'dir':
        os.mkdir(p)
    elif what.startswith('/'):
        os.symlink(what, p)
    else:
        open(p, 'wb').write(what.encode() if isinstance(what, str) else what)


ST = 'model.safetensors'
full = open(os.path.join(OLMOE, ST), 'rb').read()
hdr0, _ = st_read(os.path.join(OLMOE, ST))
a_tensor = 'model.layers.0.self_attn.q_proj.weight'
assert a_tensor in hdr0, sorted(hdr0)[:5]

# ---- safetensors ----
d = case('st_truncated', ST); open(os.path.join(d, ST), 'wb').write(full[:5000])
d = case('st_tiny', 'truncated safetensors file'); open(os.path.join(d, ST), 'wb').write(full[:4])
d = case('st_empty', 'truncated safetensors file'); open(os.path.join(d, ST), 'wb').write(b'')
d = case('st_huge_header', 'header length'); open(os.path.join(d, ST), 'wb').write(b'\xff' * 8 + full[8:])
d = case('st_not_json', 'not valid JSON')
open(os.path.join(d, ST), 'wb').write(struct.pack('<Q', 8) + b'{"a": !}' + b'\0' * 16)
d = case('st_nul_header', 'NUL')
open(os.path.join(d, ST), 'wb').write(struct.pack('<Q', 4) + b'{\0}\n')
d = case('st_offsets_past_end', a_tensor)
edit_header(d, lambda h: h[a_tensor].__setitem__('data_offsets', [0, len(full) * 4]))
d = case('st_offsets_overlap', 'overlap')
def overlap(h):
    names = [k for k in h if k != '__metadata__']
    h[names[1]]['data_offsets'] = list(h[names[0]]['data_offsets'])
    h[names[1]]['shape'] = list(h[names[0]]['shape'])
    h[names[1]]['dtype'] = h[names[0]]['dtype']
edit_header(d, overlap)
d = case('st_int_dtype', a_tensor); edit_header(d, lambda h: h[a_tensor].__setitem__('dtype', 'I16'))
d = case('st_f64_dtype', a_tensor)
def f64(h):  # same bytes, read as half as many float64 elements
    s = h[a_tensor]['shape']
    h[a_tensor]['dtype'] = 'F64'
    h[a_tensor]['shape'] = [s[0] // (8 // {'F32': 4, 'BF16': 2, 'F16': 2}[hdr0[a_tensor]['dtype']]), s[1]]
edit_header(d, f64)
d = case('st_unknown_dtype', 'dtype'); edit_header(d, lambda h: h[a_tensor].__setitem__('dtype', 'Q4_K'))
d = case('st_wrong_shape', a_tensor)
edit_header(d, lambda h: h[a_tensor].__setitem__('shape', list(reversed(h[a_tensor]['shape']))) if
            h[a_tensor]['shape'][0] != h[a_tensor]['shape'][1] else h[a_tensor].__setitem__('shape', [h[a_tensor]['shape'][0] * h[a_tensor]['shape'][1]]))
d = case('st_missing_tensor', 'model.norm.weight not found'); drop_data(d, 'model.norm.weight')
d = case('st_zero_size', a_tensor); drop_data(d, a_tensor, [0, hdr0[a_tensor]['shape'][1]])
d = case('st_negative_dim', a_tensor)
edit_header(d, lambda h: h[a_tensor].__setitem__('shape', [-1, h[a_tensor]['shape'][1]]))
d = case('st_fifo', 'not a regular file'); replace_file(d, ST, 'fifo')
d = case('st_dev_zero', 'not a regular file'); replace_file(d, ST, '/dev/zero')
d = case('st_directory', 'not a regular file'); replace_file(d, ST, 'dir')
d = case('st_missing', ST); os.remove(os.path.join(d, ST))

# ---- sharded checkpoints ----
IDX = 'model.safetensors.index.json'
idx0 = json.load(open(os.path.join(MIX, IDX)))
shard = sorted(set(idx0['weight_map'].values()))[1]
d = case('idx_not_json', IDX, MIX); replace_file(d, IDX, '{"weight_map": ')
d = case('idx_missing_shard', shard, MIX); os.remove(os.path.join(d, shard))
d = case('idx_path_escape', 'weight_map', MIX)
edit_json(d, IDX, lambda j: j['weight_map'].__setitem__(next(iter(j['weight_map'])), '../../etc/passwd'))
d = case('idx_tensor_not_in_shard', 'model.not.there', MIX)
edit_json(d, IDX, lambda j: j['weight_map'].__setitem__('model.not.there', shard))
d = case('idx_shard_fifo', shard, MIX); replace_file(d, shard, 'fifo')

# ---- config.json ----
CF = 'config.json'
d = case('cfg_missing', CF); os.remove(os.path.join(d, CF))
d = case('cfg_truncated', CF); replace_file(d, CF, open(os.path.join(OLMOE, CF)).read()[:60])
d = case('cfg_array', CF); replace_file(d, CF, '[1, 2]')
d = case('cfg_fifo', 'FIFO'); replace_file(d, CF, 'fifo')
d = case('cfg_dev_zero', 'character device'); replace_file(d, CF, '/dev/zero')
for name, key, val in [
        ('cfg_head_dim_huge', 'head_dim', 1073741824),
        ('cfg_layers_zero', 'num_hidden_layers', 0),
        ('cfg_layers_huge', 'num_hidden_layers', 1e10),
        ('cfg_vocab_negative', 'vocab_size', -5),
        ('cfg_vocab_string', 'vocab_size', '100'),
        ('cfg_topk_over_experts', 'num_experts_per_tok', 1000),
        ('cfg_rope_theta_tiny', 'rope_theta', 1e-300),
        ('cfg_max_pos_huge', 'max_position_embeddings', 2147483647),
        ('cfg_eos_past_vocab', 'eos_token_id', 99999),
        ('cfg_heads_not_divisor', 'num_key_value_heads', 3),
        ('cfg_hidden_float', 'hidden_size', 64.5),
        ('cfg_rms_eps_negative', 'rms_norm_eps', -1e-6)]:
    d = case(name, key)
    edit_json(d, CF, setk(key, val))
d = case('cfg_vocab_mismatch', 'embed_tokens')
edit_json(d, CF, lambda j: j.__setitem__('vocab_size', j['vocab_size'] * 2))
d = case('cfg_more_layers', 'model.layers.')
edit_json(d, CF, lambda j: j.__setitem__('num_hidden_layers', j['num_hidden_layers'] + 3))
d = case('cfg_hidden_mismatch', 'model.')
edit_json(d, CF, lambda j: j.__setitem__('hidden_size', j['hidden_size'] * 2))

# ---- tokenizer.json / tokenizer_config.json ----
TJ, TC = 'tokenizer.json', 'tokenizer_config.json'
d = case('tok_missing', TJ); os.remove(os.path.join(d, TJ))
d = case('tok_not_json', TJ); replace_file(d, TJ, 'not json')
d = case('tok_fifo', 'FIFO'); replace_file(d, TJ, 'fifo')
d = case('tok_model_type', 'Unigram'); edit_json(d, TJ, lambda j: j['model'].__setitem__('type', 'Unigram'))
d = case('tok_post_negative', 'not a token id')
edit_json(d, TJ, setk('post_processor', {"type": "BertProcessing", "cls": ["", -7], "sep": ["", 1]}))
d = case('tok_post_past_vocab', 'not in the vocabulary')
edit_json(d, TJ, setk('post_processor', {"type": "BertProcessing", "cls": ["", 10 ** 6], "sep": ["", 1]}))
d = case('tok_added_bad_id', 'added_tokens')
edit_json(d, TJ, lambda j: j['added_tokens'].append({"id": -1, "content": "<x>", "special": True}))
d = case('tok_pretok_unknown', 'pre_tokenizer')
edit_json(d, TJ, setk('pre_tokenizer', {"type": "Frobnicate"}))
d = case('tok_config_malformed', TC); replace_file(d, TC, '{"chat_template": ')
d = case('tok_config_eos', 'eos_token'); edit_json(d, TC, setk('eos_token', '<no such token>'))
d = case('tok_config_fifo', 'FIFO'); replace_file(d, TC, 'fifo')

with open(os.path.join(OUT, 'cases.tsv'), 'w') as f:
    for d, w in cases:
        f.write('%s\t%s\n' % (d, w))
print(len(cases))
