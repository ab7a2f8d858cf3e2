// responses_forms.mjs - function calling on POST /v1/responses with templates
// that do not write <tool_call> (tests/t_tool_forms.sh, beside
// tools_forms.mjs: the shipped default model with the real Mistral v0.3,
// Llama 3.2 and DeepSeek-V3 templates): required / named calls come back as
// function_call items whose arguments validate, for every seed; the stream's
// function_call events give the same call; the call and its
// function_call_output go back through the template exactly as the same
// conversation on /v1/chat/completions. CAPMOE_TOOL_FORM "none": a template
// without tool calls, where required / named is a 400 and auto is served.
// Env: CAPMOE_TOOLS_URL, CAPMOE_API_KEY, CAPMOE_TOOL_FORM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { z } from 'zod';

const URL = process.env.CAPMOE_TOOLS_URL;
const KEY = process.env.CAPMOE_API_KEY;
const FORM = process.env.CAPMOE_TOOL_FORM;
assert.ok(URL && KEY && FORM, 'CAPMOE_TOOLS_URL, CAPMOE_API_KEY and CAPMOE_TOOL_FORM must be set');
const client = new OpenAI({ baseURL: `${URL}/v1`, apiKey: KEY, maxRetries: 0, timeout: 60_000 });
let MODEL;

const Weather = z.object({ city: z.string().max(12), unit: z.enum(['c', 'f']) }).strict();
const Time = z.object({ zone: z.string().max(8).nullable() }).strict();
const TOOLS = [
  { type: 'function', name: 'get_weather', description: 'The weather in a city',
    parameters: z.toJSONSchema(Weather), strict: true },
  { type: 'function', name: 'get_time', description: 'The time in a zone',
    parameters: z.toJSONSchema(Time), strict: true },
];
const CHAT_TOOLS = TOOLS.map(({ type, ...fn }) => ({ type, function: fn }));
const SCHEMA = { get_weather: Weather, get_time: Time };
const ASK = [{ role: 'user', content: 'What is the weather in Oslo?' }];

function checkItem(o) {
  assert.equal(o.type, 'function_call', JSON.stringify(o));
  assert.equal(o.status, 'completed');
  if (FORM === 'mistral') assert.match(o.call_id, /^[A-Za-z0-9]{9}$/);
  else assert.ok(typeof o.call_id === 'string' && o.call_id.length > 0);
  assert.ok(o.id.startsWith('fc_'), o.id);
  const s = SCHEMA[o.name];
  assert.ok(s, `unknown tool ${o.name}`);
  assert.ok(s.safeParse(JSON.parse(o.arguments)).success, `${o.name}(${o.arguments})`);
}

test('setup: the served model', async () => {
  MODEL = (await client.models.list()).data[0].id;
});

if (FORM === 'none') {
  test('responses, a template without a tool-call form: required / named is a 400, auto is served', async () => {
    for (const tool_choice of ['required', { type: 'function', name: 'get_time' }]) {
      await assert.rejects(client.responses.create({ model: MODEL, input: ASK, tools: TOOLS,
        tool_choice, max_output_tokens: 10 }),
      (e) => e instanceof OpenAI.BadRequestError && e.param === 'tool_choice');
    }
    const r = await client.responses.create({ model: MODEL, input: ASK, tools: TOOLS,
      max_output_tokens: 5 });
    assert.deepEqual(r.output.map((o) => o.type), ['message']);
  });
} else {
  test(`responses, ${FORM}: tool_choice required gives valid function_call items for every seed`, async () => {
    for (let seed = 0; seed < 4; seed++) {
      const r = await client.responses.create({ model: MODEL, input: ASK, tools: TOOLS,
        tool_choice: 'required', seed, max_output_tokens: 80 });
      assert.equal(r.status, 'completed', JSON.stringify(r.output));
      assert.ok(r.output.length >= 1);
      r.output.forEach(checkItem);
    }
  });

  test(`responses, ${FORM}: a named function, streamed, fed back as on chat`, async () => {
    const body = { model: MODEL, input: ASK, tools: TOOLS, seed: 7, max_output_tokens: 80,
      tool_choice: { type: 'function', name: 'get_time' } };
    const r = await client.responses.create(body);
    assert.equal(r.output.length, 1, JSON.stringify(r.output));
    checkItem(r.output[0]);
    assert.equal(r.output[0].name, 'get_time');
    const stream = client.responses.stream(body);
    const types = [];
    for await (const e of stream) types.push(e.type);
    const final = await stream.finalResponse();
    assert.deepEqual(types.slice(2, -1), ['response.output_item.added',
      'response.function_call_arguments.delta', 'response.function_call_arguments.done',
      'response.output_item.done']);
    assert.equal(final.output[0].arguments, r.output[0].arguments);
    // the call and its output through the template, as on chat
    const call = r.output[0];
    const r2 = await client.responses.create({ model: MODEL, tools: TOOLS, max_output_tokens: 1,
      input: [...ASK, ...r.output, { type: 'function_call_output', call_id: call.call_id, output: '12' }] });
    const chat = await client.chat.completions.create({ model: MODEL, tools: CHAT_TOOLS, max_tokens: 1,
      messages: [...ASK, { role: 'assistant', content: null, tool_calls: [{ id: call.call_id,
        type: 'function', function: { name: call.name, arguments: call.arguments } }] },
      { role: 'tool', tool_call_id: call.call_id, content: '12' }] });
    assert.equal(r2.usage.input_tokens, chat.usage.prompt_tokens);
    assert.ok(r2.usage.input_tokens > r.usage.input_tokens, 'the call is in the prompt');
  });
}
