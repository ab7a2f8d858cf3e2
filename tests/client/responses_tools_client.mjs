// responses_tools_client.mjs - function calling on POST /v1/responses
// through the clients people use, on a model whose chat template writes tool
// calls as <tool_call> JSON (the shipped default model with the real Qwen3
// template, tests/jinja/templates/npm_qwen3.jinja): the official openai SDK
// (responses.create with required and named tool_choice, responses.parse
// with zodResponsesFunction tools, responses.stream with its function_call
// events, a function_call / function_call_output round trip, bad input), the
// Vercel AI SDK's default provider path (openai(model) = the Responses API:
// generateText / streamText with tools, a tool result fed back) and
// LangChain's ChatOpenAI with useResponsesApi (bindTools, invoke and stream,
// a ToolMessage fed back). The model is random: required / named calls are
// enforced by constrained decoding, so every call must parse and its
// arguments validate against the tool's schema, for every seed.
// Started by tests/t_client_matrix.sh with CAPMOE_TOOLS_URL, CAPMOE_API_KEY.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { zodResponsesFunction } from 'openai/helpers/zod';
import { generateText, streamText, tool } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';
import { AIMessage, HumanMessage, ToolMessage } from '@langchain/core/messages';
import { concat } from '@langchain/core/utils/stream';
import { z } from 'zod';

const URL = process.env.CAPMOE_TOOLS_URL;
const KEY = process.env.CAPMOE_API_KEY;
assert.ok(URL && KEY, 'CAPMOE_TOOLS_URL and CAPMOE_API_KEY must be set');
const client = new OpenAI({ baseURL: `${URL}/v1`, apiKey: KEY, maxRetries: 0, timeout: 60_000 });
const provider = createOpenAI({ baseURL: `${URL}/v1`, apiKey: KEY });
const NOSTORE = { openai: { store: false } };
let MODEL;

const Weather = z.object({ city: z.string().max(12), unit: z.enum(['c', 'f']) }).strict();
const Time = z.object({ zone: z.string().nullable() }).strict();
// the Responses form of a function tool: flat, not nested under "function"
const TOOLS = [
  { type: 'function', name: 'get_weather', description: 'The weather in a city',
    parameters: z.toJSONSchema(Weather), strict: true },
  { type: 'function', name: 'get_time', description: 'The time in a zone',
    parameters: z.toJSONSchema(Time), strict: true },
];
const SCHEMA = { get_weather: Weather, get_time: Time };
const ASK = [{ role: 'user', content: 'What is the weather in Oslo?' }];

function checkCall(item) {
  assert.equal(item.type, 'function_call', JSON.stringify(item));
  assert.equal(item.status, 'completed');
  assert.ok(typeof item.id === 'string' && item.id.startsWith('fc_'), item.id);
  assert.ok(typeof item.call_id === 'string' && item.call_id.startsWith('call_'), item.call_id);
  const s = SCHEMA[item.name];
  assert.ok(s, `unknown tool ${item.name}`);
  assert.ok(s.safeParse(JSON.parse(item.arguments)).success, `${item.name}(${item.arguments})`);
}

test('setup: the served model', async () => {
  MODEL = (await client.models.list()).data[0].id;
});

test('openai SDK responses.create: tool_choice required gives function_call items for every seed', async () => {
  for (let seed = 0; seed < 5; seed++) {
    const r = await client.responses.create({ model: MODEL, input: ASK, tools: TOOLS,
      tool_choice: 'required', seed, max_output_tokens: 120 });
    assert.equal(r.status, 'completed', JSON.stringify(r.output));
    const calls = r.output.filter((o) => o.type === 'function_call');
    assert.ok(calls.length >= 1, JSON.stringify(r.output));
    calls.forEach(checkCall);
    assert.equal(new Set(calls.map((c) => c.call_id)).size, calls.length);
    assert.equal(r.output_text, '');
    // the request's tools and choice are echoed in the Responses form
    assert.equal(r.tool_choice, 'required');
    assert.deepEqual(r.tools.map((t) => [t.type, t.name, t.strict]),
      [['function', 'get_weather', true], ['function', 'get_time', true]]);
    assert.deepEqual(r.tools[0].parameters, TOOLS[0].parameters);
    assert.equal(r.parallel_tool_calls, true);
  }
});

test('openai SDK: a named function, one call, and responses.stream gives the same call', async () => {
  const body = { model: MODEL, input: ASK, tools: TOOLS, seed: 4, max_output_tokens: 120,
    tool_choice: { type: 'function', name: 'get_weather' } };
  const r = await client.responses.create(body);
  assert.equal(r.output.length, 1, JSON.stringify(r.output));
  checkCall(r.output[0]);
  assert.equal(r.output[0].name, 'get_weather');
  assert.deepEqual(r.tool_choice, { type: 'function', name: 'get_weather' });

  const stream = client.responses.stream(body);
  const events = [];
  let args = '';
  stream.on('response.function_call_arguments.delta', (e) => { args += e.delta; });
  for await (const e of stream) events.push(e);
  const final = await stream.finalResponse();
  assert.deepEqual(events.map((e) => e.type), ['response.created', 'response.in_progress',
    'response.output_item.added', 'response.function_call_arguments.delta',
    'response.function_call_arguments.done', 'response.output_item.done', 'response.completed']);
  assert.deepEqual(events.map((e) => e.sequence_number), events.map((_, i) => i));
  const [added, , done, itemDone] = events.slice(2);
  assert.equal(added.output_index, 0);
  assert.equal(added.item.type, 'function_call');
  assert.equal(added.item.arguments, '');
  assert.equal(added.item.status, 'in_progress');
  assert.equal(done.item_id, added.item.id);
  assert.equal(done.name, 'get_weather');
  assert.equal(done.arguments, r.output[0].arguments);
  assert.equal(args, r.output[0].arguments);
  checkCall(itemDone.item);
  assert.equal(final.output.length, 1);
  checkCall(final.output[0]);
  assert.equal(final.output[0].arguments, r.output[0].arguments);
  assert.equal(final.output[0].call_id, itemDone.item.call_id);
});

test('openai SDK: required with parallel_tool_calls false gives exactly one call', async () => {
  for (let seed = 0; seed < 3; seed++) {
    const r = await client.responses.create({ model: MODEL, input: ASK, tools: TOOLS, seed,
      tool_choice: 'required', parallel_tool_calls: false, max_output_tokens: 120 });
    assert.equal(r.output.length, 1, JSON.stringify(r.output));
    checkCall(r.output[0]);
    assert.equal(r.parallel_tool_calls, false);
  }
});

test('openai SDK responses.parse: zodResponsesFunction tools give parsed_arguments', async () => {
  const tools = [zodResponsesFunction({ name: 'get_weather', description: 'The weather in a city',
    parameters: Weather }), zodResponsesFunction({ name: 'get_time', parameters: Time })];
  for (let seed = 0; seed < 3; seed++) {
    const r = await client.responses.parse({ model: MODEL, input: ASK, tools, seed,
      tool_choice: 'required', max_output_tokens: 120 });
    assert.ok(r.output.length >= 1);
    for (const o of r.output) {
      checkCall(o);
      assert.deepEqual(o.parsed_arguments, SCHEMA[o.name].parse(JSON.parse(o.arguments)));
    }
  }
});

test('openai SDK: auto, and a function_call / function_call_output round trip', async () => {
  const auto = await client.responses.create({ model: MODEL, input: ASK, tools: TOOLS, seed: 1,
    max_output_tokens: 20 });
  for (const o of auto.output) {
    if (o.type === 'function_call') checkCall(o);
    else assert.equal(o.type, 'message');
  }
  // the documented loop: the call items as returned, then their outputs
  const r = await client.responses.create({ model: MODEL, input: ASK, tools: TOOLS, seed: 2,
    tool_choice: { type: 'function', name: 'get_weather' }, max_output_tokens: 120 });
  const call = r.output[0];
  checkCall(call);
  const input = [...ASK, ...r.output,
    { type: 'function_call_output', call_id: call.call_id, output: '12 degrees and rain' }];
  const r2 = await client.responses.create({ model: MODEL, input, tools: TOOLS,
    tool_choice: 'none', max_output_tokens: 5, temperature: 0 });
  assert.ok(['completed', 'incomplete'].includes(r2.status));
  assert.deepEqual(r2.output.map((o) => o.type), ['message']);
  assert.equal(r2.tool_choice, 'none');
  // the call and its result are in the prompt: more tokens than the question alone
  const r3 = await client.responses.create({ model: MODEL, input: ASK, tools: TOOLS,
    tool_choice: 'none', max_output_tokens: 1 });
  assert.ok(r2.usage.input_tokens > r3.usage.input_tokens + 10,
    `${r2.usage.input_tokens} vs ${r3.usage.input_tokens}`);
  // the same conversation on the chat path renders the same prompt
  const chat = await client.chat.completions.create({ model: MODEL, max_tokens: 1,
    tools: TOOLS.map(({ type, ...fn }) => ({ type, function: fn })), tool_choice: 'none',
    messages: [...ASK, { role: 'assistant', content: null, tool_calls: [{ id: call.call_id,
      type: 'function', function: { name: call.name, arguments: call.arguments } }] },
    { role: 'tool', tool_call_id: call.call_id, content: '12 degrees and rain' }] });
  assert.equal(r2.usage.input_tokens, chat.usage.prompt_tokens);
  // output as a list of input_text parts, tool_choice auto: the stream holds
  // the text until it ends (it may be a call), then gives the same items as
  // the same greedy request unstreamed
  const body = { model: MODEL, tools: TOOLS, tool_choice: 'auto', max_output_tokens: 30,
    temperature: 0, input: [...ASK, ...r.output, { type: 'function_call_output',
      call_id: call.call_id, output: [{ type: 'input_text', text: '12 degrees and rain' }] }] };
  const plain = await client.responses.create(body);
  const s = client.responses.stream(body);
  const types = [];
  for await (const e of s) types.push(e.type);
  const fin = await s.finalResponse();
  assert.equal(fin.usage.input_tokens, plain.usage.input_tokens);
  assert.ok(fin.usage.input_tokens > r2.usage.input_tokens); // the tools are in the prompt
  const items = (out) => out.map((o) => (o.type === 'message'
    ? [o.type, o.status, o.content.map((p) => p.text)] : [o.type, o.status, o.name, o.arguments]));
  assert.deepEqual(items(fin.output), items(plain.output));
  assert.equal(fin.output_text, plain.output_text);
  assert.deepEqual(types.slice(0, 2), ['response.created', 'response.in_progress']);
  assert.ok(['response.completed', 'response.incomplete'].includes(types.at(-1)));
  if (plain.output[0].type === 'message') {
    assert.deepEqual(types.slice(2, 4), ['response.output_item.added', 'response.content_part.added']);
    assert.ok(types.includes('response.output_text.done'));
  }
});

test('openai SDK: bad tool input is a 400 naming the field', async () => {
  const fc = { type: 'function_call', call_id: 'call_1', name: 'get_weather',
    arguments: '{"city":"Oslo","unit":"c"}' };
  const bad = [
    [{ tools: [{ type: 'web_search_preview' }] }, 'tools[0].type'],
    [{ tools: [...TOOLS, { type: 'file_search', vector_store_ids: ['vs_1'] }] }, 'tools[2].type'],
    [{ tools: [{ type: 'mcp', server_label: 'x', server_url: 'http://x' }] }, 'tools[0].type'],
    [{ tools: [{ type: 'function', function: { name: 'f' } }] }, 'tools[0].name'],
    [{ tools: [TOOLS[0], TOOLS[0]] }, 'tools[1]'],
    [{ tools: TOOLS, tool_choice: 'sometimes' }, 'tool_choice'],
    [{ tools: TOOLS, tool_choice: { type: 'function', name: 'nope' } }, 'tool_choice'],
    [{ tools: TOOLS, tool_choice: { type: 'function' } }, 'tool_choice'],
    [{ tools: TOOLS, tool_choice: { type: 'file_search' } }, 'tool_choice'],
    [{ tool_choice: 'required' }, 'tool_choice'],
    [{ tools: TOOLS, input: [...ASK, { type: 'function_call_output', call_id: 'call_9', output: 'x' }] },
      'input[1].call_id'],
    [{ tools: TOOLS, input: [...ASK, fc, { type: 'function_call_output', output: 'x' }] },
      'input[2].call_id'],
    [{ tools: TOOLS, input: [...ASK, fc, { type: 'function_call_output', call_id: 'call_1' }] },
      'input[2].output'],
    [{ tools: TOOLS, input: [...ASK, fc, { type: 'function_call_output', call_id: 'call_1',
      output: [{ type: 'input_image', image_url: 'x' }] }] }, 'input[2].output'],
    [{ tools: TOOLS, input: [...ASK, { ...fc, arguments: 'not json' }] }, 'input[1].arguments'],
    [{ tools: TOOLS, input: [...ASK, { ...fc, call_id: undefined }] }, 'input[1].call_id'],
    [{ tools: TOOLS, input: [...ASK, { ...fc, name: 7 }] }, 'input[1].name'],
    [{ input: [{ type: 'item_reference', id: 'fc_1' }] }, 'input[0]'],
  ];
  for (const [extra, param] of bad) {
    await assert.rejects(client.responses.create({ model: MODEL, input: ASK, ...extra }), (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, `${param}: ${e}`);
      assert.equal(e.param, param, e.message);
      return true;
    });
  }
});

test('AI SDK default provider path (Responses): generateText / streamText with tools', async () => {
  const tools = {
    get_weather: tool({ description: 'The weather in a city', inputSchema: Weather }),
    get_time: tool({ description: 'The time in a zone', inputSchema: Time }),
  };
  // (the Responses API has no seed: the AI SDK drops it; each call samples anew)
  for (let i = 0; i < 3; i++) {
    const r = await generateText({ model: provider(MODEL), tools, toolChoice: 'required',
      prompt: 'What is the weather in Oslo?', maxOutputTokens: 120, providerOptions: NOSTORE });
    assert.ok(r.toolCalls.length >= 1, JSON.stringify(r.content));
    for (const c of r.toolCalls) assert.ok(SCHEMA[c.toolName].safeParse(c.input).success);
    assert.equal(r.finishReason, 'tool-calls');
  }
  const r = await generateText({ model: provider(MODEL), tools,
    toolChoice: { type: 'tool', toolName: 'get_time' }, prompt: 'Time?', temperature: 0,
    maxOutputTokens: 120, providerOptions: NOSTORE });
  assert.equal(r.toolCalls.length, 1);
  assert.equal(r.toolCalls[0].toolName, 'get_time');
  assert.equal(r.finishReason, 'tool-calls');
  // streamed (greedy, as above): the same call
  const s = streamText({ model: provider(MODEL), tools,
    toolChoice: { type: 'tool', toolName: 'get_time' }, prompt: 'Time?', temperature: 0,
    maxOutputTokens: 120, providerOptions: NOSTORE });
  const calls = await s.toolCalls;
  assert.equal(calls.length, 1);
  assert.equal(calls[0].toolName, 'get_time');
  assert.deepEqual(calls[0].input, r.toolCalls[0].input);
  assert.equal(await s.finishReason, 'tool-calls');
  // a tool that runs: its result goes back as function_call_output, and
  // the second step answers in text
  const bodies = [];
  const seen = createOpenAI({ baseURL: `${URL}/v1`, apiKey: KEY,
    fetch: (u, init) => { bodies.push(JSON.parse(init.body)); return fetch(u, init); } });
  const run = await generateText({ model: seen(MODEL), prompt: 'What is the weather in Oslo?',
    tools: { get_weather: tool({ description: 'The weather in a city', inputSchema: Weather,
      execute: async () => '12 degrees and rain' }) },
    prepareStep: ({ stepNumber }) => ({ toolChoice: stepNumber === 0 ? 'required' : 'auto' }),
    stopWhen: ({ steps }) => steps.length >= 2, maxOutputTokens: 120,
    providerOptions: NOSTORE });
  assert.equal(run.steps.length, 2);
  assert.equal(run.steps[0].toolResults[0].output, '12 degrees and rain');
  assert.equal(bodies.length, 2);
  const sent = bodies[1].input;
  const callId = run.steps[0].toolCalls[0].toolCallId;
  assert.ok(sent.some((i) => i.type === 'function_call' && i.call_id === callId), JSON.stringify(sent));
  assert.ok(sent.some((i) => i.type === 'function_call_output' && i.call_id === callId));
  // the call and its result are in the second step's prompt (tools in both)
  assert.ok(run.steps[1].usage.inputTokens > run.steps[0].usage.inputTokens + 10);
});

test('LangChain ChatOpenAI useResponsesApi: bindTools (invoke, stream), and a ToolMessage fed back', async () => {
  const opts = { model: MODEL, apiKey: KEY, configuration: { baseURL: `${URL}/v1` }, maxTokens: 120,
    maxRetries: 0, useResponsesApi: true };
  // LangChain takes tools in the chat form and sends them flat
  const chatTools = TOOLS.map(({ type, ...fn }) => ({ type, function: fn }));
  // @langchain/openai 1.6.0's Responses path drops a string tool_choice
  // ("required", "none"): required goes through modelKwargs
  const runs = [
    [new ChatOpenAI(opts).bindTools(chatTools, { tool_choice: 'get_time' }), 'get_time'],
    [new ChatOpenAI({ ...opts, modelKwargs: { tool_choice: 'required' } }).bindTools(chatTools), null],
  ];
  let first;
  for (const [llm, name] of runs) {
    const msg = await llm.invoke('What is the weather in Oslo?');
    assert.ok(msg.tool_calls.length >= 1, JSON.stringify(msg));
    for (const c of msg.tool_calls) {
      if (name) assert.equal(c.name, name);
      assert.ok(SCHEMA[c.name].safeParse(c.args).success, JSON.stringify(c));
      assert.ok(c.id.startsWith('call_'));
    }
    first ??= msg;
  }
  // streamed: the function_call events become one tool call chunk
  let acc;
  for await (const chunk of await runs[0][0].stream('What is the weather in Oslo?'))
    acc = acc ? concat(acc, chunk) : chunk;
  assert.equal(acc.tool_calls.length, 1, JSON.stringify(acc));
  assert.equal(acc.tool_calls[0].name, 'get_time');
  assert.ok(Time.safeParse(acc.tool_calls[0].args).success, JSON.stringify(acc.tool_calls[0]));
  const call = first.tool_calls[0];
  const llm = new ChatOpenAI({ ...opts, maxTokens: 5, modelKwargs: { tool_choice: 'none' } });
  const back = await llm.bindTools(chatTools).invoke([
    new HumanMessage('What is the weather in Oslo?'),
    new AIMessage({ content: '', tool_calls: [call] }),
    new ToolMessage({ tool_call_id: call.id, content: '12 degrees and rain' }),
  ]);
  assert.equal(back.tool_calls.length, 0);
  assert.equal(typeof back.text, 'string');
  // the call and its result reached the prompt
  const alone = await llm.bindTools(chatTools).invoke('What is the weather in Oslo?');
  assert.ok(back.usage_metadata.input_tokens > alone.usage_metadata.input_tokens + 10);
});
