// render_hfjs.mjs - renders the parity cases with @huggingface/jinja (the
// JavaScript Jinja of transformers.js), as the second reference. Same input
// and output format as tests/jinja/jinja_render.c. Its own raise_exception
// and strftime_now are used (the clock set to the cases' "now").
//
//   node render_hfjs.mjs CASES.json OUT.json
import { readFileSync, writeFileSync } from "node:fs";
import { Template } from "@huggingface/jinja";

const [casesPath, outPath] = process.argv.slice(2);
const spec = JSON.parse(readFileSync(casesPath, "utf8"));
// Its strftime_now formats `new Date()` in local time: run with TZ=UTC, and
// the clock is fixed here to the cases' "now".
const RealDate = Date;
globalThis.Date = class extends RealDate {
  constructor(...args) {
    if (args.length === 0) super((spec.now ?? 0) * 1000);
    else super(...args);
  }
  static now() { return (spec.now ?? 0) * 1000; }
};
const compiled = {};
for (const [name, src] of Object.entries(spec.templates)) {
  try {
    compiled[name] = new Template(src);
  } catch (e) {
    compiled[name] = e;
  }
}
const out = {};
for (const c of spec.cases) {
  const t = compiled[c.template];
  if (t instanceof Error) {
    out[c.id] = { error: String(t.message), compile: true };
    continue;
  }
  try {
    out[c.id] = { out: t.render(c.vars) };
  } catch (e) {
    out[c.id] = { error: String(e && e.message ? e.message : e) };
  }
}
writeFileSync(outPath, JSON.stringify(out, null, 1));
