// openai_client.mjs - the official OpenAI Node client (npm "openai") against a
// running capmoe-server. Started by tests/t_openai_client.sh with
//   CAPMOE_URL      http://127.0.0.1:PORT
//   CAPMOE_API_KEY  the key the server was started with (--api-key)
//   CAPMOE_CHATML   1 when the model's chat template is ChatML (qwen fixtures),
//                   so the prompt token count of a chat can be checked exactly
// Every count is checked against the server's own tokenizer (POST /tokenize),
// every streamed result against the same request without streaming.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const URL = process.env.CAPMOE_URL;
const KEY = process.env.CAPMOE_API_KEY;
assert.ok(URL && KEY, 'CAPMOE_URL and CAPMOE_API_KEY must be set');

const client = new OpenAI({ baseURL: `${URL}/v1`, apiKey: KEY, maxRetries: 0, timeout: 60_000 });
let MODEL;

async function post(path, body, key = KEY) {
  const r = await fetch(`${URL}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

async function tokenize(text, addSpecial = true) {
  const r = await post('/tokenize', { prompt: text, add_special_tokens: addSpecial });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.ok(Array.isArray(r.body.tokens));
  assert.equal(r.body.count, r.body.tokens.length);
  return r.body.tokens;
}

function checkUsage(u, promptTokens, completionTokens) {
  assert.equal(u.prompt_tokens, promptTokens, 'usage.prompt_tokens');
  if (completionTokens !== undefined) assert.equal(u.completion_tokens, completionTokens, 'usage.completion_tokens');
  assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens, 'usage.total_tokens');
}

const PROMPT = 'The capital of France is';
const GREEDY = { temperature: 0, ignore_eos: true };

test('models list', async () => {
  const models = [];
  for await (const m of client.models.list()) models.push(m);
  assert.ok(models.length >= 1);
  assert.equal(models[0].object, 'model');
  assert.equal(typeof models[0].id, 'string');
  MODEL = models[0].id;
  const one = await client.models.retrieve(MODEL);
  assert.equal(one.id, MODEL);
});

test('completion: string prompt, usage equals tokenizer counts', async () => {
  const ids = await tokenize(PROMPT);
  const r = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 8, ...GREEDY });
  assert.equal(r.object, 'text_completion');
  assert.match(r.id, /^cmpl-/);
  assert.equal(r.model, MODEL);
  assert.ok(Number.isInteger(r.created) && Math.abs(r.created - Date.now() / 1000) < 600);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].index, 0);
  assert.equal(typeof r.choices[0].text, 'string');
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.choices[0].logprobs, null);
  checkUsage(r.usage, ids.length, 8);

  // Without ignore_eos the default max_tokens is 16 and finish_reason tells why.
  const d = await client.completions.create({ model: MODEL, prompt: PROMPT, temperature: 0 });
  assert.ok(d.usage.completion_tokens >= 1 && d.usage.completion_tokens <= 16);
  if (d.usage.completion_tokens < 16) assert.equal(d.choices[0].finish_reason, 'stop');
  else assert.ok(['stop', 'length'].includes(d.choices[0].finish_reason));
});

test('completion: token-id prompt gives the same greedy text as the string', async () => {
  const ids = await tokenize(PROMPT);
  const a = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 10, ...GREEDY });
  const b = await client.completions.create({ model: MODEL, prompt: ids, max_tokens: 10, ...GREEDY });
  assert.equal(b.choices[0].text, a.choices[0].text);
  checkUsage(b.usage, ids.length, 10);
  // /detokenize inverts /tokenize.
  const det = await post('/detokenize', { tokens: ids });
  assert.equal(det.status, 200);
  assert.equal(det.body.prompt ?? det.body.text, PROMPT);
});

test('completion: array of prompts and n=2', async () => {
  const p2 = 'Once upon a time';
  const [i1, i2] = [await tokenize(PROMPT), await tokenize(p2)];
  const r = await client.completions.create({ model: MODEL, prompt: [PROMPT, p2], max_tokens: 4, ...GREEDY });
  assert.equal(r.choices.length, 2);
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1]);
  checkUsage(r.usage, i1.length + i2.length, 8);
  const single = await client.completions.create({ model: MODEL, prompt: p2, max_tokens: 4, ...GREEDY });
  assert.equal(r.choices[1].text, single.choices[0].text);

  const n = await client.completions.create({
    model: MODEL, prompt: PROMPT, max_tokens: 6, n: 2, temperature: 1.0, seed: 7, ignore_eos: true,
  });
  assert.equal(n.choices.length, 2);
  assert.deepEqual(n.choices.map((c) => c.index).sort(), [0, 1]);
  for (const c of n.choices) assert.equal(c.finish_reason, 'length');
  checkUsage(n.usage, i1.length, 12); // the prompt counted once, both choices' tokens
});

test('completion: echo', async () => {
  const r = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 5, echo: true, ...GREEDY });
  const plain = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 5, ...GREEDY });
  assert.equal(r.choices[0].text, PROMPT + plain.choices[0].text);
});

test('completion: logprobs are consistent with greedy decoding', async () => {
  const r = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 6, logprobs: 3, ...GREEDY });
  const lp = r.choices[0].logprobs;
  assert.ok(lp, 'logprobs present');
  assert.equal(lp.tokens.length, 6);
  assert.equal(lp.token_logprobs.length, 6);
  assert.equal(lp.top_logprobs.length, 6);
  assert.equal(lp.text_offset.length, 6);
  for (let i = 0; i < 6; i++) {
    const chosen = lp.token_logprobs[i];
    assert.ok(chosen <= 0 && Number.isFinite(chosen));
    const alts = Object.values(lp.top_logprobs[i]);
    assert.ok(alts.length >= 1 && alts.length <= 4, `top_logprobs[${i}] has ${alts.length}`);
    // Greedy picks the most likely token: its logprob is the best alternative's.
    assert.ok(Math.abs(Math.max(...alts) - chosen) < 1e-5, `token ${i}: ${chosen} vs ${Math.max(...alts)}`);
    if (i > 0) assert.ok(lp.text_offset[i] >= lp.text_offset[i - 1]);
  }
  // Probabilities of the alternatives cannot sum above 1.
  for (const t of lp.top_logprobs) assert.ok(Object.values(t).reduce((s, v) => s + Math.exp(v), 0) <= 1 + 1e-6);
});

test('completion: stop strings cut the text and are never emitted', async () => {
  const full = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 16, ...GREEDY });
  const text = full.choices[0].text;
  assert.ok(text.length >= 4, `greedy text too short for a stop test: ${JSON.stringify(text)}`);
  // Two code points (never half a surrogate pair) from the second half whose
  // first occurrence is not at the start, so some text comes before the cut.
  const chars = Array.from(text);
  let stop = null;
  for (let i = Math.floor(chars.length / 2); i + 2 <= chars.length && stop === null; i++) {
    const cand = chars.slice(i, i + 2).join('');
    if (text.indexOf(cand) > 0) stop = cand;
  }
  stop ??= chars.slice(-2).join('');
  const cut = text.indexOf(stop);
  const r = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 16, stop: [stop, 'never-appears-qq'], ...GREEDY });
  assert.equal(r.choices[0].text, text.slice(0, cut));
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.ok(r.usage.completion_tokens <= 16);
});

test('completion: same seed, same output; another seed differs', async () => {
  const req = { model: MODEL, prompt: PROMPT, max_tokens: 16, temperature: 1.0, top_p: 0.95, ignore_eos: true };
  const a = await client.completions.create({ ...req, seed: 1234 });
  const b = await client.completions.create({ ...req, seed: 1234 });
  const c = await client.completions.create({ ...req, seed: 98765 });
  assert.equal(a.choices[0].text, b.choices[0].text);
  assert.notEqual(a.choices[0].text, c.choices[0].text);
  // top_k=1 at any temperature is greedy.
  const g = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 16, ...GREEDY });
  const k1 = await client.completions.create({ ...req, seed: 5, top_k: 1, temperature: 1.5 });
  assert.equal(k1.choices[0].text, g.choices[0].text);
});

test('completion stream: chunks, [DONE] and the usage chunk', async () => {
  const ids = await tokenize(PROMPT);
  const plain = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 12, ...GREEDY });
  const stream = await client.completions.create({
    model: MODEL, prompt: PROMPT, max_tokens: 12, stream: true, stream_options: { include_usage: true }, ...GREEDY,
  });
  let text = '', usage = null, finish = null, chunks = 0, id = null;
  for await (const ch of stream) {
    chunks++;
    assert.equal(ch.object, 'text_completion');
    id ??= ch.id;
    assert.equal(ch.id, id, 'one id for every chunk');
    if (ch.choices.length === 0) {
      assert.equal(usage, null, 'one usage chunk');
      usage = ch.usage;
      continue;
    }
    assert.equal(usage, null, 'usage chunk comes last');
    assert.ok(ch.usage === null || ch.usage === undefined);
    text += ch.choices[0].text;
    if (ch.choices[0].finish_reason) finish = ch.choices[0].finish_reason;
  }
  assert.ok(chunks >= 3);
  assert.equal(text, plain.choices[0].text);
  assert.equal(finish, 'length');
  assert.ok(usage, 'include_usage chunk');
  checkUsage(usage, ids.length, 12);
});

test('raw SSE ends with data: [DONE]', async () => {
  const r = await fetch(`${URL}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ model: MODEL, prompt: PROMPT, max_tokens: 3, stream: true, temperature: 0 }),
  });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^text\/event-stream/);
  const body = await r.text();
  assert.ok(body.endsWith('data: [DONE]\n\n'), JSON.stringify(body.slice(-40)));
  const events = body.split('\n\n').filter((e) => e.length);
  for (const e of events) assert.ok(e.startsWith('data: ') || e.startsWith(':'), JSON.stringify(e));
  assert.equal(events.filter((e) => e === 'data: [DONE]').length, 1);
});

test('chat completion, and the prompt count of the rendered template', async () => {
  const messages = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Say hello.' },
  ];
  const r = await client.chat.completions.create({ model: MODEL, messages, max_completion_tokens: 8, ...GREEDY });
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.equal(r.choices[0].finish_reason, 'length');
  if (process.env.CAPMOE_CHATML === '1') {
    const rendered = messages.map((m) => `<|im_start|>${m.role}\n${m.content}<|im_end|>\n`).join('') + '<|im_start|>assistant\n';
    checkUsage(r.usage, (await tokenize(rendered, false)).length, 8);
  } else {
    assert.equal(r.usage.completion_tokens, 8);
  }
  // The deprecated max_tokens works too.
  const m = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 3, ...GREEDY });
  assert.equal(m.usage.completion_tokens, 3);
});

test('chat logprobs', async () => {
  const r = await client.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_completion_tokens: 4,
    logprobs: true, top_logprobs: 2, ...GREEDY,
  });
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, 4);
  for (const t of content) {
    assert.equal(typeof t.token, 'string');
    assert.ok(t.logprob <= 0);
    assert.ok(Array.isArray(t.bytes));
    assert.equal(t.top_logprobs.length, 2);
    assert.ok(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob);
    assert.ok(Math.abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5, 'greedy = best alternative');
  }
});

test('chat stream: role first, content deltas, finish, usage', async () => {
  const messages = [{ role: 'user', content: 'Tell me a story.' }];
  const plain = await client.chat.completions.create({ model: MODEL, messages, max_completion_tokens: 10, ...GREEDY });
  const stream = await client.chat.completions.create({
    model: MODEL, messages, max_completion_tokens: 10, stream: true, stream_options: { include_usage: true }, ...GREEDY,
  });
  let first = true, content = '', finish = null, usage = null;
  for await (const ch of stream) {
    assert.equal(ch.object, 'chat.completion.chunk');
    if (ch.choices.length === 0) {
      usage = ch.usage;
      continue;
    }
    const c = ch.choices[0];
    if (first) {
      assert.equal(c.delta.role, 'assistant');
      first = false;
    }
    if (c.delta.content) content += c.delta.content;
    if (c.finish_reason) {
      assert.equal(finish, null);
      finish = c.finish_reason;
    }
  }
  assert.equal(content, plain.choices[0].message.content);
  assert.equal(finish, 'length');
  assert.deepEqual(
    [usage.prompt_tokens, usage.completion_tokens, usage.total_tokens],
    [plain.usage.prompt_tokens, plain.usage.completion_tokens, plain.usage.total_tokens],
  );
});

test('logit_bias and penalties (n=4: the choices spread over the ranks under --ep mpi)', async () => {
  const [id] = await tokenize(' the', false);
  const r = await client.completions.create({
    model: MODEL, prompt: PROMPT, max_tokens: 5, n: 4, seed: 3, temperature: 1,
    logit_bias: { [id]: 100 }, ignore_eos: true,
  });
  const want = (await post('/detokenize', { tokens: Array(5).fill(id) })).body.text;
  for (const c of r.choices) assert.equal(c.text, want);
  // penalties go through the SDK (and the step plan of --ep mpi)
  const p = await client.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 6, n: 2, seed: 1,
    presence_penalty: 2, frequency_penalty: 2, repetition_penalty: 1.5, ignore_eos: true,
  });
  assert.equal(p.choices.length, 2);
  assert.equal(p.usage.completion_tokens, 12);
});

test('response_format json_schema: every choice parses and validates (n=4: spread over the ranks under --ep mpi)', async () => {
  const schema = { type: 'object', properties: { id: { type: 'integer' }, ok: { type: 'boolean' },
    word: { enum: ['a', 'b'] } }, required: ['id', 'ok', 'word'], additionalProperties: false };
  const r = await client.chat.completions.create({ model: MODEL, n: 4, seed: 11, max_tokens: 40,
    messages: [{ role: 'user', content: 'hi' }],
    response_format: { type: 'json_schema', json_schema: { name: 'x', strict: true, schema } } });
  assert.equal(r.choices.length, 4);
  for (const c of r.choices) {
    const v = JSON.parse(c.message.content);
    assert.deepEqual(Object.keys(v).sort(), ['id', 'ok', 'word']);
    assert.ok(Number.isInteger(v.id) && typeof v.ok === 'boolean' && ['a', 'b'].includes(v.word), c.message.content);
  }
});

test('errors: 400 BadRequestError with param', async () => {
  const bad = [
    [{ temperature: 5 }, 'temperature'],
    [{ max_tokens: -1 }, 'max_tokens'],
    [{ top_p: 1.5 }, 'top_p'],
    [{ logprobs: 42 }, 'logprobs'],
    [{ n: 0 }, 'n'],
    [{ presence_penalty: 3 }, 'presence_penalty'],
    [{ logit_bias: { 5: 101 } }, 'logit_bias'],
  ];
  for (const [extra, param] of bad) {
    await assert.rejects(
      client.completions.create({ model: MODEL, prompt: PROMPT, ...extra }),
      (e) => {
        assert.ok(e instanceof OpenAI.BadRequestError, `${param}: ${e}`);
        assert.equal(e.status, 400);
        assert.equal(e.type, 'invalid_request_error');
        assert.equal(e.param, param);
        return true;
      },
    );
  }
  // A prompt longer than the context.
  await assert.rejects(
    client.completions.create({ model: MODEL, prompt: Array(100000).fill(1), max_tokens: 1 }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400,
  );
  // Missing messages in a chat request.
  await assert.rejects(
    client.chat.completions.create({ model: MODEL, messages: 'nope' }),
    (e) => e instanceof OpenAI.BadRequestError,
  );
});

test('errors: 401 AuthenticationError for a wrong or missing key', async () => {
  const wrong = new OpenAI({ baseURL: `${URL}/v1`, apiKey: 'not-the-key', maxRetries: 0 });
  await assert.rejects(
    wrong.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 1 }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401,
  );
  await assert.rejects(wrong.models.list(), (e) => e instanceof OpenAI.AuthenticationError);
  const r = await fetch(`${URL}/v1/models`);
  assert.equal(r.status, 401);
  const body = await r.json();
  assert.equal(typeof body.error.message, 'string');
  // /health and /metrics stay public.
  assert.equal((await fetch(`${URL}/health`)).status, 200);
  assert.equal((await fetch(`${URL}/metrics`)).status, 200);
});

test('errors: 404 NotFoundError for an unknown model', async () => {
  await assert.rejects(
    client.completions.create({ model: 'no-such-model', prompt: PROMPT, max_tokens: 1 }),
    (e) => {
      assert.ok(e instanceof OpenAI.NotFoundError, String(e));
      assert.equal(e.status, 404);
      return true;
    },
  );
  await assert.rejects(
    client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.NotFoundError,
  );
  await assert.rejects(client.models.retrieve('no-such-model'), (e) => e instanceof OpenAI.NotFoundError);
});

test('metrics count what the client did', async () => {
  const text = await (await fetch(`${URL}/metrics`)).text();
  const get = (re) => {
    const m = text.match(re);
    return m ? Number(m[1]) : NaN;
  };
  assert.ok(get(/^capmoe_generation_tokens_total (\S+)$/m) > 0);
  assert.ok(get(/^capmoe_requests_total\{endpoint="\/v1\/completions",code="200"\} (\S+)$/m) >= 10);
  assert.ok(get(/^capmoe_requests_total\{endpoint="\/v1\/completions",code="400"\} (\S+)$/m) >= 5);
  assert.ok(get(/^capmoe_time_to_first_token_seconds_count (\S+)$/m) > 0);
});
