// responses_client.mjs - POST /v1/responses, the chat path and structured
// outputs (response_format json_schema / json_object, decoded under a
// grammar so the output always validates) through the clients people use: the official `openai` SDK (responses.create /
// responses.stream), the Vercel AI SDK (`ai` + `@ai-sdk/openai`: the default
// provider call openai(model) uses /v1/responses; openai.chat(model) the chat
// API) and LangChain (`@langchain/openai` ChatOpenAI, with useResponsesApi
// and without). Started by tests/t_client_matrix.sh with CAPMOE_URL and
// CAPMOE_API_KEY. Greedy decoding (temperature 0) makes every path's text
// comparable with the same request on /v1/chat/completions, and the token
// counts with POST /tokenize of the same messages.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { generateText, streamText, generateObject, Output } from 'ai';
import { z } from 'zod';
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';

const URL = process.env.CAPMOE_URL;
const KEY = process.env.CAPMOE_API_KEY;
assert.ok(URL && KEY, 'CAPMOE_URL and CAPMOE_API_KEY must be set');
const client = new OpenAI({ baseURL: `${URL}/v1`, apiKey: KEY, maxRetries: 0, timeout: 60_000 });
const provider = createOpenAI({ baseURL: `${URL}/v1`, apiKey: KEY });
let MODEL;

const INSTR = 'You are terse.';
const QUESTION = 'Name a colour.';
const MESSAGES = [{ role: 'system', content: INSTR }, { role: 'user', content: QUESTION }];
const N = 8;

async function post(path, body) {
  const r = await fetch(`${URL}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
    body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

// The reference: the same conversation on /v1/chat/completions.
async function chatRef() {
  const r = await post('/v1/chat/completions', { model: MODEL, messages: MESSAGES, max_tokens: N,
    temperature: 0, ignore_eos: true });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

test('setup: the served model', async () => {
  MODEL = (await client.models.list()).data[0].id;
  assert.ok(MODEL);
});

test('openai SDK responses.create: text, usage, shape', async () => {
  const ref = await chatRef();
  const r = await client.responses.create({ model: MODEL, instructions: INSTR, input: QUESTION,
    max_output_tokens: N, temperature: 0, ignore_eos: true });
  assert.equal(r.object, 'response');
  assert.match(r.id, /^resp/);
  assert.equal(r.model, MODEL);
  assert.equal(r.status, 'incomplete'); // cut by max_output_tokens
  assert.equal(r.incomplete_details.reason, 'max_output_tokens');
  assert.equal(r.instructions, INSTR);
  assert.equal(r.output.length, 1);
  assert.equal(r.output[0].type, 'message');
  assert.equal(r.output[0].role, 'assistant');
  assert.equal(r.output[0].content[0].type, 'output_text');
  assert.equal(r.output_text, ref.choices[0].message.content); // the SDK's own accessor
  const tok = await post('/tokenize', { messages: MESSAGES });
  assert.equal(r.usage.input_tokens, tok.body.count);
  assert.equal(r.usage.output_tokens, N);
  assert.equal(r.usage.total_tokens, tok.body.count + N);
  // message items with content parts give the same prompt
  const r2 = await client.responses.create({ model: MODEL, max_output_tokens: N, temperature: 0,
    ignore_eos: true, input: [{ role: 'developer', content: INSTR },
      { type: 'message', role: 'user', content: [{ type: 'input_text', text: QUESTION }] }] });
  assert.equal(r2.output_text, r.output_text);
  assert.equal(r2.usage.input_tokens, r.usage.input_tokens);
});

test('openai SDK responses.stream: the event sequence and the final response', async () => {
  const ref = await chatRef();
  const stream = client.responses.stream({ model: MODEL, instructions: INSTR, input: QUESTION,
    max_output_tokens: N, temperature: 0, ignore_eos: true });
  const types = [];
  let deltas = '';
  let seq = -1;
  for await (const ev of stream) {
    types.push(ev.type);
    assert.equal(ev.sequence_number, seq + 1);
    seq = ev.sequence_number;
    if (ev.type === 'response.output_text.delta') deltas += ev.delta;
  }
  const final = await stream.finalResponse();
  assert.deepEqual(types.slice(0, 4), ['response.created', 'response.in_progress',
    'response.output_item.added', 'response.content_part.added']);
  assert.deepEqual(types.slice(-4), ['response.output_text.done', 'response.content_part.done',
    'response.output_item.done', 'response.incomplete']);
  assert.equal(deltas, ref.choices[0].message.content);
  assert.equal(final.output_text, deltas);
  assert.equal(final.usage.output_tokens, N);
  // a short answer that ends by itself completes
  const done = await client.responses.create({ model: MODEL, input: QUESTION, max_output_tokens: 200,
    temperature: 0 });
  assert.ok(['completed', 'incomplete'].includes(done.status));
  if (done.status === 'completed') assert.equal(done.incomplete_details, null);
});

test('openai SDK responses: refused fields are 400s naming them', async () => {
  const bad = [
    [{ previous_response_id: 'resp_1' }, 'previous_response_id'],
    [{ max_output_tokens: 0 }, 'max_output_tokens'],
    [{ temperature: 9 }, 'temperature'],
    [{ tools: [{ type: 'web_search' }] }, 'tools[0].type'],
    [{ input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'x' }] }] }, 'input[0].content'],
    [{ input: [{ type: 'reasoning', summary: [] }] }, 'input[0]'],
  ];
  for (const [extra, param] of bad) {
    await assert.rejects(client.responses.create({ model: MODEL, input: 'x', ...extra }), (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, `${param}: ${e}`);
      assert.equal(e.param, param, e.message);
      return true;
    });
  }
  await assert.rejects(client.responses.create({ model: 'nope', input: 'x' }),
    (e) => e instanceof OpenAI.NotFoundError);
});

test('AI SDK: generateText / streamText on the default provider path (/v1/responses)', async () => {
  const ref = await chatRef();
  const g = await generateText({ model: provider(MODEL), system: INSTR, prompt: QUESTION,
    maxOutputTokens: N, temperature: 0, providerOptions: { openai: { store: false } } });
  assert.equal(g.text, ref.choices[0].message.content);
  assert.equal(g.usage.outputTokens, g.finishReason === 'length' ? N : g.usage.outputTokens);
  assert.equal(g.response.modelId, MODEL);
  const s = streamText({ model: provider(MODEL), system: INSTR, prompt: QUESTION,
    maxOutputTokens: N, temperature: 0 });
  let text = '';
  for await (const part of s.textStream) text += part;
  assert.equal(text, g.text);
  assert.equal((await s.usage).inputTokens, g.usage.inputTokens);
});

test('AI SDK: the chat path openai.chat(model)', async () => {
  const ref = await chatRef();
  const g = await generateText({ model: provider.chat(MODEL), system: INSTR, prompt: QUESTION,
    maxOutputTokens: N, temperature: 0 });
  assert.equal(g.text, ref.choices[0].message.content);
  assert.equal(g.usage.outputTokens, ref.usage.completion_tokens);
});

test('LangChain ChatOpenAI: chat completions and useResponsesApi, invoke and stream', async () => {
  const ref = await chatRef();
  for (const useResponsesApi of [false, true]) {
    const llm = new ChatOpenAI({ model: MODEL, apiKey: KEY, configuration: { baseURL: `${URL}/v1` },
      temperature: 0, maxTokens: N, useResponsesApi, maxRetries: 0 });
    const msg = await llm.invoke([['system', INSTR], ['human', QUESTION]]);
    assert.equal(msg.text, ref.choices[0].message.content, `useResponsesApi ${useResponsesApi}`);
    let streamed = '';
    for await (const chunk of await llm.stream([['system', INSTR], ['human', QUESTION]]))
      streamed += chunk.text;
    assert.equal(streamed, msg.text, `stream, useResponsesApi ${useResponsesApi}`);
  }
});

// ---- structured outputs: the model is random, the grammar makes it valid ----

const Person = z.object({
  name: z.string(),
  age: z.number().int(),
  tags: z.array(z.string()).max(3),
  role: z.enum(['admin', 'user']),
  nick: z.string().nullable(),
}).strict();
const personSchema = z.toJSONSchema(Person);

test('openai SDK: response_format json_schema validates for every seed; json_object parses', async () => {
  for (let seed = 0; seed < 6; seed++) {
    const r = await client.chat.completions.create({ model: MODEL, seed, temperature: 1, max_tokens: 120,
      messages: [{ role: 'user', content: 'Describe a person.' }],
      response_format: { type: 'json_schema', json_schema: { name: 'person', strict: true, schema: personSchema } } });
    const text = r.choices[0].message.content;
    const parsed = Person.safeParse(JSON.parse(text));
    assert.ok(parsed.success, `seed ${seed}: ${text}`);
  }
  for (let seed = 0; seed < 4; seed++) {
    const r = await client.chat.completions.create({ model: MODEL, seed, max_tokens: 60,
      messages: [{ role: 'user', content: 'JSON please' }], response_format: { type: 'json_object' } });
    const v = JSON.parse(r.choices[0].message.content);
    assert.equal(typeof v, 'object');
    assert.ok(v !== null && !Array.isArray(v));
  }
  // a streamed constrained answer is the same document
  const body = { model: MODEL, seed: 3, temperature: 1, max_tokens: 120,
    messages: [{ role: 'user', content: 'Describe a person.' }],
    response_format: { type: 'json_schema', json_schema: { name: 'person', schema: personSchema } } };
  const whole = (await client.chat.completions.create(body)).choices[0].message.content;
  let streamed = '';
  for await (const ch of await client.chat.completions.create({ ...body, stream: true }))
    streamed += ch.choices[0]?.delta?.content ?? '';
  assert.equal(streamed, whole);
  // unsupported schema keywords are 400s naming them
  await assert.rejects(client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }],
    response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'string', format: 'email' } } } }),
  (e) => e instanceof OpenAI.BadRequestError && e.param === 'response_format' && /'format'/.test(e.message));
});

test('openai SDK: responses.create with text.format json_schema', async () => {
  for (let seed = 0; seed < 3; seed++) {
    const r = await client.responses.create({ model: MODEL, input: 'Describe a person.', max_output_tokens: 120,
      seed, text: { format: { type: 'json_schema', name: 'person', strict: true, schema: personSchema } } });
    assert.ok(Person.safeParse(JSON.parse(r.output_text)).success, r.output_text);
  }
});

test('AI SDK: generateObject and Output.object on the default provider path and the chat path', async () => {
  for (const model of [provider(MODEL), provider.chat(MODEL)]) {
    for (let seed = 0; seed < 3; seed++) {
      const { object } = await generateObject({ model, schema: Person, prompt: 'Describe a person.',
        maxOutputTokens: 120, seed, temperature: 1 });
      assert.ok(Person.safeParse(object).success, JSON.stringify(object));
    }
  }
  const { output } = await generateText({ model: provider(MODEL), prompt: 'Describe a person.',
    output: Output.object({ schema: Person }), maxOutputTokens: 120, seed: 5 });
  assert.ok(Person.safeParse(output).success, JSON.stringify(output));
});

test('LangChain: withStructuredOutput (json_schema), with and without useResponsesApi', async () => {
  for (const useResponsesApi of [false, true]) {
    const llm = new ChatOpenAI({ model: MODEL, apiKey: KEY, configuration: { baseURL: `${URL}/v1` },
      temperature: 1, maxTokens: 120, useResponsesApi, maxRetries: 0 });
    const structured = llm.withStructuredOutput(Person, { name: 'person', method: 'jsonSchema', strict: true });
    for (let i = 0; i < 2; i++) {
      const v = await structured.invoke('Describe a person.');
      assert.ok(Person.safeParse(v).success, `useResponsesApi ${useResponsesApi}: ${JSON.stringify(v)}`);
    }
  }
});
