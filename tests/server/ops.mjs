// ops.mjs - capmoe-server as an operator sees it (tests/t_server_ops.sh).
// CAPMOE_MODE:
//   access   request ids (client's kept, bad ones replaced, generated ones
//            random) in headers, error bodies and the access log; one access
//            record per request (401 / 404 / 413 / streams included) with
//            method, path, status, bytes, duration, tokens, finish reason,
//            policy and gamma; libmicrohttpd's messages through the logger
//   json     the same records as JSON lines (CAPMOE_LOG is read by the shell
//            after the server stopped; here only the requests are made)
//   seeds    unseeded identical requests give different outputs on a model
//            whose next-token distribution is wide; a seed repeats its output
//   reload   SIGHUP while a stream runs: the stream completes in full, the
//            new policy / gamma / min_tokens / api key / CORS apply at once,
//            a restart-only option is logged and not applied, an invalid
//            file changes nothing (CAPMOE_CONFIG_FILE is rewritten here)
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { test } from 'node:test';
import { HOST, PORT, get, post, request, sseData, until, sleep, assertError, metric } from './lib.mjs';

const MODE = process.env.CAPMOE_MODE;
const LOG = process.env.CAPMOE_LOG;
const PID = Number(process.env.CAPMOE_PID);
const KEY = process.env.CAPMOE_KEY;
const auth = (k = KEY) => (k ? { Authorization: `Bearer ${k}` } : {});

const logText = () => fs.readFileSync(LOG, 'utf8');
// The access records (text format) as objects of their key=value fields.
function accessRecords() {
  const out = [];
  for (const line of logText().split('\n')) {
    const m = line.match(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info  request (.*)$/);
    if (!m) continue;
    const rec = {};
    for (const kv of m[1].matchAll(/(\w+)=("(?:[^"\\]|\\.)*"|\S+)/g))
      rec[kv[1]] = kv[2].startsWith('"') ? JSON.parse(kv[2]) : kv[2];
    out.push(rec);
  }
  return out;
}
async function recordOf(id) {
  let rec;
  await until(() => (rec = accessRecords().find((r) => r.request_id === id)) !== undefined, 5000,
    `the access record of ${id}`);
  return rec;
}

// A streamed completion: resolves {first} at its first chunk, {done} at the end.
function stream(body, headers = {}) {
  let firstResolve;
  const first = new Promise((r) => { firstResolve = r; });
  const done = new Promise((resolve, reject) => {
    const req = http.request({ host: HOST, port: PORT, method: 'POST', path: '/v1/completions',
      headers: { 'Content-Type': 'application/json', ...headers } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; firstResolve(); });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
  return { first, done };
}

if (MODE === 'access' || MODE === 'json') {
  test('a client X-Request-Id is kept: header, access record', async () => {
    const r = await post('/v1/completions', { prompt: 'hello there, how are you doing today my friend?', max_tokens: 5, temperature: 0, ignore_eos: true },
      { headers: { ...auth(), 'X-Request-Id': 'client-42.a:b/c' } });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers['x-request-id'], 'client-42.a:b/c');
    if (MODE === 'json') return;
    const rec = await recordOf('client-42.a:b/c');
    assert.equal(rec.method, 'POST');
    assert.equal(rec.path, '/v1/completions');
    assert.equal(rec.status, '200');
    assert.equal(Number(rec.bytes), Buffer.byteLength(r.text));
    assert.ok(Number(rec.duration_ms) > 0 && Number(rec.duration_ms) < 30000);
    assert.equal(rec.remote, '127.0.0.1');
    assert.equal(Number(rec.prompt_tokens), r.json.usage.prompt_tokens);
    assert.equal(Number(rec.completion_tokens), 5);
    assert.equal(rec.finish_reason, 'length');
    assert.equal(rec.policy, 'drop');
    assert.equal(rec.gamma, '1.5');
    // a lone sequence: 1-token decode steps are never limited, its prompt of
    // >= min_tokens (4) tokens is
    assert.ok(Number(rec.dispatches) > 0);
    assert.ok(Number(rec.limited_dispatches) >= 1, JSON.stringify(rec));
    assert.ok(Number(rec.limited_dispatches) < Number(rec.dispatches));
    assert.equal(rec.gamma_applied, '1.5');
  });

  test('generated ids: 32 random hex digits, also for refused and unknown requests', async () => {
    const ids = new Set();
    for (const [path, status] of [['/v1/models', 401], ['/nope', 404], ['/v1/models', 401]]) {
      const r = await get(path);
      assertError(r, status);
      assert.match(r.headers['x-request-id'], /^[0-9a-f]{32}$/);
      assert.equal(r.json.request_id, r.headers['x-request-id']);
      ids.add(r.headers['x-request-id']);
      if (MODE === 'access') {
        const rec = await recordOf(r.headers['x-request-id']);
        assert.equal(rec.status, String(status));
        assert.equal(rec.path, path);
        assert.equal(rec.prompt_tokens, undefined); /* not a generation */
      }
    }
    assert.equal(ids.size, 3);
    // ids a client may not choose are replaced
    for (const bad of ['has space', 'x'.repeat(129), 'quote"d', '\u00e9t\u00e9']) {
      const r = await get('/health', { headers: { 'X-Request-Id': Buffer.from(bad, 'utf8').toString('latin1') } });
      assert.equal(r.status, 200);
      assert.match(r.headers['x-request-id'], /^[0-9a-f]{32}$/);
    }
    const ok = await get('/health', { headers: { 'X-Request-Id': 'x'.repeat(128) } });
    assert.equal(ok.headers['x-request-id'], 'x'.repeat(128));
  });

  test('413 from this layer: request id in header and body, access record', async () => {
    const r = await request('POST', '/v1/completions', { body: 'x'.repeat(70000), headers: auth() });
    assertError(r, 413, { code: 'request_too_large' });
    assert.match(r.headers['x-request-id'], /^[0-9a-f]{32}$/);
    assert.equal(r.json.request_id, r.headers['x-request-id']);
    if (MODE === 'access') assert.equal((await recordOf(r.headers['x-request-id'])).status, '413');
  });

  test('a stream: access record after its end, with its bytes and tokens', async () => {
    const s = stream({ prompt: 'The sea', max_tokens: 12, ignore_eos: true, stream: true },
      { ...auth(), 'X-Request-Id': 'stream-1' });
    const st = await s.done;
    assert.equal(st.status, 200);
    assert.equal(st.headers['x-request-id'], 'stream-1');
    assert.equal(sseData(st.text).at(-1), '[DONE]');
    if (MODE === 'json') return;
    const rec = await recordOf('stream-1');
    assert.equal(rec.status, '200');
    assert.equal(Number(rec.bytes), Buffer.byteLength(st.text));
    assert.equal(rec.completion_tokens, '12');
    assert.equal(rec.finish_reason, 'length');
  });

  test('an n=2 request whose choices stop differently lists both reasons', async () => {
    // stop at a frequent character: one choice may stop, the other run to length
    const r = await post('/v1/completions', { prompt: 'In the beginning', max_tokens: 40, n: 4, seed: 3, stop: ['e'] },
      { headers: { ...auth(), 'X-Request-Id': 'multi-1' } });
    assert.equal(r.status, 200, r.text);
    if (MODE === 'json') return;
    const reasons = [...new Set(r.json.choices.map((c) => c.finish_reason))].sort();
    const rec = await recordOf('multi-1');
    assert.deepEqual(rec.finish_reason.split(',').sort(), reasons);
  });

  test("libmicrohttpd's own messages go through the logger", async () => {
    // headers promising a body, a part of it, then the client leaves
    await new Promise((resolve) => {
      const c = net.connect(PORT, HOST, () => {
        c.write('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
                'Content-Length: 100\r\n\r\n{"prompt":');
        setTimeout(() => c.destroy(), 200);
      });
      c.on('close', resolve);
      c.on('error', resolve);
    });
    if (MODE === 'json') { await sleep(300); return; }
    await until(() => /^\S+Z warn  .*incomplete request.* source=libmicrohttpd$/m.test(logText()), 5000,
      'a libmicrohttpd record');
    assert.doesNotMatch(logText(), /^[^0-9]/m, 'a line that is not a record');
  });
}

if (MODE === 'seeds') {
  const BODY = { prompt: 'The sea', max_tokens: 8, temperature: 1 };
  test('the next-token distribution is wide (the test below can tell)', async () => {
    const r = await post('/v1/completions', { ...BODY, max_tokens: 1, logprobs: 5, temperature: 0 });
    assert.equal(r.status, 200, r.text);
    const top = Object.values(r.json.choices[0].logprobs.top_logprobs[0]).map(Math.exp);
    assert.ok(top[0] < 0.2, `top-1 probability ${top[0]}`);
  });

  test('30 unseeded identical requests: 30 different outputs', async () => {
    const texts = [];
    for (let i = 0; i < 30; i++) {
      const r = await post('/v1/completions', BODY);
      assert.equal(r.status, 200, r.text);
      texts.push(r.json.choices[0].text);
    }
    const distinct = new Set(texts).size;
    // each of 8 tokens drawn from a distribution whose top token has p < 0.2:
    // two equal outputs have probability < 0.2^8 each, about 1e-4 over all pairs
    assert.equal(distinct, 30, `only ${distinct} distinct outputs of 30: ${JSON.stringify(texts)}`);
  });

  test('the same seed repeats its output; another seed does not', async () => {
    const out = [];
    for (let i = 0; i < 5; i++) out.push((await post('/v1/completions', { ...BODY, seed: 7 })).json.choices[0].text);
    assert.equal(new Set(out).size, 1, JSON.stringify(out));
    const other = (await post('/v1/completions', { ...BODY, seed: 8 })).json.choices[0].text;
    assert.notEqual(other, out[0]);
  });
}

if (MODE === 'reload') {
  const FILE = process.env.CAPMOE_CONFIG_FILE;
  const base = JSON.parse(fs.readFileSync(FILE, 'utf8'));
  const reloadWith = async (changes, expect) => {
    const before = logText().length;
    fs.writeFileSync(FILE, JSON.stringify({ ...base, ...changes }));
    process.kill(PID, 'SIGHUP');
    await until(() => expect.test(logText().slice(before)), 5000, `a record matching ${expect}`);
    return logText().slice(before);
  };

  test('SIGHUP during a stream: the stream completes, live options apply, others wait for a restart', async () => {
    const LONG = { prompt: 'Tell me a story', max_tokens: 200, n: 8, ignore_eos: true, temperature: 0,
                   stream: true, stream_options: { include_usage: true } };
    const s = stream(LONG, { 'X-Request-Id': 'long-stream' });
    await s.first;
    assert.equal(await metric('capmoe_model_info{model="model",policy="none"}'), 1);
    const t0 = Date.now();
    const text = await reloadWith(
      { policy: 'drop', capacity_factor: 1.5, min_tokens: 4, api_key: 'new-key', ep_ranks: 2,
        cors_origins: 'http://page.example' },
      /SIGHUP: configuration reloaded/);
    assert.match(text, /warn  reload: ep_ranks changed \(1 -> 2\) but needs a restart; 1 stays in force/);
    assert.match(text, /configuration reloaded: api_key \(empty\) -> \(set\), policy none -> drop, capacity_factor 1 -> 1\.5, min_tokens 16 -> 4, cors_origins "" -> http:\/\/page\.example/);
    assert.doesNotMatch(text, /new-key/);
    // the new settings apply now, while the stream still runs
    assertError(await get('/v1/models'), 401, { code: 'invalid_api_key' });
    const ok = await get('/v1/models', { headers: { ...auth('new-key'), Origin: 'http://page.example' } });
    assert.equal(ok.status, 200);
    assert.equal(ok.headers['access-control-allow-origin'], 'http://page.example');
    assert.equal(await metric('capmoe_model_info{model="model",policy="drop"}'), 1);
    const st = await s.done;
    assert.ok(Date.now() - t0 > 50, 'the stream ended before the reload could matter');
    assert.equal(st.status, 200);
    const ev = sseData(st.text);
    assert.equal(ev.at(-1), '[DONE]');
    assert.equal(JSON.parse(ev.at(-2)).usage.completion_tokens, 1600);
    // its access record: the last forwards ran under drop, some limited
    const rec = await recordOf('long-stream');
    assert.equal(rec.policy, 'drop');
    assert.ok(Number(rec.limited_dispatches) > 0 && Number(rec.limited_dispatches) < Number(rec.dispatches),
      JSON.stringify(rec));
    assert.equal(rec.gamma_applied, '1.5');
    assert.equal(rec.finish_reason, 'length');
  });

  test('an invalid new configuration changes nothing', async () => {
    let text = await reloadWith({ policy: 'bogus' }, /configuration not reloaded/);
    assert.match(text, /error SIGHUP: configuration not reloaded, nothing changed: .*unknown policy 'bogus'/);
    text = await reloadWith({ policy: 'rank_drop', ep_ranks: 3 }, /configuration not reloaded/);
    assert.match(text, /R=3 ranks cannot split the model's E=8 experts/);
    assert.equal(await metric('capmoe_model_info{model="model",policy="drop"}'), 1);
    assert.equal((await get('/v1/models', { headers: auth('new-key') })).status, 200);
    // back to the start: no key
    text = await reloadWith({}, /SIGHUP: configuration reloaded/);
    assert.equal((await get('/v1/models')).status, 200);
    assert.equal(await metric('capmoe_model_info{model="model",policy="none"}'), 1);
  });
}
