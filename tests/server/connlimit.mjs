// connlimit.mjs - the connection limit, the header timeout and the
// per-address limit (run by tests/t_server_connlimit.sh against a server
// started with --max-connections 8 --header-timeout-s 1
// --max-connections-per-ip 0, or, for the last test, a per-address limit).
// The regression: with libmicrohttpd in external epoll mode, reaching the
// connection limit took the listen socket out of the epoll set and nothing
// put it back, so after one cycle of "fill every slot, close them all" the
// server never accepted again (issue 17, item 1).
import test from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import http from 'node:http';
import { HOST, PORT, post, assertError, sleep } from './lib.mjs';

const LIMIT = Number(process.env.CONN_LIMIT || 8);
const CYCLES = Number(process.env.CONN_CYCLES || 30);
const PER_IP = Number(process.env.CONN_PER_IP || 0);

// A connected socket; rejects when the kernel does not complete the
// handshake in 5 s (a full listen backlog: the server stopped accepting).
function open() {
  return new Promise((resolve, reject) => {
    const s = net.connect(PORT, HOST);
    const t = setTimeout(() => { s.destroy(); reject(new Error('connect timed out: the server stopped accepting')); }, 5000);
    s.on('error', () => {});
    s.once('connect', () => { clearTimeout(t); resolve(s); });
  });
}
const T = { timeout: 90000 };

// GET /health on a fresh connection: the status, or 0 when no answer came in
// timeoutMs.
function health(timeoutMs = 4000) {
  return new Promise((resolve) => {
    const r = http.get({ host: HOST, port: PORT, path: '/health', agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    r.setTimeout(timeoutMs, () => { r.destroy(); resolve(0); });
    r.on('error', () => resolve(-1));
  });
}

const closed = (s) => new Promise((resolve) => {
  if (s.destroyed || s.readyState === 'closed') return resolve();
  s.once('close', resolve);
});

if (PER_IP === 0) {
  test(`filling all ${LIMIT} slots and closing them, ${CYCLES} times, never stops the server accepting`, T, async () => {
    for (let c = 0; c < CYCLES; c++) {
      const socks = [];
      // one more than the limit: the last waits in the kernel's backlog
      for (let i = 0; i < LIMIT + 1; i++) socks.push(await open());
      await sleep(c % 3 === 0 ? 150 : 20);
      // close in varying orders and timings
      if (c % 2) socks.reverse();
      for (const s of socks) s.destroy();
      if (c % 4 === 1) await sleep(50);
      const st = await health();
      assert.equal(st, 200, `cycle ${c}: GET /health gave ${st || 'no answer'} after the slots were freed`);
    }
  });

  test('a busy request stream at the limit keeps being served', T, async () => {
    // slots full of idle sockets while requests queue behind them
    const socks = [];
    for (let i = 0; i < LIMIT; i++) socks.push(await open());
    const pending = health(8000);
    await sleep(100);
    for (const s of socks.splice(0, 2)) s.destroy();
    assert.equal(await pending, 200);
    for (const s of socks) s.destroy();
    assert.equal(await health(), 200);
  });

  test('a connection that sends no request is closed after the header timeout', T, async () => {
    const t0 = Date.now();
    const s = await open();
    await Promise.race([closed(s), sleep(6000)]);
    const ms = Date.now() - t0;
    assert.ok(s.destroyed || s.readyState === 'closed', 'the idle connection is still open after 6 s');
    assert.ok(ms >= 800 && ms < 5000, `closed after ${ms} ms (header timeout 1 s)`);
    // idle slots free themselves: fill them all, wait, and the server answers
    const socks = [];
    for (let i = 0; i < LIMIT; i++) socks.push(await open());
    await Promise.all(socks.map(closed));
    assert.equal(await health(), 200);
  });

  test('a connection that sent a request keeps the normal idle timeout', T, async () => {
    const s = await open();
    s.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n');
    let got = '';
    s.on('data', (d) => { got += d; });
    await sleep(2500); // past the 1 s header timeout
    assert.match(got, /^HTTP\/1\.1 200 /);
    assert.ok(!s.destroyed, 'a keep-alive connection was closed by the header timeout');
    s.destroy();
  });

  test('a NUL inside a JSON string is refused with 400 naming the field', T, async () => {
    let r = await post('/v1/completions', '{"prompt":"hello\\u0000 world and more","max_tokens":1}');
    assertError(r, 400, { type: 'invalid_request_error', param: 'prompt' });
    r = await post('/v1/chat/completions',
      '{"messages":[{"role":"user\\u0000garbage","content":"hi"}],"max_tokens":1}');
    assertError(r, 400, { param: 'messages[0].role' });
    r = await post('/v1/completions', '{"prompt":"a","stop":"\\u0000","max_tokens":1}');
    assertError(r, 400, { param: 'stop' });
    r = await post('/tokenize', '{"prompt":"x\\u0000y"}');
    assertError(r, 400, { param: 'prompt' });
  });
} else {
  test(`one address may hold at most ${PER_IP} connections`, T, async () => {
    const socks = [];
    for (let i = 0; i < PER_IP; i++) socks.push(await open());
    // the next one from the same address is accepted by the kernel and closed by the server
    const extra = await open();
    await Promise.race([closed(extra), sleep(3000)]);
    assert.ok(extra.destroyed || extra.readyState === 'closed', 'the connection over the per-address limit stayed open');
    for (const s of socks) s.destroy();
    await sleep(100);
    assert.equal(await health(), 200);
  });
}
