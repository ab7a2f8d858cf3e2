#!/usr/bin/env python3
"""Makes the reference fixtures of tests/data/reference/ with the official
libraries (torch, transformers 5.x, safetensors), so that core/safetensors.c
and core/hfconfig.c are checked against what Hugging Face itself writes and
reads. Needs those packages (the GPU machine has them; no network needed):

    python3 tests/data/gen_reference.py OUTDIR [SAMPLE_CONFIG_DIR]

OUTDIR receives:
  format.safetensors      every dtype kind, scalar, empty tensor, specials,
                          written by safetensors.torch.save_file
  format.json             per tensor: dtype, shape, and for floats every value
                          (float.hex strings, read back by safe_open)
  olmoe-tiny/             OlmoeForCausalLM, random bf16 weights, sharded by
                          save_pretrained (index + shards)
  qwen3moe-tiny/          Qwen3MoeForCausalLM, random f16 weights, one file
  models.json             per tensor of those: dtype, shape, file, sum and
                          abssum (float64), first 8 values (hex)
  configs/NAME/config.json configs written by transformers' save_pretrained
  configs.json            per config (these and SAMPLE_CONFIG_DIR's): the
                          values transformers itself derives, from the config
                          object and from the modules of a model built on the
                          meta device (MoE layers, biases, q/k norm shape)
"""
import json
import os
import sys

import safetensors
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (AutoConfig, AutoModelForCausalLM, MixtralConfig, OlmoeConfig,
                          Qwen2MoeConfig, Qwen3MoeConfig)

out = sys.argv[1]
samples = sys.argv[2] if len(sys.argv) > 2 else None
os.makedirs(out, exist_ok=True)
torch.manual_seed(1234)


def hexs(t):
    return [float(x).hex() for x in t.double().flatten().tolist()]


# ---------- 1. format fixture ----------
fmt = {
    "f32": torch.randn(3, 5),
    "f16.special": torch.tensor([1.0, -2.0, 65504.0, 6e-8, 1e-5, float("inf"), float("-inf"),
                                 float("nan"), -0.0], dtype=torch.float16),
    "bf16.special": torch.tensor([1.0, -3.0, 0.1, 1e30, -1e-30, float("inf"), float("nan"),
                                  3.0e38], dtype=torch.bfloat16),
    "f16.rand": (torch.randn(4, 3) * 10).half(),
    "bf16.rand": (torch.randn(2, 3, 2)).bfloat16(),
    "i64": torch.tensor([1, -2, 3, 1 << 40]),
    "i32": torch.tensor([7, 8, 9], dtype=torch.int32),
    "bool": torch.tensor([True, False, True]),
    "u8": torch.tensor([1, 2, 3, 4, 5], dtype=torch.uint8),
    "f64": torch.tensor([1.5, -2.25], dtype=torch.float64),
    "scalar": torch.tensor(42.5),
    "empty": torch.zeros(0, 4),
    "name with spaces/and \u00fcnic\u00f8de": torch.tensor([2.0]),
}
if hasattr(torch, "float8_e4m3fn"):
    fmt["f8"] = torch.tensor([0.5, -1.0, 2.0, 448.0]).to(torch.float8_e4m3fn)
path = os.path.join(out, "format.safetensors")
save_file(fmt, path, metadata={"format": "pt"})
desc = {}
with safe_open(path, "pt") as f:
    for k in f.keys():
        t = f.get_tensor(k)
        sl = f.get_slice(k)
        d = {"dtype": sl.get_dtype(), "shape": list(t.shape)}
        if t.dtype in (torch.float32, torch.float16, torch.bfloat16):
            d["values"] = hexs(t)
        desc[k] = d
json.dump(desc, open(os.path.join(out, "format.json"), "w"), indent=1, sort_keys=True)

# ---------- 2. configs: what transformers derives ----------


def describe(cfg):
    arch = cfg.architectures[0] if getattr(cfg, "architectures", None) else type(cfg).__name__
    rp = getattr(cfg, "rope_parameters", None) or {}
    theta = rp.get("rope_theta", getattr(cfg, "rope_theta", None))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    layers = model.model.layers
    attn = layers[0].self_attn
    head_dim = getattr(attn, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    qk = "none"
    if getattr(attn, "q_norm", None) is not None:
        n = attn.q_norm.weight.numel()
        qk = "head" if n == head_dim else ("full" if n == head_dim * cfg.num_attention_heads
                                           else "?%d" % n)
    mlps = [getattr(l, "mlp", None) or getattr(l, "block_sparse_moe") for l in layers]
    moe = [int(hasattr(m, "experts")) for m in mlps]
    shared = 0
    for m in mlps:
        se = getattr(m, "shared_expert", None)
        if se is not None:
            shared = se.gate_proj.out_features
    is_mixtral = "Mixtral" in arch
    eos = cfg.eos_token_id
    eos = [] if eos is None else (list(eos) if isinstance(eos, (list, tuple)) else [eos])
    dt = getattr(cfg, "dtype", None)
    return {
        "arch": arch,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "n_layers": cfg.num_hidden_layers,
        "n_heads": cfg.num_attention_heads,
        "n_kv_heads": attn.k_proj.out_features // head_dim,
        "head_dim": head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "intermediate_size": cfg.intermediate_size,
        "moe_intermediate_size": cfg.intermediate_size if ("Mixtral" in arch or "Olmoe" in arch)
        else cfg.moe_intermediate_size,
        "n_experts": cfg.num_local_experts if is_mixtral else cfg.num_experts,
        "top_k": cfg.num_experts_per_tok,
        "shared_expert_intermediate_size": shared,
        "norm_topk_prob": int(getattr(cfg, "norm_topk_prob", True)),
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": theta,
        "rope_type": rp.get("rope_type", "default"),
        "sliding_window": (cfg.sliding_window or 0) if is_mixtral else 0,
        "tie_word_embeddings": int(bool(cfg.tie_word_embeddings)),
        "qkv_bias": int(attn.q_proj.bias is not None),
        "k_bias": int(attn.k_proj.bias is not None),
        "o_bias": int(attn.o_proj.bias is not None),
        "qk_norm": qk,
        "layer_is_moe": moe,
        "bos_token_id": -1 if cfg.bos_token_id is None else cfg.bos_token_id,
        "eos_token_id": eos,
        "dtype": str(dt).replace("torch.", "") if dt is not None else None,
    }


configs = {
    "mixtral-default": MixtralConfig(),
    "qwen2moe-default": Qwen2MoeConfig(),
    "olmoe-default": OlmoeConfig(),
    "qwen3moe-default": Qwen3MoeConfig(),
    "mixtral-tiny": MixtralConfig(vocab_size=40, hidden_size=16, intermediate_size=12,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, num_local_experts=4,
                                  num_experts_per_tok=2, sliding_window=64,
                                  tie_word_embeddings=True,
                                  rope_parameters={"rope_type": "default",
                                                   "rope_theta": 500000.0}),
    "qwen2moe-tiny": Qwen2MoeConfig(vocab_size=40, hidden_size=16, intermediate_size=20,
                                    num_hidden_layers=5, num_attention_heads=4,
                                    num_key_value_heads=2, num_experts=6, num_experts_per_tok=3,
                                    moe_intermediate_size=8, shared_expert_intermediate_size=10,
                                    decoder_sparse_step=2, mlp_only_layers=[3],
                                    norm_topk_prob=True, eos_token_id=[3, 5], bos_token_id=2),
    "olmoe-tiny": OlmoeConfig(vocab_size=40, hidden_size=16, intermediate_size=8,
                              num_hidden_layers=2, num_attention_heads=2, num_experts=4,
                              num_experts_per_tok=2, attention_bias=True, eos_token_id=1,
                              pad_token_id=0),
    "qwen3moe-tiny": Qwen3MoeConfig(vocab_size=40, hidden_size=16, intermediate_size=24,
                                    num_hidden_layers=3, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=6, num_experts=5,
                                    num_experts_per_tok=2, moe_intermediate_size=8,
                                    mlp_only_layers=[0], norm_topk_prob=True,
                                    rms_norm_eps=1e-5),
}
expected = {}
for name, cfg in configs.items():
    d = os.path.join(out, "configs", name)
    cfg.save_pretrained(d)
    reread = AutoConfig.from_pretrained(d)
    expected["reference/configs/" + name] = describe(reread)
if samples:
    for name in sorted(os.listdir(samples)):
        d = os.path.join(samples, name)
        if os.path.isfile(os.path.join(d, "config.json")):
            expected["configs/" + name] = describe(AutoConfig.from_pretrained(d))

# ---------- 3. tiny checkpoints ----------


def dump_model(name, cfg, dtype, **save_kw):
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_config(cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    d = os.path.join(out, name)
    model.save_pretrained(d, **save_kw)
    res = {}
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    for fn in files:
        with safe_open(os.path.join(d, fn), "pt") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                v = t.double().flatten()
                res[k] = {"file": fn, "dtype": f.get_slice(k).get_dtype(),
                          "shape": list(t.shape), "sum": float(v.sum()).hex(),
                          "abssum": float(v.abs().sum()).hex(), "first": hexs(v[:8])}
    return res


models = {
    "olmoe-tiny": dump_model("olmoe-tiny", configs["olmoe-tiny"], torch.bfloat16,
                             max_shard_size="6KB"),
    "qwen3moe-tiny": dump_model("qwen3moe-tiny", configs["qwen3moe-tiny"], torch.float16),
}
for name in models:
    expected["reference/" + name] = describe(AutoConfig.from_pretrained(os.path.join(out, name)))
json.dump(models, open(os.path.join(out, "models.json"), "w"), indent=1, sort_keys=True)
json.dump(expected, open(os.path.join(out, "configs.json"), "w"), indent=1, sort_keys=True)
json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
           "safetensors": safetensors.__version__},
          open(os.path.join(out, "versions.json"), "w"), indent=1)
print("ok", {k: len(v) for k, v in models.items()}, len(expected), "configs")
