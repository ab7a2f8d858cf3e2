// fault.mjs - a rank dies in the middle of generations (run by
// tests/t_mpi_server.sh against `mpirun -np 2 capmoe-server --ep mpi
// --ep-step-timeout-s S`): the clients get an error, not a hang, well within
// the step timeout, and the error names the rank. CAPMOE_VICTIM_PID is the
// pid of rank 1 (from the server log).
import assert from 'node:assert/strict';
import http from 'node:http';
import { HOST, PORT, post, sleep } from '../server/lib.mjs';

const VICTIM = Number(process.env.CAPMOE_VICTIM_PID);
const LIMIT_MS = Number(process.env.CAPMOE_FAULT_LIMIT_MS || 20000);
const LONG = { prompt: 'Once upon a time', max_tokens: 400, ignore_eos: true, temperature: 0, n: 4 };

function stream(body) {
  let firstResolve;
  const first = new Promise((r) => { firstResolve = r; });
  const done = new Promise((resolve) => {
    const req = http.request({ host: HOST, port: PORT, method: 'POST', path: '/v1/completions',
      headers: { 'Content-Type': 'application/json' } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; firstResolve(); });
      res.on('end', () => resolve({ status: res.statusCode, text }));
      res.on('error', (e) => resolve({ status: 0, text, error: e.message }));
    });
    req.on('error', (e) => { firstResolve(); resolve({ status: 0, text: '', error: e.message }); });
    req.end(JSON.stringify(body));
  });
  return { first, done };
}

async function main() {
  assert.ok(VICTIM > 0, 'CAPMOE_VICTIM_PID is not set');
  const whole = post('/v1/completions', LONG, { timeout: LIMIT_MS + 10000 }).catch((e) => ({ status: 0, error: e.message }));
  const s = stream({ ...LONG, stream: true });
  await s.first;
  await sleep(200);
  const t0 = Date.now();
  process.kill(VICTIM, 'SIGKILL');
  const [r, st] = await Promise.all([whole, s.done]);
  const ms = Date.now() - t0;
  assert.ok(ms < LIMIT_MS, `the clients waited ${ms} ms`);
  // non-streamed: a 503 naming the failure, or (mpirun ended the job first)
  // a closed connection; never a 200
  assert.notEqual(r.status, 200, 'a request finished normally although a rank died');
  if (r.status) {
    assert.equal(r.status, 503, JSON.stringify(r.json || r.text));
    assert.match(r.json.error.message, /rank 1/);
    assert.equal(r.json.error.type, 'unavailable_error');
  }
  // streamed: an error event (or the connection ended), not a normal finish
  assert.ok(!/"finish_reason":"length"/.test(st.text.split('\n').slice(-8).join('\n')) || st.error,
    'the stream finished normally although a rank died');
  if (st.text.includes('"error"')) assert.match(st.text, /rank 1/);
  console.log(`fault.mjs: ok (clients answered ${ms} ms after the kill: ${r.status || r.error}, stream ${st.status})`);
}

main().catch((e) => { console.error(e); process.exit(1); });
