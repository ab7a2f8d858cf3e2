#!/usr/bin/env python3
"""The side-by-side table from tests/bench/llama_side_by_side.sh's results
directory: capmoe bench JSON (capmoe_<model>_t<threads>_<compute>.json) and
llama-bench JSON (llama_<model>_t<threads>.json). Prints markdown.

usage: side_by_side_table.py RES_DIR"""
import glob
import json
import os
import re
import sys

NAMES = {"a": "0.5 GB", "b": "4.3 GB"}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(x, spec="%.0f"):
    return spec % x if isinstance(x, (int, float)) else "–"


def ratio(a, b):
    return "%.2fx" % (a / b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else "–"


def main():
    res = sys.argv[1]
    keys = set()
    for p in glob.glob(os.path.join(res, "*.json")):
        m = re.match(r"(capmoe|llama)_([a-z])_t(\d+)", os.path.basename(p))
        if m:
            keys.add((m.group(2), int(m.group(3))))
    rows, ceil, parts = [], [], []
    for model, t in sorted(keys):
        cf = load(os.path.join(res, "capmoe_%s_t%d_f32.json" % (model, t)))
        cb = load(os.path.join(res, "capmoe_%s_t%d_bf16.json" % (model, t)))
        ll = load(os.path.join(res, "llama_%s_t%d.json" % (model, t))) or []
        l_pp = next((e.get("avg_ts") for e in ll if e.get("n_prompt") == 512 and e.get("n_gen") == 0), None)
        l_tg = next((e.get("avg_ts") for e in ll if e.get("n_gen") == 32 and e.get("n_prompt") == 0), None)

        def pre(o):
            try:
                return o["prefill"][0]["runs"][0]
            except (TypeError, KeyError, IndexError):
                return None

        def dec(o):
            try:
                return o["decode"][0]["runs"][0]
            except (TypeError, KeyError, IndexError):
                return None
        pf, pb, df = pre(cf), pre(cb), dec(cf)
        f_ts = pf["tokens_per_s"] if pf else None
        b_ts = pb["tokens_per_s"] if pb else None
        d_ts = df["tokens_per_s"] if df else None
        ma = (cf or cb or {}).get("machine", {})
        sg = ma.get("sgemm_gflops")
        p32 = ma.get("peak_fp32_gflops")
        pbf = ma.get("peak_amx_bf16_gflops") or ma.get("peak_bf16_dot_gflops")
        f_gf = pf["gflops"] if pf else None
        b_gf = pb["gflops"] if pb else None
        sgx = ma.get("sgemm_experts_gflops")
        share = "%s (%s of sgemm, %s of sgemm at the experts' shapes, %s of FP32 peak)" % (
            fmt(f_gf), "%.0f%%" % (100 * f_gf / sg) if f_gf and sg else "–",
            "%.0f%%" % (100 * f_gf / sgx) if f_gf and sgx else "–",
            "%.0f%%" % (100 * f_gf / p32) if f_gf and p32 else "–")
        bshare = "%s (%s of the BF16 peak)" % (fmt(b_gf), "%.0f%%" % (100 * b_gf / pbf) if b_gf and pbf else "–")
        attn = "–"
        if pf and pf.get("time_s"):
            attn = "%.0f%% / %.0f%%" % (100 * pf["attn_time_s"] / pf["time_s"], 100 * pf["moe_time_s"] / pf["time_s"])
        rows.append("| %s | %d | %s / %s / %s | %s / %s | %s | %s | %s / %s (%s) | %s |" % (
            NAMES.get(model, model), t, fmt(f_ts), fmt(b_ts), fmt(l_pp), ratio(f_ts, l_pp), ratio(b_ts, l_pp),
            share, bshare, fmt(d_ts, "%.1f"), fmt(l_tg, "%.1f"), ratio(d_ts, l_tg), attn))
        for comp, o, p in (("f32", cf, pf), ("bf16", cb, pb)):
            if not p or not p.get("time_s") or "attn_proj_time_s" not in p:
                continue
            nl = (o.get("model") or {}).get("moe_layers") or 0
            tt = p["time_s"]
            ex, ro = p["expert_time_s"] * nl, p["router_time_s"] * nl
            ap, ac = p["attn_proj_time_s"], p["attn_core_time_s"]
            ao = p["attn_time_s"] - ap - ac
            rest = tt - p["attn_time_s"] - ex - ro
            parts.append("| %s | %d | %s | %.1f | %s |" % (
                NAMES.get(model, model), t, comp, 1e3 * tt,
                " | ".join("%.1f (%.0f%%)" % (1e3 * v, 100 * v / tt) for v in (ap, ac, ao, ro, ex, rest))))
        if ma:
            sysj = ma.get("system", {})
            ceil.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s |" % (
                NAMES.get(model, model), t, sysj.get("blas_core", "?"), fmt(sg),
                "%s (%s rows)" % (fmt(sgx), ma.get("sgemm_experts_rows", "?")) if sgx else "–", fmt(p32),
                fmt(ma.get("peak_bf16_dot_gflops")), fmt(ma.get("peak_amx_bf16_gflops")), fmt(ma.get("triad_gbs"), "%.1f")))
    print("| model | threads | prefill 512 tokens, tokens/s: capmoe f32 / capmoe bf16 / llama.cpp | "
          "capmoe / llama.cpp: f32 / bf16 | capmoe f32 prefill GFLOP/s | capmoe bf16 prefill GFLOP/s | "
          "batch-1 decode tokens/s: capmoe / llama.cpp | attention / MoE share of f32 prefill |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(r)
    print()
    print("Ceilings measured in the same runs (GFLOP/s; triad GB/s):")
    print()
    print("| model | threads | OpenBLAS core | sgemm | sgemm at the experts' shapes | FP32 FMA loop | BF16 dot loop | "
          "AMX-BF16 tile loop | triad |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in ceil:
        print(r)
    if parts:
        print()
        print("Where a prefill's time goes (ms per forward of 512 tokens, share of it): attention's q|k|v and o "
              "products, its scores / softmax / weighted sums, the rest of attention (norm, RoPE, cache "
              "writes), the router and dispatch, the experts, and the rest (combine, residual adds, norms, "
              "logits):")
        print()
        print("| model | threads | compute | total | attention products | attention core | attention rest | "
              "router | experts | rest |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in parts:
            print(r)
    sk = os.path.join(res, "skipped.txt")
    if os.path.exists(sk):
        print()
        print("Skipped (time budget): " + "; ".join(l.strip() for l in open(sk) if l.strip()))


if __name__ == "__main__":
    main()
