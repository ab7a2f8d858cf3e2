// mixed_bench.mjs - one configuration of the mixed-load benchmark (run by
// mixed_bench.sh): S decode streams generate back to back while long prompts
// arrive on a seeded schedule, so the server's dispatches alternate between
// decode-only steps and steps that carry a prompt chunk.
//
// Decode streams: each sends streamed /v1/completions of a short prompt
// (MIX_SHORT_PROMPT token ids), MIX_MAX_TOKENS tokens, greedy, ignore_eos, back
// to back until MIX_DURATION seconds have passed (a request under way then
// finishes). Long prompts: MIX_LONG requests of MIX_LONG_MIN..MIX_LONG_MAX
// token ids (uniform), MIX_LONG_MAX_TOKENS tokens each, arriving at seeded
// times spread over 5%..75% of the duration. Prompts are token-id lists drawn
// from MIX_SEED (same seed, same schedule and prompts for every
// configuration). Per request: TTFT (sent -> first token chunk) and the gaps
// between chunks (ITL). Throughput: generated tokens (both kinds) / wall time
// from the first request to the last answer. The server's /metrics are read
// before and after; the report holds the differences.
//
// Env: CAPMOE_URL (required), MIX_LABEL, MIX_DURATION (60), MIX_STREAMS (16),
// MIX_MAX_TOKENS (64), MIX_SHORT_PROMPT (16), MIX_LONG (6), MIX_LONG_MIN (1000),
// MIX_LONG_MAX (2000), MIX_LONG_MAX_TOKENS (16), MIX_VOCAB (8192), MIX_SEED (1),
// MIX_INFO (JSON merged into the report). Prints the JSON report on stdout.
import http from 'node:http';
import { streamClient } from './stream_client.mjs';

const env = (k, d) => (process.env[k] !== undefined && process.env[k] !== '' ? process.env[k] : d);
const BASE = new URL(process.env.CAPMOE_URL);
const DURATION = Number(env('MIX_DURATION', 60));
const STREAMS = Number(env('MIX_STREAMS', 16));
const MAX_TOKENS = Number(env('MIX_MAX_TOKENS', 64));
const SHORT = Number(env('MIX_SHORT_PROMPT', 16));
const N_LONG = Number(env('MIX_LONG', 6));
const LONG_MIN = Number(env('MIX_LONG_MIN', 1000));
const LONG_MAX = Number(env('MIX_LONG_MAX', 2000));
const LONG_TOKENS = Number(env('MIX_LONG_MAX_TOKENS', 16));
const VOCAB = Number(env('MIX_VOCAB', 8192));
const SEED = Number(env('MIX_SEED', 1));

const agent = new http.Agent({ keepAlive: true, maxSockets: STREAMS + N_LONG + 4 });

// mulberry32: a small seeded generator, so every configuration sees the same load.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const ids = (r, n) => Array.from({ length: n }, () => 3 + Math.floor(r() * (VOCAB - 3)));

// getText(path); streamOne(model, prompt, maxTokens) -> {start, end, ttft, gaps, tokens, promptTokens, ...}
const { getText, streamOne } = streamClient(BASE, agent);

function pcts(xs) {
  const s = xs.slice().sort((a, b) => a - b);
  const at = (p) => (s.length ? +s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)].toFixed(2) : null);
  return { n: s.length, p50: at(50), p90: at(90), p99: at(99), max: s.length ? +s[s.length - 1].toFixed(2) : null };
}

// Prometheus text -> { 'name{labels}': value } for the series this report uses.
function scrape(text) {
  const out = {};
  for (const line of text.split('\n')) {
    const m = line.match(/^(capmoe_(?:moe_dispatches_total|moe_activated_experts_(?:sum|count)|moe_piggybacked_pairs_total|moe_routed_pairs_total|moe_dropped_pairs_total|moe_rerouted_pairs_total|moe_regime_crossover_tokens|generation_tokens_total|prompt_tokens_total|moe_dropped_mass_ratio_(?:sum|count)|moe_capacity_factor_(?:sum|count))(?:\{[^}]*\})?) (\S+)$/);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

const model = JSON.parse(await getText('/v1/models')).data[0].id;
const r = rng(SEED);
const longs = Array.from({ length: N_LONG }, (_, i) => ({
  at: DURATION * 1000 * (0.05 + (0.7 * (i + r())) / Math.max(1, N_LONG)),
  prompt: ids(r, LONG_MIN + Math.floor(r() * (LONG_MAX - LONG_MIN + 1))),
}));
const shortPrompts = Array.from({ length: 64 }, () => ids(r, SHORT));
await streamOne(model, shortPrompts[0], 4); // warm-up
const before = scrape(await getText('/metrics'));

const decode = [], long = [];
const t0 = performance.now();
const sleep = (ms) => new Promise((res) => setTimeout(res, Math.max(0, ms)));
await Promise.all([
  ...Array.from({ length: STREAMS }, async (_, s) => {
    for (let k = 0; performance.now() - t0 < DURATION * 1000; k++)
      decode.push(await streamOne(model, shortPrompts[(s * 7 + k) % shortPrompts.length], MAX_TOKENS));
  }),
  ...longs.map(async (l) => {
    await sleep(l.at - (performance.now() - t0));
    long.push(await streamOne(model, l.prompt, LONG_TOKENS));
  }),
]);
const wall = (performance.now() - t0) / 1000;
const after = scrape(await getText('/metrics'));
agent.destroy();

const d = (k) => (after[k] ?? 0) - (before[k] ?? 0);
const disp = {};
for (const k of Object.keys(after))
  if (k.startsWith('capmoe_moe_dispatches_total{')) {
    const lim = k.match(/limited="(\w+)"/)[1], reg = k.match(/regime="(\w+)"/)[1];
    disp[`${reg}${lim === 'true' ? '_limited' : ''}`] = d(k);
  }
const gen = decode.reduce((a, x) => a + x.tokens, 0) + long.reduce((a, x) => a + x.tokens, 0);
const routed = d('capmoe_moe_routed_pairs_total');
const report = {
  label: env('MIX_LABEL', ''),
  model,
  ...(process.env.MIX_INFO ? JSON.parse(process.env.MIX_INFO) : {}),
  load: { duration_s: DURATION, streams: STREAMS, max_tokens: MAX_TOKENS, short_prompt_tokens: SHORT,
    long_prompts: longs.map((l) => ({ at_s: +(l.at / 1000).toFixed(2), tokens: l.prompt.length })),
    long_max_tokens: LONG_TOKENS, seed: SEED },
  wall_s: +wall.toFixed(3),
  generated_tokens: gen,
  gen_tokens_per_s: +(gen / wall).toFixed(2),
  prompt_tokens_per_s: +(d('capmoe_prompt_tokens_total') / wall).toFixed(1),
  decode_requests: decode.length,
  long_requests: long.length,
  ttft_decode_ms: pcts(decode.map((x) => x.ttft)),
  ttft_long_ms: pcts(long.map((x) => x.ttft)),
  itl_decode_ms: pcts(decode.flatMap((x) => x.gaps)),
  metrics: {
    regime_crossover_tokens: after.capmoe_moe_regime_crossover_tokens ?? null,
    dispatches: disp,
    activated_experts_mean: d('capmoe_moe_activated_experts_count') > 0
      ? +(d('capmoe_moe_activated_experts_sum') / d('capmoe_moe_activated_experts_count')).toFixed(2) : null,
    routed_pairs: routed,
    piggybacked_pairs: d('capmoe_moe_piggybacked_pairs_total'),
    dropped_pairs: d('capmoe_moe_dropped_pairs_total'),
    dropped_ratio: routed > 0 ? +(d('capmoe_moe_dropped_pairs_total') / routed).toFixed(5) : 0,
    dropped_mass_ratio_mean: d('capmoe_moe_dropped_mass_ratio_count') > 0
      ? +(d('capmoe_moe_dropped_mass_ratio_sum') / d('capmoe_moe_dropped_mass_ratio_count')).toFixed(5) : null,
    capacity_factor_mean: d('capmoe_moe_capacity_factor_count') > 0
      ? +(d('capmoe_moe_capacity_factor_sum') / d('capmoe_moe_capacity_factor_count')).toFixed(3) : null,
  },
};
process.stderr.write(`${report.label}: ${gen} tokens in ${wall.toFixed(1)} s = ${report.gen_tokens_per_s} tok/s\n`);
console.log(JSON.stringify(report, null, 2));
