#!/usr/bin/env python3
"""--compute bf16 against the transformers float64 references of the parity
fixtures (tests/fixtures/<name>/parity, policy none): the logits of the
fixture's four prompts as one batch, with every expert product through the
BF16 path (--bf16-min-rows 1), must be within BOUND relative error
(max |c - ref| / max |ref|) of the reference, and differ from the float32
run (the BF16 path really ran); float32 must stay within the parity
tolerance 1e-4. Prints the measured errors.

usage: bf16_check.py CAPMOE_BINARY FIXTURE_DIR...
Standard library only. Exit 0 when every fixture passes."""
import json
import os
import struct
import subprocess
import sys
import tempfile

BOUND = 1e-2   # measured worst 4.7e-3 over the eight fixtures (README, "--compute bf16")
F32_TOL = 1e-4


def read_f32(path):
    data = open(path, "rb").read()
    return struct.unpack("<%df" % (len(data) // 4), data)


def logits(binary, fixture, ids_args, out, extra):
    cmd = [binary, "logits", "--model", fixture] + ids_args + ["--out", out, "--policy", "none"] + extra
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), p.returncode, p.stderr.strip()))
    return read_f32(out)


def main():
    binary, fixtures = sys.argv[1], sys.argv[2:]
    failures = 0
    with tempfile.TemporaryDirectory() as td:
        for fx in fixtures:
            man = json.load(open(os.path.join(fx, "parity", "cases.json")))
            case = [c for c in man["cases"] if c["name"] == "none"][0]
            ref = read_f32(os.path.join(fx, "parity", case["logits"]))
            ids_args = []
            for p in man["prompts"]:
                ids_args += ["--ids", ",".join(str(x) for x in p)]
            f32 = logits(binary, fx, ids_args, os.path.join(td, "f32.bin"), [])
            bf = logits(binary, fx, ids_args, os.path.join(td, "bf16.bin"),
                        ["--compute", "bf16", "--bf16-min-rows", "1"])
            scale = max(abs(x) for x in ref)
            e32 = max(abs(a - b) for a, b in zip(f32, ref)) / scale
            ebf = max(abs(a - b) for a, b in zip(bf, ref)) / scale
            diff = max(abs(a - b) for a, b in zip(bf, f32))
            ok = len(bf) == len(ref) and e32 < F32_TOL and ebf < BOUND and diff > 0
            print("%-26s f32 %.2e  bf16 %.2e (bound %g)  max |bf16 - f32| %.3g  %s" % (
                os.path.basename(fx), e32, ebf, BOUND, diff, "ok" if ok else "FAIL"))
            failures += not ok
    print("bf16_check: %d failures" % failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
