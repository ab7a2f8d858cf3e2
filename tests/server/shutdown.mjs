// shutdown.mjs - SIGTERM handling of capmoe-server, driven from inside: starts
// long generations, signals the server (CAPMOE_PID) once they run, and checks
// what the clients get. CAPMOE_MODE:
//   graceful       grace period long enough: both requests (one streamed)
//                  complete in full; meanwhile the socket stays open and new
//                  requests (/health included) get 503 + Retry-After +
//                  Connection: close, /metrics still answers
//   grace-expiry   grace period shorter than the work: the requests are
//                  cancelled, the non-streamed one gets 503, the stream an
//                  error event and [DONE]
//   second-signal  a second SIGTERM cancels at once
// The shell script checks the exit status (0) and the time it took.
import assert from 'node:assert/strict';
import http from 'node:http';
import { HOST, PORT, post, get, sseData, metric, until, sleep, assertError } from './lib.mjs';

const PID = Number(process.env.CAPMOE_PID);
const MODE = process.env.CAPMOE_MODE;
// graceful: work that ends well inside the 30 s grace period even on a loaded
// 2-core machine (2 x 8 x 300 tokens), yet runs long enough for the checks of
// the drain; the other modes: work that outlasts their grace period
const LONG = { prompt: 'Tell me a story', max_tokens: MODE === 'graceful' ? 300 : 1000, ignore_eos: true,
               n: 8, temperature: 0 };

// A streaming request; resolves {first} at the first event and {done} with the body.
function stream(body) {
  let firstResolve;
  const first = new Promise((r) => { firstResolve = r; });
  const done = new Promise((resolve, reject) => {
    const req = http.request({ host: HOST, port: PORT, method: 'POST', path: '/v1/completions',
      headers: { 'Content-Type': 'application/json' } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; firstResolve(); });
      res.on('end', () => resolve({ status: res.statusCode, text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
  return { first, done };
}

async function main() {
  const whole = post('/v1/completions', LONG, { timeout: 60000 });
  const s = stream({ ...LONG, stream: true, stream_options: { include_usage: true } });
  await s.first;
  await until(async () => (await metric('capmoe_requests_running')) === 16, 5000, '16 sequences running');
  const t0 = Date.now();
  process.kill(PID, 'SIGTERM');
  if (MODE === 'second-signal') {
    await sleep(100);
    process.kill(PID, 'SIGTERM');
  }
  if (MODE === 'graceful') {
    await sleep(100);
    // draining: load balancers and clients see 503, the socket stays open
    for (const r of [await get('/health', { timeout: 2000 }),
                     await post('/v1/completions', { prompt: 'x', max_tokens: 2 }, { timeout: 2000 }),
                     await get('/v1/models', { timeout: 2000 })]) {
      assertError(r, 503, { type: 'unavailable_error', code: 'shutting_down' });
      assert.ok(Number(r.headers['retry-after']) >= 1, JSON.stringify(r.headers));
      assert.equal(r.headers.connection, 'close');
      assert.match(r.headers['x-request-id'], /^[0-9a-f]{32}$/);
      assert.equal(r.json.request_id, r.headers['x-request-id']);
    }
    const m = await get('/metrics', { timeout: 2000 });
    assert.equal(m.status, 200);
    assert.equal(m.headers.connection, 'close');
  }
  const r = await whole;
  const st = await s.done;
  const events = sseData(st.text);
  assert.equal(events.at(-1), '[DONE]');
  if (MODE === 'graceful') {
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.usage.completion_tokens, LONG.max_tokens * LONG.n);
    for (const c of r.json.choices) assert.equal(c.finish_reason, 'length');
    assert.equal(st.status, 200);
    const usage = JSON.parse(events.at(-2)).usage;
    assert.equal(usage.completion_tokens, LONG.max_tokens * LONG.n);
  } else {
    assert.equal(r.status, 503, r.text);
    assert.equal(r.json.error.type, 'unavailable_error');
    assert.ok(r.headers['retry-after']);
    const err = JSON.parse(events.at(-2));
    assert.equal(err.error.type, 'unavailable_error');
    assert.match(err.error.message, /shutting down/);
    const elapsed = Date.now() - t0;
    if (MODE === 'second-signal') assert.ok(elapsed < 1500, `cancel took ${elapsed} ms`);
  }
  console.log(`shutdown.mjs ${MODE}: ok`);
}

main().catch((e) => { console.error(e); process.exit(1); });
