#!/usr/bin/env python3
"""moe_memory.py - memory capmoe needs for popular Mixture-of-Experts models of
the Hugging Face hub, per weight format, from their published config.json.

    python3 tests/hub/moe_memory.py             # the README table (markdown)
    python3 tests/hub/moe_memory.py --json      # the same numbers as JSON
    python3 tests/hub/moe_memory.py --config DIR/config.json [...]
                                                # any checkpoint's config.json

No network: the numbers of each model's config.json that matter (sizes,
layers, heads, experts) are written below as data, with the address of the
file they come from, and the totals its model card publishes, which the
computed counts must match within 2 % (the script fails otherwise).
tests/t_hub_memory.sh also checks the formula against the real parameter
counts of the four test fixtures' safetensors files, exactly.

What capmoe holds in RAM (README, "Dtypes and memory"): every weight once, in
its stored dtype (F32: 4 bytes, BF16 or F16: 2 bytes), plus a packed copy of
a tied lm_head; the KV cache in float32, 2 x layers x kv_heads x head_dim x 4
bytes per token of every live sequence. capmoe loads F32, F16 and BF16
checkpoints; FP8 ones and --weights q8|q4: tests/bench/quant_ram.py. Standard library only.
"""
import argparse
import json
import sys

# The published config.json values (only the keys used here), and the
# model card's total / activated parameter counts in billions.
MODELS = [
    {
        "repo": "mistralai/Mixtral-8x7B-v0.1",
        "source": "https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json",
        "card": {"total_b": 46.7, "active_b": 12.9},
        "config": {"architectures": ["MixtralForCausalLM"], "vocab_size": 32000,
                   "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8,
                   "num_experts_per_tok": 2, "tie_word_embeddings": False,
                   "max_position_embeddings": 32768},
    },
    {
        "repo": "mistralai/Mixtral-8x22B-v0.1",
        "source": "https://huggingface.co/mistralai/Mixtral-8x22B-v0.1/blob/main/config.json",
        "card": {"total_b": 141, "active_b": 39},
        "config": {"architectures": ["MixtralForCausalLM"], "vocab_size": 32000,
                   "hidden_size": 6144, "intermediate_size": 16384, "num_hidden_layers": 56,
                   "num_attention_heads": 48, "num_key_value_heads": 8, "num_local_experts": 8,
                   "num_experts_per_tok": 2, "tie_word_embeddings": False,
                   "max_position_embeddings": 65536},
    },
    {
        "repo": "Qwen/Qwen1.5-MoE-A2.7B",
        "source": "https://huggingface.co/Qwen/Qwen1.5-MoE-A2.7B/blob/main/config.json",
        "card": {"total_b": 14.3, "active_b": 2.7},
        "config": {"architectures": ["Qwen2MoeForCausalLM"], "vocab_size": 151936,
                   "hidden_size": 2048, "intermediate_size": 5632, "moe_intermediate_size": 1408,
                   "shared_expert_intermediate_size": 5632, "num_hidden_layers": 24,
                   "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 60,
                   "num_experts_per_tok": 4, "decoder_sparse_step": 1, "mlp_only_layers": [],
                   "tie_word_embeddings": False, "max_position_embeddings": 8192},
    },
    {
        "repo": "Qwen/Qwen2-57B-A14B",
        "source": "https://huggingface.co/Qwen/Qwen2-57B-A14B/blob/main/config.json",
        "card": {"total_b": 57.4, "active_b": 14},
        "config": {"architectures": ["Qwen2MoeForCausalLM"], "vocab_size": 151936,
                   "hidden_size": 3584, "intermediate_size": 18944, "moe_intermediate_size": 2560,
                   "shared_expert_intermediate_size": 20480, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "num_experts": 64,
                   "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [],
                   "tie_word_embeddings": False, "max_position_embeddings": 131072},
    },
    {
        "repo": "allenai/OLMoE-1B-7B-0924",
        "source": "https://huggingface.co/allenai/OLMoE-1B-7B-0924/blob/main/config.json",
        "card": {"total_b": 6.9, "active_b": 1.3},
        "config": {"architectures": ["OlmoeForCausalLM"], "vocab_size": 50304,
                   "hidden_size": 2048, "intermediate_size": 1024, "num_hidden_layers": 16,
                   "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 64,
                   "num_experts_per_tok": 8, "tie_word_embeddings": False,
                   "max_position_embeddings": 4096},
    },
    {
        "repo": "Qwen/Qwen3-30B-A3B",
        "source": "https://huggingface.co/Qwen/Qwen3-30B-A3B/blob/main/config.json",
        "card": {"total_b": 30.5, "active_b": 3.3},
        "config": {"architectures": ["Qwen3MoeForCausalLM"], "vocab_size": 151936,
                   "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
                   "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
                   "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
                   "decoder_sparse_step": 1, "mlp_only_layers": [], "tie_word_embeddings": False,
                   "max_position_embeddings": 40960},
    },
    {
        "repo": "Qwen/Qwen3-235B-A22B",
        "source": "https://huggingface.co/Qwen/Qwen3-235B-A22B/blob/main/config.json",
        "card": {"total_b": 235, "active_b": 22},
        "config": {"architectures": ["Qwen3MoeForCausalLM"], "vocab_size": 151936,
                   "hidden_size": 4096, "intermediate_size": 12288, "moe_intermediate_size": 1536,
                   "num_hidden_layers": 94, "num_attention_heads": 64, "num_key_value_heads": 4,
                   "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
                   "decoder_sparse_step": 1, "mlp_only_layers": [], "tie_word_embeddings": False,
                   "max_position_embeddings": 40960},
    },
]

ARCHS = {"MixtralForCausalLM", "Qwen2MoeForCausalLM", "OlmoeForCausalLM", "Qwen3MoeForCausalLM",
         "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"}


def count_deepseek(cfg, arch):
    """DeepSeek-V2 / V3: Multi-head Latent Attention, first_k_dense_replace
    dense layers, shared experts (one MLP of n_shared_experts x the expert
    width), V3's per-expert selection bias; the KV cache holds the latent and
    the rotary key per token and layer."""
    V, H, L = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
    nh = cfg["num_attention_heads"]
    qr, kvr = cfg.get("q_lora_rank"), cfg["kv_lora_rank"]
    nope, rope, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    bias = bool(cfg.get("attention_bias"))
    E, k = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    I_moe, I_dense = cfg["moe_intermediate_size"], cfg["intermediate_size"]
    qd = nh * (nope + rope)
    if qr:  # q_a_proj, q_a_layernorm, q_b_proj
        attn = H * qr + (qr if bias else 0) + qr + qr * qd
    else:   # q_proj
        attn = H * qd
    attn += H * (kvr + rope) + ((kvr + rope) if bias else 0)  # kv_a_proj_with_mqa
    attn += kvr + kvr * nh * (nope + vd)                      # kv_a_layernorm, kv_b_proj
    attn += nh * vd * H + (H if bias else 0)                  # o_proj
    norms = 2 * H
    expert = 3 * H * I_moe
    moe = E * expert + E * H                                  # experts + router
    moe += (cfg.get("n_shared_experts") or 0) * expert        # shared experts
    if arch == "DeepseekV3ForCausalLM":
        moe += E                                              # e_score_correction_bias
    dense = 3 * H * I_dense
    first_dense = cfg.get("first_k_dense_replace") or 0
    total = V * H + H + (0 if cfg.get("tie_word_embeddings", False) else V * H)
    moe_layers = 0
    for i in range(L):
        is_moe = i >= first_dense
        total += attn + norms + (moe if is_moe else dense)
        moe_layers += is_moe
    active = total - moe_layers * (E - k) * expert
    return {"arch": arch, "total": total, "active": active, "expert": expert,
            "experts": E, "top_k": k, "layers": L, "moe_layers": moe_layers,
            "tied": bool(cfg.get("tie_word_embeddings", False)), "V": V, "H": H,
            "kv_bytes_per_token": L * (kvr + rope) * 4,
            "context": cfg.get("max_position_embeddings", 0)}


def count(cfg):
    """Parameters of a checkpoint of one of capmoe's architectures, as
    its safetensors hold them: {total, active, expert (one expert of one
    layer), moe_layers, layers, kv_bytes_per_token (float32 KV cache)}."""
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in ARCHS:
        raise ValueError("architecture %s is not one capmoe serves" % arch)
    if arch.startswith("Deepseek"):
        return count_deepseek(cfg, arch)
    V, H, L = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or H // nh
    E = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    k = cfg["num_experts_per_tok"]
    qwen = arch in ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")
    I_moe = cfg["moe_intermediate_size"] if qwen else cfg["intermediate_size"]
    I_dense = cfg.get("intermediate_size", 0)
    step = cfg.get("decoder_sparse_step") or 1
    dense_layers = set(cfg.get("mlp_only_layers") or [])

    attn = H * nh * hd + 2 * H * nkv * hd + nh * hd * H          # q, k, v, o
    if arch == "Qwen2MoeForCausalLM":
        attn += nh * hd + 2 * nkv * hd                          # q, k, v biases
    if arch == "Qwen3MoeForCausalLM":
        attn += 2 * hd                                          # per-head q / k RMSNorm
    if arch == "OlmoeForCausalLM":
        attn += nh * hd + nkv * hd                              # q / k RMSNorm over the projection
    norms = 2 * H                                               # input + post-attention RMSNorm
    expert = 3 * H * I_moe                                      # gate, up, down
    moe = E * expert + E * H                                    # experts + router
    if arch == "Qwen2MoeForCausalLM" and cfg.get("shared_expert_intermediate_size"):
        moe += 3 * H * cfg["shared_expert_intermediate_size"] + H   # shared expert + its gate
    dense = 3 * H * I_dense

    total = V * H + H                                           # embedding, final norm
    if not cfg.get("tie_word_embeddings", False):
        total += V * H                                          # lm_head
    moe_layers = 0
    for i in range(L):
        is_moe = E > 0 and i not in dense_layers and (i + 1) % step == 0 if qwen else E > 0
        total += attn + norms + (moe if is_moe else dense)
        moe_layers += is_moe
    active = total - moe_layers * (E - k) * expert
    return {"arch": arch, "total": total, "active": active, "expert": expert,
            "experts": E, "top_k": k, "layers": L, "moe_layers": moe_layers,
            "tied": bool(cfg.get("tie_word_embeddings", False)), "V": V, "H": H,
            "kv_bytes_per_token": 2 * L * nkv * hd * 4,
            "context": cfg.get("max_position_embeddings", 0)}


def memory(c, bytes_per_weight):
    """Bytes of weights capmoe holds: each weight once in its dtype, plus the
    packed copy of a tied lm_head."""
    return c["total"] * bytes_per_weight + (c["V"] * c["H"] * bytes_per_weight if c["tied"] else 0)


def rows():
    out = []
    for m in MODELS:
        c = count(m["config"])
        for key, pub in (("total", m["card"]["total_b"]), ("active", m["card"]["active_b"])):
            got = c[key] / 1e9
            if abs(got - pub) > 0.02 * pub + 0.05:
                raise SystemExit("%s: computed %s %.2f B, the model card says %s B"
                                 % (m["repo"], key, got, pub))
        out.append(dict(m, counts=c))
    return out


def table(rs):
    lines = [
        "| model (hub id) | architecture | parameters | active per token | experts (top-k) "
        "| BF16 / F16 weights | F32 weights | KV cache per 1,000 tokens |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rs:
        c = r["counts"]
        lines.append("| `%s` | %s | %.1f B | %.1f B | %d (%d) | %.1f GB | %.1f GB | %.0f MB |" % (
            r["repo"], c["arch"].replace("ForCausalLM", ""), c["total"] / 1e9, c["active"] / 1e9,
            c["experts"], c["top_k"], memory(c, 2) / 1e9, memory(c, 4) / 1e9,
            c["kv_bytes_per_token"] * 1000 / 1e6))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    ap.add_argument("--config", nargs="*", default=None,
                    help="count these config.json files instead of the built-in list")
    a = ap.parse_args()
    if a.config is not None:
        res = {}
        for path in a.config:
            with open(path, encoding="utf-8") as fh:
                res[path] = count(json.load(fh))
        print(json.dumps(res, indent=1))
        return 0
    rs = rows()
    if a.json:
        print(json.dumps([{"repo": r["repo"], "source": r["source"], **r["counts"]} for r in rs],
                         indent=1))
    else:
        print(table(rs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
