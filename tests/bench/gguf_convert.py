#!/usr/bin/env python3
"""Converts a capmoe synth checkpoint (Hugging Face layout) to a GGUF with
llama.cpp's own convert_hf_to_gguf.py, for the side-by-side benchmark
(tests/bench/llama_side_by_side.sh, tests/bench/quant_side_by_side.sh).

usage: gguf_convert.py LLAMA_CPP_DIR MODEL_DIR OUT.gguf [--outtype bf16]

Needs numpy and PyTorch (Debian: python3-numpy python3-torch); without the
`safetensors` package (not in Debian) the checkpoint is read by a small
reader of the format below; transformers is not needed (the tokenizer
fallbacks below).

The synth checkpoints carry this project's trained BPE tokenizer, whose
pre-tokenizer hash llama.cpp does not know; the converter then stops with
"BPE pre-tokenizer was not recognized". The benchmark feeds token ids, not
text, so an unrecognised hash is mapped to llama.cpp's "gpt-2" pre-tokenizer
(byte-level, like ours) instead; everything else is llama.cpp's code,
unchanged, run from its own tree (never copied into this repository)."""
import os
import sys
import types


def safetensors_reader():
    """A module standing in for the `safetensors` package (not in Debian):
    safe_open(path, framework="pt") with keys(), get_tensor() and get_slice()
    as the converter uses them, reading the format (an 8-byte little-endian
    header length, a JSON header of dtype / shape / data_offsets, the data)
    through a read-only numpy memmap."""
    import json as _json
    import numpy as np
    import torch

    dtypes = {"BF16": (np.int16, torch.bfloat16), "F16": (np.float16, None),
              "F32": (np.float32, None), "F64": (np.float64, None), "I64": (np.int64, None),
              "I32": (np.int32, None), "I16": (np.int16, None), "I8": (np.int8, None),
              "U8": (np.uint8, None), "BOOL": (np.bool_, None)}

    class Slice:
        def __init__(self, f, name):
            self.f, self.meta = f, f.header[name]

        def get_dtype(self):
            return self.meta["dtype"]

        def get_shape(self):
            return list(self.meta["shape"])

        def __getitem__(self, idx):
            t = self.f.tensor(self.meta)
            return t if idx == slice(None) else t[idx]

    class SafeOpen:
        def __init__(self, path, framework="pt", device="cpu"):
            del framework, device
            with open(path, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                self.header = _json.loads(fh.read(n))
            self.header.pop("__metadata__", None)
            self.data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)

        def tensor(self, meta):
            if meta["dtype"] not in dtypes:
                raise ValueError("safetensors dtype %s not supported here" % meta["dtype"])
            np_t, torch_t = dtypes[meta["dtype"]]
            a, b = meta["data_offsets"]
            arr = np.array(self.data[a:b]).view(np_t).reshape(meta["shape"])
            t = torch.from_numpy(arr)
            return t.view(torch_t) if torch_t is not None else t

        def keys(self):
            return list(self.header.keys())

        def get_tensor(self, name):
            return self.tensor(self.header[name])

        def get_slice(self, name):
            return Slice(self, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    mod = types.ModuleType("safetensors")
    mod.safe_open = SafeOpen
    return mod


def main():
    llama, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
    outtype = "bf16"
    if "--outtype" in sys.argv:
        outtype = sys.argv[sys.argv.index("--outtype") + 1]
    sys.path.insert(0, llama)
    sys.path.insert(1, os.path.join(llama, "gguf-py"))
    try:
        import sentencepiece  # noqa: F401  (gguf-py imports it at the top)
    except ImportError:
        # only SentencePiece tokenizers (tokenizer.model) use it; ours is BPE
        stub = types.ModuleType("sentencepiece")

        class SentencePieceProcessor:  # noqa: D401
            def __init__(self, *a, **k):
                raise ImportError("sentencepiece is not installed")
        stub.SentencePieceProcessor = SentencePieceProcessor
        sys.modules["sentencepiece"] = stub
    import torch
    # Debian's PyTorch (1.13) predates the float8 dtypes the converter names
    # in its table of safetensors dtypes; the synth checkpoints are BF16, so
    # those entries are never used: stand-ins let the module import.
    for name in ("float8_e4m3fn", "float8_e5m2"):
        if not hasattr(torch, name):
            setattr(torch, name, torch.uint8)
    try:
        import safetensors  # noqa: F401
    except ImportError:
        sys.modules["safetensors"] = safetensors_reader()
    import convert_hf_to_gguf as conv

    for name in ("Model", "TextModel"):
        cls = getattr(conv, name, None)
        if cls is None or not hasattr(cls, "get_vocab_base_pre"):
            continue
        orig = cls.get_vocab_base_pre

        def patched(self, tokenizer, _orig=orig):
            try:
                return _orig(self, tokenizer)
            except NotImplementedError:
                print("gguf_convert: unknown BPE pre-tokenizer hash: using 'gpt-2'", file=sys.stderr)
                return "gpt-2"

        cls.get_vocab_base_pre = patched

    # Last resort, should the tokenizer not convert at all: a plain
    # vocabulary of the model's size (token ids are all the benchmark uses).
    def plain_vocab(self, e):
        print("gguf_convert: the tokenizer did not convert (%r): a plain vocabulary" % (e,),
              file=sys.stderr)
        n = int(self.hparams.get("vocab_size", 8192))
        g = conv.gguf
        toks = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
        toks += ["<t%d>" % i for i in range(len(toks), n)]
        kinds = [g.TokenType.UNKNOWN, g.TokenType.CONTROL, g.TokenType.CONTROL]
        kinds += [g.TokenType.BYTE] * 256 + [g.TokenType.NORMAL] * max(0, n - 259)
        self.gguf_writer.add_tokenizer_model("llama")
        self.gguf_writer.add_tokenizer_pre("default")
        self.gguf_writer.add_token_list(toks[:n])
        self.gguf_writer.add_token_scores([0.0] * n)
        self.gguf_writer.add_token_types(kinds[:n])
        self.gguf_writer.add_bos_token_id(1)
        self.gguf_writer.add_eos_token_id(2)
        self.gguf_writer.add_unk_token_id(0)

    for obj in list(vars(conv).values()):
        if isinstance(obj, type) and "set_vocab" in obj.__dict__:
            def set_vocab(self, _orig=obj.__dict__["set_vocab"]):
                try:
                    return _orig(self)
                except Exception as e:  # noqa: BLE001
                    return plain_vocab(self, e)
            obj.set_vocab = set_vocab
    sys.argv = ["convert_hf_to_gguf.py", model, "--outtype", outtype, "--outfile", out]
    conv.main()


if __name__ == "__main__":
    main()
