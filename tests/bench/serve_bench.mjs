// serve_bench.mjs - serving benchmark of capmoe-server (run by serve_bench.sh).
//
// For each concurrency level C (default 1, 4, 16, 64), C streams each send
// streamed /v1/completions back to back (ignore_eos, fixed max_tokens, greedy)
// until the level has sent its requests. Per request it records TTFT (request
// sent -> first token chunk), the gaps between SSE chunks (ITL; a chunk can
// carry several tokens when the server coalesces them, and chunks read in one
// socket read share a timestamp), TPOT ((last - first chunk) / (tokens - 1))
// and the end-to-end latency; per level, generated tokens / wall time. The
// client runs on the same machine and takes CPU of its own. Prints a JSON report on stdout and a markdown
// table on stderr (or to BENCH_MD when set).
//
// Env: CAPMOE_URL (required), BENCH_LEVELS ("1,4,16,64"), BENCH_MAX_TOKENS (64),
// BENCH_PROMPT_WORDS (8), BENCH_REQUESTS_PER_STREAM (2), BENCH_MIN_REQUESTS (8),
// BENCH_MIN_SECONDS (5: a level keeps its streams busy at least this long),
// BENCH_MD (path for the markdown table), BENCH_INFO (JSON merged into the report).
import http from 'node:http';
import fs from 'node:fs';
import { streamClient } from './stream_client.mjs';

const BASE = new URL(process.env.CAPMOE_URL);
const LEVELS = (process.env.BENCH_LEVELS || '1,4,16,64').split(',').map(Number);
const MAX_TOKENS = Number(process.env.BENCH_MAX_TOKENS || 64);
const PROMPT_WORDS = Number(process.env.BENCH_PROMPT_WORDS || 8);
const PER_STREAM = Number(process.env.BENCH_REQUESTS_PER_STREAM || 2);
const MIN_REQUESTS = Number(process.env.BENCH_MIN_REQUESTS || 8);
const MIN_SECONDS = Number(process.env.BENCH_MIN_SECONDS || 5);

const agent = new http.Agent({ keepAlive: true, maxSockets: Math.max(...LEVELS) + 4 });

const client = streamClient(BASE, agent);
const getJSON = async (path) => JSON.parse(await client.getText(path));

// One streamed completion of MAX_TOKENS; resolves with its timings.
async function streamOne(model, prompt) {
  const r = await client.streamOne(model, prompt, MAX_TOKENS);
  return {
    ttft: r.ttft,
    gaps: r.gaps,
    tpot: r.tokens > 1 ? (r.lastChunk - r.firstChunk) / (r.tokens - 1) : null,
    e2e: r.end - r.start,
    tokens: r.tokens,
    promptTokens: r.promptTokens,
  };
}

function pcts(xs) {
  const s = xs.filter((x) => x !== null).sort((a, b) => a - b);
  const at = (p) => (s.length ? +s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)].toFixed(2) : null);
  return { p50: at(50), p90: at(90), p99: at(99), mean: s.length ? +(s.reduce((a, b) => a + b, 0) / s.length).toFixed(2) : null };
}

const WORDS = 'the a capacity aware expert dispatch mixture of experts routes every token to a few experts per layer'.split(' ');
const promptFor = (i) => Array.from({ length: PROMPT_WORDS }, (_, k) => WORDS[(i * 7 + k) % WORDS.length]).join(' ');

const model = (await getJSON('/v1/models')).data[0].id;
await streamOne(model, promptFor(0)); // warm-up

const levels = [];
for (const C of LEVELS) {
  const total = Math.max(C * PER_STREAM, MIN_REQUESTS);
  let next = 0;
  const results = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: C }, async () => {
      while (next < total || performance.now() - t0 < MIN_SECONDS * 1000) {
        const i = next++;
        results.push(await streamOne(model, promptFor(i + 1)));
      }
    }),
  );
  const wall = (performance.now() - t0) / 1000;
  const tokens = results.reduce((a, r) => a + r.tokens, 0);
  levels.push({
    concurrency: C,
    requests: results.length,
    duration_s: +wall.toFixed(3),
    generated_tokens: tokens,
    prompt_tokens_per_request: results[0].promptTokens,
    gen_tokens_per_s: +(tokens / wall).toFixed(2),
    requests_per_s: +(results.length / wall).toFixed(3),
    ttft_ms: pcts(results.map((r) => r.ttft)),
    itl_ms: pcts(results.flatMap((r) => r.gaps)),
    tpot_ms: pcts(results.map((r) => r.tpot)),
    e2e_ms: pcts(results.map((r) => r.e2e)),
  });
  process.stderr.write(`level ${C}: ${tokens} tokens in ${wall.toFixed(2)} s = ${(tokens / wall).toFixed(1)} tok/s\n`);
}
agent.destroy();

const by = (c) => levels.find((l) => l.concurrency === c);
const report = {
  model,
  max_tokens: MAX_TOKENS,
  ...(process.env.BENCH_INFO ? JSON.parse(process.env.BENCH_INFO) : {}),
  levels,
  speedup_16_vs_1: by(16) && by(1) ? +(by(16).gen_tokens_per_s / by(1).gen_tokens_per_s).toFixed(2) : null,
};
console.log(JSON.stringify(report, null, 2));

const rows = [
  '| streams | requests | gen tok/s | req/s | TTFT p50 / p90 / p99 (ms) | ITL p50 / p90 / p99 (ms) | TPOT p50 (ms) | e2e p50 / p90 / p99 (ms) |',
  '|---:|---:|---:|---:|---|---|---:|---|',
  ...levels.map((l) =>
    `| ${l.concurrency} | ${l.requests} | ${l.gen_tokens_per_s} | ${l.requests_per_s} | ` +
    `${l.ttft_ms.p50} / ${l.ttft_ms.p90} / ${l.ttft_ms.p99} | ${l.itl_ms.p50} / ${l.itl_ms.p90} / ${l.itl_ms.p99} | ` +
    `${l.tpot_ms.p50} | ${l.e2e_ms.p50} / ${l.e2e_ms.p90} / ${l.e2e_ms.p99} |`),
  '',
  `Generated tokens/s at 16 streams over 1 stream: ${report.speedup_16_vs_1 ?? 'n/a'}x ` +
    `(model ${model}, ${MAX_TOKENS} tokens per request, greedy, same run).`,
];
if (process.env.BENCH_MD) fs.writeFileSync(process.env.BENCH_MD, rows.join('\n') + '\n');
else process.stderr.write(rows.join('\n') + '\n');
