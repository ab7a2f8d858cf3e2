#!/usr/bin/env python3
"""make_seeds.py - writes the seed corpora of tests/fuzz/corpus/NAME/ from
files already in the repository (fixtures, chat templates, Jinja snippets,
configurations) plus a few hand-written edge cases, as files 000, 001, ...
Deterministic; run from the repository root:  python3 tests/fuzz/make_seeds.py
The other files of those directories (named by their SHA-1) are inputs
libFuzzer found that add coverage, kept by
  build-fuzz/fuzz/fuzz_NAME -merge=1 tests/fuzz/corpus/NAME build-fuzz/fuzz-corpus/NAME
(only small ones); this script leaves them alone."""
import glob, json, os, struct

OUT = 'tests/fuzz/corpus'


def put(name, idx, data):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode('utf-8', 'surrogatepass')
    with open(os.path.join(d, '%03d' % idx), 'wb') as f:
        f.write(data)


def seeds(name, items):
    d = os.path.join(OUT, name)
    if os.path.isdir(d):
        for f in os.listdir(d):
            if len(f) == 3 and f.isdigit():
                os.remove(os.path.join(d, f))
    for i, it in enumerate(items):
        put(name, i, it)


# ---- request: byte 0 = kind (bit 0: chat) and limits (bit 1: none) ----
comp = [
    {"prompt": "Hello", "max_tokens": 8},
    {"prompt": ["a", "b"], "n": 2, "temperature": 0.7, "top_p": 0.9, "seed": 7},
    {"prompt": [1, 2, 3], "max_tokens": 1, "logprobs": 2, "echo": True},
    {"prompt": [[1, 2], [3]], "stop": ["\n", "##"], "stop_token_ids": [2]},
    {"prompt": "x", "stream": True, "stream_options": {"include_usage": True}},
    {"prompt": "x", "best_of": 1, "presence_penalty": 0.5, "frequency_penalty": -0.5,
     "repetition_penalty": 1.1, "top_k": 40, "min_p": 0.05},
    {"prompt": "x", "max_tokens": 1e300, "n": -1, "temperature": "hot"},
    {"prompt": "x", "best_of": 6666666666, "seed": 1.5e19, "top_k": -2147483649},
    {"prompt": "x", "logit_bias": {"50256": -100}, "user": "u", "ignore_eos": True,
     "skip_special_tokens": False, "add_special_tokens": False, "model": "m"},
    {"prompt": "a\u0000b"},
]
chat = [
    {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [
        {"type": "text", "text": "part"}]}], "logprobs": True, "top_logprobs": 3},
    {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
     {"role": "tool", "tool_call_id": "c", "content": "1"}],
     "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
    {"messages": [{"role": "user\u0000x", "content": "x"}], "stop": "\u0000"},
    {"messages": [], "n": 99999999999},
    {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"},
     "max_completion_tokens": 3, "stream": True},
]
reqs = [b'\x00' + json.dumps(c).encode() for c in comp]
reqs += [b'\x01' + json.dumps(c).encode() for c in chat]
reqs += [b'\x02' + json.dumps(comp[0]).encode(), b'\x03' + json.dumps(chat[0]).encode(),
         b'\x00{"prompt":"\xff\xfe"}', b'\x00' + b'[' * 2000, b'\x00{"prompt":"x"} trailing',
         b'\x01{"messages":[{"role":"user","content":"\\ud800"}]}']
resp = [{"input": "Hello", "max_output_tokens": 8},
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
         "instructions": "Be brief.", "temperature": 0.5},
        {"input": "x", "text": {"format": {"type": "json_schema", "name": "o", "schema":
         {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}},
        {"input": "x", "reasoning": {"effort": "high"}},
        {"input": "x", "max_output_tokens": 6666666666, "stream": True},
        {"input": [{"role": "user", "content": "w?"},
                   {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
                   {"type": "function_call_output", "call_id": "c1", "output": "2"}],
         "tools": [{"type": "function", "name": "f", "description": "d", "strict": True,
                    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}],
         "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": False},
        {"input": "x", "tools": [{"type": "web_search"}], "tool_choice": "required"},
        {"input": [{"type": "function_call_output", "call_id": "z", "output": [
            {"type": "input_text", "text": "t"}]}], "tool_choice": {"type": "allowed_tools"}}]
reqs += [b'\x05' + json.dumps(c).encode() for c in resp]
seeds('request', reqs)

# ---- tokenizer_load: whole tokenizer.json files (the small ones) ----
tl = sorted(glob.glob('tests/tokenizer/unit/*.json'))
tl = [p for p in tl if os.path.basename(p) in ('bytelevel.json', 'sentencepiece.json', 'metaspace.json')]
tl += ['tests/fixtures/mixtral-tiny/tokenizer.json', 'tests/fixtures/qwen3moe-tiny/tokenizer.json',
       'tests/fixtures/olmoe-tiny/tokenizer.json', 'tests/fixtures/deepseekv3-tiny/tokenizer.json']
tdata = [open(p, 'rb').read() for p in tl]
small = json.loads(tdata[0])
bad = dict(small)
bad['post_processor'] = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}}], "pair": [],
                         "special_tokens": {"<bos>": {"id": "<bos>", "ids": [-7], "tokens": ["<bos>"]}}}
tdata.append(json.dumps(bad).encode())
tdata.append(b'{"model":{"type":"BPE","vocab":{},"merges":[]},"added_tokens":[{"id":-1,"content":"x","special":true}]}')
seeds('tokenizer_load', tdata)

# ---- tokenize: byte 0 = tokenizer (0..4) + 5 * mode (0..3) ----
texts = ["Hello world", "Hello, world! It's 2024.", "caf\u00e9 na\u00efve \u4f60\u597d \U0001F600",
         "  spaces\tand\nnewlines\r\n", "<s>[INST] hi [/INST]</s>", "<|im_start|>user\nhi<|im_end|>",
         "\u2581already\u2581metaspace", "e\u0301 NFC A\u030a", "<\uff5cbegin\u2581of\u2581sentence\uff5c>x",
         "a" * 300, "\x00\x01\x7f"]
tk = []
for t in range(5):
    for m in (0, 1):
        for s in texts[t::2] if t else texts:
            tk.append(bytes([t + 5 * m]) + s.encode('utf-8'))
    ids = b''.join(struct.pack('<H', i) for i in (1, 2, 3, 100, 255, 256, 259, 0xffff, 7))
    tk.append(bytes([t + 10]) + ids)
    tk.append(bytes([t + 15]) + ids)
tk.append(bytes([1]) + b'\xff\xfe bad utf-8 \xc3')
seeds('tokenize', tk)


# ---- safetensors: whole files ----
def st_file(tensors, meta=None, pad=b''):
    hdr, data = {}, b''
    if meta is not None:
        hdr['__metadata__'] = meta
    for name, dt, shape, raw in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(hdr).encode()
    return struct.pack('<Q', len(h)) + h + pad + data


f32 = struct.pack('<4f', 1, -2, 3.5, 0)
sts = [
    st_file([("a", "F32", [2, 2], f32)], {"format": "pt"}),
    st_file([("w", "BF16", [3], b'\x80\x3f' * 3), ("h", "F16", [1, 2], b'\x00\x3c\x00\xc0')]),
    st_file([("i", "I64", [2], struct.pack('<2q', 1, 2)), ("z", "F32", [0, 5], b'')]),
    st_file([("s", "F32", [], struct.pack('<f', 9))]),
    st_file([("a", "F32", [2, 2], f32)])[:-3],                        # truncated
    st_file([("a", "F32", [3, 2], f32)]),                             # wrong size
    b'\xff' * 8 + b'{}',
    struct.pack('<Q', 2) + b'{}',
    struct.pack('<Q', 30) + b'{"a":{"dtype":"F32"}}' + b' ' * 9,
]
overlap = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
h = json.dumps(overlap).encode()
sts.append(struct.pack('<Q', len(h)) + h + b'\x00' * 12)
seeds('safetensors', sts)

# ---- hfconfig: config.json files ----
hc = [open(p, 'rb').read() for p in sorted(glob.glob('tests/fixtures/*/config.json'))]
hc += [open(p, 'rb').read() for p in sorted(glob.glob('tests/data/configs/*/config.json'))[:6]]
hc.append(open('config/model/config.json', 'rb').read())
mix = json.loads(open('tests/fixtures/mixtral-tiny/config.json').read())
for k, v in (("head_dim", 1073741824), ("rope_theta", 1e-300), ("max_position_embeddings", 2147483647),
             ("eos_token_id", 99999999), ("num_hidden_layers", 1e10), ("vocab_size", -1)):
    m = dict(mix)
    m[k] = v
    hc.append(json.dumps(m).encode())
seeds('hfconfig', hc)

# ---- config: byte 0 even = JSON file, odd = NAME=VALUE lines ----
cf = [b'\x00' + open('config/capmoe.json', 'rb').read(),
      b'\x00{"port": 70000}', b'\x00{"capacity_factor": "auto", "policy": "drop"}',
      b'\x00{"max_body_bytes": 1e300, "threads": 6666666666}',
      b'\x01port=0\nmax_running=4\nmax_batch_tokens=64\nconnection_timeout_s=5',
      b'\x01max_connections=99999999999999999999\n',
      b'\x01capacity_factor=nan\ngrace_period_s=inf\n',
      b'\x01request_timeout_s=-1\nep_ranks=0x10\n',
      b'\x01log_level=debug\nlog_format=json\ncors_origins=*\n']
seeds('config', cf)

# ---- jinja: template, NUL, variables JSON ----
sn = json.load(open('tests/jinja/snippets.json'))
vars_ = json.dumps(sn['vars']).encode()
jj = [s.encode() + b'\x00' + vars_ for s in sn['snippets'][::6]]
for p in sorted(glob.glob('tests/tokenizer/chat/*.jinja')):
    jj.append(open(p, 'rb').read())
seeds('jinja', jj)

# ---- chat: byte 0 = template (0..15) + 128 * add_generation_prompt ----
convs = json.load(open('tests/tokenizer/chat/cases.json'))['convs']
ch = []
for i, c in enumerate(convs):
    ch.append(bytes([(i % 16) | (0x80 if i % 2 else 0)]) + json.dumps(c).encode())
tools = [{"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}]
ch.append(bytes([1]) + json.dumps(convs[0]).encode() + b'\x00' + json.dumps(tools).encode())
ch.append(bytes([2]) + b'[{"role":"user","content":"\\ud800"}]')
ch.append(bytes([3]) + b'[{"role":5,"content":{"a":[1,2]}}]')
seeds('chat', ch)
# ---- grammar: schema, NUL, driver (byte 0 even: text; odd: token walk) ----
schemas = [
    None,
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
     "age": {"type": "integer"}, "ok": {"type": "boolean"}}, "required": ["name"],
     "additionalProperties": False},
    {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
    {"enum": ["red", "green", 3, None]},
    {"anyOf": [{"type": "string"}, {"type": "null"}]},
    {"$defs": {"p": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0}}}},
     "type": "object", "properties": {"a": {"$ref": "#/$defs/p"}, "b": {"const": "k"}}},
    {"type": ["string", "integer"], "minLength": 2},
]
docs = ['{"k":[1,2.5e3,"x",null,true]}', '{"name":"Bob","age":42}', '[1,-2.5]', '"green"', 'null',
        '{"a":{"x":7},"b":"k"}', '"ab"']
gr = []
for sc, doc in zip(schemas, docs):
    st = (json.dumps(sc) if sc is not None else '').encode()
    gr.append(st + b'\x00' + b'\x02' + doc.encode())
    gr.append(st + b'\x00' + b'\x01' + bytes(range(7, 7 + 48)))
    gr.append(st + b'\x00' + b'\x03' + bytes([0] * 48))
gr.append(b'{"type":"string","pattern":"a+"}\x00\x00"a"')
gr.append(b'{"$ref":"#/$defs/a","$defs":{"a":{"$ref":"#/$defs/a"}}}\x00\x01\x01')
seeds('grammar', gr)
print('seeds written to', OUT)
