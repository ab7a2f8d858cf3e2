// scrape_check.mjs - used by tests/t_prometheus_scrape.sh: sends a few
// completions to capmoe-server, then asks a real Prometheus server (which
// scrapes capmoe every second) for capmoe series through its HTTP API.
//   CAPMOE_URL  the capmoe server;  PROM_URL  the Prometheus server
import assert from 'node:assert/strict';

const CAPMOE = process.env.CAPMOE_URL, PROM = process.env.PROM_URL;
const deadline = Date.now() + Number(process.env.SCRAPE_TIMEOUT_S || 60) * 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function query(q) {
  const r = await fetch(`${PROM}/api/v1/query?query=${encodeURIComponent(q)}`);
  const j = await r.json();
  assert.equal(j.status, 'success', JSON.stringify(j));
  return j.data.result; // [{metric:{...}, value:[t, "v"]}]
}

// Poll until f() returns a truthy value (or fail with the last one seen).
async function until(what, f) {
  let last;
  while (Date.now() < deadline) {
    last = await f();
    if (last) return last;
    await sleep(500);
  }
  throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last)}`);
}

const mr = await fetch(`${CAPMOE}/metrics`);
assert.equal(mr.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
await mr.text();

const models = await (await fetch(`${CAPMOE}/v1/models`)).json();
const model = models.data[0].id;
let generated = 0;
for (let i = 0; i < 4; i++) {
  const r = await fetch(`${CAPMOE}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt: `Request number ${i}`, max_tokens: 5, temperature: 0, ignore_eos: true }),
  });
  assert.equal(r.status, 200);
  generated += (await r.json()).usage.completion_tokens;
}
assert.equal(generated, 20);

// The target is healthy: up == 1 and the last scrape had no error.
await until('target up', async () => {
  const t = await (await fetch(`${PROM}/api/v1/targets`)).json();
  const a = t.data.activeTargets.find((x) => x.labels.job === 'capmoe');
  if (a && a.health === 'down') throw new Error(`scrape failed: ${a.lastError}`);
  return a && a.health === 'up' && a.lastError === '';
});
const up = await query('up{job="capmoe"}');
assert.equal(up.length, 1);
assert.equal(up[0].value[1], '1');

// The generated tokens come back through Prometheus.
const res = await until('capmoe_generation_tokens_total >= 20', async () => {
  const r = await query('capmoe_generation_tokens_total');
  return r.length === 1 && Number(r[0].value[1]) >= generated ? r : null;
});
console.log(`capmoe_generation_tokens_total via Prometheus: ${res[0].value[1]} (job ${res[0].metric.job})`);
assert.equal(res[0].metric.job, 'capmoe');

// A histogram and a labelled counter are usable in PromQL.
const ttft = await query('capmoe_time_to_first_token_seconds_count');
assert.ok(Number(ttft[0].value[1]) >= 4);
const reqs = await query('sum(capmoe_requests_total{endpoint="/v1/completions",code="200"})');
assert.ok(Number(reqs[0].value[1]) >= 4, JSON.stringify(reqs));
const q = await query('histogram_quantile(0.5, capmoe_time_to_first_token_seconds_bucket)');
assert.ok(Number.isFinite(Number(q[0].value[1])) && Number(q[0].value[1]) > 0, JSON.stringify(q));
const info = await query('capmoe_model_info');
assert.equal(info.length, 1);
assert.equal(info[0].metric.model, model);
console.log('scrape_check: ok');
