// tools_client.mjs - function calling through the clients people use, on a
// model whose chat template writes tool calls as <tool_call> JSON (the
// shipped default model with the real Qwen3 template,
// tests/jinja/templates/npm_qwen3.jinja): the official openai SDK (required,
// a named function, streaming, auto, tool results fed back), the Vercel AI
// SDK (generateText with tools and toolChoice on the chat path) and
// LangChain (bindTools with tool_choice). The model is random: required /
// named calls are enforced by constrained decoding, so every call must parse
// and its arguments validate against the tool's schema, for every seed.
// Started by tests/t_client_matrix.sh with CAPMOE_TOOLS_URL, CAPMOE_API_KEY.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { generateText, tool } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';
import { z } from 'zod';

const URL = process.env.CAPMOE_TOOLS_URL;
const KEY = process.env.CAPMOE_API_KEY;
assert.ok(URL && KEY, 'CAPMOE_TOOLS_URL and CAPMOE_API_KEY must be set');
const client = new OpenAI({ baseURL: `${URL}/v1`, apiKey: KEY, maxRetries: 0, timeout: 60_000 });
const provider = createOpenAI({ baseURL: `${URL}/v1`, apiKey: KEY });
let MODEL;

const Weather = z.object({ city: z.string().max(12), unit: z.enum(['c', 'f']) }).strict();
const Time = z.object({ zone: z.string().nullable() }).strict();
const TOOLS = [
  { type: 'function', function: { name: 'get_weather', description: 'The weather in a city',
    parameters: z.toJSONSchema(Weather) } },
  { type: 'function', function: { name: 'get_time', description: 'The time in a zone',
    parameters: z.toJSONSchema(Time) } },
];
const SCHEMA = { get_weather: Weather, get_time: Time };
const ASK = [{ role: 'user', content: 'What is the weather in Oslo?' }];

function checkCall(c) {
  assert.equal(c.type, 'function');
  assert.ok(typeof c.id === 'string' && c.id.length > 0);
  const s = SCHEMA[c.function.name];
  assert.ok(s, `unknown tool ${c.function.name}`);
  const args = JSON.parse(c.function.arguments);
  assert.ok(s.safeParse(args).success, `${c.function.name}(${c.function.arguments})`);
}

test('setup: the served model', async () => {
  MODEL = (await client.models.list()).data[0].id;
});

test('openai SDK: tool_choice required gives valid calls for every seed', async () => {
  for (let seed = 0; seed < 6; seed++) {
    const r = await client.chat.completions.create({ model: MODEL, messages: ASK, tools: TOOLS,
      tool_choice: 'required', seed, max_tokens: 100 });
    const ch = r.choices[0];
    assert.equal(ch.finish_reason, 'tool_calls', JSON.stringify(ch));
    assert.ok(ch.message.tool_calls.length >= 1);
    ch.message.tool_calls.forEach(checkCall);
  }
});

test('openai SDK: a named function, one call, also streamed', async () => {
  const body = { model: MODEL, messages: ASK, tools: TOOLS, seed: 4, max_tokens: 100,
    tool_choice: { type: 'function', function: { name: 'get_weather' } } };
  const r = await client.chat.completions.create(body);
  const calls = r.choices[0].message.tool_calls;
  assert.equal(calls.length, 1);
  assert.equal(calls[0].function.name, 'get_weather');
  checkCall(calls[0]);
  // streamed: the SDK's accumulated tool calls equal the non-streamed ones
  const stream = client.chat.completions.stream({ ...body, stream: true });
  const final = await stream.finalChatCompletion();
  const sc = final.choices[0].message.tool_calls;
  assert.equal(sc.length, 1);
  assert.equal(sc[0].function.name, 'get_weather');
  assert.equal(sc[0].function.arguments, calls[0].function.arguments);
  assert.equal(final.choices[0].finish_reason, 'tool_calls');
});

test('openai SDK: auto, and a tool result fed back through the template', async () => {
  const r = await client.chat.completions.create({ model: MODEL, messages: ASK, tools: TOOLS,
    seed: 1, max_tokens: 20 });
  const m = r.choices[0].message;
  assert.ok(typeof m.content === 'string' || m.tool_calls?.length >= 1);
  (m.tool_calls ?? []).forEach(checkCall);
  const call = { id: 'call_1', type: 'function',
    function: { name: 'get_weather', arguments: '{"city":"Oslo","unit":"c"}' } };
  const followUp = [...ASK, { role: 'assistant', content: null, tool_calls: [call] },
    { role: 'tool', tool_call_id: 'call_1', content: '12 degrees and rain' }];
  const r2 = await client.chat.completions.create({ model: MODEL, messages: followUp, tools: TOOLS,
    tool_choice: 'none', max_tokens: 5, temperature: 0 });
  assert.equal(r2.choices[0].message.tool_calls, undefined);
  // the call and its result are in the prompt: more tokens than the question alone
  const r3 = await client.chat.completions.create({ model: MODEL, messages: ASK, tool_choice: 'none',
    tools: TOOLS, max_tokens: 1 });
  assert.ok(r2.usage.prompt_tokens > r3.usage.prompt_tokens + 10);
  // bad tool conversations are 400s naming the field
  await assert.rejects(client.chat.completions.create({ model: MODEL, tools: TOOLS,
    messages: [...ASK, { role: 'tool', content: 'x' }] }),
  (e) => e instanceof OpenAI.BadRequestError && e.param === 'messages[1].tool_call_id');
  await assert.rejects(client.chat.completions.create({ model: MODEL, messages: ASK, tools: TOOLS,
    tool_choice: { type: 'function', function: { name: 'nope' } } }),
  (e) => e instanceof OpenAI.BadRequestError && e.param === 'tool_choice');
});

test('AI SDK: generateText with tools, toolChoice required and a named tool (chat path)', async () => {
  const tools = {
    get_weather: tool({ description: 'The weather in a city', inputSchema: Weather }),
    get_time: tool({ description: 'The time in a zone', inputSchema: Time }),
  };
  for (let seed = 0; seed < 3; seed++) {
    const r = await generateText({ model: provider.chat(MODEL), tools, toolChoice: 'required',
      prompt: 'What is the weather in Oslo?', seed, maxOutputTokens: 100 });
    assert.ok(r.toolCalls.length >= 1, JSON.stringify(r.content));
    for (const c of r.toolCalls) assert.ok(SCHEMA[c.toolName].safeParse(c.input).success);
  }
  const r = await generateText({ model: provider.chat(MODEL), tools,
    toolChoice: { type: 'tool', toolName: 'get_time' }, prompt: 'Time?', seed: 2, maxOutputTokens: 100 });
  assert.equal(r.toolCalls.length, 1);
  assert.equal(r.toolCalls[0].toolName, 'get_time');
  assert.equal(r.finishReason, 'tool-calls');
});

test('LangChain: bindTools with tool_choice required and named', async () => {
  const llm = new ChatOpenAI({ model: MODEL, apiKey: KEY, configuration: { baseURL: `${URL}/v1` },
    maxTokens: 100, maxRetries: 0 });
  for (const choice of ['required', 'get_time']) {
    const msg = await llm.bindTools(TOOLS, { tool_choice: choice }).invoke('What is the weather in Oslo?');
    assert.ok(msg.tool_calls.length >= 1, JSON.stringify(msg));
    for (const c of msg.tool_calls) {
      if (choice !== 'required') assert.equal(c.name, choice);
      assert.ok(SCHEMA[c.name].safeParse(c.args).success, JSON.stringify(c));
    }
  }
});
