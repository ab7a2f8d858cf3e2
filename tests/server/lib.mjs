// lib.mjs - small HTTP helpers for the black-box tests of capmoe-server
// (tests/t_server_*.sh). Node built-ins only: `http` for ordinary requests,
// `net` for what a well-behaved client never does (slow bodies, lies in
// Content-Length, pipelining, disconnects).
import http from 'node:http';
import net from 'node:net';
import assert from 'node:assert/strict';

export const BASE = process.env.CAPMOE_URL;
if (!BASE) throw new Error('CAPMOE_URL is not set');
const url = new URL(BASE);
export const HOST = url.hostname;
export const PORT = Number(url.port);

const agent = new http.Agent({ keepAlive: false });

// One request. body: string | Buffer | object (JSON). Resolves with
// {status, headers, text, json} (json undefined when the body is not JSON).
export function request(method, path, { body, headers = {}, timeout = 30000 } = {}) {
  return new Promise((resolve, reject) => {
    let data = body;
    if (data !== undefined && typeof data !== 'string' && !Buffer.isBuffer(data))
      data = JSON.stringify(data);
    const h = { ...headers };
    if (data !== undefined && h['Content-Type'] === undefined) h['Content-Type'] = 'application/json';
    const req = http.request({ host: HOST, port: PORT, method, path, headers: h, agent, timeout }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`timeout: ${method} ${path}`)));
    req.on('error', reject);
    if (data !== undefined) req.write(data);
    req.end();
  });
}

export const get = (path, opts) => request('GET', path, opts);
export const post = (path, body, opts = {}) => request('POST', path, { ...opts, body });

// Asserts an OpenAI-shaped error: {"error":{"message","type","param","code"}}.
export function assertError(res, status, { type, code, param } = {}) {
  assert.equal(res.status, status, `status ${res.status}, want ${status}: ${res.text}`);
  assert.ok(res.json && typeof res.json.error === 'object', `not an error body: ${res.text}`);
  const e = res.json.error;
  assert.deepEqual(Object.keys(e).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0);
  if (type !== undefined) assert.equal(e.type, type, res.text);
  if (code !== undefined) assert.equal(e.code, code, res.text);
  if (param !== undefined) assert.equal(e.param, param, res.text);
  assert.match(res.headers['content-type'], /^application\/json/);
}

// Parses an SSE body into the list of `data:` payloads (strings).
export function sseData(text) {
  assert.ok(text.endsWith('\n\n'), 'SSE body must end with a blank line');
  const out = [];
  for (const block of text.split('\n\n')) {
    if (!block) continue;
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      assert.ok(line.startsWith('data: '), `unexpected SSE line: ${JSON.stringify(line)}`);
      out.push(line.slice(6));
    }
  }
  return out;
}

// Sends raw bytes (a string, or an array of pieces written with delayMs in
// between) and resolves with everything the server sent until it closed or
// idleMs passed without data.
export function raw(pieces, { delayMs = 0, idleMs = 3000, endAfter = false } = {}) {
  if (!Array.isArray(pieces)) pieces = [pieces];
  return new Promise((resolve, reject) => {
    const s = net.connect(PORT, HOST);
    const chunks = [];
    let timer;
    const finish = () => { clearTimeout(timer); s.destroy(); resolve(Buffer.concat(chunks).toString('latin1')); };
    const arm = () => { clearTimeout(timer); timer = setTimeout(finish, idleMs); };
    s.on('data', (c) => { chunks.push(c); arm(); });
    s.on('end', finish);
    s.on('close', finish);
    s.on('error', (e) => (e.code === 'ECONNRESET' || e.code === 'EPIPE' ? finish() : reject(e)));
    s.on('connect', async () => {
      arm();
      for (const p of pieces) {
        if (s.destroyed) return;
        s.write(p);
        if (delayMs) { await sleep(delayMs); arm(); }
      }
      if (endAfter) s.end();
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The value of a sample in /metrics (first match of name{labels} or name).
export async function metric(name) {
  const res = await get('/metrics');
  assert.equal(res.status, 200);
  for (const line of res.text.split('\n')) {
    if (line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    if (sp < 0) continue;
    if (line.slice(0, sp) === name) return Number(line.slice(sp + 1));
  }
  return undefined;
}

// Polls fn() until it returns true (or throws after ms).
export async function until(fn, ms, what) {
  const t0 = Date.now();
  for (;;) {
    if (await fn()) return;
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(25);
  }
}
