#!/usr/bin/env python3
"""Trains capmoe's second shipped model, config/model-fine: a fine-grained
Qwen3-MoE (64 experts of width 32, top-8, norm_topk_prob) on the same data,
with the same tokenizer and the same recipe as the default model
(tests/train/train_default.py, whose helpers this script imports: data
reading, residual-dropout and router hooks, the Switch-Transformer
load-balancing loss computed from the router logits, AdamW with warmup and
cosine decay, bf16 autocast over fp32 master weights, seed 1234).

    tests/train/prepare_data.sh                  # corpus -> tests/train/data/
    python3 tests/train/train_fine.py --out OUTDIR --steps N

Differences from the default model, all deliberate:
  * architecture Qwen3MoeForCausalLM (q/k RMSNorm, every layer sparse), hidden
    128, 4 layers, 4 heads of 32 (2 KV heads), 64 experts of width 32, top-8:
    fine-grained like OLMoE (64 top-8) at a size the repository can carry
    (about 4.4 M parameters, 8.8 MB in BF16);
  * the tokenizer is config/model/tokenizer.json (trained on the same train
    split by train_default.py), so the two models' perplexities are per the
    same tokens and comparable;
  * one variant (--epochs:--dropout), steps capped by --train-seconds.
Checks: save_pretrained names against the Qwen3-MoE hub layout
(model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight; fused expert
tensors are split when transformers writes them), reload with from_pretrained
against the trained weights in fp32, AutoTokenizer and the chat template.
Report (train_report.json): versions, GPU, data hashes, loss curve, held-out
perplexity in fp32 with the exported bf16 weights (tests/train/heldout.txt as
one text, consecutive windows of --seq tokens each scored from its own start,
first token unscored: `capmoe perplexity --context 512 --stride 512` computes
the same), per-layer expert loads on the held-out text, greedy continuations.
--dry-run: tiny sizes, a few steps, every stage.
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_default as td  # noqa: E402

T0 = time.time()
log = td.log


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="tests/train/data")
    p.add_argument("--heldout", default="tests/train/heldout.txt")
    p.add_argument("--tokenizer", default="config/model/tokenizer.json")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--intermediate", type=int, default=32, help="per expert")
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--max-pos", type=int, default=1024)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--aux-coef", type=float, default=0.02)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=0, help="fixed step count (0: as many as --train-seconds allow)")
    p.add_argument("--max-steps", type=int, default=6000)
    p.add_argument("--train-seconds", type=float, default=230.0)
    p.add_argument("--experts-impl", default="auto")
    a = p.parse_args(argv)
    if a.dry_run:
        a.hidden, a.layers, a.experts, a.top_k, a.seq, a.batch = 64, 2, 16, 4, 64, 8
        a.steps, a.warmup, a.train_seconds = 30, 5, 20.0
    return a


def hub_names(cfg):
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    for l in range(cfg.num_hidden_layers):
        p = "model.layers.%d." % l
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight", p + "mlp.gate.weight",
                  p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"}
        names |= {p + "self_attn.%s_proj.weight" % x for x in "qkvo"}
        for e in range(cfg.num_experts):
            names |= {p + "mlp.experts.%d.%s_proj.weight" % (e, w) for w in ("gate", "up", "down")}
    if not cfg.tie_word_embeddings:
        names.add("lm_head.weight")
    return names


def to_hub_layout(sd, cfg):
    """state dict (fused or per-expert experts) -> {Qwen3-MoE hub name: tensor}."""
    H, I, E = cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts
    out = {}
    for k, v in sd.items():
        if k == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if k.endswith("experts.gate_up_proj"):
            base = k[:-len("gate_up_proj")]
            if tuple(v.shape) == (E, H, 2 * I):
                v = v.transpose(1, 2)
            for e in range(E):
                out[base + "%d.gate_proj.weight" % e] = v[e, :I].contiguous()
                out[base + "%d.up_proj.weight" % e] = v[e, I:].contiguous()
        elif k.endswith("experts.down_proj"):
            base = k[:-len("down_proj")]
            if tuple(v.shape) == (E, I, H):
                v = v.transpose(1, 2)
            for e in range(E):
                out[base + "%d.down_proj.weight" % e] = v[e].contiguous()
        else:
            out[k] = v.contiguous()
    return out


def main():
    a = parse_args()
    import torch
    import torch.nn.functional as F
    import tokenizers
    import transformers
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    from safetensors.torch import load_file, save_file

    os.makedirs(a.out, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "args": vars(a),
              "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                           "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
              "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
              "checks": {}, "errors": []}
    log("device", report["device"], report["versions"])

    # ---------------- data (same splits, same tokenizer as config/model)
    lim = 3_000_000 if a.dry_run else 0
    train_docs, train_sha = td.read_split(os.path.join(a.data, "train.txt.gz"), lim)
    valid_docs, valid_sha = td.read_split(os.path.join(a.data, "valid.txt.gz"), 60_000 if a.dry_run else 0)
    held_raw = open(a.heldout, "rb").read()
    held_text = held_raw.decode("utf-8")
    tok = tokenizers.Tokenizer.from_file(a.tokenizer)
    tok_sha = hashlib.sha256(open(a.tokenizer, "rb").read()).hexdigest()
    V = tok.get_vocab_size()
    train_ids = td.encode_docs(tok, train_docs)
    valid_ids = td.encode_docs(tok, valid_docs)
    held_ids = tok.encode(held_text, add_special_tokens=False).ids
    report["data"] = {"train_text_sha256": train_sha, "valid_text_sha256": valid_sha,
                      "heldout_sha256": hashlib.sha256(held_raw).hexdigest(), "tokenizer_sha256": tok_sha,
                      "vocab_size": V, "train_tokens": len(train_ids), "valid_tokens": len(valid_ids),
                      "heldout_tokens": len(held_ids)}
    log("data:", report["data"])
    train_t = torch.tensor(train_ids, dtype=torch.long, device=dev)
    valid_t = torch.tensor(valid_ids, dtype=torch.long, device=dev)

    # ---------------- model
    kw = dict(vocab_size=V, hidden_size=a.hidden, intermediate_size=4 * a.hidden,
              moe_intermediate_size=a.intermediate, num_hidden_layers=a.layers,
              num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, head_dim=a.head_dim,
              num_experts=a.experts, num_experts_per_tok=a.top_k, norm_topk_prob=True,
              decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=a.max_pos,
              rms_norm_eps=1e-6, use_sliding_window=False, sliding_window=None, hidden_act="silu",
              tie_word_embeddings=True, bos_token_id=0, eos_token_id=[0, 2], pad_token_id=None,
              output_router_logits=False, router_aux_loss_coef=a.aux_coef, attention_dropout=0.0,
              initializer_range=0.02, use_cache=True)
    try:
        cfg = Qwen3MoeConfig(rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta}, **kw)
    except TypeError:
        cfg = Qwen3MoeConfig(rope_theta=a.rope_theta, **kw)
    torch.set_float32_matmul_precision("high")

    def build(dropout):
        torch.manual_seed(a.seed)
        m = Qwen3MoeForCausalLM(cfg).to(dev)
        return m, td.Hooks(m, a.experts, dropout)

    model, hooks = build(0.0)
    total = sum(p.numel() for p in model.parameters())
    per_expert = 3 * a.hidden * a.intermediate
    report["params"] = {"total": total, "per_expert": per_expert,
                        "active_per_token": total - (a.experts - a.top_k) * per_expert * a.layers}
    log("params", report["params"])
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
        aux = td.aux_loss(h.logits, a.top_k)
        h.logits.clear()
        return ce, aux

    # experts implementation: the fastest that works
    cands = ["grouped_mm", "batched_mm", "eager"] if a.experts_impl == "auto" else [a.experts_impl]
    probe = {}
    pgen = torch.Generator(device=dev).manual_seed(a.seed + 99)
    model.train()
    for c in cands:
        try:
            td.set_experts_impl(model, c)
            for i in range(4):
                if i == 1:
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t = time.time()
                x, y = batch(pgen)
                ce, aux = step_loss(model, hooks, x, y)
                (ce + a.aux_coef * aux).backward()
                model.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            probe[c] = (time.time() - t) / 3
            log("experts impl %s: %.1f ms/step" % (c, probe[c] * 1e3))
        except Exception as e:  # noqa: BLE001
            probe[c] = "failed: %s" % str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            log("experts impl", c, probe[c])
            model.zero_grad(set_to_none=True)
    ok = {c: t for c, t in probe.items() if isinstance(t, float)}
    if not ok:
        raise SystemExit("no experts implementation works: %r" % probe)
    impl = min(ok, key=ok.get)
    report["experts_impl"] = {"probe_seconds_per_step": probe, "chosen": impl}
    hooks.remove()
    del model, hooks

    steps = a.steps or max(10, min(a.max_steps, int(a.train_seconds / (ok[impl] * 1.1))))
    model, hooks = build(a.dropout)
    td.set_experts_impl(model, impl)
    model.train()
    decay, no_decay = [], []
    for n_, p_ in model.named_parameters():
        if p_.dim() >= 2 and "embed_tokens" not in n_ and "lm_head" not in n_ and id(p_) not in hooks.gate_params:
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

    def valid_loss(m):
        m.eval()
        n_win = (valid_t.numel() - 1) // S
        tot, cnt = 0.0, 0
        with torch.no_grad(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            for i in range(0, n_win, 64):
                j = min(n_win, i + 64)
                w = valid_t[i * S:j * S + 1]
                lg = m(input_ids=w[:-1].reshape(j - i, S), use_cache=False).logits.float()
                tot += F.cross_entropy(lg.reshape(-1, V), w[1:].reshape(-1), reduction="sum").item()
                cnt += (j - i) * S
        m.train()
        return tot / cnt

    rec = {"steps": steps, "warmup": warm, "dropout": a.dropout, "log": [], "evals": []}
    log("training %d steps (%s), %d tokens each" % (steps, impl, B * S))
    tv = time.time()
    best = {"valid_loss": float("inf")}
    eval_every = max(10, steps // 6)
    for step in range(1, steps + 1):
        lr = a.lr * step / warm if step <= warm else a.lr * (
            a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm))))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batch(gen)
        ce, aux = step_loss(model, hooks, x, y)
        (ce + a.aux_coef * aux).backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % max(10, steps // 25) == 0 or step == 1:
            el = time.time() - tv
            rec["log"].append([step, round(ce.item(), 4), round(aux.item(), 4), round(lr, 7),
                               round(float(gn), 3), round(el, 1)])
            log("  step %5d/%d ce %.4f aux %.4f lr %.2e %.0f tok/s" % (step, steps, ce.item(), aux.item(), lr,
                                                                      step * B * S / max(el, 1e-9)))
        if step % eval_every == 0 or step == steps:
            vl = valid_loss(model)
            rec["evals"].append([step, round(vl, 5)])
            log("  valid loss %.4f (ppl %.2f) at step %d" % (vl, math.exp(vl), step))
            if vl < best["valid_loss"]:
                best = {"valid_loss": vl, "step": step,
                        "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
    rec["seconds"] = round(time.time() - tv, 1)
    rec["gpu_seconds_training"] = rec["seconds"]
    rec["tokens_per_second"] = round(steps * B * S / max(time.time() - tv, 1e-9))
    rec["epochs_done"] = round(steps * B * S / len(train_ids), 3)
    report["training"] = rec
    report["chosen"] = {"step": best["step"], "valid_loss_bf16_autocast": best["valid_loss"]}
    report["reproduce"] = ("tests/train/prepare_data.sh && python3 tests/train/train_fine.py --out OUTDIR "
                           "--steps %d --experts-impl %s" % (steps, impl))
    hooks.remove()
    del model, hooks, opt

    # ---------------- export (bf16, hub layout)
    final = Qwen3MoeForCausalLM(cfg)
    final.load_state_dict(best["state"])
    final = final.to(torch.bfloat16).eval()
    tmp = os.path.join(a.out, "_save_pretrained")
    final.save_pretrained(tmp, safe_serialization=True)
    st_path = os.path.join(tmp, "model.safetensors")
    expected = hub_names(cfg)
    sp = load_file(st_path)
    if set(sp) == expected:
        tensors, src = sp, "save_pretrained"
    else:
        tensors, src = to_hub_layout(final.state_dict(), cfg), "converted"
    if set(tensors) != expected:
        report["errors"].append("hub names differ: extra %s missing %s" % (
            sorted(set(tensors) - expected)[:5], sorted(expected - set(tensors))[:5]))
    report["export"] = {"weights_from": src, "save_pretrained_hub_layout": set(sp) == expected}
    save_file({k: tensors[k].to(torch.bfloat16).contiguous() for k in sorted(tensors)},
              os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    cj = json.load(open(os.path.join(tmp, "config.json")))
    cj["output_router_logits"] = False
    rp = cj.get("rope_parameters") or {}
    cj.setdefault("rope_theta", rp.get("rope_theta", a.rope_theta))
    cj.setdefault("torch_dtype", "bfloat16")
    json.dump(cj, open(os.path.join(a.out, "config.json"), "w"), indent=2, sort_keys=True)
    json.dump({"bos_token_id": 0, "eos_token_id": [0, 2], "pad_token_id": 0, "do_sample": True,
               "temperature": 0.8, "top_p": 0.95, "top_k": 50, "max_length": a.max_pos},
              open(os.path.join(a.out, "generation_config.json"), "w"), indent=2, sort_keys=True)
    shutil.copyfile(a.tokenizer, os.path.join(a.out, "tokenizer.json"))
    src_tc = os.path.join(os.path.dirname(a.tokenizer), "tokenizer_config.json")
    shutil.copyfile(src_tc, os.path.join(a.out, "tokenizer_config.json"))
    shutil.rmtree(tmp)

    # ---------------- checks: reload through transformers vs the trained weights in fp32
    torch.set_float32_matmul_precision("highest")
    f32 = Qwen3MoeForCausalLM(cfg)
    f32.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in best["state"].items()})
    f32 = f32.to(dev).eval()
    td.set_experts_impl(f32, "eager")
    chk = torch.tensor(held_ids[:256], device=dev)
    with torch.no_grad():
        ref = f32(input_ids=chk[None], use_cache=False).logits[0].float()
    try:
        try:
            m2 = Qwen3MoeForCausalLM.from_pretrained(a.out, dtype=torch.float32, attn_implementation="eager",
                                                     experts_implementation="eager")
        except TypeError:
            m2 = Qwen3MoeForCausalLM.from_pretrained(a.out, torch_dtype=torch.float32)
        m2 = m2.to(dev).eval()
        with torch.no_grad():
            lg2 = m2(input_ids=chk[None], use_cache=False).logits[0].float()
        e = float((lg2 - ref).norm() / ref.norm())
        report["checks"]["from_pretrained_rel_err"] = e
        report["checks"]["from_pretrained_ok"] = e < 1e-5
        log("from_pretrained vs trained weights: rel err %.2e" % e)
    except Exception:  # noqa: BLE001
        report["errors"].append("from_pretrained: " + traceback.format_exc()[-800:])
        m2 = f32
    try:
        from transformers import AutoTokenizer
        at = AutoTokenizer.from_pretrained(a.out)
        sample = held_text[:20000]
        report["checks"]["autotokenizer_ids_equal"] = \
            at(sample, add_special_tokens=False)["input_ids"] == tok.encode(sample, add_special_tokens=False).ids
    except Exception:  # noqa: BLE001
        report["errors"].append("AutoTokenizer: " + traceback.format_exc()[-800:])

    # ---------------- held-out (fp32, exported weights, no capacity limit)
    hk = td.Hooks(m2, a.experts, 0.0)
    held_t = torch.tensor(held_ids, device=dev)
    evals = {}
    E, K = a.experts, a.top_k
    for ctx in ([S] if a.dry_run else [S, 256]):
        nll = torch.zeros((), dtype=torch.float64, device=dev)
        cnt = 0
        loads = torch.zeros((a.layers, E), dtype=torch.float64)
        for i in range(0, held_t.numel(), ctx):
            w = held_t[i:i + ctx]
            if w.numel() < 2:
                continue
            hk.logits.clear()
            hk.capture = True
            with torch.no_grad():
                lg = m2(input_ids=w[None], use_cache=False).logits[0].float()
            hk.capture = False
            nll += F.cross_entropy(lg[:-1], w[1:], reduction="sum").double()
            cnt += w.numel() - 1
            for l, rl in enumerate(hk.logits):
                loads[l] += torch.bincount(torch.topk(rl.float(), K, dim=-1).indices.reshape(-1),
                                           minlength=E).double().cpu()
        frac = loads / loads.sum(1, keepdim=True)
        evals[str(ctx)] = {"scored_tokens": cnt, "loss": float(nll) / cnt, "perplexity": math.exp(float(nll) / cnt),
                           "max_over_mean_per_layer": [round(float(r.max() * E), 3) for r in frac],
                           "min_over_mean_per_layer": [round(float(r.min() * E), 3) for r in frac]}
        log("held-out ctx %d: loss %.6f ppl %.6f over %d tokens; max/mean load %s" % (
            ctx, evals[str(ctx)]["loss"], evals[str(ctx)]["perplexity"], cnt,
            evals[str(ctx)]["max_over_mean_per_layer"]))
    hk.remove()
    report["heldout"] = evals
    report["heldout_method"] = ("tests/train/heldout.txt tokenized as one text (add_special_tokens=False), "
                                "consecutive non-overlapping windows of ctx tokens, each run alone from "
                                "position 0, first token of each window unscored; fp32 with the exported "
                                "bf16 weights; no capacity limit")
    refs = []
    for ptxt in td.REF_PROMPTS[:3]:
        ids = tok.encode(ptxt, add_special_tokens=False).ids
        cur = list(ids)
        with torch.no_grad():
            for _ in range(16):
                nxt = int(m2(input_ids=torch.tensor([cur], device=dev), use_cache=False).logits[0, -1].argmax())
                cur.append(nxt)
        refs.append({"prompt": ptxt, "prompt_ids": ids, "greedy_ids": cur[len(ids):],
                     "greedy_text": tok.decode(cur[len(ids):], skip_special_tokens=False)})
        log("greedy %r -> %r" % (ptxt, refs[-1]["greedy_text"]))
    report["reference_continuations"] = refs
    files = {}
    for f in sorted(os.listdir(a.out)):
        pth = os.path.join(a.out, f)
        if os.path.isfile(pth) and f != "train_report.json":
            files[f] = {"bytes": os.path.getsize(pth), "sha256": hashlib.sha256(open(pth, "rb").read()).hexdigest()}
    report["files"] = files
    report["seconds_total"] = round(time.time() - T0, 1)
    report["failed_checks"] = [k for k, v in report["checks"].items() if v is False]
    json.dump(report, open(os.path.join(a.out, "train_report.json"), "w"), indent=1)
    log("wrote %s: model %.1f MB, failed checks %s, errors %d" % (
        a.out, files["model.safetensors"]["bytes"] / 1e6, report["failed_checks"], len(report["errors"])))
    return 3 if report["failed_checks"] or report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
