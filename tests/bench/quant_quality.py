#!/usr/bin/env python3
"""quant_quality.py - the README's quality table for --weights (issue 13):
`capmoe perplexity` of a model at bf16 / q8 / q4 (the routed experts
quantized, --quantize experts) and q8 / q4 with --quantize all (attention,
shared and dense MLPs and lm_head too), under policy none and under drop with
gamma 1.5, on the first N tokens of the held-out split, with each format's
change against bf16.

    python3 tests/bench/quant_quality.py [--model config/model]
        [--file tests/train/heldout.txt] [--max-tokens 32768] [--capmoe build/capmoe]

Standard library only."""
import argparse
import json
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="config/model")
    ap.add_argument("--file", default="tests/train/heldout.txt")
    ap.add_argument("--max-tokens", default="32768")
    ap.add_argument("--capmoe", default="build/capmoe")
    a = ap.parse_args()
    pols = [("none", []), ("drop, gamma 1.5", ["--policy", "drop", "--capacity-factor", "1.5"])]
    res = {}
    formats = [("bf16", "bf16", []), ("q8", "q8", []), ("q4", "q4", []),
               ("q8, --quantize all", "q8", ["--quantize", "all"]),
               ("q4, --quantize all", "q4", ["--quantize", "all"])]
    for label, w, scope in formats:
        for name, extra in pols:
            p = subprocess.run([a.capmoe, "perplexity", "--model", a.model, "--file", a.file, "--max-tokens",
                                a.max_tokens, "--weights", w] + scope + extra, capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit("perplexity %s %s failed: %s" % (label, name, p.stderr))
            res[(label, name)] = json.loads(p.stdout)
    print("| weights | perplexity, none | vs bf16 | perplexity, drop gamma 1.5 | vs bf16 | quantization at load |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, w, _ in formats:
        cells = []
        for name, _ in pols:
            p, b = res[(label, name)]["perplexity"], res[("bf16", name)]["perplexity"]
            cells += ["%.3f" % p, "–" if w == "bf16" else "%+.2f%%" % (100 * (p / b - 1))]
        pk = res[(label, "none")].get("pack_s", 0)
        cells.append("–" if w == "bf16" else "%.2f s" % pk)
        print("| %s | %s |" % (label, " | ".join(cells)))
    print("\n%s, first %d scored tokens of %s (`capmoe perplexity` defaults: context 256, stride 128)."
          % (a.model, res[("bf16", "none")]["tokens"], a.file))


if __name__ == "__main__":
    main()
