// grammar_bench.mjs - the cost of structured outputs per generated token
// (run by grammar_bench.sh): constrained vs unconstrained generation through
// capmoe-server's /v1/chat/completions, streaming off, same model, server
// threads, prompts, seeds and token counts.
//
// For each batch size B (default 1 and 8) and each round (BENCH_REPEAT, after
// one warm-up round), for each response format F (json_object and three
// json_schema shapes: nested objects, enums, arrays of objects):
//   1. B concurrent requests with response_format F (temperature 1, seed s+i,
//      max_tokens BENCH_MAX_TOKENS): wall time Wc, completion tokens n_i of
//      each (every content must parse as JSON);
//   2. the same B requests without response_format, max_tokens n_i and
//      ignore_eos, so that each makes exactly as many tokens: wall time Wu;
//   3. 2 again, then 1 again (so a load that drifts during the round weighs
//      on both kinds alike); the times are averaged.
// The prompts are the same, so the prefill is the same; the ratio Wc / Wu is
// the cost of a constrained token over an unconstrained one. ms_per_token is
// the wall time per decode step (W / (sum n_i / B)). Per format and batch:
// medians over the rounds. With BENCH_SERVER_PID (the server on this
// machine) the same for the CPU time the server's threads ran
// (cpu_ratio_median, cpu_overhead_pct): on a shared machine it varies less
// than the wall time. Prints the JSON report on stdout.
//
// Env: CAPMOE_URL (required), BENCH_BATCHES ("1,8"), BENCH_MAX_TOKENS (160),
// BENCH_REPEAT (5), BENCH_FORMATS (all: json_object,nested,enums,arrays),
// BENCH_SERVER_PID, BENCH_INFO (JSON merged into the report).
import http from 'node:http';
import fs from 'node:fs';

const BASE = new URL(process.env.CAPMOE_URL);
const BATCHES = (process.env.BENCH_BATCHES || '1,8').split(',').map(Number);
const MAX_TOKENS = Number(process.env.BENCH_MAX_TOKENS || 160);
const REPEAT = Number(process.env.BENCH_REPEAT || 5);
const SERVER_PID = process.env.BENCH_SERVER_PID || '';
const agent = new http.Agent({ keepAlive: true, maxSockets: Math.max(...BATCHES) + 2 });

const SCHEMAS = {
  nested: {
    type: 'object',
    properties: {
      name: { type: 'string' },
      age: { type: 'integer' },
      address: {
        type: 'object',
        properties: {
          street: { type: 'string' },
          city: { type: 'string' },
          geo: { type: 'object', properties: { lat: { type: 'number' }, lon: { type: 'number' } }, required: ['lat', 'lon'], additionalProperties: false },
        },
        required: ['street', 'city', 'geo'],
        additionalProperties: false,
      },
      bio: { type: 'string' },
    },
    required: ['name', 'age', 'address', 'bio'],
    additionalProperties: false,
  },
  enums: {
    type: 'object',
    properties: {
      mood: { enum: ['happy', 'sad', 'angry', 'calm'] },
      weather: { enum: ['sunny', 'rainy', 'cloudy', 'snowy', 'windy'] },
      ok: { type: 'boolean' },
      colors: { type: 'array', items: { enum: ['red', 'green', 'blue', 'yellow', 'purple'] }, minItems: 1 },
    },
    required: ['mood', 'weather', 'ok', 'colors'],
    additionalProperties: false,
  },
  arrays: {
    type: 'array',
    items: {
      type: 'object',
      properties: {
        id: { type: 'integer' },
        title: { type: 'string', maxLength: 40 },
        tags: { type: 'array', items: { type: 'string' }, maxItems: 4 },
      },
      required: ['id', 'title', 'tags'],
      additionalProperties: false,
    },
    minItems: 1,
  },
};
const FORMATS = ((process.env.BENCH_FORMATS || "") || 'json_object,nested,enums,arrays').split(',');

function responseFormat(f) {
  if (f === 'json_object') return { type: 'json_object' };
  return { type: 'json_schema', json_schema: { name: f, schema: SCHEMAS[f], strict: true } };
}

function post(path, obj) {
  const body = JSON.stringify(obj);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: BASE.hostname, port: BASE.port, method: 'POST', path, agent,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        let b = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (b += c));
        res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(b)) : reject(new Error(`${path}: HTTP ${res.statusCode} ${b.slice(0, 300)}`))));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

function getJSON(path) {
  return new Promise((resolve, reject) => {
    http.get({ host: BASE.hostname, port: BASE.port, path, agent }, (res) => {
      let b = '';
      res.on('data', (c) => (b += c));
      res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(b)) : reject(new Error(`${path}: ${res.statusCode}`))));
    }).on('error', reject);
  });
}

const TOPICS = ['a cat', 'the sea', 'a small town', 'a red car', 'winter', 'a garden', 'an old friend', 'the moon'];
function messages(i) {
  return [{ role: 'user', content: `Write a short story about ${TOPICS[i % TOPICS.length]} as JSON.` }];
}

// CPU time the server's threads have run (ns, /proc/PID/task/*/schedstat):
// on a shared machine it varies less than wall time. null without the pid.
function serverCpuNs() {
  if (!SERVER_PID) return null;
  let ns = 0;
  try {
    for (const t of fs.readdirSync(`/proc/${SERVER_PID}/task`)) {
      try {
        ns += Number(fs.readFileSync(`/proc/${SERVER_PID}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
      } catch { /* a thread that just ended */ }
    }
  } catch {
    return null;
  }
  return ns;
}

// B concurrent requests; lens: per-request max_tokens (unconstrained) or null.
async function batch(model, B, fmt, seed, lens) {
  const cpu0 = serverCpuNs();
  const t0 = performance.now();
  const outs = await Promise.all(
    Array.from({ length: B }, (_, i) => {
      const req = { model, messages: messages(i), temperature: 1, seed: seed + i, stream: false };
      if (fmt) {
        req.response_format = responseFormat(fmt);
        req.max_tokens = MAX_TOKENS;
      } else {
        req.max_tokens = lens[i];
        req.ignore_eos = true;
      }
      return post('/v1/chat/completions', req);
    }),
  );
  const wall = (performance.now() - t0) / 1000;
  const cpu1 = serverCpuNs();
  const cpu = cpu0 === null || cpu1 === null ? null : (cpu1 - cpu0) / 1e9;
  const n = outs.map((o) => o.usage.completion_tokens);
  const prompt = outs.map((o) => o.usage.prompt_tokens);
  if (fmt)
    for (const o of outs) {
      const text = o.choices[0].message.content;
      try {
        JSON.parse(text);
      } catch {
        if (o.choices[0].finish_reason !== 'length') throw new Error(`${fmt}: content does not parse: ${text.slice(0, 200)}`);
      }
    }
  return { wall, cpu, n, prompt };
}

const median = (a) => {
  const s = [...a].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

async function main() {
  const model = (await getJSON('/v1/models')).data[0].id;
  const results = [];
  for (const B of BATCHES) {
    const rows = Object.fromEntries(FORMATS.map((f) => [f, { ratio: [], c_ms: [], u_ms: [], tokens: [], cpu_ratio: [], c_cpu_ms: [], u_cpu_ms: [] }]));
    for (let r = -1; r < REPEAT; r++) { // r = -1: warm-up, not recorded
      for (const f of FORMATS) {
        const seed = 1000 * (r + 2);
        // constrained, unconstrained, unconstrained, constrained (the same
        // requests twice): a load that drifts during the round weighs on both
        const c = await batch(model, B, f, seed, null);
        const u = await batch(model, B, null, seed, c.n);
        const u2 = await batch(model, B, null, seed, c.n);
        const c2 = await batch(model, B, f, seed, null);
        for (const x of [u, u2]) {
          if (x.n.some((k, i) => k !== c.n[i])) throw new Error(`token counts differ: ${c.n} vs ${x.n}`);
          if (x.prompt.some((k, i) => k !== c.prompt[i])) throw new Error(`prompt tokens differ: ${c.prompt} vs ${x.prompt}`);
        }
        if (r < 0) continue;
        const steps = c.n.reduce((a, b) => a + b, 0) / B;
        const steps2 = c2.n.reduce((a, b) => a + b, 0) / B; // the same unless batching changed a sample
        const cw = (c.wall / steps + c2.wall / steps2) / 2, uw = (u.wall + u2.wall) / 2 / steps;
        rows[f].ratio.push(cw / uw);
        rows[f].c_ms.push(1000 * cw);
        rows[f].u_ms.push(1000 * uw);
        rows[f].tokens.push(steps);
        if (c.cpu !== null && u.cpu !== null && u2.cpu !== null && c2.cpu !== null) {
          const cc = (c.cpu / steps + c2.cpu / steps2) / 2, uc = (u.cpu + u2.cpu) / 2 / steps;
          rows[f].cpu_ratio.push(cc / uc);
          rows[f].c_cpu_ms.push(1000 * cc);
          rows[f].u_cpu_ms.push(1000 * uc);
        }
      }
    }
    for (const f of FORMATS) {
      const x = rows[f];
      results.push({
        batch: B,
        format: f,
        rounds: REPEAT,
        tokens_per_request: median(x.tokens),
        constrained_ms_per_token: +median(x.c_ms).toFixed(3),
        unconstrained_ms_per_token: +median(x.u_ms).toFixed(3),
        ratio_median: +median(x.ratio).toFixed(3),
        overhead_pct: +(100 * (median(x.ratio) - 1)).toFixed(1),
        ratios: x.ratio.map((v) => +v.toFixed(3)),
        ...(x.cpu_ratio.length && {
          constrained_cpu_ms_per_token: +median(x.c_cpu_ms).toFixed(3),
          unconstrained_cpu_ms_per_token: +median(x.u_cpu_ms).toFixed(3),
          cpu_ratio_median: +median(x.cpu_ratio).toFixed(3),
          cpu_overhead_pct: +(100 * (median(x.cpu_ratio) - 1)).toFixed(1),
          cpu_ratios: x.cpu_ratio.map((v) => +v.toFixed(3)),
        }),
      });
    }
  }
  const info = process.env.BENCH_INFO ? JSON.parse(process.env.BENCH_INFO) : {};
  const report = { ...info, model, max_tokens: MAX_TOKENS, results };
  process.stdout.write(JSON.stringify(report, null, 1) + '\n');
}

main().catch((e) => {
  console.error(`grammar_bench: ${e.message}`);
  process.exit(1);
});
