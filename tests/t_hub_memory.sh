#!/bin/sh
# t_hub_memory.sh - the README's table of hub MoE models and their memory
# (tests/hub/moe_memory.py):
#  - the parameter formula equals the real count of every test fixture's
#    safetensors files (six architectures, latent attention, dense layers, shared experts,
#    tied embeddings, q/k norms and biases);
#  - the script's own check against the model cards' published totals can
#    fail (a wrong card number is refused);
#  - the table in README.md is exactly what the script prints.
set -u
cd "$(dirname "$0")/.."
PY3=python3
[ -x /usr/bin/python3 ] && PY3=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rc=0
$PY3 - <<'PY' || rc=1
import glob, json, struct, subprocess, sys
dirs = sorted(glob.glob("tests/fixtures/*-tiny"))
out = json.loads(subprocess.check_output([sys.executable, "tests/hub/moe_memory.py", "--config"] +
                                         [d + "/config.json" for d in dirs]))
bad = 0
for d in dirs:
    real = 0
    for f in glob.glob(d + "/*.safetensors"):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            for name, t in json.loads(fh.read(n)).items():
                if name != "__metadata__" and not name.endswith("_scale_inv"):  # FP8 block scales: not parameters
                    p = 1
                    for x in t["shape"]:
                        p *= x
                    real += p
    got = out[d + "/config.json"]["total"]
    print("%s: formula %d, safetensors %d" % (d, got, real))
    bad += got != real
sys.exit(1 if bad or len(dirs) < 8 else 0)
PY
sed 's/"card": {"total_b": 30.5, "active_b": 3.3}/"card": {"total_b": 32.5, "active_b": 3.3}/' \
  tests/hub/moe_memory.py > "$tmp/wrong.py"
if $PY3 "$tmp/wrong.py" > "$tmp/wrong.out" 2>&1 || ! grep -q "Qwen3-30B-A3B: computed total 30.53 B, the model card says 32.5 B" "$tmp/wrong.out"; then
  echo "t_hub_memory: a wrong model-card total was not refused: $(cat "$tmp/wrong.out")"; rc=1
fi
$PY3 tests/hub/moe_memory.py > "$tmp/table.md" || rc=1
sed -n '/^<!-- tests\/hub\/moe_memory.py: begin -->$/,/^<!-- tests\/hub\/moe_memory.py: end -->$/p' README.md \
  | sed '1d;$d' > "$tmp/readme.md"
if ! diff "$tmp/table.md" "$tmp/readme.md" > "$tmp/diff"; then
  echo "t_hub_memory: README.md's table differs from python3 tests/hub/moe_memory.py:"; cat "$tmp/diff"; rc=1
fi
[ "$rc" = 0 ] && echo "t_hub_memory: ok"
exit $rc
