// mixed_table.mjs - joins mixed_bench.sh's per-configuration results into one
// JSON report (stdout) and a markdown table (MIX_MD, else stderr).
//   node tests/bench/mixed_table.mjs DIR NAME...
// reads DIR/NAME.load.json (mixed_bench.mjs), DIR/NAME.ppl_decode.json and
// DIR/NAME.ppl_prefill.json (capmoe perplexity; either may be missing) and
// DIR/NAME.flags (the configuration's server flags). The first NAME is the
// baseline of the "vs" columns.
import fs from 'node:fs';

const [dir, ...names] = process.argv.slice(2);
const read = (f) => (fs.existsSync(f) ? JSON.parse(fs.readFileSync(f, 'utf8')) : null);
const runs = names.map((n) => ({
  name: n,
  flags: fs.readFileSync(`${dir}/${n}.flags`, 'utf8').trim(),
  load: read(`${dir}/${n}.load.json`),
  ppl_decode: read(`${dir}/${n}.ppl_decode.json`),
  ppl_prefill: read(`${dir}/${n}.ppl_prefill.json`),
}));
const info = process.env.MIX_INFO ? JSON.parse(process.env.MIX_INFO) : {};
console.log(JSON.stringify({ ...info, configurations: runs }, null, 2));

const base = runs[0];
const pct = (x, b) => (x == null || b == null ? '' : ` (${x >= b ? '+' : ''}${((100 * (x - b)) / b).toFixed(1)}%)`);
const p3 = (p) => (p && p.n ? `${p.p50} / ${p.p90} / ${p.p99}` : 'n/a');
const ppl = (r, k) => (r[k] ? `${r[k].perplexity.toFixed(3)}${r === base ? '' : pct(r[k].perplexity, base[k]?.perplexity)}` : 'n/a');
const L = base.load;
const lines = [
  `Mixed load: ${L.load.streams} decode streams (${L.load.short_prompt_tokens}-token prompts, ` +
    `${L.load.max_tokens} tokens each, back to back for ${L.load.duration_s} s) plus ` +
    `${L.load.long_prompts.length} long prompts (${L.load.long_prompts.map((l) => l.tokens).join(', ')} tokens, ` +
    `${L.load.long_max_tokens} tokens each) arriving at ${L.load.long_prompts.map((l) => l.at_s).join(', ')} s; ` +
    `model ${L.model}; ${info.cpus ?? '?'} CPUs, --threads ${info.threads ?? '?'}; seed ${L.load.seed}.`,
  '',
  '| config | server flags | gen tok/s | prompt tok/s | TTFT decode p50 / p90 / p99 (ms) | TTFT long p50 / p90 / p99 (ms) | ITL decode p50 / p90 / p99 (ms) |',
  '|---|---|---:|---:|---|---|---|',
  ...runs.map((r) => `| ${r.name} | \`${r.flags}\` | ${r.load.gen_tokens_per_s}${r === base ? '' : pct(r.load.gen_tokens_per_s, L.gen_tokens_per_s)} | ` +
    `${r.load.prompt_tokens_per_s} | ${p3(r.load.ttft_decode_ms)} | ${p3(r.load.ttft_long_ms)} | ${p3(r.load.itl_decode_ms)} |`),
  '',
  '| config | regime tokens | dispatches main / main limited / decode | activated experts / dispatch | piggybacked pairs | dropped pairs / routed | dropped mass / limited dispatch | perplexity decode B=' +
    `${base.ppl_decode?.batch ?? '?'} | perplexity prefill |`,
  '|---|---:|---|---:|---:|---:|---:|---:|---:|',
  ...runs.map((r) => {
    const m = r.load.metrics, d = m.dispatches;
    const rt = (r.flags.match(/--regime-tokens (\S+)/) || [])[1];
    const cross = !rt ? '-' : rt === 'auto' ? `auto: ${m.regime_crossover_tokens}` : `${rt} (measured ${m.regime_crossover_tokens})`;
    return `| ${r.name} | ${cross} | ${d.main ?? 0} / ${d.main_limited ?? 0} / ${(d.decode ?? 0) + (d.decode_limited ?? 0)} | ` +
      `${m.activated_experts_mean} | ${m.piggybacked_pairs} | ${m.dropped_ratio} | ${m.dropped_mass_ratio_mean ?? '-'} | ${ppl(r, 'ppl_decode')} | ${ppl(r, 'ppl_prefill')} |`;
  }),
];
if (process.env.MIX_MD) fs.writeFileSync(process.env.MIX_MD, lines.join('\n') + '\n');
else process.stderr.write(lines.join('\n') + '\n');
