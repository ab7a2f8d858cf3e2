#!/usr/bin/env python3
"""Converts a capmoe synth checkpoint (Hugging Face layout) to a GGUF with
llama.cpp's own convert_hf_to_gguf.py, for the side-by-side benchmark
(tests/bench/llama_side_by_side.sh).

usage: gguf_convert.py LLAMA_CPP_DIR MODEL_DIR OUT.gguf [--outtype bf16]

The synth checkpoints carry this project's trained BPE tokenizer, whose
pre-tokenizer hash llama.cpp does not know; the converter then stops with
"BPE pre-tokenizer was not recognized". The benchmark feeds token ids, not
text, so an unrecognised hash is mapped to llama.cpp's "gpt-2" pre-tokenizer
(byte-level, like ours) instead; everything else is llama.cpp's code,
unchanged, run from its own tree (never copied into this repository)."""
import os
import sys


def main():
    llama, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
    outtype = "bf16"
    if "--outtype" in sys.argv:
        outtype = sys.argv[sys.argv.index("--outtype") + 1]
    sys.path.insert(0, llama)
    sys.path.insert(1, os.path.join(llama, "gguf-py"))
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
    sys.argv = ["convert_hf_to_gguf.py", model, "--outtype", outtype, "--outfile", out]
    conv.main()


if __name__ == "__main__":
    main()
