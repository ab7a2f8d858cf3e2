// responses_client.mjs - POST /v1/responses and the chat path through the
// clients people use: the official `openai` SDK (responses.create /
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
import { generateText, streamText } from 'ai';
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
    [{ tools: [{ type: 'web_search' }] }, 'tools[0]'],
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
