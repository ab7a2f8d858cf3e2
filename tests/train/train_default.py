#!/usr/bin/env python3
"""Trains capmoe's default model: a small Mixtral (8 experts, top-2) with a
byte-level BPE tokenizer, from scratch, and writes it in Hugging Face hub
layout (config.json, model.safetensors in BF16, tokenizer.json,
tokenizer_config.json with a ChatML chat template, generation_config.json)
plus train_report.json.

Reproduce config/model (one GPU; the shipped model was trained on one H200
with torch 2.11, transformers 5.17, tokenizers 0.23; the report records the
versions and the exact command):

    tests/train/prepare_data.sh                 # corpus -> tests/train/data/
    python3 tests/train/train_default.py --out OUTDIR \
        --variants <epochs:dropout of the chosen variant> --steps <its steps>

(train_report.json's "reproduce" gives these two values.) Without --steps
the script trains each variant of --variants (default 6:0.05,12:0.1,24:0.15)
in turn, each as many steps as its epochs need, capped so that all of them fit
in --train-seconds, and keeps the checkpoint with the lowest validation loss.
Everything is seeded (--seed, default 1234): model init, batch sampling and
dropout; GPU kernels with atomics (index_add_ in the expert combine) make runs
equal to about 1e-6, not bit for bit.

Pipeline
  1. Tokenizer: BPE trained with HF tokenizers on the train split (special
     token strings removed), vocab --vocab (8192) including <|endoftext|> (0),
     <|im_start|> (1), <|im_end|> (2); ByteLevel(add_prefix_space=False,
     use_regex=True) pre-tokenizer (GPT-2 regex), ByteLevel decoder and
     post-processor, no normalizer.
  2. Data: each split file is documents separated by the literal
     "<|endoftext|>", which the tokenizer maps to id 0; training samples
     random windows of --seq+1 tokens from the train stream.
  3. Model: transformers MixtralConfig/MixtralForCausalLM (fp32 master
     weights, bf16 autocast, AdamW, warmup + cosine), next-token loss plus
     --aux-coef times the load-balancing loss of the Switch Transformer
     (per MoE layer: E * sum_e f_e * P_e, f_e = share of the routed
     (token, expert) pairs that went to expert e, P_e = mean router
     probability of e; 1.0 when balanced; averaged over layers). It is computed
     here from the router weights (not transformers' aux_loss, whose 5.x
     routers returned softmaxed "logits" to a function that applies softmax
     again: huggingface/transformers#45120). Residual dropout (attention and
     MoE outputs) by forward hooks.
  4. Export: save_pretrained in bf16; the weight names are checked against
     the hub layout (model.layers.N.block_sparse_moe.experts.E.w1/w2/w3) and
     converted when transformers writes fused experts. Checks: reload with
     from_pretrained, an independent fp32 forward written here from the
     safetensors names, tokenizer and chat template through AutoTokenizer.
  5. Report: held-out perplexity in fp32 with the exported (bf16) weights,
     no capacity limit, on tests/train/heldout.txt tokenized as one text and
     cut into consecutive, non-overlapping windows of --seq tokens (each
     window scored from its own start, first token unscored); per-expert
     routing load on the held-out text; greedy reference continuations.

--dry-run runs every stage with tiny sizes and a few steps (for checking the
script on the GPU machine before the real run).
"""
import argparse
import gzip
import hashlib
import json
import math
import os
import shutil
import sys
import time
import traceback

EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIALS = [EOT, IM_START, IM_END]
CHAT_TEMPLATE = (r"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                 r"message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
                 r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
REF_PROMPTS = ["In the beginning",
               "The state of the Union is",
               "ABSURDITY, n.",
               IM_START + "user\nWhat does \"river\" mean?" + IM_END + "\n" + IM_START + "assistant\n"]

T0 = time.time()


def log(*a):
    print("[%7.1fs]" % (time.time() - T0), *a, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="train capmoe's default MoE model",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (hub layout + train_report.json)")
    p.add_argument("--data", default="tests/train/data", help="folder with train.txt.gz, valid.txt.gz")
    p.add_argument("--heldout", default="tests/train/heldout.txt")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, a few steps, all stages")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--intermediate", type=int, default=320, help="per expert")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--max-pos", type=int, default=1024)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--aux-coef", type=float, default=0.02)
    p.add_argument("--variants", default="6:0.05,12:0.1,24:0.15",
                   help="comma list of EPOCHS:DROPOUT, trained in order; lowest valid loss wins")
    p.add_argument("--steps", type=int, default=0, help="fixed step count (one variant; no time cap)")
    p.add_argument("--train-seconds", type=float, default=330.0, help="time for all variants")
    p.add_argument("--deadline", type=float, default=0.0,
                   help="unix time by which the script must have finished (0: none)")
    p.add_argument("--reserve", type=float, default=100.0,
                   help="seconds kept before --deadline for export, checks and evaluation")
    p.add_argument("--experts-impl", default="auto",
                   help="auto (fastest that works of grouped_mm, batched_mm, eager) or one of them")
    a = p.parse_args(argv)
    if a.dry_run:
        a.vocab, a.hidden, a.layers, a.heads, a.kv_heads, a.head_dim = 512, 64, 2, 4, 2, 16
        a.intermediate, a.experts, a.seq, a.batch, a.max_pos = 96, 8, 64, 8, 128
        a.warmup = 5
        if not a.steps:
            a.steps = 30
        if a.variants == p.get_default("variants"):
            a.variants = "1:0.1"
        a.train_seconds = min(a.train_seconds, 20.0)
        a.reserve = min(a.reserve, 60.0)
    a.variant_list = []
    for v in a.variants.split(","):
        e, d = v.split(":")
        a.variant_list.append((float(e), float(d)))
    if a.steps and len(a.variant_list) != 1:
        p.error("--steps needs exactly one --variants entry")
    return a


# ------------------------------------------------------------------ data
def read_split(path, limit_bytes=0):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    text = raw.decode("utf-8")
    docs = text.split(EOT)
    if docs and docs[-1] == "":
        docs.pop()
    if limit_bytes:
        out, n = [], 0
        for d in docs:
            if n >= limit_bytes:
                break
            out.append(d)
            n += len(d)
        docs = out
    return docs, hashlib.sha256(raw).hexdigest()


def train_tokenizer(docs, vocab):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def it():
        for d in docs:
            for s in SPECIALS:
                d = d.replace(s, "\n")
            yield d
    tok.train_from_iterator(it(), trainer=trainer, length=len(docs))
    for i, s in enumerate(SPECIALS):
        if tok.token_to_id(s) != i:
            raise RuntimeError("special token %s has id %s, expected %d" % (s, tok.token_to_id(s), i))
    probe = tok.encode("a" + IM_START + "b" + IM_END + EOT, add_special_tokens=False).ids
    if probe.count(1) != 1 or probe[-2:] != [2, 0]:
        raise RuntimeError("special tokens are not matched in text: %r" % probe)
    return tok


def encode_docs(tok, docs):
    """ids of docs, each followed by <|endoftext|> (id 0)."""
    enc = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
    out = []
    for e in enc(docs, add_special_tokens=False):
        out.extend(e.ids)
        out.append(0)
    return out


# ------------------------------------------------------------------ model helpers
def make_config(a, vocab):
    from transformers import MixtralConfig
    kw = dict(vocab_size=vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
              num_hidden_layers=a.layers, num_attention_heads=a.heads,
              num_key_value_heads=a.kv_heads, head_dim=a.head_dim, hidden_act="silu",
              max_position_embeddings=a.max_pos, initializer_range=0.02, rms_norm_eps=1e-5,
              use_cache=True, bos_token_id=0, eos_token_id=[0, 2], pad_token_id=None,
              tie_word_embeddings=True, sliding_window=None, attention_dropout=0.0,
              num_experts_per_tok=a.top_k, num_local_experts=a.experts,
              output_router_logits=False, router_aux_loss_coef=a.aux_coef,
              router_jitter_noise=0.0)
    try:
        cfg = MixtralConfig(rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta}, **kw)
    except TypeError:
        cfg = MixtralConfig(rope_theta=a.rope_theta, **kw)
    return cfg


def moe_blocks(model):
    """[(layer_index, moe_module, gate_module)] of a MixtralForCausalLM."""
    out = []
    for i, layer in enumerate(model.model.layers):
        moe = getattr(layer, "block_sparse_moe", None)
        if moe is None:
            moe = getattr(layer, "mlp", None)
        gate = getattr(moe, "gate", None) if moe is not None else None
        if gate is None or not hasattr(gate, "weight"):
            raise RuntimeError("layer %d: no MoE block with a gate.weight found" % i)
        out.append((i, moe, gate))
    return out


class Hooks:
    """Captures raw router logits (recomputed from the gate's input and
    weight) and applies residual dropout in training."""

    def __init__(self, model, n_experts, dropout=0.0):
        import torch.nn.functional as F
        self.F = F
        self.capture = False
        self.logits = []
        self.dropout = dropout
        self.handles = []
        self.gate_params = set()
        for i, moe, gate in moe_blocks(model):
            if tuple(gate.weight.shape)[0] != n_experts:
                raise RuntimeError("layer %d: gate.weight shape %s" % (i, tuple(gate.weight.shape)))
            self.gate_params.add(id(gate.weight))
            self.handles.append(gate.register_forward_hook(self._gate_hook, with_kwargs=True))
            self.handles.append(moe.register_forward_hook(self._drop_hook))
            self.handles.append(model.model.layers[i].self_attn.register_forward_hook(self._drop_hook))

    def _gate_hook(self, module, args, kwargs, output):
        if self.capture:
            x = args[0] if args else kwargs["hidden_states"]
            x = x.reshape(-1, x.shape[-1])
            self.logits.append(self.F.linear(x, module.weight))
        return None

    def _drop_hook(self, module, args, output):
        if not (module.training and self.dropout > 0):
            return None
        if isinstance(output, tuple):
            return (self.F.dropout(output[0], self.dropout, True),) + tuple(output[1:])
        return self.F.dropout(output, self.dropout, True)

    def remove(self):
        for h in self.handles:
            h.remove()


def aux_loss(logits_list, k):
    """Switch-Transformer load-balancing loss, per layer, averaged; 1.0 = balanced."""
    import torch
    tot = 0.0
    for lg in logits_list:
        lg = lg.float()
        e = lg.shape[-1]
        probs = torch.softmax(lg, dim=-1)
        idx = torch.topk(lg, k, dim=-1).indices
        f = torch.zeros(e, device=lg.device).scatter_add_(
            0, idx.reshape(-1), torch.ones(idx.numel(), device=lg.device)) / idx.numel()
        tot = tot + e * torch.sum(f * probs.mean(0))
    return tot / len(logits_list)


def set_experts_impl(model, impl):
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation(impl)
    else:
        model.config._experts_implementation = impl


def param_counts(model, a, vocab):
    total = sum(p.numel() for p in model.parameters())  # tied weights counted once
    per_expert = 3 * a.hidden * a.intermediate
    inactive = (a.experts - a.top_k) * per_expert * a.layers
    return {"total": total, "per_expert": per_expert, "active_per_token": total - inactive,
            "embedding": vocab * a.hidden}


# ------------------------------------------------------------------ hub layout
def hub_names(cfg):
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    for l in range(cfg.num_hidden_layers):
        p = "model.layers.%d." % l
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight",
                  p + "block_sparse_moe.gate.weight"}
        names |= {p + "self_attn.%s_proj.weight" % x for x in "qkvo"}
        for e in range(cfg.num_local_experts):
            names |= {p + "block_sparse_moe.experts.%d.%s.weight" % (e, w) for w in ("w1", "w2", "w3")}
    if not cfg.tie_word_embeddings:
        names.add("lm_head.weight")
    return names


def to_hub_layout(sd, cfg, swap_gate_up=False):
    """state dict (fused or per-expert experts, 'mlp' or 'block_sparse_moe')
    -> {hub name: tensor}."""
    H, I, E = cfg.hidden_size, cfg.intermediate_size, cfg.num_local_experts
    out = {}
    for k, v in sd.items():
        if k == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        k2 = k.replace(".mlp.", ".block_sparse_moe.")
        if k2.endswith("experts.gate_up_proj"):
            base = k2[:-len("gate_up_proj")]
            if tuple(v.shape) == (E, H, 2 * I):
                v = v.transpose(1, 2)
            if tuple(v.shape) != (E, 2 * I, H):
                raise RuntimeError("%s: unexpected shape %s" % (k, tuple(v.shape)))
            g, u = v[:, :I, :], v[:, I:, :]
            if swap_gate_up:
                g, u = u, g
            for e in range(E):
                out[base + "%d.w1.weight" % e] = g[e].contiguous()
                out[base + "%d.w3.weight" % e] = u[e].contiguous()
        elif k2.endswith("experts.down_proj"):
            base = k2[:-len("down_proj")]
            if tuple(v.shape) == (E, I, H):
                v = v.transpose(1, 2)
            if tuple(v.shape) != (E, H, I):
                raise RuntimeError("%s: unexpected shape %s" % (k, tuple(v.shape)))
            for e in range(E):
                out[base + "%d.w2.weight" % e] = v[e].contiguous()
        else:
            out[k2] = v.contiguous()
    return out


def ref_forward(T, cfg, ids):
    """Independent fp32 Mixtral forward from hub-layout tensors T (one
    sequence). Returns (logits [n, V], [router logits [n, E] per layer])."""
    import torch
    H = cfg.hidden_size
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.head_dim or H // nh
    k_top = cfg.num_experts_per_tok
    eps = cfg.rms_norm_eps
    rp = getattr(cfg, "rope_parameters", None) or {}
    theta = rp.get("rope_theta", getattr(cfg, "rope_theta", None))
    n = ids.shape[0]
    dev = T["model.embed_tokens.weight"].device

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, device=dev, dtype=torch.float64) / hd))
    ang = torch.arange(n, device=dev, dtype=torch.float64)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()[:, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()[:, None, :]

    def rope(x):
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    mask = torch.full((n, n), float("-inf"), device=dev).triu(1)
    x = T["model.embed_tokens.weight"][ids]
    routers = []
    for l in range(cfg.num_hidden_layers):
        p = "model.layers.%d." % l
        h = rms(x, T[p + "input_layernorm.weight"])
        q = (h @ T[p + "self_attn.q_proj.weight"].T).view(n, nh, hd)
        kk = (h @ T[p + "self_attn.k_proj.weight"].T).view(n, nkv, hd)
        v = (h @ T[p + "self_attn.v_proj.weight"].T).view(n, nkv, hd)
        q, kk = rope(q), rope(kk)
        rep = nh // nkv
        kk = kk.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        att = torch.einsum("qhd,khd->hqk", q, kk) / math.sqrt(hd) + mask
        o = torch.einsum("hqk,khd->qhd", torch.softmax(att, -1), v).reshape(n, nh * hd)
        x = x + o @ T[p + "self_attn.o_proj.weight"].T
        h = rms(x, T[p + "post_attention_layernorm.weight"])
        rl = h @ T[p + "block_sparse_moe.gate.weight"].T
        routers.append(rl)
        w, idx = torch.topk(torch.softmax(rl, -1), k_top, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        moe = torch.zeros_like(x)
        for e in range(cfg.num_local_experts):
            rows, slot = (idx == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            pe = p + "block_sparse_moe.experts.%d." % e
            hx = h[rows]
            y = (torch.nn.functional.silu(hx @ T[pe + "w1.weight"].T) * (hx @ T[pe + "w3.weight"].T)) \
                @ T[pe + "w2.weight"].T
            moe.index_add_(0, rows, y * w[rows, slot][:, None])
        x = x + moe
    x = rms(x, T["model.norm.weight"])
    head = T.get("lm_head.weight", T["model.embed_tokens.weight"])
    return x @ head.T, routers


def export_weights(a, cfg, final, st_path, sp_keys, expected, model_path,
                   try_layout, load_file, save_file, torch):
    """Writes model_path in the hub layout; returns where the tensors came from."""
    if sp_keys == expected:
        tensors = load_file(st_path)
        layout_src = "save_pretrained"
    else:
        sd = {k: v for k, v in final.state_dict().items()}
        tensors = to_hub_layout(sd, cfg)
        layout_src = "converted"
        if try_layout(tensors) > 1e-3:
            alt = to_hub_layout(sd, cfg, swap_gate_up=True)
            if try_layout(alt) < 1e-3:
                tensors, layout_src = alt, "converted (gate/up halves swapped)"
    if set(tensors) != expected:
        raise RuntimeError("hub layout names differ: extra %s missing %s" % (
            sorted(set(tensors) - expected)[:5], sorted(expected - set(tensors))[:5]))
    bad = [k for k, v in tensors.items() if v.dtype != torch.bfloat16]
    if bad:
        raise RuntimeError("not bf16: %s" % bad[:5])
    if layout_src == "save_pretrained":
        shutil.copyfile(st_path, model_path)
    else:
        save_file({k: tensors[k].contiguous() for k in sorted(tensors)}, model_path,
                  metadata={"format": "pt"})
    return layout_src


# ------------------------------------------------------------------ main
def main():
    a = parse_args()
    import torch
    import torch.nn.functional as F
    import tokenizers
    import transformers
    from transformers import MixtralForCausalLM
    from safetensors.torch import load_file, save_file

    os.makedirs(a.out, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "args": {k: v for k, v in vars(a).items() if k != "variant_list"},
              "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                           "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
              "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
              "checks": {}, "errors": []}
    log("devices:", report["device"], report["versions"])
    deadline = a.deadline if a.deadline > 0 else float("inf")

    # ---------------- data + tokenizer
    lim = 3_000_000 if a.dry_run else 0
    train_docs, train_sha = read_split(os.path.join(a.data, "train.txt.gz"), lim)
    valid_docs, valid_sha = read_split(os.path.join(a.data, "valid.txt.gz"), 60_000 if a.dry_run else 0)
    with open(a.heldout, "rb") as fh:
        held_raw = fh.read()
    held_text = held_raw.decode("utf-8")
    if a.dry_run:
        held_text = held_text[:held_text.find(EOT, 30_000) + len(EOT)]
    report["data"] = {"train_text_sha256": train_sha, "valid_text_sha256": valid_sha,
                      "heldout_sha256": hashlib.sha256(held_raw).hexdigest(),
                      "train_docs": len(train_docs), "valid_docs": len(valid_docs),
                      "train_bytes": sum(len(d.encode()) for d in train_docs)}
    log("data: %d train docs, %d valid docs" % (len(train_docs), len(valid_docs)))
    tok = train_tokenizer(train_docs, a.vocab)
    V = tok.get_vocab_size()
    train_ids = encode_docs(tok, train_docs)
    valid_ids = encode_docs(tok, valid_docs)
    held_ids = tok.encode(held_text, add_special_tokens=False).ids
    held_docs = held_text.split(EOT)
    if held_docs[-1] == "":
        held_docs.pop()
    report["checks"]["heldout_whole_text_equals_per_document_encoding"] = \
        held_ids == encode_docs(tok, held_docs)
    report["data"].update({"vocab_size": V, "train_tokens": len(train_ids),
                           "valid_tokens": len(valid_ids), "heldout_tokens": len(held_ids),
                           "train_bytes_per_token": report["data"]["train_bytes"] / len(train_ids)})
    log("tokenizer: vocab %d, train %d tokens (%.2f bytes/token), valid %d, heldout %d" % (
        V, len(train_ids), report["data"]["train_bytes_per_token"], len(valid_ids), len(held_ids)))
    train_t = torch.tensor(train_ids, dtype=torch.long, device=dev)
    valid_t = torch.tensor(valid_ids, dtype=torch.long, device=dev)

    # ---------------- model
    cfg = make_config(a, V)
    torch.set_float32_matmul_precision("high")

    def build(dropout):
        torch.manual_seed(a.seed)
        m = MixtralForCausalLM(cfg).to(dev)
        return m, Hooks(m, a.experts, dropout)

    model, hooks = build(0.0)
    counts = param_counts(model, a, V)
    report["params"] = counts
    log("params:", counts)
    if not a.dry_run and not (10e6 <= counts["total"] <= 30e6):
        raise SystemExit("parameter count %d outside 10M..30M" % counts["total"])

    S, B = a.seq, a.batch
    ar = torch.arange(S + 1, device=dev)

    def batch(gen):
        off = torch.randint(0, train_t.numel() - S - 1, (B,), generator=gen, device=dev)
        w = train_t[off[:, None] + ar[None, :]]
        return w[:, :-1], w[:, 1:]

    def step_loss(m, h, x, y):
        h.logits.clear()
        h.capture = True
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            out = m(input_ids=x, use_cache=False)
        h.capture = False
        ce = F.cross_entropy(out.logits.float().reshape(-1, V), y.reshape(-1))
        aux = aux_loss(h.logits, a.top_k)
        h.logits.clear()
        return ce, aux

    # ---------------- experts implementation probe
    cands = ["grouped_mm", "batched_mm", "eager"] if a.experts_impl == "auto" else [a.experts_impl]
    probe = {}
    pgen = torch.Generator(device=dev).manual_seed(a.seed + 99)
    model.train()
    for c in cands:
        try:
            set_experts_impl(model, c)
            for i in range(5):
                if i == 2:
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t = time.time()
                x, y = batch(pgen)
                ce, aux = step_loss(model, hooks, x, y)
                (ce + a.aux_coef * aux).backward()
                model.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            dt = (time.time() - t) / 3
            if not math.isfinite(ce.item()):
                raise RuntimeError("non-finite loss %r" % ce.item())
            probe[c] = dt
            log("experts impl %s: %.1f ms per fwd+bwd step" % (c, dt * 1e3))
        except Exception as e:  # noqa: BLE001 - any failure just rules the candidate out
            probe[c] = "failed: %s" % str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            log("experts impl %s failed: %s" % (c, probe[c]))
            model.zero_grad(set_to_none=True)
    ok = {c: t for c, t in probe.items() if isinstance(t, float)}
    if not ok:
        raise SystemExit("no experts implementation works: %r" % probe)
    impl = min(ok, key=ok.get)
    report["experts_impl"] = {"probe_seconds_per_step": probe, "chosen": impl}
    hooks.remove()
    del model, hooks
    est_step = ok[impl] * 1.15

    # ---------------- training
    tokens_per_step = B * S
    train_budget = min(a.train_seconds, deadline - a.reserve - time.time())
    t_train0 = time.time()
    best = {"valid_loss": float("inf")}
    variants_out = []

    def valid_loss(m):
        m.eval()
        n_win = (valid_t.numel() - 1) // S
        tot, cnt = 0.0, 0
        with torch.no_grad(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            for i in range(0, n_win, 64):
                j = min(n_win, i + 64)
                w = valid_t[i * S:j * S + 1]
                x = w[:-1].reshape(j - i, S)
                y = w[1:].reshape(j - i, S)
                lg = m(input_ids=x, use_cache=False).logits.float()
                tot += F.cross_entropy(lg.reshape(-1, V), y.reshape(-1), reduction="sum").item()
                cnt += y.numel()
        m.train()
        return tot / cnt

    for vi, (epochs, dropout) in enumerate(a.variant_list):
        remaining = train_budget - (time.time() - t_train0)
        budget = remaining / (len(a.variant_list) - vi)
        planned = a.steps or max(1, math.ceil(epochs * len(train_ids) / tokens_per_step))
        steps, capped = planned, False
        if not a.steps and planned * est_step > budget:
            steps, capped = max(1, int(budget / est_step)), True
        if budget < 5 * est_step and not a.dry_run:
            log("variant %d skipped: %.0f s left" % (vi, budget))
            variants_out.append({"epochs": epochs, "dropout": dropout, "skipped": True})
            continue
        model, hooks = build(dropout)
        set_experts_impl(model, impl)
        model.train()
        decay, no_decay = [], []
        for n_, p_ in model.named_parameters():
            if p_.dim() >= 2 and "embed_tokens" not in n_ and "lm_head" not in n_ \
                    and id(p_) not in hooks.gate_params:
                decay.append(p_)
            else:
                no_decay.append(p_)
        groups = [{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}]
        try:
            opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=dev.type == "cuda")
        except (TypeError, RuntimeError):
            opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
        gen = torch.Generator(device=dev).manual_seed(a.seed + 1)
        warm = min(a.warmup, max(1, steps // 10))
        eval_every = max(10, steps // 8)
        log_every = max(10, steps // 25)
        vrec = {"epochs": epochs, "dropout": dropout, "planned_steps": planned, "steps": steps,
                "time_capped": capped, "warmup": warm, "evals": [], "log": []}
        log("variant %d: epochs %g dropout %g: %d steps (%s), budget %.0f s" % (
            vi, epochs, dropout, steps, "capped" if capped else "full", budget))
        tv = time.time()
        vbest = float("inf")
        done = 0
        for step in range(1, steps + 1):
            if step <= warm:
                lr = a.lr * step / warm
            else:
                pr = (step - warm) / max(1, steps - warm)
                lr = a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * pr)))
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = batch(gen)
            ce, aux = step_loss(model, hooks, x, y)
            loss = ce + a.aux_coef * aux
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done = step
            if step % log_every == 0 or step == 1:
                cev, auxv = ce.item(), aux.item()
                el = time.time() - tv
                vrec["log"].append([step, round(cev, 4), round(auxv, 4), round(lr, 7),
                                    round(float(gn), 3), round(el, 1)])
                log("  step %5d/%d  ce %.4f  aux %.4f  lr %.2e  gnorm %.2f  %.0f tok/s" % (
                    step, steps, cev, auxv, lr, float(gn), step * tokens_per_step / max(el, 1e-9)))
                if not math.isfinite(cev):
                    vrec["diverged"] = True
                    break
            last = step == steps
            over = (time.time() - tv > budget * 1.3 and not a.steps) or time.time() > deadline - a.reserve
            if step % eval_every == 0 or last or over:
                vl = valid_loss(model)
                vrec["evals"].append([step, round(vl, 5)])
                log("  valid loss %.4f (ppl %.2f) at step %d" % (vl, math.exp(vl), step))
                if vl < vbest:
                    vbest = vl
                    vrec["best_step"] = step
                if vl < best["valid_loss"]:
                    best = {"valid_loss": vl, "variant": vi, "step": step,
                            "state": {k: v.detach().to("cpu", copy=True)
                                      for k, v in model.state_dict().items()}}
            if over and not last:
                vrec["stopped_early"] = "time"
                log("  stopped at step %d: time" % step)
                break
        vrec["steps_done"] = done
        vrec["seconds"] = round(time.time() - tv, 1)
        vrec["tokens_per_second"] = round(done * tokens_per_step / max(time.time() - tv, 1e-9))
        vrec["epochs_done"] = round(done * tokens_per_step / len(train_ids), 3)
        vrec["best_valid_loss"] = vbest
        variants_out.append(vrec)
        est_step = (time.time() - tv) / max(done, 1)
        hooks.remove()
        del model, hooks, opt
        if time.time() > deadline - a.reserve:
            break
    report["variants"] = variants_out
    if "state" not in best:
        raise SystemExit("no checkpoint was trained")
    ch = variants_out[best["variant"]]
    report["chosen"] = {"variant": best["variant"], "epochs": ch["epochs"], "dropout": ch["dropout"],
                        "step": best["step"], "steps": ch["steps"],
                        "valid_loss_bf16_autocast": best["valid_loss"]}
    report["reproduce"] = ("tests/train/prepare_data.sh && python3 tests/train/train_default.py "
                           "--out OUTDIR --variants %g:%g --steps %d --experts-impl %s" %
                           (ch["epochs"], ch["dropout"], ch["steps"], impl))
    if best["step"] != ch["steps_done"]:
        report["reproduce_note"] = ("the chosen checkpoint is step %d of that run "
                                    "(lowest validation loss)" % best["step"])
    log("chosen: variant %d step %d valid loss %.4f" % (best["variant"], best["step"], best["valid_loss"]))

    # ---------------- export
    torch.manual_seed(a.seed)
    final = MixtralForCausalLM(cfg)
    final.load_state_dict(best["state"])
    final = final.to(torch.bfloat16).eval()
    tmp = os.path.join(a.out, "_save_pretrained")
    try:
        final.save_pretrained(tmp, safe_serialization=True)
    except TypeError:
        final.save_pretrained(tmp)
    saved = os.listdir(tmp)
    st_path = os.path.join(tmp, "model.safetensors")
    expected = hub_names(cfg)
    sp_keys = set(load_file(st_path).keys()) if os.path.exists(st_path) else set()
    report["export"] = {"save_pretrained_files": sorted(saved),
                        "save_pretrained_hub_layout": sp_keys == expected}
    if sp_keys != expected:
        report["export"]["save_pretrained_extra_names"] = sorted(sp_keys - expected)[:12]
        report["export"]["save_pretrained_missing_names"] = sorted(expected - sp_keys)[:12]
    log("save_pretrained wrote %s; hub layout: %s" % (saved, sp_keys == expected))

    # what the model computes (fp32, from the bf16 weights) on a held-out window
    torch.set_float32_matmul_precision("highest")
    f32 = MixtralForCausalLM(cfg)
    f32.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in best["state"].items()})
    f32 = f32.to(dev).eval()
    set_experts_impl(f32, "eager")
    chk_ids = torch.tensor(held_ids[:min(S, 256)], device=dev)
    with torch.no_grad():
        ref_logits = f32(input_ids=chk_ids[None], use_cache=False).logits[0].float()

    def rel_err(x, y):
        return float((x - y).norm() / y.norm())

    def try_layout(T):
        Td = {k: v.to(dev).float() for k, v in T.items()}
        with torch.no_grad():
            lg, _ = ref_forward(Td, cfg, chk_ids)
        return rel_err(lg, ref_logits)

    model_path = os.path.join(a.out, "model.safetensors")
    try:
        layout_src = export_weights(a, cfg, final, st_path, sp_keys, expected, model_path,
                                    try_layout, load_file, save_file, torch)
    except Exception:  # noqa: BLE001 - keep what save_pretrained wrote, report the failure
        report["errors"].append("export: " + traceback.format_exc()[-1200:])
        shutil.copyfile(st_path, model_path)
        layout_src = "save_pretrained (unchecked: export failed)"
    report["export"]["weights_from"] = layout_src
    try:
        e_ref = try_layout(load_file(model_path))
        report["checks"]["reference_forward_rel_err"] = e_ref
        report["checks"]["reference_forward_ok"] = e_ref < 1e-4
        log("independent fp32 forward from model.safetensors vs transformers: rel err %.2e" % e_ref)
    except Exception:  # noqa: BLE001
        report["checks"]["reference_forward_ok"] = False
        report["errors"].append("reference forward: " + traceback.format_exc()[-800:])

    with open(os.path.join(tmp, "config.json")) as fh:
        cj_plain = json.load(fh)
    cj_plain["output_router_logits"] = False
    cj = dict(cj_plain)
    rp = cj.get("rope_parameters") or {}
    # keys of the older layout too (top-level rope_theta, torch_dtype), for
    # readers that predate rope_parameters; dropped again below if
    # transformers refuses to load the file with them
    cj.setdefault("rope_theta", rp.get("rope_theta", a.rope_theta))
    cj.setdefault("torch_dtype", "bfloat16")

    def write_config(d):
        with open(os.path.join(a.out, "config.json"), "w") as fh:
            json.dump(d, fh, indent=2, sort_keys=True)
            fh.write("\n")
    write_config(cj)
    gen_cfg = {"bos_token_id": 0, "eos_token_id": [0, 2], "pad_token_id": 0, "do_sample": True,
               "temperature": 0.8, "top_p": 0.95, "top_k": 50, "max_length": a.max_pos}
    with open(os.path.join(a.out, "generation_config.json"), "w") as fh:
        json.dump(gen_cfg, fh, indent=2, sort_keys=True)
        fh.write("\n")
    tok.save(os.path.join(a.out, "tokenizer.json"))
    tcfg = {
        "add_bos_token": False, "add_eos_token": False,
        "added_tokens_decoder": {str(i): {"content": s, "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": True}
                                 for i, s in enumerate(SPECIALS)},
        "bos_token": None, "eos_token": EOT, "pad_token": EOT, "unk_token": None,
        "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "errors": "replace", "model_max_length": a.max_pos,
        "tokenizer_class": "PreTrainedTokenizerFast"}
    with open(os.path.join(a.out, "tokenizer_config.json"), "w") as fh:
        json.dump(tcfg, fh, indent=2, sort_keys=True)
        fh.write("\n")
    shutil.rmtree(tmp)

    # ---------------- checks through transformers' own loaders
    def load_pretrained():
        try:
            return MixtralForCausalLM.from_pretrained(a.out, dtype=torch.float32,
                                                      attn_implementation="eager",
                                                      experts_implementation="eager")
        except TypeError:
            return MixtralForCausalLM.from_pretrained(a.out, torch_dtype=torch.float32)

    report["export"]["config_with_legacy_keys"] = True
    try:
        try:
            m2 = load_pretrained()
        except Exception:  # noqa: BLE001
            report["errors"].append("from_pretrained with legacy config keys (retried without): "
                                    + traceback.format_exc()[-400:])
            write_config(cj_plain)
            report["export"]["config_with_legacy_keys"] = False
            m2 = load_pretrained()
        m2 = m2.to(dev).eval()
        set_experts_impl(m2, "eager")
        with torch.no_grad():
            lg2 = m2(input_ids=chk_ids[None], use_cache=False).logits[0].float()
        report["checks"]["from_pretrained_rel_err"] = rel_err(lg2, ref_logits)
        report["checks"]["from_pretrained_ok"] = report["checks"]["from_pretrained_rel_err"] < 1e-5
    except Exception:  # noqa: BLE001
        report["errors"].append("from_pretrained: " + traceback.format_exc()[-800:])
        m2 = f32
    try:
        from transformers import AutoTokenizer
        at = AutoTokenizer.from_pretrained(a.out)
        sample = held_text[:20000]
        report["checks"]["autotokenizer_ids_equal"] = \
            at(sample, add_special_tokens=False)["input_ids"] == tok.encode(sample, add_special_tokens=False).ids
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        got = at.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        want = (IM_START + "system\nBe brief." + IM_END + "\n" + IM_START + "user\nHi" + IM_END + "\n"
                + IM_START + "assistant\n")
        report["checks"]["chat_template_ok"] = got == want
        report["checks"]["eos_token_id"] = at.eos_token_id
    except Exception:  # noqa: BLE001
        report["errors"].append("AutoTokenizer: " + traceback.format_exc()[-800:])

    # ---------------- held-out evaluation (fp32, exported weights, no capacity limit)
    hk = Hooks(m2, a.experts, 0.0)
    E, K, L = a.experts, a.top_k, a.layers
    evals = {}
    held_t = torch.tensor(held_ids, device=dev)
    gammas = [0.75, 1.0, 1.25, 1.5, 2.0]
    for ctx in ([S] if a.dry_run else [S, 256]):
        nll = torch.zeros((), dtype=torch.float64, device=dev)
        cnt = 0
        wins = [held_t[i:i + ctx] for i in range(0, held_t.numel(), ctx)]
        wins = [w for w in wins if w.numel() >= 2]
        wcounts, wlen = [], []  # per window: [L, E] pair counts; window length
        for w in wins:
            hk.logits.clear()
            hk.capture = True
            with torch.no_grad():
                lg = m2(input_ids=w[None], use_cache=False).logits[0].float()
            hk.capture = False
            nll += F.cross_entropy(lg[:-1], w[1:], reduction="sum").double()
            cnt += w.numel() - 1
            wcounts.append(torch.stack([torch.bincount(torch.topk(rl.float(), K, dim=-1).indices.reshape(-1),
                                                       minlength=E) for rl in hk.logits]))
            wlen.append(w.numel())
        tot = float(nll)
        wc = torch.stack(wcounts).cpu().double()          # [W, L, E]
        wl = torch.tensor(wlen, dtype=torch.float64)       # [W]
        loads = wc.sum(0)                                  # [L, E]
        frac = loads / loads.sum(1, keepdim=True)
        mean_cnt = (wl * K / E)[:, None]                   # [W, 1]
        win_max = (wc.max(-1).values / mean_cnt).mean().item()
        pairs = float((wl * K).sum() * L)
        over = {}
        for g in gammas:
            cap_ = torch.ceil(g * wl * K / E)[:, None, None]
            over[g] = float(torch.clamp(wc - cap_, min=0).sum())
        evals[str(ctx)] = {
            "windows": len(wins), "scored_tokens": cnt, "loss": tot / cnt, "perplexity": math.exp(tot / cnt),
            "expert_load_fraction": [[round(float(v), 4) for v in row] for row in frac],
            "max_over_mean_per_layer": [round(float(r.max() * E), 3) for r in frac],
            "min_over_mean_per_layer": [round(float(r.min() * E), 3) for r in frac],
            "cv_per_layer": [round(float(r.std(unbiased=False) / r.mean()), 3) for r in frac],
            "window_max_over_mean_mean": win_max,
            "pairs_over_capacity_fraction": {str(g): over[g] / pairs for g in gammas},
        }
        log("held-out ctx %d: loss %.4f ppl %.2f over %d tokens; per-layer max/mean load %s; "
            "pairs over capacity at gamma=1: %.3f" % (
                ctx, tot / cnt, math.exp(tot / cnt), cnt, evals[str(ctx)]["max_over_mean_per_layer"],
                evals[str(ctx)]["pairs_over_capacity_fraction"]["1.0"]))
    report["heldout"] = evals
    report["heldout_method"] = (
        "tests/train/heldout.txt tokenized as one text (add_special_tokens=False; the literal "
        "<|endoftext|> separators become id 0), cut into consecutive non-overlapping windows of "
        "ctx tokens (last one shorter), each window run alone from position 0; loss = mean "
        "next-token NLL over all positions but the first of each window; fp32 weights = the "
        "exported bf16 values; top-2 routing without capacity. Loads count (token, expert) pairs "
        "per layer; 'pairs_over_capacity_fraction' = share of pairs above capacity "
        "ceil(gamma*n*k/E) per layer when one window is one batch (routing of the unconstrained "
        "model, i.e. before any drop changes later layers).")
    # valid in fp32 too
    tot, cnt = 0.0, 0
    for i in range(0, valid_t.numel(), S):
        w = valid_t[i:i + S]
        if w.numel() < 2:
            continue
        with torch.no_grad():
            lg = m2(input_ids=w[None], use_cache=False).logits[0].float()
        tot += F.cross_entropy(lg[:-1], w[1:], reduction="sum").item()
        cnt += w.numel() - 1
    report["valid_fp32"] = {"loss": tot / cnt, "perplexity": math.exp(tot / cnt), "ctx": S}
    hk.remove()

    # ---------------- reference continuations for the C engine
    refs = []
    for ptxt in REF_PROMPTS:
        ids = tok.encode(ptxt, add_special_tokens=False).ids
        cur = list(ids)
        with torch.no_grad():
            first = m2(input_ids=torch.tensor([cur], device=dev), use_cache=False).logits[0, -1].float()
            lp = torch.log_softmax(first, -1)
            top = torch.topk(lp, 5)
            for _ in range(24):
                nxt = int(m2(input_ids=torch.tensor([cur], device=dev),
                             use_cache=False).logits[0, -1].float().argmax())
                cur.append(nxt)
                if nxt in (0, 2):
                    break
        refs.append({"prompt": ptxt, "prompt_ids": ids,
                     "top5_next": [[int(i), round(float(v), 5)] for v, i in zip(top.values, top.indices)],
                     "greedy_ids": cur[len(ids):],
                     "greedy_text": tok.decode(cur[len(ids):], skip_special_tokens=False)})
        log("greedy %r -> %r" % (ptxt[-40:], refs[-1]["greedy_text"]))
    report["reference_continuations"] = refs

    files = {}
    for f in sorted(os.listdir(a.out)):
        pth = os.path.join(a.out, f)
        if os.path.isfile(pth) and f != "train_report.json":
            with open(pth, "rb") as fh:
                files[f] = {"bytes": os.path.getsize(pth), "sha256": hashlib.sha256(fh.read()).hexdigest()}
    report["files"] = files
    report["seconds_total"] = round(time.time() - T0, 1)
    failed = [k for k, v in report["checks"].items() if v is False]
    report["failed_checks"] = failed
    with open(os.path.join(a.out, "train_report.json"), "w") as fh:
        json.dump(report, fh, indent=1)
        fh.write("\n")
    msize = files["model.safetensors"]["bytes"]
    log("wrote %s (model.safetensors %.1f MB); failed checks: %s; errors: %d" % (
        a.out, msize / 1e6, failed, len(report["errors"])))
    if msize > 50_000_000 and not a.dry_run:
        log("model.safetensors is over 50 MB")
        return 3
    # 0: all checks passed; 3: finished, but a check failed or a stage logged an error
    # (everything is written; see train_report.json); 1: crashed
    return 3 if failed or report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
