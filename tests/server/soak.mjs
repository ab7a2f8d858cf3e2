// soak.mjs - many clients for a while against capmoe-server: every request
// must get a complete, well-formed answer (nothing lost), and the process's
// resident memory must not keep growing. Run by tests/t_server_soak.sh.
//   CAPMOE_URL       the server
//   SOAK_PID         its process id (RSS from /proc/PID/status)
//   SOAK_CLIENTS     concurrent clients (default 16)
//   SOAK_SECONDS     how long clients start new requests (default 60)
// Each client loops over a mix: completions and chat, streamed and whole,
// n > 1, logprobs, stop strings, token-id prompts, /tokenize, and streams it
// abandons after a few events (counted apart: those are not "lost").
// Prints: sent, completed, abandoned, errors, RSS after warm-up and at the
// end, and exits 1 when anything was lost or RSS grew past the bound
// (3 x the warm-up RSS + 256 MiB: a leak of every request's buffers would
// cross it; no wall-clock assertion is made).
import http from 'node:http';
import fs from 'node:fs';

const url = new URL(process.env.CAPMOE_URL);
const PID = process.env.SOAK_PID;
const CLIENTS = Number(process.env.SOAK_CLIENTS || 16);
const SECONDS = Number(process.env.SOAK_SECONDS || 60);
const agent = new http.Agent({ keepAlive: true, maxSockets: CLIENTS });

function rssKiB() {
  const s = fs.readFileSync(`/proc/${PID}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(s)[1]);
}

function request(path, body, { abandonAfter = 0 } = {}) {
  return new Promise((resolve) => {
    const data = JSON.stringify(body);
    const req = http.request({ host: url.hostname, port: url.port, method: 'POST', path, agent,
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) },
      timeout: 120000 }, (res) => {
      const chunks = [];
      let events = 0;
      res.on('data', (c) => {
        chunks.push(c);
        if (abandonAfter) {
          events += (c.toString().match(/\n\n/g) || []).length;
          if (events >= abandonAfter) { req.destroy(); resolve({ status: res.statusCode, abandoned: true }); }
        }
      });
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', () => resolve({ status: res.statusCode, abandoned: abandonAfter > 0, error: 'response error' }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ error: e.message, abandoned: abandonAfter > 0 }));
    req.end(data);
  });
}

// A complete answer of each kind.
function complete(kind, r) {
  if (r.status !== 200 || typeof r.text !== 'string') return `status ${r.status} ${r.error || ''}`;
  if (kind.stream) {
    if (!r.text.endsWith('data: [DONE]\n\n')) return 'stream without [DONE]';
    return null;
  }
  let j;
  try { j = JSON.parse(r.text); } catch { return 'body is not JSON'; }
  if (kind.path === '/tokenize') return Array.isArray(j.tokens) ? null : 'no tokens';
  const n = kind.body.n || 1;
  if (!Array.isArray(j.choices) || j.choices.length !== n) return 'wrong number of choices';
  if (!j.usage || !(j.usage.completion_tokens >= 1)) return 'no usage';
  return null;
}

const MIX = [
  { path: '/v1/completions', body: { prompt: 'Once upon a time', max_tokens: 12, temperature: 0.8 } },
  { path: '/v1/completions', body: { prompt: 'The', max_tokens: 8, n: 3, logprobs: 2, seed: 5 } },
  { path: '/v1/completions', body: { prompt: [1, 2, 3, 4], max_tokens: 6, stop: ['.', 'x'] } },
  { path: '/v1/completions', stream: true, body: { prompt: 'Hello', max_tokens: 16, stream: true, ignore_eos: true } },
  { path: '/v1/chat/completions', body: { messages: [{ role: 'user', content: 'Hi there' }], max_tokens: 10 } },
  { path: '/v1/chat/completions', stream: true,
    body: { messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Tell me' }],
            max_tokens: 12, stream: true, stream_options: { include_usage: true } } },
  { path: '/tokenize', body: { prompt: 'soak test text', add_special_tokens: true } },
  { path: '/v1/completions', abandon: 3, body: { prompt: 'Gone', max_tokens: 64, stream: true, ignore_eos: true } },
];

const stats = { sent: 0, completed: 0, abandoned: 0, errors: 0 };
const problems = [];
let stop = false;

async function client(id) {
  let i = id;
  while (!stop) {
    const kind = MIX[i++ % MIX.length];
    stats.sent++;
    const r = await request(kind.path, kind.body, { abandonAfter: kind.abandon || 0 });
    if (kind.abandon) {
      if (r.abandoned || r.status === 200) stats.abandoned++;
      else { stats.errors++; problems.push(`${kind.path} (abandoned kind): status ${r.status} ${r.error || ''}`); }
      continue;
    }
    const why = complete(kind, r);
    if (why) { stats.errors++; if (problems.length < 20) problems.push(`${kind.path}: ${why}`); }
    else stats.completed++;
  }
}

// warm-up: one of each, then the RSS baseline
for (const kind of MIX) await request(kind.path, kind.body, { abandonAfter: kind.abandon || 0 });
const rssStart = rssKiB();
const clients = [];
for (let c = 0; c < CLIENTS; c++) clients.push(client(c));
const samples = [];
const sampler = setInterval(() => { try { samples.push(rssKiB()); } catch { /* gone */ } }, 1000);
await new Promise((r) => setTimeout(r, SECONDS * 1000));
stop = true;
await Promise.all(clients);
clearInterval(sampler);
agent.destroy();
const rssEnd = rssKiB();
const rssMax = Math.max(rssEnd, ...samples);
const bound = 3 * rssStart + 256 * 1024;
console.log(`soak: ${CLIENTS} clients for ${SECONDS} s: sent ${stats.sent}, completed ${stats.completed}, ` +
  `abandoned on purpose ${stats.abandoned}, errors ${stats.errors}`);
console.log(`soak: RSS after warm-up ${(rssStart / 1024).toFixed(1)} MiB, at the end ` +
  `${(rssEnd / 1024).toFixed(1)} MiB, peak ${(rssMax / 1024).toFixed(1)} MiB (bound ${(bound / 1024).toFixed(0)} MiB)`);
let bad = false;
if (stats.errors || stats.completed + stats.abandoned !== stats.sent) {
  bad = true;
  console.log(`soak: LOST or broken answers:\n  ${problems.join('\n  ')}`);
}
if (stats.completed < CLIENTS) { bad = true; console.log('soak: too few requests completed to judge'); }
if (rssMax > bound) { bad = true; console.log('soak: RSS grew past the bound'); }
process.exit(bad ? 1 : 0);
