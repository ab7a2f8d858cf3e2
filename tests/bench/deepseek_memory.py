#!/usr/bin/env python3
"""Memory of a DeepSeek-V2 / DeepSeek-V3 checkpoint as capmoe holds it, from its
config.json alone (standard library only):

    python3 tests/bench/deepseek_memory.py tests/data/configs/deepseek-v2-lite [...]

Per config: parameters (all, in routed experts, read per token), weight bytes
in BF16 as capmoe holds them (the checkpoint's size, plus the second copy of
kv_b_proj that the absorbed form of latent attention reads per head), the
latent KV cache per token (kv_lora_rank + qk_rope_head_dim float32 values per
layer, core/mla.c) against what a cache of every head's keys and values would
take, the cache of a 4096- and a 32768-token sequence, and the weights with
the routed experts stored in 8 or 4 bits (their bytes only: scales and the
other tensors' formats are what the quantization issue decides). The layer
layout follows transformers 5.17: dense layers before first_k_dense_replace,
MoE from there on; the multi-token-prediction layer of DeepSeek-V3 checkpoints
(num_nextn_predict_layers) is not loaded and not counted."""
import json
import os
import sys

V2_DEFAULTS = dict(q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                   v_head_dim=128, n_shared_experts=2, first_k_dense_replace=0, intermediate_size=11008)
V3_DEFAULTS = dict(q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                   v_head_dim=128, n_shared_experts=1, first_k_dense_replace=3, intermediate_size=18432)


def describe(path):
    c = json.load(open(os.path.join(path, "config.json")))
    v3 = c["architectures"][0] == "DeepseekV3ForCausalLM"
    d = dict(V3_DEFAULTS if v3 else V2_DEFAULTS)
    d.update({k: v for k, v in c.items() if v is not None or k == "q_lora_rank"})
    H, L, nH, V = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["vocab_size"]
    E, k, I = c["n_routed_experts"], c["num_experts_per_tok"], c["moe_intermediate_size"]
    ql, kvl = d["q_lora_rank"], d["kv_lora_rank"]
    dn, dr, dv = d["qk_nope_head_dim"], d["qk_rope_head_dim"], d["v_head_dim"]
    qk = dn + dr
    q = (H * ql + ql + ql * nH * qk) if ql else H * nH * qk
    kv_b = nH * (dn + dv) * kvl
    attn = q + H * (kvl + dr) + kvl + kv_b + nH * dv * H + 2 * H  # + the two layer norms
    dense = 3 * H * d["intermediate_size"]
    shared = 3 * H * I * d["n_shared_experts"]
    n_dense = min(d["first_k_dense_replace"], L)
    n_moe = L - n_dense
    experts = n_moe * E * 3 * H * I
    moe_other = n_moe * (E * H + (E if v3 else 0) + shared)
    total = L * attn + n_dense * dense + experts + moe_other + 2 * V * H + H
    active = L * attn + n_dense * dense + n_moe * (k * 3 * H * I + E * H + shared) + V * H
    kv_latent = L * (kvl + dr) * 4
    kv_full = L * nH * (qk + dv) * 4
    bf16 = total * 2
    held = bf16 + L * kv_b * 2
    others = held - experts * 2
    return {
        "config": path, "arch": c["architectures"][0], "parameters": total, "expert_parameters": experts,
        "active_parameters_per_token": active, "bf16_bytes": bf16, "bytes_held_bf16": held,
        "bytes_held_8bit_experts": others + experts, "bytes_held_4bit_experts": others + experts // 2,
        "kv_bytes_per_token": kv_latent, "kv_bytes_per_token_expanded": kv_full,
        "kv_ratio": kv_full / kv_latent,
        "kv_bytes_4096": kv_latent * 4096, "kv_bytes_32768": kv_latent * 32768,
        "kv_bytes_4096_expanded": kv_full * 4096, "kv_bytes_32768_expanded": kv_full * 32768,
    }


def gb(x):
    return "%.2f GB" % (x / 1e9)


def main():
    paths = sys.argv[1:] or ["tests/data/configs/deepseek-v2-lite", "tests/data/configs/deepseek-v3"]
    rows = [describe(p) for p in paths]
    print(json.dumps(rows, indent=1))
    print()
    print("| config | parameters (experts) | active / token | weights held, BF16 | 8-bit / 4-bit experts "
          "| KV / token, latent | every head's K and V | KV at 4K / 32K tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| %s | %.2f B (%.2f B) | %.2f B | %s | %s / %s | %d B | %d B (%.1fx) | %s / %s |" % (
            os.path.basename(r["config"]), r["parameters"] / 1e9, r["expert_parameters"] / 1e9,
            r["active_parameters_per_token"] / 1e9, gb(r["bytes_held_bf16"]),
            gb(r["bytes_held_8bit_experts"]), gb(r["bytes_held_4bit_experts"]), r["kv_bytes_per_token"],
            r["kv_bytes_per_token_expanded"], r["kv_ratio"], gb(r["kv_bytes_4096"]), gb(r["kv_bytes_32768"])))


if __name__ == "__main__":
    main()
