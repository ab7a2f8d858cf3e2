#!/usr/bin/env python3
"""Writes an FP8 block-quantized copy of a safetensors checkpoint, in the
format of published FP8 models (issue 13): every decoder projection
(q/k/v/o_proj, experts' w1/w2/w3 or gate/up/down_proj) as F8_E4M3 with a
float32 `<name>_scale_inv` of [ceil(N/128), ceil(K/128)] blocks, everything
else unchanged, and config.json's quantization_config {"quant_method":
"fp8", "weight_block_size": [128, 128]}. Also writes, with --dequant DIR,
the same model with those matrices dequantized (FP8 value x scale, exact in
float64, stored as F32) as an ordinary checkpoint.

usage: fp8_convert.py SRC_DIR DST_DIR [--dequant DIR] [--break KIND]
--break makes a bad checkpoint for the error tests: no-scale (one scale
tensor removed), scale-shape (one scale tensor of the wrong shape),
method (quant_method "gptq"), block (weight_block_size [100, 128]).
Standard library only (no numpy)."""
import bisect
import json
import math
import os
import re
import shutil
import struct
import sys

BLOCK = 128
PROJ = re.compile(r"\.(q_proj|k_proj|v_proj|o_proj|w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$")


def e4m3_values():
    vals = []
    for b in range(256):
        if b & 0x7f == 0x7f:
            continue  # NaN in e4m3fn
        s, e, m = b >> 7, (b >> 3) & 15, b & 7
        v = (m / 8.0) * 2.0 ** -6 if e == 0 else (1 + m / 8.0) * 2.0 ** (e - 7)
        vals.append((-v if s else v, b))
    vals.sort()
    return vals


VALS = e4m3_values()
KEYS = [v for v, _ in VALS]


def encode(x):
    """Nearest e4m3fn byte, ties to an even mantissa."""
    x = max(-448.0, min(448.0, x))
    i = bisect.bisect_left(KEYS, x)
    cands = [j for j in (i - 1, i) if 0 <= j < len(VALS)]
    best = min(cands, key=lambda j: (abs(KEYS[j] - x), VALS[j][1] & 1))
    return VALS[best][1], KEYS[best]


def read_st(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = (t["dtype"], t["shape"], data[a:b])
    return out


def to_floats(dtype, buf):
    if dtype == "F32":
        return list(struct.unpack("<%df" % (len(buf) // 4), buf))
    if dtype == "F16":
        return list(struct.unpack("<%de" % (len(buf) // 2), buf))
    if dtype == "BF16":
        hs = struct.unpack("<%dH" % (len(buf) // 2), buf)
        return list(struct.unpack("<%df" % len(hs), struct.pack("<%dI" % len(hs), *[h << 16 for h in hs])))
    raise SystemExit("unsupported dtype " + dtype)


def write_st(path, tensors):
    hdr, off, blobs = {}, 0, []
    for name in sorted(tensors):
        dtype, shape, buf = tensors[name]
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(buf)]}
        off += len(buf)
        blobs.append(buf)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def quantize(vals, N, K):
    nb, kb = -(-N // BLOCK), -(-K // BLOCK)
    q = bytearray(N * K)
    deq = [0.0] * (N * K)
    scales = []
    for i in range(nb):
        for j in range(kb):
            rows = range(i * BLOCK, min(N, (i + 1) * BLOCK))
            cols = range(j * BLOCK, min(K, (j + 1) * BLOCK))
            amax = max(abs(vals[r * K + c]) for r in rows for c in cols)
            s = struct.unpack("<f", struct.pack("<f", amax / 448.0 if amax > 0 else 1.0))[0]
            scales.append(s)
            for r in rows:
                for c in cols:
                    b, v = encode(vals[r * K + c] / s)
                    q[r * K + c] = b
                    deq[r * K + c] = v * s
    return bytes(q), struct.pack("<%df" % len(scales), *scales), [nb, kb], deq


def main():
    args = sys.argv[1:]
    src, dst = args[0], args[1]
    deq_dir = args[args.index("--dequant") + 1] if "--dequant" in args else None
    brk = args[args.index("--break") + 1] if "--break" in args else None
    files = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
    tensors = {}
    for f in files:
        tensors.update(read_st(os.path.join(src, f)))
    out, dq = {}, {}
    broken = False
    for name in sorted(tensors):
        dtype, shape, buf = tensors[name]
        if PROJ.search(name) and len(shape) == 2:
            N, K = shape
            q, s, sshape, deq = quantize(to_floats(dtype, buf), N, K)
            out[name] = ("F8_E4M3", shape, q)
            if brk == "no-scale" and not broken:
                broken = True
            elif brk == "scale-shape" and not broken:
                broken = True
                out[name + "_scale_inv"] = ("F32", [sshape[0], sshape[1] + 1], s + s[:4 * sshape[0]])
            else:
                out[name + "_scale_inv"] = ("F32", sshape, s)
            dq[name] = ("F32", shape, struct.pack("<%df" % len(deq), *deq))
        else:
            out[name] = (dtype, shape, buf)
            dq[name] = (dtype, shape, buf)
    for d, ts in ((dst, out), (deq_dir, dq)):
        if not d:
            continue
        os.makedirs(d, exist_ok=True)
        write_st(os.path.join(d, "model.safetensors"), ts)
        for f in os.listdir(src):
            if f.endswith(".json") and f != "model.safetensors.index.json":
                shutil.copy(os.path.join(src, f), os.path.join(d, f))
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["quantization_config"] = {"quant_method": "gptq" if brk == "method" else "fp8", "fmt": "e4m3",
                                  "activation_scheme": "dynamic",
                                  "weight_block_size": [100, 128] if brk == "block" else [BLOCK, BLOCK]}
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)


if __name__ == "__main__":
    main()
