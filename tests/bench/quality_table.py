#!/usr/bin/env python3
"""Quality versus speed of capacity-aware dispatch on one model: the
reproduction of the paper's trade-off that the README shows.

For `none` and for drop / expanded / reroute at each gamma it runs
  * `capmoe perplexity` on a held-out text (sliding windows, B sequences per
    forward so every dispatch sees B x context tokens), and
  * `capmoe bench` prefill on token ids of the same text (T tokens per batch,
    R expert-parallel ranks), for the modelled expert-parallel speedup
    (max rank load x per-pair expert cost, against `none` in the same run),
and prints a markdown table (and the raw numbers as JSON with --json FILE).

usage: quality_table.py [--model config/model] [--text tests/train/heldout.txt]
                        [--max-tokens 40000] [--prefill 2048] [--ep-ranks 8]
                        [--gammas 0.75,1.0,1.25,1.5,2.0] [--policies drop,expanded,reroute]
                        [--capmoe build/capmoe] [--json FILE]
Standard library only."""
import argparse
import json
import subprocess
import sys


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("%s failed: %s" % (" ".join(cmd), p.stderr.strip()))
    return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="config/model")
    ap.add_argument("--text", default="tests/train/heldout.txt")
    ap.add_argument("--max-tokens", default="0")
    ap.add_argument("--context", default="512")
    ap.add_argument("--stride", default="512")
    ap.add_argument("--batch", default="4")
    ap.add_argument("--prefill", default="2048")
    ap.add_argument("--ep-ranks", default="8")
    ap.add_argument("--gammas", default="0.75,1.0,1.25,1.5,2.0")
    ap.add_argument("--policies", default="drop,expanded,reroute")
    ap.add_argument("--capmoe", default="build/capmoe")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    gammas = a.gammas.split(",")
    policies = a.policies.split(",")

    bench = run([a.capmoe, "bench", "--model", a.model, "--text", a.text, "--prefill", a.prefill,
                 "--decode", "", "--policies", ",".join(policies), "--gammas", a.gammas,
                 "--ep-ranks", a.ep_ranks, "--repeat", "2"])
    speed = {}
    for blk in bench["prefill"]:
        for r in blk["runs"]:
            g = r["capacity_factor"]
            speed[(r["policy"], None if g is None else float(g))] = r

    base = ["perplexity", "--model", a.model, "--file", a.text, "--context", a.context,
            "--stride", a.stride, "--batch", a.batch, "--ep-ranks", a.ep_ranks]
    if a.max_tokens != "0":
        base += ["--max-tokens", a.max_tokens]
    rows = []
    settings = [("none", None)] + [(p, float(g)) for p in policies for g in gammas]
    for pol, g in settings:
        cmd = [a.capmoe] + base + ["--policy", pol]
        if g is not None:
            cmd += ["--capacity-factor", repr(g)]
        ppl = run(cmd)
        sp = speed.get((pol, g), {})
        rows.append(dict(policy=pol, gamma=g, perplexity=ppl["perplexity"], tokens=ppl["tokens"],
                         dropped_mass=ppl["dropped_mass"], dropped_fraction=ppl["dropped_fraction"],
                         rerouted_fraction=ppl.get("rerouted_fraction", 0.0),
                         max_mean_load=sp.get("max_mean_load"), speedup_modelled=sp.get("speedup_modelled"),
                         speedup_wall=sp.get("speedup_wall")))
        print("%s %s ppl %.3f" % (pol, g, ppl["perplexity"]), file=sys.stderr)
    base_ppl = rows[0]["perplexity"]
    m = bench["model"]
    print("Model `%s` (%s), held-out text `%s` (%d scored tokens; windows of %s tokens, stride %s, "
          "%s windows per forward, so each dispatch sees %d tokens). Speed: `capmoe bench` prefill of "
          "T = %s tokens of the same text on R = %s expert-parallel ranks." % (
              a.model, m.get("arch", ""), a.text, rows[0]["tokens"], a.context, a.stride, a.batch,
              int(a.context) * int(a.batch), a.prefill, a.ep_ranks))
    print()
    print("| policy | gamma | perplexity | vs none | dropped routing mass | dropped pairs | rerouted pairs "
          "| max/mean expert load | modelled EP speedup | wall speedup (2 cores) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        f = lambda x, fmt: "-" if x is None else fmt % x  # noqa: E731
        print("| %s | %s | %.2f | %+.1f%% | %.3f | %.1f%% | %.1f%% | %s | %s | %s |" % (
            r["policy"], "-" if r["gamma"] is None else "%g" % r["gamma"], r["perplexity"],
            100.0 * (r["perplexity"] / base_ppl - 1.0), r["dropped_mass"], 100.0 * r["dropped_fraction"],
            100.0 * r["rerouted_fraction"], f(r["max_mean_load"], "%.2f"), f(r["speedup_modelled"], "%.2fx"),
            f(r["speedup_wall"], "%.2fx")))
    if a.json:
        json.dump(dict(rows=rows, bench=bench), open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
