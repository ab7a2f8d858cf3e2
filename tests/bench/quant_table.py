#!/usr/bin/env python3
"""quant_table.py RES_DIR - the markdown table of tests/bench/quant_side_by_side.sh:
per format, capmoe (capmoe_<w>.json of `capmoe bench`) beside llama.cpp
(llama_<Q>.json of llama-bench, llama_batched_<Q>.txt of llama-batched-bench):
prefill of 512 tokens, decode at batch 1 and 16, tokens per second, and the
ratio capmoe / llama.cpp; capmoe's batch-1 decode as a share of the same-run
memory bandwidth ceiling; peak RSS of each run. Standard library only."""
import json
import os
import re
import sys

# capmoe's runs: q8 / q4 quantize the experts (--quantize experts), q8all /
# q4all every matrix but the router and the embedding (--quantize all), as
# llama.cpp's formats do.
PAIRS = [("bf16", "bf16"), ("q8", "Q8_0"), ("q8all", "Q8_0"), ("q4", "Q4_0"), ("q4all", "Q4_0"),
         ("q4", "Q4_1"), ("q4all", "Q4_1")]
LABEL = {"q8all": "q8 all", "q4all": "q4 all"}


def load(p):
    try:
        return json.load(open(p))
    except Exception:  # noqa: BLE001
        return None


def rss(p):
    try:
        return int(open(p).read().split()[-1]) / 1024 / 1024
    except Exception:  # noqa: BLE001
        return None


def capmoe(res, w):
    o = load(os.path.join(res, "capmoe_%s.json" % w))
    if not o:
        return None
    r = {"pre": None, "d1": None, "d16": None}
    for p in o.get("prefill", []):
        if p["tokens"] == 512:
            r["pre"] = p["runs"][0]["tokens_per_s"]
    for d in o.get("decode", []):
        if d["batch"] == 1:
            r["d1"] = d["runs"][0]["tokens_per_s"]
        if d["batch"] == 16:
            r["d16"] = d["runs"][0]["tokens_per_s"]
    ra = o.get("ratios", {})
    r["bw"] = o.get("machine", {}).get("bandwidth_gbs")
    r["gbs"] = ra.get("decode_gbs")
    r["pack"] = o.get("settings", {}).get("pack_s")
    r["rss"] = rss(os.path.join(res, "capmoe_%s.rss" % w))
    return r


def llama(res, q):
    o = load(os.path.join(res, "llama_%s.json" % q))
    r = {"pre": None, "d1": None, "d16": None, "rss": rss(os.path.join(res, "llama_%s.rss" % q))}
    for t in o or []:
        if t.get("n_prompt") == 512 and not t.get("n_gen"):
            r["pre"] = t["avg_ts"]
        if t.get("n_gen") and not t.get("n_prompt"):
            r["d1"] = t["avg_ts"]
    try:
        for line in open(os.path.join(res, "llama_batched_%s.txt" % q)):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 8 and cells[2] == "16" and re.match(r"^[0-9.]+$", cells[7]):
                r["d16"] = float(cells[7])  # S_TG t/s
    except OSError:
        pass
    return r if o or r["d16"] else None


def f(x, fmt="%.1f"):
    return fmt % x if x is not None else "–"


def ratio(a, b):
    return "%.2fx" % (a / b) if a and b else "–"


def main():
    res = sys.argv[1]
    lines = ["| capmoe / llama.cpp | prefill 512 tok/s | ratio | decode B=1 tok/s | ratio | decode B=16 tok/s | ratio "
             "| capmoe B=1 GB/s (ceiling) | peak RSS GB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w, q in PAIRS:
        c, l = capmoe(res, w), llama(res, q)
        if not c and not l:
            continue
        c = c or {"pre": None, "d1": None, "d16": None, "gbs": None, "bw": None, "rss": None}
        l = l or {"pre": None, "d1": None, "d16": None, "rss": None}
        lines.append("| %s / %s | %s / %s | %s | %s / %s | %s | %s / %s | %s | %s (%s) | %s / %s |" % (
            LABEL.get(w, w), q, f(c["pre"]), f(l["pre"]), ratio(c["pre"], l["pre"]), f(c["d1"]), f(l["d1"]),
            ratio(c["d1"], l["d1"]), f(c["d16"]), f(l["d16"]), ratio(c["d16"], l["d16"]),
            f(c["gbs"]), f(c["bw"]), f(c["rss"], "%.2f"), f(l["rss"], "%.2f")))
    try:
        lines.append("")
        lines.append("System: " + "; ".join(x.strip() for x in open(os.path.join(res, "system.txt")) if x.strip())[:600])
    except OSError:
        pass
    sk = os.path.join(res, "skipped.txt")
    if os.path.exists(sk):
        lines.append("Skipped (time budget): " + ", ".join(open(sk).read().split()))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
