// load.mjs - bounded load on capmoe-server for tests/t_load.sh.
//
// LOAD_CLIENTS clients (default 32), each on its own keep-alive connection,
// send requests back to back for LOAD_SECONDS (default 30): a mix of
// /v1/completions (plain and streamed) and /v1/chat/completions. Every
// response is checked (status 200, valid JSON with choices / a well-formed SSE
// stream ending in [DONE]) and counted. The server's RSS (/proc/PID/status of
// SERVER_PID) is sampled at 1/3 of the run and at the end. Then the server's
// own counters must match the client's: requests answered 200 and generated
// tokens. Prints a JSON summary; exit 1 on any error.
//   CAPMOE_URL, SERVER_PID, LOAD_CLIENTS, LOAD_SECONDS,
//   LOAD_RSS_GROWTH_MB (default 4; negative = do not check)
import http from 'node:http';
import fs from 'node:fs';

const URL_ = new URL(process.env.CAPMOE_URL);
const PID = process.env.SERVER_PID;
const CLIENTS = Number(process.env.LOAD_CLIENTS || 32);
const SECONDS = Number(process.env.LOAD_SECONDS || 30);
const RSS_GROWTH_MB = Number(process.env.LOAD_RSS_GROWTH_MB ?? 4);

const agent = new http.Agent({ keepAlive: true, maxSockets: CLIENTS });

function request(method, path, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      {
        host: URL_.hostname, port: URL_.port, method, path, agent,
        headers: data ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } : {},
        timeout: 120_000,
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  });
}

function rssKiB() {
  try {
    const m = fs.readFileSync(`/proc/${PID}/status`, 'utf8').match(/^VmRSS:\s+(\d+) kB$/m);
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN; // the server is gone: reported below
  }
}

function metric(text, re) {
  const m = text.match(re);
  return m ? Number(m[1]) : 0;
}

async function serverCounters() {
  const r = await request('GET', '/metrics');
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
  return {
    completions200: metric(r.body, /^capmoe_requests_total\{endpoint="\/v1\/completions",code="200"\} (\d+)$/m),
    chat200: metric(r.body, /^capmoe_requests_total\{endpoint="\/v1\/chat\/completions",code="200"\} (\d+)$/m),
    generated: metric(r.body, /^capmoe_generation_tokens_total (\d+)$/m),
  };
}

const models = JSON.parse((await request('GET', '/v1/models')).body);
const model = models.data[0].id;
const before = await serverCounters();

const stats = { ok: 0, completions: 0, chat: 0, streams: 0, tokens: 0, errors: 0, firstErrors: [] };
const lat = [];
function fail(msg) {
  stats.errors++;
  if (stats.firstErrors.length < 5) stats.firstErrors.push(msg);
}

// One request of kind i % 4: 0,1 completion, 2 chat, 3 streamed completion.
async function one(client, i) {
  const kind = i % 4;
  const max_tokens = 4 + ((client + i) % 5);
  const prompt = `Client ${client} request ${i}: the quick brown fox`;
  const t0 = performance.now();
  let r;
  if (kind === 2) {
    r = await request('POST', '/v1/chat/completions', {
      model, messages: [{ role: 'user', content: prompt }], max_tokens, temperature: 0.7, seed: i,
    });
  } else {
    r = await request('POST', '/v1/completions', {
      model, prompt, max_tokens, temperature: kind === 0 ? 0 : 0.9, seed: client, stream: kind === 3,
      ...(kind === 3 ? { stream_options: { include_usage: true } } : {}),
    });
  }
  if (r.status !== 200) return fail(`HTTP ${r.status}: ${r.body.slice(0, 200)}`);
  let usage;
  if (kind === 3) {
    if (!r.body.endsWith('data: [DONE]\n\n')) return fail(`stream without [DONE]: ${r.body.slice(-80)}`);
    let text = '';
    for (const ev of r.body.split('\n\n')) {
      if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
      let j;
      try { j = JSON.parse(ev.slice(6)); } catch { return fail(`bad SSE JSON: ${ev.slice(0, 120)}`); }
      if (j.error) return fail(`stream error: ${JSON.stringify(j.error)}`);
      if (j.choices.length) text += j.choices[0].text;
      else usage = j.usage;
    }
    if (!usage) return fail('stream without the usage chunk');
    stats.streams++;
  } else {
    let j;
    try { j = JSON.parse(r.body); } catch { return fail(`invalid JSON: ${r.body.slice(0, 120)}`); }
    if (!Array.isArray(j.choices) || j.choices.length !== 1) return fail(`no choices: ${r.body.slice(0, 120)}`);
    const c = j.choices[0];
    const text = kind === 2 ? c.message?.content : c.text;
    if (typeof text !== 'string' || !['stop', 'length'].includes(c.finish_reason)) return fail(`bad choice: ${JSON.stringify(c)}`);
    usage = j.usage;
    if (kind === 2) stats.chat++; else stats.completions++;
  }
  if (!usage || usage.completion_tokens < 1 || usage.completion_tokens > max_tokens ||
      usage.total_tokens !== usage.prompt_tokens + usage.completion_tokens) return fail(`bad usage ${JSON.stringify(usage)}`);
  stats.tokens += usage.completion_tokens;
  stats.ok++;
  lat.push(performance.now() - t0);
}

const start = performance.now();
const end = start + SECONDS * 1000;
let rssThird = NaN;
const third = setTimeout(() => { rssThird = rssKiB(); }, (SECONDS * 1000) / 3);

await Promise.all(
  Array.from({ length: CLIENTS }, async (_, client) => {
    for (let i = 0; performance.now() < end; i++) {
      try { await one(client, i); } catch (e) { fail(`client ${client}: ${e.message}`); }
    }
  }),
);
clearTimeout(third);
const rssEnd = rssKiB();
// The server counts a request when its connection completes, which can be a
// moment after the client has the last byte: wait (bounded) for the counters.
const matches = (a) =>
  a.completions200 - before.completions200 === stats.completions + stats.streams &&
  a.chat200 - before.chat200 === stats.chat && a.generated - before.generated === stats.tokens;
let after = await serverCounters();
for (let t = 0; t < 25 && !matches(after); t++) {
  await new Promise((r) => setTimeout(r, 200));
  after = await serverCounters();
}
agent.destroy();

lat.sort((a, b) => a - b);
const pct = (p) => (lat.length ? Math.round(lat[Math.min(lat.length - 1, Math.floor((p / 100) * lat.length))]) : null);
const summary = {
  clients: CLIENTS, seconds: SECONDS, ...stats,
  requests_per_s: +(stats.ok / SECONDS).toFixed(2),
  latency_ms: { p50: pct(50), p90: pct(90), p99: pct(99) },
  rss_kib: { third: rssThird, end: rssEnd, growth: rssEnd - rssThird },
  server: {
    completions_200: after.completions200 - before.completions200,
    chat_200: after.chat200 - before.chat200,
    generated_tokens: after.generated - before.generated,
  },
};
console.log(JSON.stringify(summary, null, 1));

const problems = [];
if (stats.errors) problems.push(`${stats.errors} errors, first: ${stats.firstErrors.join(' | ')}`);
if (stats.ok < CLIENTS) problems.push(`only ${stats.ok} requests completed`);
if (summary.server.completions_200 !== stats.completions + stats.streams)
  problems.push(`server counted ${summary.server.completions_200} completions, client ${stats.completions + stats.streams}`);
if (summary.server.chat_200 !== stats.chat) problems.push(`server counted ${summary.server.chat_200} chats, client ${stats.chat}`);
if (summary.server.generated_tokens !== stats.tokens)
  problems.push(`server generated ${summary.server.generated_tokens} tokens, clients received ${stats.tokens}`);
if (RSS_GROWTH_MB >= 0) {
  if (!Number.isFinite(rssThird) || !Number.isFinite(rssEnd)) problems.push('RSS not sampled (server gone?)');
  else if (rssEnd - rssThird > RSS_GROWTH_MB * 1024)
    problems.push(`RSS grew by ${((rssEnd - rssThird) / 1024).toFixed(1)} MiB between 1/3 and the end (bound ${RSS_GROWTH_MB} MiB)`);
}
if (problems.length) {
  console.error(`load: FAIL\n  ${problems.join('\n  ')}`);
  process.exit(1);
}
console.log('load: ok');
