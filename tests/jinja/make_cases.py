#!/usr/bin/env python3
"""make_cases.py - builds the parity cases: every template of
templates/index.json (real chat templates) with every conversation of
conversations.json, with and without add_generation_prompt, plus the
snippets of snippets.json (small templates that each exercise one corner of
Jinja's semantics) and bad_templates.json (templates that must fail to
compile, or to render, in both engines).

    make_cases.py OUT.json

The template variables are the ones transformers' apply_chat_template
passes: messages, tools (None when absent), documents (None when absent),
add_generation_prompt, the tokenizer's special tokens (bos_token, ...) and
the conversation's extra keyword arguments (enable_thinking, ...)."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NOW = 1733328000  # 2024-12-04 16:00 UTC: what strftime_now renders in the tests


def load(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return json.load(f)


def main():
    index = load("templates/index.json")
    convs = load("conversations.json")["conversations"]
    templates, cases = {}, []
    for tname, entry in sorted(index.items()):
        with open(os.path.join(HERE, "templates", entry["file"]), encoding="utf-8", newline="") as f:
            templates[tname] = f.read()
        special = {k: entry[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if k in entry}
        for conv in convs:
            for gen in (False, True):
                vars_ = {"messages": conv["messages"], "tools": conv.get("tools"),
                         "documents": conv.get("documents"), "add_generation_prompt": gen}
                vars_.update(special)
                vars_.update(conv.get("extra", {}))
                cases.append({"id": f"{tname}/{conv['name']}/{'gen' if gen else 'nogen'}",
                              "template": tname, "vars": vars_, "kind": "chat"})
    snip_vars = load("snippets.json")["vars"]
    for i, s in enumerate(load("snippets.json")["snippets"]):
        name = f"snippet{i:03d}"
        templates[name] = s
        cases.append({"id": name, "template": name, "vars": snip_vars, "kind": "snippet"})
    for i, b in enumerate(load("bad_templates.json")["templates"]):
        name = f"bad{i:03d}"
        templates[name] = b["template"]
        cases.append({"id": name, "template": name, "vars": snip_vars, "kind": "bad", "expect": b["expect"]})
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump({"now": NOW, "templates": templates, "cases": cases}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
