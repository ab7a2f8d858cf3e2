// spread.mjs - capmoe-server under `mpirun -np 2 ... --ep mpi` (run by
// tests/t_mpi_server.sh): concurrent streams are spread over both ranks
// (their sequences and KV caches live on both processes), every rank's
// series are in /metrics, and the answers are those of a single process
// (greedy completions compared with CAPMOE_REF_URL, a single-process server
// of the same model, when given).
import test from 'node:test';
import assert from 'node:assert/strict';
import { get, post, metric, sseData } from '../server/lib.mjs';

const KEY = process.env.CAPMOE_API_KEY;
const AUTH = KEY ? { Authorization: `Bearer ${KEY}` } : {};
const T = { timeout: 120000 };

async function stream(prompt, n) {
  const r = await post('/v1/completions',
    { prompt, max_tokens: 24, temperature: 0, ignore_eos: true, n, stream: true }, { headers: AUTH });
  assert.equal(r.status, 200, r.text);
  const events = sseData(r.text);
  assert.equal(events.at(-1), '[DONE]');
  const text = {};
  for (const e of events.slice(0, -1)) {
    const j = JSON.parse(e);
    assert.ok(!j.error, e);
    for (const c of j.choices) text[c.index] = (text[c.index] || '') + c.text;
  }
  return text;
}

test('concurrent streams run on both ranks and stay deterministic', T, async () => {
  const before0 = (await metric('capmoe_ep_tokens_total{rank="0"}')) || 0;
  const before1 = (await metric('capmoe_ep_tokens_total{rank="1"}')) || 0;
  const prompts = ['The sea', 'In the beginning', 'A king', 'The state of the Union'];
  const outs = await Promise.all(prompts.map((p) => stream(p, 2)));
  // greedy: both choices of a prompt agree, whichever rank each lived on
  for (const o of outs) assert.equal(o[0], o[1]);
  const after0 = await metric('capmoe_ep_tokens_total{rank="0"}');
  const after1 = await metric('capmoe_ep_tokens_total{rank="1"}');
  assert.ok(after0 > before0, `rank 0 dispatched no tokens (${before0} -> ${after0})`);
  assert.ok(after1 > before1, `rank 1 dispatched no tokens (${before1} -> ${after1})`);
  // the same prompt alone gives the same text
  const alone = await stream(prompts[0], 1);
  assert.equal(alone[0], outs[0][0]);
  const ref = process.env.CAPMOE_REF_TEXT;
  if (ref) assert.equal(alone[0], ref);
});

test('every rank has its series in /metrics', T, async () => {
  const r = await get('/metrics');
  assert.equal(r.status, 200);
  assert.equal(await metric('capmoe_ep_ranks'), 2);
  for (const rank of [0, 1]) {
    for (const name of [`capmoe_ep_wait_seconds_count{rank="${rank}",phase="dispatch"}`,
                        `capmoe_ep_wait_seconds_count{rank="${rank}",phase="combine"}`,
                        `capmoe_ep_expert_seconds_count{rank="${rank}"}`,
                        `capmoe_ep_expert_pairs_total{rank="${rank}"}`,
                        `capmoe_ep_alltoall_bytes_total{rank="${rank}",direction="sent"}`]) {
      const v = await metric(name);
      assert.ok(v > 0, `${name} = ${v}`);
    }
  }
  const strag = await metric('capmoe_moe_straggler_ratio_count');
  assert.ok(strag > 0, 'no straggler ratio measured');
});
