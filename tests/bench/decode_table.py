#!/usr/bin/env python3
"""Memory-bound dispatch on one model: decode speed and quality of policy
piggyback against none, the tables of the README ("Measured: piggyback in
decode").

For B concurrent sequences (default 1, 4, 16, 64) it runs
  * `capmoe bench --decode B` with --policies none,piggyback (piggyback at
    k0 = 1, k/4, k/2): activated experts per MoE layer and step, expert bytes
    read per step, median decode step time, tokens/s, and the memory/compute
    crossover of the model on this machine;
  * unless --no-quality, `capmoe perplexity --decode --batch B` on a held-out
    text for the same policies: B windows evaluated one position at a time, so
    every dispatch holds B tokens, exactly as a decode step of B sequences
    (B = 1 is not shown: a lone token always keeps its own experts);
and prints markdown (and the raw numbers as JSON with --json FILE).

usage: decode_table.py --model DIR [--batches 1,4,16,64] [--threads N]
                       [--text tests/train/heldout.txt] [--context 256] [--max-tokens 24576]
                       [--capmoe build/capmoe] [--no-quality] [--json FILE]
Standard library only."""
import argparse
import json
import platform
import subprocess
import sys


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("%s failed: %s" % (" ".join(cmd), p.stderr.strip()))
    return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--threads", default="0")
    ap.add_argument("--text", default="tests/train/heldout.txt")
    ap.add_argument("--context", default="256")
    ap.add_argument("--max-tokens", default="24576")
    ap.add_argument("--capmoe", default="build/capmoe")
    ap.add_argument("--repeat", default="3")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    batches = [int(x) for x in a.batches.split(",")]
    cfg = json.load(open(a.model + "/config.json"))
    k = cfg["num_experts_per_tok"]
    k0s = sorted({1, max(1, k // 4), max(1, k // 2)})
    bench = run([a.capmoe, "bench", "--model", a.model, "--policies", "none,piggyback",
                 "--piggyback-k0s", ",".join(map(str, k0s)), "--prefill", "", "--decode", a.batches,
                 "--ep-ranks", "1", "--repeat", a.repeat, "--decode-steps", "8",
                 "--decode-context", "64", "--threads", a.threads, "--regime-max", "512"])
    quality = {}
    if not a.no_quality:
        for B in batches:
            if B < 2:
                continue
            base = [a.capmoe, "perplexity", "--model", a.model, "--file", a.text, "--context", a.context,
                    "--stride", a.context, "--max-tokens", a.max_tokens, "--batch", str(B), "--decode",
                    "--threads", a.threads]
            quality[(B, 0)] = run(base)
            for k0 in k0s:
                quality[(B, k0)] = run(base + ["--policy", "piggyback", "--piggyback-k0", str(k0)])
    mo, ma = bench["model"], bench["machine"]
    rg = bench.get("regime", {})
    print("Model `%s` (%s, %d experts, top-%d, expert width %d, %d MoE layers; %.2f MB per expert). "
          "Machine: %s, %d threads, OpenBLAS core %s. Memory/compute crossover: %s tokens per "
          "dispatch.\n" % (a.model, mo["arch"], mo["experts"], mo["top_k"], mo["moe_intermediate_size"],
                           mo["moe_layers"], bench["decode_time_vs_activated"]["expert_bytes"] / 1e6,
                           ma["system"].get("cpu", platform.processor()) if isinstance(ma.get("system"), dict) else "?",
                           ma["threads"], ma.get("sgemm_blas_core"), rg.get("crossover_tokens")))
    print("| B | policy | activated experts / layer | expert MB read / step | step ms | tokens/s | "
          "speedup | perplexity | vs none |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for g in bench["decode"]:
        B = g["batch"]
        for r in g["runs"]:
            k0 = r.get("piggyback_k0", 0)
            name = "none" if r["policy"] == "none" else "piggyback k0=%d" % k0
            q, q0 = quality.get((B, k0)), quality.get((B, 0))
            ppl = "%.3f" % q["perplexity"] if q else "-"
            vs = "%+.2f%%" % (100 * (q["perplexity"] / q0["perplexity"] - 1)) if q and q0 else "-"
            print("| %d | %s | %.2f | %.1f | %.3f | %.0f | %.2fx | %s | %s |" % (
                B, name, r["activated_experts"], r["expert_bytes_per_forward"] / 1e6, r["time_s"] * 1e3,
                r["tokens_per_s"], r["speedup_wall"], ppl, vs))
            rows.append(dict(batch=B, policy=r["policy"], k0=k0, activated=r["activated_experts"],
                             expert_bytes=r["expert_bytes_per_forward"], step_s=r["time_s"],
                             tokens_per_s=r["tokens_per_s"], speedup=r["speedup_wall"],
                             perplexity=q["perplexity"] if q else None))
    fit = bench["decode_time_vs_activated"]
    if fit.get("seconds_per_activated_expert") is not None:
        print("\nDecode step time against activated experts per layer (every row above): "
              "%.3f ms + %.4f ms per activated expert." % (fit["intercept_s"] * 1e3,
                                                          fit["seconds_per_activated_expert"] * 1e3))
    if a.json:
        json.dump(dict(bench=bench, rows=rows,
                       quality={"%d/%d" % key: v for key, v in quality.items()}), open(a.json, "w"))


if __name__ == "__main__":
    main()
