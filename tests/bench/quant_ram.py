#!/usr/bin/env python3
"""quant_ram.py - weight memory capmoe holds per weight format (--weights
bf16|q8|q4) for real MoE models, from their published shapes (the config.json
values tests/hub/moe_memory.py carries for the hub models, and
tests/data/configs/deepseek-v2-lite for DeepSeek-V2-Lite), with the bytes of
weights read per decoded token (which bound decode speed on a CPU):

    python3 tests/bench/quant_ram.py          # the README table (markdown)

Formats (core/quant.h): bf16 = every weight in 2 bytes (the checkpoint);
q8 = routed experts at 34 bytes per block of 32 weights (int8 + an F16
scale, 8.5 bits), everything else BF16; q4 = routed experts at 20 bytes per
32 (4-bit + F16 scale + F16 minimum, 5 bits), everything else BF16. A tied
lm_head is held twice (the embedding table and its packed copy), as
moe_memory.py counts. KV cache not included. Standard library only."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "hub"))
import moe_memory  # noqa: E402

WANT = ["mistralai/Mixtral-8x7B-v0.1", "Qwen/Qwen3-30B-A3B", "allenai/OLMoE-1B-7B-0924"]
EXPERT_BYTES = {"bf16": 2.0, "q8": 34 / 32, "q4": 20 / 32}


def models():
    out = []
    by = {m["repo"]: m for m in moe_memory.MODELS}
    for r in WANT:
        out.append((r, moe_memory.count(by[r]["config"])))
    cfg = json.load(open(os.path.join(HERE, "..", "data", "configs", "deepseek-v2-lite", "config.json")))
    out.append(("deepseek-ai/DeepSeek-V2-Lite", moe_memory.count(cfg)))
    return out


def sizes(c, fmt):
    routed = c["moe_layers"] * c["experts"] * c["expert"]
    routed_active = c["moe_layers"] * c["top_k"] * c["expert"]
    tied = c["V"] * c["H"] if c["tied"] else 0
    held = (c["total"] - routed + tied) * 2 + routed * EXPERT_BYTES[fmt]
    # read per token: everything active except the embedding row lookups
    read = (c["active"] - c["V"] * c["H"] - routed_active) * 2 + routed_active * EXPERT_BYTES[fmt]
    if c["tied"]:
        read += c["V"] * c["H"] * 2  # the lm_head copy
    return held, read


def main():
    lines = ["| model | parameters (routed experts) | bf16 | q8 | q4 | read per token: bf16 / q8 / q4 |",
             "|---|---:|---:|---:|---:|---:|"]
    for repo, c in models():
        routed = c["moe_layers"] * c["experts"] * c["expert"]
        h = {f: sizes(c, f) for f in ("bf16", "q8", "q4")}
        lines.append("| `%s` | %.1f B (%.1f B) | %.1f GB | %.1f GB | %.1f GB | %.2f / %.2f / %.2f GB |" % (
            repo, c["total"] / 1e9, routed / 1e9, h["bf16"][0] / 1e9, h["q8"][0] / 1e9, h["q4"][0] / 1e9,
            h["bf16"][1] / 1e9, h["q8"][1] / 1e9, h["q4"][1] / 1e9))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
