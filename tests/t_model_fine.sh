#!/bin/sh
# t_model_fine.sh - the shipped fine-grained model (config/model-fine, trained
# by tests/train/train_fine.py; its record is tests/train/train_fine_report.json):
#  - the C engine's held-out perplexity (tests/train/heldout.txt, windows of
#    512 tokens, each scored from its own start) equals PyTorch's fp32 value
#    in the record (relative 1e-4), over the same number of scored tokens;
#  - greedy continuations of the record's prompts are PyTorch's ids.
set -eu
cd "$(dirname "$0")/.."
B="${CAPMOE_BUILD:-build}/capmoe"
M=config/model-fine
R=tests/train/train_fine_report.json
"$B" perplexity --model $M --file tests/train/heldout.txt --context 512 --stride 512 --batch 8 > /tmp/fine_ppl.$$
python3 - /tmp/fine_ppl.$$ "$R" "$B" "$M" <<'PY'
import json, subprocess, sys
got = json.load(open(sys.argv[1]))
rep = json.load(open(sys.argv[2]))
ref = rep["heldout"]["512"]
rel = abs(got["perplexity"] - ref["perplexity"]) / ref["perplexity"]
print("held-out perplexity: capmoe %.6f over %d tokens, PyTorch %.6f over %d (rel %.1e)" % (
    got["perplexity"], got["tokens"], ref["perplexity"], ref["scored_tokens"], rel))
assert got["tokens"] == ref["scored_tokens"], (got["tokens"], ref["scored_tokens"])
assert rel < 1e-4, rel
for r in rep["reference_continuations"]:
    out = json.loads(subprocess.run([sys.argv[3], "generate", "--model", sys.argv[4], "--ids",
                                     ",".join(map(str, r["prompt_ids"])), "--max-tokens",
                                     str(len(r["greedy_ids"]))], capture_output=True, text=True,
                                    check=True).stdout)
    print("greedy %r: %s" % (r["prompt"], "ok" if out["ids"] == r["greedy_ids"] else "DIFFERS"))
    assert out["ids"] == r["greedy_ids"], (out["ids"], r["greedy_ids"])
PY
rm -f /tmp/fine_ppl.$$
echo "t_model_fine: ok"
