// tools_forms.mjs - function calling on templates that do not write
// <tool_call> (tests/t_tool_forms.sh starts the shipped default model with
// the real Mistral v0.3, Llama 3.2 and DeepSeek-V3 templates in its
// tokenizer_config.json): the form is found from the template, tool_choice
// required / a named function is enforced by constrained decoding in that
// form, so with a random model every call parses and validates, for every
// seed and temperature; streamed calls equal the non-streamed ones; the
// returned calls feed back through the template. CAPMOE_TOOL_FORM "none": a
// template without tool calls, where required / named is a 400.
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
  { type: 'function', function: { name: 'get_weather', description: 'The weather in a city',
    parameters: z.toJSONSchema(Weather) } },
  { type: 'function', function: { name: 'get_time', description: 'The time in a zone',
    parameters: z.toJSONSchema(Time) } },
];
const SCHEMA = { get_weather: Weather, get_time: Time };
const ASK = [{ role: 'user', content: 'What is the weather in Oslo?' }];

function checkCall(c) {
  assert.equal(c.type, 'function');
  if (FORM === 'mistral') assert.match(c.id, /^[A-Za-z0-9]{9}$/, 'Mistral templates need 9-character ids');
  else assert.ok(typeof c.id === 'string' && c.id.length > 0);
  const s = SCHEMA[c.function.name];
  assert.ok(s, `unknown tool ${c.function.name}`);
  const args = JSON.parse(c.function.arguments);
  assert.ok(s.safeParse(args).success, `${c.function.name}(${c.function.arguments})`);
}

test('setup: the served model', async () => {
  MODEL = (await client.models.list()).data[0].id;
});

if (FORM === 'none') {
  test('a template without a tool-call form: required / named is a 400, auto is served', async () => {
    for (const tool_choice of ['required', { type: 'function', function: { name: 'get_time' } }]) {
      await assert.rejects(client.chat.completions.create({ model: MODEL, messages: ASK, tools: TOOLS,
        tool_choice, max_tokens: 10 }),
      (e) => e instanceof OpenAI.BadRequestError && e.param === 'tool_choice' &&
        /form capmoe parses/.test(e.message));
    }
    const r = await client.chat.completions.create({ model: MODEL, messages: ASK, tools: TOOLS,
      max_tokens: 5, seed: 1 });
    assert.equal(typeof r.choices[0].message.content, 'string');
  });
} else {
  test(`${FORM}: tool_choice required gives valid calls for every seed and temperature`, async () => {
    for (const temperature of [0, 0.8, 1.6]) {
      for (let seed = 0; seed < 4; seed++) {
        const r = await client.chat.completions.create({ model: MODEL, messages: ASK, tools: TOOLS,
          tool_choice: 'required', seed, temperature, max_tokens: 80 });
        const ch = r.choices[0];
        assert.equal(ch.finish_reason, 'tool_calls', JSON.stringify(ch));
        assert.equal(ch.message.tool_calls.length, 1);
        assert.equal(ch.message.content, null);
        ch.message.tool_calls.forEach(checkCall);
      }
    }
  });

  test(`${FORM}: a named function, also streamed, fed back through the template`, async () => {
    for (const name of ['get_weather', 'get_time']) {
      const body = { model: MODEL, messages: ASK, tools: TOOLS, seed: 7, temperature: 1, max_tokens: 80,
        tool_choice: { type: 'function', function: { name } } };
      const r = await client.chat.completions.create(body);
      const calls = r.choices[0].message.tool_calls;
      assert.equal(calls.length, 1);
      assert.equal(calls[0].function.name, name);
      checkCall(calls[0]);
      const stream = client.chat.completions.stream({ ...body, stream: true });
      const final = await stream.finalChatCompletion();
      const sc = final.choices[0].message.tool_calls;
      assert.equal(sc.length, 1);
      assert.equal(sc[0].function.name, name);
      assert.equal(sc[0].function.arguments, calls[0].function.arguments);
      assert.equal(final.choices[0].finish_reason, 'tool_calls');
      // the call and a result go back through the model's template
      const followUp = [...ASK, { role: 'assistant', content: null, tool_calls: calls },
        { role: 'tool', tool_call_id: calls[0].id, content: '12' }];
      const r2 = await client.chat.completions.create({ model: MODEL, messages: followUp, tools: TOOLS,
        max_tokens: 5, temperature: 0 });
      assert.ok(r2.usage.prompt_tokens > r.usage.prompt_tokens, 'the call is in the prompt');
      // ... with its arguments: longer arguments, a longer prompt
      const longer = [{ ...calls[0], function: { ...calls[0].function,
        arguments: JSON.stringify({ ...JSON.parse(calls[0].function.arguments),
          note: 'more words than the model wrote '.repeat(4) }) } }];
      const r3 = await client.chat.completions.create({ model: MODEL, tools: TOOLS, max_tokens: 1,
        messages: [ASK[0], { role: 'assistant', content: null, tool_calls: longer }, followUp[2]] });
      assert.ok(r3.usage.prompt_tokens > r2.usage.prompt_tokens, 'the arguments are in the prompt');
      // a conversation with another server's call ids (Mistral's templates
      // accept only 9 letters / digits: capmoe maps them)
      const other = [{ ...calls[0], id: 'call_abc_123' }];
      const r4 = await client.chat.completions.create({ model: MODEL, tools: TOOLS, max_tokens: 1,
        messages: [ASK[0], { role: 'assistant', content: null, tool_calls: other },
          { role: 'tool', tool_call_id: 'call_abc_123', content: '12' }] });
      assert.ok(r4.usage.prompt_tokens > r.usage.prompt_tokens, 'the call is in the prompt');
    }
  });

  test(`${FORM}: auto is served (content or valid calls)`, async () => {
    const r = await client.chat.completions.create({ model: MODEL, messages: ASK, tools: TOOLS,
      seed: 3, max_tokens: 20 });
    const m = r.choices[0].message;
    assert.ok(typeof m.content === 'string' || m.tool_calls?.length >= 1);
    (m.tool_calls ?? []).forEach(checkCall);
  });
  // the stream as a client reads it: content deltas concatenated, each call
  // begun by a chunk with its id, type and name (arguments ""), then its
  // arguments in fragments; equal to the non-streamed answer for the same seed
  async function streamed(body) {
    const chunks = await client.chat.completions.create({ ...body, stream: true });
    let content = null, finish = null;
    const calls = [];
    for await (const chunk of chunks) {
      const ch = chunk.choices[0];
      if (!ch) continue;
      if (ch.finish_reason) finish = ch.finish_reason;
      const d = ch.delta ?? {};
      if (typeof d.content === 'string' && d.content !== '') content = (content ?? '') + d.content;
      for (const t of d.tool_calls ?? []) {
        if (!calls[t.index]) {
          assert.equal(t.index, calls.length, 'calls come with increasing index');
          assert.ok(t.id && t.type === 'function' && t.function?.name, `first chunk ${JSON.stringify(t)}`);
          assert.equal(t.function.arguments, '');
          calls[t.index] = { id: t.id, type: 'function', function: { name: t.function.name, arguments: '' } };
        } else {
          assert.equal(t.id, undefined, 'later chunks carry only arguments');
          calls[t.index].function.arguments += t.function?.arguments ?? '';
        }
      }
    }
    return { content, calls, finish };
  }

  test(`${FORM}: streamed choices assemble into the non-streamed answer (required, named, auto; seeds)`,
    async () => {
      for (const tool_choice of ['required', { type: 'function', function: { name: 'get_weather' } }, 'auto']) {
        for (let seed = 0; seed < 4; seed++) {
          const body = { model: MODEL, messages: ASK, tools: TOOLS, tool_choice, seed, temperature: 1,
            max_tokens: tool_choice === 'auto' ? 24 : 80 };
          const r = (await client.chat.completions.create(body)).choices[0];
          const s = await streamed(body);
          const what = `${JSON.stringify(tool_choice)} seed ${seed}`;
          assert.equal(s.finish, r.finish_reason, what);
          assert.equal(s.content ?? '', r.message.content ?? '', what);
          // (ids differ: each request has its own)
          assert.deepEqual(s.calls.map((c) => [c.type, c.function.name, c.function.arguments]),
            (r.message.tool_calls ?? []).map((c) => [c.type, c.function.name, c.function.arguments]), what);
          s.calls.forEach(checkCall);
          // the SDK's stream helper assembles the same
          const f = (await client.chat.completions.stream({ ...body, stream: true })
            .finalChatCompletion()).choices[0];
          assert.equal(f.finish_reason, r.finish_reason, what);
          assert.equal(f.message.content ?? '', r.message.content ?? '', what);
          assert.deepEqual((f.message.tool_calls ?? []).map((c) => [c.function.name, c.function.arguments]),
            (r.message.tool_calls ?? []).map((c) => [c.function.name, c.function.arguments]), what);
        }
      }
    });
}
