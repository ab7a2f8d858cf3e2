// api.mjs - the HTTP API of capmoe-server, black box: every error class with
// its status, OpenAI error shape, param and headers; routing, methods, auth;
// the response shapes and exact usage counts of completions, chat, streams,
// tokenize / detokenize. Run by tests/t_server_api.sh with CAPMOE_URL,
// CAPMOE_KEY, CAPMOE_MODEL_ID, CAPMOE_MAX_BODY (the server's settings).
import test from 'node:test';
import assert from 'node:assert/strict';
import { request, get, post, assertError, sseData, raw, metric } from './lib.mjs';

const KEY = process.env.CAPMOE_KEY;
const MODEL = process.env.CAPMOE_MODEL_ID;
const MAX_BODY = Number(process.env.CAPMOE_MAX_BODY);
const auth = { Authorization: `Bearer ${KEY}` };
const gen = (body, opts = {}) => post('/v1/completions', body, { headers: auth, ...opts });
const chat = (body, opts = {}) => post('/v1/chat/completions', body, { headers: auth, ...opts });

let CONTEXT = 0;

test('health and metrics are public; health says ok', async () => {
  const h = await get('/health');
  assert.equal(h.status, 200);
  assert.deepEqual(h.json, { status: 'ok' });
  const m = await get('/metrics');
  assert.equal(m.status, 200);
  assert.equal(m.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8');
  assert.ok(m.text.endsWith('\n'));
  const head = await request('HEAD', '/health');
  assert.equal(head.status, 200);
  assert.equal(head.text, '');
});

test('401 without or with a wrong bearer token', async () => {
  for (const headers of [{}, { Authorization: 'Bearer wrong' }, { Authorization: KEY },
    { Authorization: `Basic ${KEY}` }, { Authorization: `Bearer ${KEY}x` }]) {
    for (const [m, p] of [['GET', '/v1/models'], ['POST', '/v1/completions'],
      ['POST', '/v1/chat/completions'], ['POST', '/tokenize'], ['POST', '/detokenize']]) {
      const r = await request(m, p, { headers, body: m === 'POST' ? { prompt: 'x' } : undefined });
      assertError(r, 401, { code: 'invalid_api_key' });
      assert.equal(r.headers['www-authenticate'], 'Bearer');
    }
  }
  const ok = await get('/v1/models', { headers: { Authorization: `bearer ${KEY}` } });
  assert.equal(ok.status, 200); // the scheme is case-insensitive
});

test('models list and lookup', async () => {
  const r = await get('/v1/models', { headers: auth });
  assert.equal(r.status, 200);
  assert.equal(r.json.object, 'list');
  assert.equal(r.json.data.length, 1);
  const m = r.json.data[0];
  assert.equal(m.id, MODEL);
  assert.equal(m.object, 'model');
  assert.equal(typeof m.created, 'number');
  assert.ok(m.max_model_len > 0);
  CONTEXT = m.max_model_len;
  const one = await get(`/v1/models/${MODEL}`, { headers: auth });
  assert.equal(one.status, 200);
  assert.equal(one.json.id, MODEL);
  assertError(await get('/v1/models/gpt-4o', { headers: auth }), 404, { code: 'model_not_found', param: 'model' });
});

test('404 unknown routes, 405 wrong methods with Allow', async () => {
  assertError(await get('/v2/completions'), 404, { code: 'not_found' });
  assertError(await post('/v1/completion', { prompt: 'x' }, { headers: auth }), 404);
  assertError(await get('/'), 404);
  let r = await get('/v1/completions', { headers: auth });
  assertError(r, 405, { code: 'method_not_allowed' });
  assert.equal(r.headers.allow, 'POST');
  r = await request('DELETE', '/health');
  assertError(r, 405);
  assert.equal(r.headers.allow, 'GET, HEAD');
  r = await request('PUT', '/v1/chat/completions', { headers: auth, body: {} });
  assertError(r, 405);
  assert.equal(r.headers.allow, 'POST');
  r = await post('/metrics', 'x');
  assert.equal(r.status, 405);
});

test('400: malformed bodies', async () => {
  for (const body of ['', '{', '{"prompt":"x",}', 'null', '[]', '"x"', '{"prompt":"x"} {}',
    Buffer.from('{"prompt":"\xff\xfe"}', 'latin1'), Buffer.from('{"prompt":"\xed\xa0\x80"}', 'latin1'),
    Buffer.from('{"prompt":"ok", "user":"\xc0\xaf"}', 'latin1'), '{"prompt":"\\udc00"}']) {
    assertError(await gen(body), 400, { type: 'invalid_request_error', param: null });
    assertError(await chat(body), 400, { type: 'invalid_request_error', param: null });
  }
  // nesting far beyond cJSON's limit (1000), inside the body limit
  const depth = Math.min(20000, Math.floor((MAX_BODY - 100) / 2));
  const deep = '{"prompt":"x","x":' + '['.repeat(depth) + ']'.repeat(depth) + '}';
  const r = await gen(deep);
  assertError(r, 400);
  assert.match(r.json.error.message, /nested deeper|malformed/);
  // deep, but within the limit, in an unknown field: ignored
  const ok = await gen('{"prompt":"x","max_tokens":1,"x":' + '['.repeat(900) + ']'.repeat(900) + '}');
  assert.equal(ok.status, 200, ok.text);
});

test('400: wrong types, out-of-range and huge values name the param', async () => {
  const cases = [
    [{ prompt: 3 }, 'prompt'], [{ prompt: [] }, 'prompt'], [{ prompt: [1, 'a'] }, 'prompt'],
    [{ prompt: [1e300] }, 'prompt'], [{ prompt: [-1] }, 'prompt'], [{ prompt: [100000000] }, 'prompt'],
    [{}, 'prompt'],
    [{ prompt: 'x', max_tokens: 0 }, 'max_tokens'], [{ prompt: 'x', max_tokens: 1.5 }, 'max_tokens'],
    [{ prompt: 'x', max_tokens: '5' }, 'max_tokens'], [{ prompt: 'x', max_tokens: 1e308 }, 'max_tokens'],
    [{ prompt: 'x', max_tokens: -1e308 }, 'max_tokens'],
    ['{"prompt":"x","max_tokens":1e999}', 'max_tokens'],
    ['{"prompt":"x","temperature":-1e999}', 'temperature'],
    [{ prompt: 'x', temperature: 2.5 }, 'temperature'], [{ prompt: 'x', temperature: -0.5 }, 'temperature'],
    [{ prompt: 'x', top_p: 0 }, 'top_p'], [{ prompt: 'x', top_p: 1.5 }, 'top_p'],
    [{ prompt: 'x', top_k: -5 }, 'top_k'], [{ prompt: 'x', min_p: 2 }, 'min_p'],
    [{ prompt: 'x', n: 0 }, 'n'], [{ prompt: 'x', n: 17 }, 'n'], [{ prompt: 'x', n: 1e20 }, 'n'],
    [{ prompt: 'x', logprobs: 6 }, 'logprobs'], [{ prompt: 'x', logprobs: -1 }, 'logprobs'],
    [{ prompt: 'x', echo: 'yes' }, 'echo'], [{ prompt: 'x', stream: 1 }, 'stream'],
    [{ prompt: 'x', seed: 0.5 }, 'seed'], [{ prompt: 'x', seed: 1e300 }, 'seed'],
    [{ prompt: 'x', stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop'], [{ prompt: 'x', stop: [3] }, 'stop'],
    [{ prompt: 'x', model: 42 }, 'model'], [{ prompt: 'x', presence_penalty: 2.5 }, 'presence_penalty'],
    [{ prompt: 'x', logit_bias: { 5: 200 } }, 'logit_bias'], [{ prompt: 'x', logit_bias: { 999999: 1 } }, 'logit_bias'],
    [{ prompt: 'x', repetition_penalty: 0 }, 'repetition_penalty'], [{ prompt: 'x', suffix: 'tail' }, 'suffix'],
  ];
  for (const [body, param] of cases) {
    const r = await gen(body);
    assertError(r, 400, { type: 'invalid_request_error', param });
  }
  const chatCases = [
    [{}, 'messages'], [{ messages: 'hi' }, 'messages'], [{ messages: [] }, 'messages'],
    [{ messages: [{ role: 'robot', content: 'x' }] }, 'messages[0]'],
    [{ messages: [{ role: 'user', content: 7 }] }, 'messages[0].content'],
    [{ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: {} }] }] }, 'messages[0].content'],
    [{ messages: [{ role: 'user', content: 'x' }], top_logprobs: 3 }, 'top_logprobs'],
    [{ messages: [{ role: 'user', content: 'x' }], logprobs: true, top_logprobs: 21 }, 'top_logprobs'],
    [{ messages: [{ role: 'user', content: 'x' }], max_completion_tokens: 0 }, 'max_completion_tokens'],
    [{ messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function', function: { name: 'f' } }] }, 'tools'],
  ];
  for (const [body, param] of chatCases) assertError(await chat(body), 400, { param });
});

test('400: prompt longer than the context; max_tokens above it', async () => {
  assert.ok(CONTEXT > 0);
  const ids = Array.from({ length: CONTEXT }, (_, i) => 5 + (i % 50));
  let r = await gen({ prompt: ids, max_tokens: 1 });
  assertError(r, 400, { code: 'context_length_exceeded', param: 'prompt' });
  r = await gen({ prompt: 'word '.repeat(CONTEXT * 2) });
  assertError(r, 400, { code: 'context_length_exceeded', param: 'prompt' });
  r = await chat({ messages: [{ role: 'user', content: 'word '.repeat(CONTEXT * 2) }] });
  assertError(r, 400, { code: 'context_length_exceeded', param: 'messages' });
  r = await gen({ prompt: 'x', max_tokens: CONTEXT + 1 });
  assertError(r, 400, { param: 'max_tokens' });
  // a prompt of context - 2 tokens leaves room for 2: finish_reason length
  r = await gen({ prompt: ids.slice(0, CONTEXT - 2), max_tokens: 50, ignore_eos: true });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.choices[0].finish_reason, 'length');
  assert.equal(r.json.usage.completion_tokens, 3);
});

test('404 for another model name; the served id and no model both work', async () => {
  assertError(await gen({ prompt: 'x', model: 'gpt-3.5-turbo-instruct' }), 404, { code: 'model_not_found', param: 'model' });
  assertError(await chat({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }), 404, { code: 'model_not_found' });
  assert.equal((await gen({ prompt: 'x', model: MODEL, max_tokens: 1 })).status, 200);
  assert.equal((await gen({ prompt: 'x', max_tokens: 1 })).status, 200);
  // unknown fields are ignored
  const r = await gen({ prompt: 'x', max_tokens: 1, metadata: { a: [1, { b: null }] }, service_tier: 'auto' });
  assert.equal(r.status, 200, r.text);
});

test('413 from Content-Length before the body is read, and for a chunked body', async () => {
  // declared too large: answered without sending the body
  const head = `POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY}\r\n` +
    `Content-Type: application/json\r\nContent-Length: ${MAX_BODY + 1}\r\n\r\n`;
  let out = await raw(head, { idleMs: 2000 });
  assert.match(out, /^HTTP\/1\.1 413 /);
  assert.match(out, /"type":"invalid_request_error"/);
  out = await raw(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n`);
  assert.match(out, /^HTTP\/1\.1 413 /);
  // chunked: the limit is enforced while reading
  const big = '{"prompt":"' + 'a'.repeat(MAX_BODY) + '"}';
  const r = await gen(big, { headers: { ...auth, 'Transfer-Encoding': 'chunked' } });
  assertError(r, 413);
  // exactly at the limit is accepted
  const pre = '{"prompt":"x","max_tokens":1,"pad":"';
  const atLimit = pre + 'a'.repeat(MAX_BODY - pre.length - 2) + '"}';
  assert.equal(Buffer.byteLength(atLimit), MAX_BODY);
  const ok = await gen(atLimit);
  assert.equal(ok.status, 200, ok.text);
});

test('429 with Retry-After when the queue is full; every other answer complete', async () => {
  const N = 12;
  const body = { prompt: 'Once upon a time', max_tokens: 400, ignore_eos: true, temperature: 0 };
  const res = await Promise.all(Array.from({ length: N }, () => gen(body)));
  const full = res.filter((r) => r.status === 429);
  const ok = res.filter((r) => r.status === 200);
  assert.ok(full.length >= 1, `no 429 among ${res.map((r) => r.status)}`);
  assert.equal(full.length + ok.length, N, res.map((r) => r.status).join(','));
  for (const r of full) {
    assertError(r, 429, { code: 'queue_full' });
    assert.ok(Number(r.headers['retry-after']) >= 1);
  }
  for (const r of ok) assert.equal(r.json.usage.completion_tokens, 400);
  // greedy: every completed answer is the same text
  for (const r of ok) assert.equal(r.json.choices[0].text, ok[0].json.choices[0].text);
});

test('completions: exact usage, n, echo, logprobs, stop never emitted', async () => {
  const tok = await post('/tokenize', { prompt: 'The capital of France' }, { headers: auth });
  assert.equal(tok.status, 200);
  assert.equal(tok.json.count, tok.json.tokens.length);
  let r = await gen({ prompt: 'The capital of France', max_tokens: 7, ignore_eos: true, n: 2, temperature: 0.7, seed: 9 });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.object, 'text_completion');
  assert.match(r.json.id, /^cmpl-/);
  assert.equal(r.json.model, MODEL);
  assert.deepEqual(r.json.choices.map((c) => c.index), [0, 1]);
  assert.deepEqual(r.json.usage, { prompt_tokens: tok.json.count, completion_tokens: 14, total_tokens: tok.json.count + 14 });
  // two prompts x n=2 -> 4 choices, prompt tokens summed once per prompt
  const tok2 = await post('/tokenize', { prompt: 'Hi' }, { headers: auth });
  r = await gen({ prompt: ['The capital of France', 'Hi'], max_tokens: 3, ignore_eos: true, n: 2 });
  assert.equal(r.json.choices.length, 4);
  assert.equal(r.json.usage.prompt_tokens, tok.json.count + tok2.json.count);
  assert.equal(r.json.usage.completion_tokens, 12);
  // echo + logprobs: prompt text first, first prompt token has a null logprob
  r = await gen({ prompt: 'Hello there', max_tokens: 3, echo: true, logprobs: 2, temperature: 0, ignore_eos: true });
  assert.equal(r.status, 200, r.text);
  const c = r.json.choices[0];
  assert.ok(c.text.startsWith('Hello there'));
  const lp = c.logprobs;
  const np = (await post('/tokenize', { prompt: 'Hello there' }, { headers: auth })).json.count;
  assert.equal(lp.tokens.length, np + 3);
  assert.equal(lp.token_logprobs[0], null);
  assert.equal(lp.top_logprobs[0], null);
  for (let i = 1; i < lp.tokens.length; i++) {
    assert.ok(lp.token_logprobs[i] <= 0);
    assert.ok(Object.keys(lp.top_logprobs[i]).length <= 2);
  }
  assert.equal(lp.text_offset.length, lp.tokens.length);
  // stop: greedy text, then a stop string taken from it
  const base = await gen({ prompt: 'Hello there', max_tokens: 30, temperature: 0, ignore_eos: true });
  const text = base.json.choices[0].text;
  const m = text.slice(Math.floor(text.length / 3)).match(/[A-Za-z]{2}/);
  if (m) {
    const stop = m[0];
    const s = await gen({ prompt: 'Hello there', max_tokens: 30, temperature: 0, ignore_eos: true, stop: [stop] });
    assert.equal(s.json.choices[0].finish_reason, 'stop');
    assert.equal(s.json.choices[0].text, text.slice(0, text.indexOf(stop)));
    const st = await gen({ prompt: 'Hello there', max_tokens: 30, temperature: 0, ignore_eos: true, stop, stream: true });
    const events = sseData(st.text);
    let streamed = '';
    for (const d of events.slice(0, -1)) streamed += JSON.parse(d).choices.map((x) => x.text).join('');
    assert.equal(streamed, text.slice(0, text.indexOf(stop)));
  }
});

test('completion stream: text_completion chunks, usage chunk, [DONE]', async () => {
  const r = await gen({ prompt: 'abc', max_tokens: 5, ignore_eos: true, stream: true, stream_options: { include_usage: true } });
  assert.equal(r.status, 200);
  assert.match(r.headers['content-type'], /^text\/event-stream/);
  assert.equal(r.headers['cache-control'], 'no-cache');
  const d = sseData(r.text);
  assert.equal(d.at(-1), '[DONE]');
  const chunks = d.slice(0, -1).map((x) => JSON.parse(x));
  const id = chunks[0].id;
  for (const c of chunks) {
    assert.equal(c.id, id);
    assert.equal(c.object, 'text_completion');
    assert.ok('usage' in c);
  }
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage.completion_tokens, 5);
  const fin = chunks.filter((c) => c.choices.length && c.choices[0].finish_reason);
  assert.equal(fin.length, 1);
  assert.equal(fin[0].choices[0].finish_reason, 'length');
  for (const c of chunks.slice(0, -1)) assert.equal(c.usage, null);
});

test('chat: completion shape, stream with role first, finish, usage, [DONE]', async () => {
  const msgs = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello!' }];
  let r = await chat({ messages: msgs, max_tokens: 6, ignore_eos: true, logprobs: true, top_logprobs: 2 });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.object, 'chat.completion');
  assert.match(r.json.id, /^chatcmpl-/);
  const c = r.json.choices[0];
  assert.equal(c.message.role, 'assistant');
  assert.equal(typeof c.message.content, 'string');
  assert.equal(c.logprobs.content.length, 6);
  for (const t of c.logprobs.content) {
    assert.equal(typeof t.token, 'string');
    assert.ok(Array.isArray(t.bytes));
    assert.equal(t.top_logprobs.length, 2);
  }
  assert.equal(r.json.usage.completion_tokens, 6);
  r = await chat({ messages: msgs, max_completion_tokens: 4, ignore_eos: true, n: 2, stream: true, stream_options: { include_usage: true } });
  const d = sseData(r.text);
  assert.equal(d.at(-1), '[DONE]');
  const chunks = d.slice(0, -1).map((x) => JSON.parse(x));
  for (const idx of [0, 1]) {
    const mine = chunks.filter((x) => x.choices.length && x.choices[0].index === idx);
    assert.deepEqual(mine[0].choices[0].delta, { role: 'assistant', content: '' });
    assert.equal(mine.at(-1).choices[0].finish_reason, 'length');
    for (const x of mine.slice(0, -1)) assert.equal(x.choices[0].finish_reason, null);
  }
  for (const x of chunks) assert.equal(x.object, 'chat.completion.chunk');
  assert.equal(chunks.at(-1).usage.completion_tokens, 8);
});

test('tokenize / detokenize round trip and their errors', async () => {
  const t = await post('/tokenize', { text: 'Hello world', add_special_tokens: false }, { headers: auth });
  assert.equal(t.status, 200);
  const d = await post('/detokenize', { tokens: t.json.tokens }, { headers: auth });
  assert.equal(d.status, 200);
  assert.equal(d.json.prompt, 'Hello world');
  assert.equal(d.json.text, 'Hello world');
  assertError(await post('/tokenize', { nothing: 1 }, { headers: auth }), 400, { param: 'prompt' });
  assertError(await post('/tokenize', { prompt: 5 }, { headers: auth }), 400);
  assertError(await post('/detokenize', { tokens: [1e9] }, { headers: auth }), 400, { param: 'tokens' });
  assertError(await post('/detokenize', { tokens: 'abc' }, { headers: auth }), 400, { param: 'tokens' });
  assertError(await post('/detokenize', '{', { headers: auth }), 400);
});

test('tokenize accepts chat messages (rendered by the chat template, like vLLM)', async () => {
  const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello there' }];
  const t = await post('/tokenize', { messages }, { headers: auth });
  assert.equal(t.status, 200);
  // the chat endpoint counts the same prompt
  const c = await chat({ messages, max_tokens: 1 });
  assert.equal(c.status, 200);
  assert.equal(t.json.count, c.json.usage.prompt_tokens);
  assert.equal(t.json.tokens.length, t.json.count);
  const noGen = await post('/tokenize', { messages, add_generation_prompt: false }, { headers: auth });
  assert.equal(noGen.status, 200);
  assert.ok(noGen.json.count < t.json.count);
  assert.deepEqual(noGen.json.tokens, t.json.tokens.slice(0, noGen.json.count));
  assertError(await post('/tokenize', { messages: [] }, { headers: auth }), 400, { param: 'messages' });
  assertError(await post('/tokenize', { messages: [{ role: 'robot', content: 'x' }] }, { headers: auth }),
    400, { param: 'messages[0]' });
  assertError(await post('/tokenize', { messages, prompt: 'x' }, { headers: auth }), 400, { param: 'messages' });
});

test('logit_bias: +100 on a token makes greedy decoding emit only that token', async () => {
  const id = 100;
  const r = await gen({ prompt: 'Once upon a time', max_tokens: 6, temperature: 0, ignore_eos: true,
    logit_bias: { [id]: 100 } });
  assert.equal(r.status, 200);
  const d = await post('/detokenize', { tokens: Array(6).fill(id) }, { headers: auth });
  assert.equal(r.json.choices[0].text, d.json.text);
  // a -100 bias on the greedy first token changes it
  const base = await gen({ prompt: 'Once upon a time', max_tokens: 1, temperature: 0, ignore_eos: true,
    logprobs: 1 });
  const first = base.json.choices[0].text;
  const firstId = (await post('/tokenize', { text: first, add_special_tokens: false }, { headers: auth })).json.tokens;
  if (firstId.length === 1) {
    const r2 = await gen({ prompt: 'Once upon a time', max_tokens: 1, temperature: 0, ignore_eos: true,
      logit_bias: { [firstId[0]]: -100 } });
    assert.notEqual(r2.json.choices[0].text, first);
  }
  // penalties are accepted and the request completes
  const p = await gen({ prompt: 'Once upon a time', max_tokens: 8, temperature: 0, ignore_eos: true,
    presence_penalty: 1.5, frequency_penalty: 1, repetition_penalty: 1.3 });
  assert.equal(p.status, 200);
  assert.equal(p.json.usage.completion_tokens, 8);
});

test('metrics counted the errors by endpoint and status', async () => {
  assert.ok((await metric('capmoe_requests_total{endpoint="/v1/completions",code="400"}')) > 10);
  assert.ok((await metric('capmoe_requests_total{endpoint="/v1/completions",code="429"}')) >= 1);
  assert.ok((await metric('capmoe_requests_total{endpoint="/v1/completions",code="413"}')) >= 2);
  assert.ok((await metric('capmoe_requests_total{endpoint="other",code="404"}')) >= 1);
  assert.equal(await metric('capmoe_requests_running'), 0);
});
