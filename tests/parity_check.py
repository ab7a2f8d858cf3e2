#!/usr/bin/env python3
"""Compares the capmoe CLI with the Hugging Face transformers references of a
fixture (tests/fixtures/<name>/parity/cases.json, made by
tests/fixtures/gen/make_fixtures.py, and parity/piggyback.json when present,
made by tests/fixtures/gen/piggyback_fixtures.py): logits under every dispatch policy
(relative error = max |c - ref| / max |ref| < 1e-4), per-layer capacity,
capacity factor and expert loads, dropped / rerouted counts, greedy
continuations, and the HF `tokenizers` encodings of the fixture tokenizer.
For latent attention (DeepSeek: kv_lora_rank in config.json) the `none` case
also runs with each form of attention forced (--mla-form expanded, absorbed).

usage: parity_check.py FIXTURE_DIR CAPMOE_BINARY [--quick]
Standard library only. Exit 0 when everything matches."""
import json
import os
import struct
import subprocess
import sys
import tempfile

TOL = 1e-4


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), p.returncode, p.stderr.strip()))
    return json.loads(p.stdout)


def read_f32(path):
    data = open(path, "rb").read()
    return struct.unpack("<%df" % (len(data) // 4), data)


def main():
    fixture, binary = sys.argv[1], sys.argv[2]
    quick = "--quick" in sys.argv
    man = json.load(open(os.path.join(fixture, "parity", "cases.json")))
    ids_args = []
    for p in man["prompts"]:
        ids_args += ["--ids", ",".join(str(x) for x in p)]
    failures = 0
    cases = [dict(c, form=None) for c in man["cases"]]
    if quick:
        cases = [c for c in cases if c["name"] in ("none", "reroute_g1", "expanded_r2_g1")]
    cfg = json.load(open(os.path.join(fixture, "config.json")))
    if cfg.get("kv_lora_rank"):
        none = [c for c in cases if c["name"] == "none"][0]
        cases += [dict(none, form=f) for f in ("expanded", "absorbed")]
    with tempfile.TemporaryDirectory() as td:
        for c in cases:
            out = os.path.join(td, c["name"] + ".bin")
            cmd = [binary, "logits", "--model", fixture] + ids_args + ["--out", out,
                   "--policy", c["policy"], "--ep-ranks", str(c["ep_ranks"]),
                   "--min-tokens", str(c["min_tokens"]), "--drop-budget", str(c["drop_budget"])]
            if c["capacity_factor"] is not None:
                cmd += ["--capacity-factor", str(c["capacity_factor"])]
            if c["renormalize"]:
                cmd += ["--renormalize"]
            if c["form"]:
                cmd += ["--mla-form", c["form"]]
            res = run(cmd)
            got = read_f32(out)
            ref = read_f32(os.path.join(fixture, "parity", c["logits"]))
            problems = []
            if len(got) != len(ref):
                problems.append("logits size %d != %d" % (len(got), len(ref)))
            else:
                scale = max(abs(x) for x in ref)
                err = max(abs(a - b) for a, b in zip(got, ref)) / scale
                if not err < TOL:
                    problems.append("logits relative error %.3g >= %g" % (err, TOL))
            if res["tokens"] != man["tokens"]:
                problems.append("tokens %s != %s" % (res["tokens"], man["tokens"]))
            if res["capacity"] != c["capacity"]:
                problems.append("capacity %s != %s" % (res["capacity"], c["capacity"]))
            g_ok = len(res["capacity_factor"]) == len(c["gamma"]) and all(
                (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-9)
                for a, b in zip(res["capacity_factor"], c["gamma"]))
            if not g_ok:
                problems.append("capacity_factor %s != %s" % (res["capacity_factor"], c["gamma"]))
            if res["loads"] != c["loads"]:
                problems.append("loads %s != %s" % (res["loads"], c["loads"]))
            if res["dropped"] != c["dropped"] or res["rerouted"] != c["rerouted"]:
                problems.append("dropped/rerouted %s/%s != %s/%s" % (res["dropped"], res["rerouted"],
                                                                     c["dropped"], c["rerouted"]))
            status = "ok" if not problems else "FAIL " + "; ".join(problems)
            label = c["name"] + (" (%s)" % c["form"] if c["form"] else "")
            print("%s %-26s %s" % (os.path.basename(fixture), label, status))
            failures += bool(problems)
        # policy piggyback and the regime split (parity/piggyback.json, made by
        # tests/fixtures/gen/piggyback_fixtures.py): logits, loads, activated
        # experts per layer, piggybacked / dropped pairs
        pbf = os.path.join(fixture, "parity", "piggyback.json")
        pb = json.load(open(pbf))["cases"] if os.path.isfile(pbf) else []
        if quick:
            pb = pb[:1]
        for c in pb:
            out = os.path.join(td, c["name"] + ".bin")
            res = run([binary, "logits", "--model", fixture] + ids_args + ["--out", out] + c["args"])
            got = read_f32(out)
            ref = read_f32(os.path.join(fixture, "parity", c["logits"]))
            problems = []
            if len(got) != len(ref):
                problems.append("logits size %d != %d" % (len(got), len(ref)))
            else:
                err = max(abs(a - b) for a, b in zip(got, ref)) / max(abs(x) for x in ref)
                if not err < TOL:
                    problems.append("logits relative error %.3g >= %g" % (err, TOL))
            for key in ("capacity", "loads", "activated", "dropped", "rerouted", "piggybacked"):
                if res[key] != c[key]:
                    problems.append("%s %s != %s" % (key, res[key], c[key]))
            print("%s %-26s %s" % (os.path.basename(fixture), c["name"],
                                   "ok" if not problems else "FAIL " + "; ".join(problems)))
            failures += bool(problems)
    if not quick:
        for g in man["generate"]:
            res = run([binary, "generate", "--model", fixture, "--ids", ",".join(map(str, g["prompt"])),
                       "--max-tokens", str(len(g["continuation"]))])
            ok = res["ids"] == g["continuation"]
            print("%s generate %s -> %s %s" % (os.path.basename(fixture), g["prompt"], res["ids"],
                                               "ok" if ok else "FAIL expected %s" % g["continuation"]))
            failures += not ok
        for t in man["tokenizer"]:
            res = run([binary, "tokenize", "--model", fixture, "--text", t["text"]])
            ok = res["ids"] == t["ids"]
            if t["ids_plain"]:
                d = run([binary, "detokenize", "--model", fixture, "--ids",
                         ",".join(map(str, t["ids_plain"]))])
                ok = ok and d["text"] == t["decoded"]
            print("%s tokenize %r %s" % (os.path.basename(fixture), t["text"],
                                         "ok" if ok else "FAIL got %s expected %s" % (res["ids"], t["ids"])))
            failures += not ok
    print("%s: %d failures" % (os.path.basename(fixture), failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
