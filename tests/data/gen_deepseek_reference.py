#!/usr/bin/env python3
"""What transformers 5.x derives from DeepSeek-V2 / DeepSeek-V3 config.json files,
for tests/check_hfconfig.c and tests/check_mla.c (core/hfconfig.c, core/rope.c).
Needs torch + transformers (the GPU machine has them; no network, no GPU use):

    python3 tests/data/gen_deepseek_reference.py OUTDIR CONFIG_DIR...

For every CONFIG_DIR (a directory holding a hub config.json) it writes
OUTDIR/configs/<basename>-tf5/config.json (the same config saved by
transformers' save_pretrained: the newer layout) and records, for the hub file
and for the re-saved one, in OUTDIR/deepseek_configs.json:
  - the sizes transformers reads (config object) and the shapes of the
    attention projections of a model built on the meta device (q_proj or
    q_a_proj / q_b_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj, their biases),
    the epsilon of the latent RMSNorms, the softmax scale of attention,
  - per layer whether it is an MoE layer, the shared experts' width,
  - the router settings the MoE block reads,
  - the rotary embedding: rope type, theta, the inv_freq buffer (float32, as
    float.hex strings) and attention_scaling of the model's rotary module
    built on the CPU, and rope_interleave.
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def hexs(t):
    return [float(x).hex() for x in t.double().flatten().tolist()]


def rotary_of(cfg):
    mt = cfg.model_type
    mod = __import__("transformers.models.%s.modeling_%s" % (mt, mt), fromlist=["x"])
    cls = [getattr(mod, n) for n in dir(mod) if n.endswith("RotaryEmbedding")][0]
    rot = cls(config=cfg, device="cpu")
    return rot


def describe(cfg):
    arch = cfg.architectures[0] if getattr(cfg, "architectures", None) else type(cfg).__name__
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    layers = model.model.layers
    attn = layers[0].self_attn
    d = {"arch": arch, "model_type": cfg.model_type, "transformers": transformers.__version__}
    for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "intermediate_size",
              "moe_intermediate_size", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
              "first_k_dense_replace", "moe_layer_freq", "routed_scaling_factor", "norm_topk_prob",
              "topk_method", "n_group", "topk_group", "scoring_func", "q_lora_rank", "kv_lora_rank",
              "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "rms_norm_eps",
              "tie_word_embeddings", "attention_bias", "rope_interleave", "bos_token_id",
              "eos_token_id", "head_dim"):
        v = getattr(cfg, k, "(absent)")
        if isinstance(v, torch.dtype):
            v = str(v)
        d[k] = v
    dt = getattr(cfg, "dtype", None)
    d["dtype"] = str(dt).replace("torch.", "") if dt is not None else None
    rp = getattr(cfg, "rope_parameters", None)
    d["rope_parameters"] = dict(rp) if isinstance(rp, dict) else rp
    sh = {}
    for n in ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"):
        m = getattr(attn, n, None)
        if m is not None:
            sh[n] = {"out": m.out_features, "in": m.in_features, "bias": m.bias is not None}
    d["attn"] = sh
    d["attn_scaling"] = float(attn.scaling)
    d["kv_a_layernorm_eps"] = float(attn.kv_a_layernorm.variance_epsilon)
    qn = getattr(attn, "q_a_layernorm", None)
    d["q_a_layernorm_eps"] = float(qn.variance_epsilon) if qn is not None else None
    moe, shared, dense_width, expert_width = [], 0, None, None
    for layer in layers:
        m = layer.mlp
        is_moe = hasattr(m, "experts")
        moe.append(int(is_moe))
        if is_moe:
            se = getattr(m, "shared_experts", None)
            if se is not None:
                shared = se.gate_proj.out_features
            ex = m.experts
            if hasattr(ex, "gate_up_proj"):
                expert_width = ex.gate_up_proj.shape[1] // 2
            else:
                expert_width = ex[0].gate_proj.out_features
            gate = m.gate
            d["router_weight"] = list(gate.weight.shape)
            b = getattr(gate, "e_score_correction_bias", None)
            d["router_bias"] = list(b.shape) if b is not None else None
        elif dense_width is None:
            dense_width = m.gate_proj.out_features
    d["layer_is_moe"] = moe
    d["shared_width"] = shared
    d["dense_width"] = dense_width
    d["expert_width"] = expert_width
    rot = rotary_of(cfg)
    d["rope_type"] = getattr(rot, "rope_type", None)
    d["inv_freq"] = hexs(rot.inv_freq.float())
    d["attention_scaling"] = float(rot.attention_scaling)
    return d


def main():
    out = sys.argv[1]
    os.makedirs(os.path.join(out, "configs"), exist_ok=True)
    res = {}
    for src in sys.argv[2:]:
        name = os.path.basename(os.path.normpath(src))
        try:
            cfg = AutoConfig.from_pretrained(src)
            res["configs/" + name] = describe(cfg)
            tf5 = os.path.join(out, "configs", name + "-tf5")
            cfg.save_pretrained(tf5)
            res["configs/" + name + "-tf5"] = describe(AutoConfig.from_pretrained(tf5))
            print("ok", name)
        except Exception as e:  # recorded: what transformers does with the file
            res["configs/" + name] = {"error": "%s: %s" % (type(e).__name__, e)}
            print("error", name, type(e).__name__, e)
    with open(os.path.join(out, "deepseek_configs.json"), "w") as f:
        json.dump(res, f, indent=1, sort_keys=True, default=str)


if __name__ == "__main__":
    main()
