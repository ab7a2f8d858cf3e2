#!/usr/bin/env python3
"""mutants.py - differential fuzzing of capmoe's Jinja interpreter against
Jinja2: seeded random mutations of the real chat templates and the snippets
(characters and tag pieces inserted, spans deleted or duplicated, snippets
spliced in), rendered by both with a conversation.

    mutants.py make SEED COUNT CASES.json
    mutants.py check CASES.json PY.json C.json

check: capmoe never crashes (the C side writes every result), and for each
mutant: both render the same bytes, or both fail, or capmoe refuses what it
documents that it refuses (printing a generator or a method, whose text holds
a memory address in Python; integers beyond 64 bits; Jinja2 filters capmoe
does not support). Prints "N passed, N failed"."""
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PIECES = ["{%", "%}", "{{", "}}", "{#", "#}", "-", "+", "|", "(", ")", "[", "]", "{", "}", "'", '"', "\\", "\n",
          " ", "if", "for", "endfor", "endif", "set", "else", "elif", "in", "not", "is", "loop", "~", "**", "//",
          ".", ",", ":", "=", "==", "raw", "endraw", "macro", "endmacro", "call", "caller()", "ns",
          "namespace(", "tojson", "x", "1", "0.5", "none", "true", "\u00e9", "\U0001F680", "\t", "\r"]
DOCUMENTED = ("memory address", "64-bit", "not supported by capmoe")


def load(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return json.load(f)


def make(seed, count, out):
    rnd = random.Random(seed)
    index = load("templates/index.json")
    sources = []
    for e in sorted(index.values(), key=lambda e: e["file"]):
        with open(os.path.join(HERE, "templates", e["file"]), encoding="utf-8", newline="") as f:
            sources.append(f.read())
    snippets = load("snippets.json")["snippets"]
    convs = load("conversations.json")["conversations"]
    templates, cases = {}, []
    for n in range(count):
        s = list(rnd.choice(sources + snippets))
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(len(s) + 1)
            op = rnd.random()
            if op < 0.35:
                s[i:i] = list(rnd.choice(PIECES))
            elif op < 0.7 and i < len(s):
                del s[i:i + rnd.randint(1, 8)]
            elif op < 0.85:
                j = rnd.randrange(len(s) + 1)
                s[i:i] = s[j:j + rnd.randint(1, 30)]
            else:
                s[i:i] = list(rnd.choice(snippets))
        name = f"mutant{n:04d}"
        templates[name] = "".join(s)
        conv = rnd.choice(convs)
        cases.append({"id": name, "template": name, "kind": "mutant",
                      "vars": {"messages": conv["messages"], "tools": conv.get("tools"), "documents": None,
                               "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>",
                               "xs": [3, 1, 2], "d": {"b": 2, "a": 1}}})
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"now": 1733328000, "templates": templates, "cases": cases}, f, ensure_ascii=False)


def check(cases_path, py_path, c_path):
    cases, py, c = load_abs(cases_path), load_abs(py_path), load_abs(c_path)
    passed = failed = rendered = 0
    for case in cases["cases"]:
        cid = case["id"]
        r, k = py[cid], c.get(cid)
        problem = None
        if k is None:
            problem = "no result from capmoe"
        elif "out" in r and "out" in k:
            rendered += 1
            if r["out"] != k["out"]:
                problem = f"outputs differ: {r['out'][:150]!r} vs {k['out'][:150]!r}"
        elif "out" in k:
            problem = f"Jinja2 failed ({r['error'][:150]}) but capmoe rendered {k['out'][:150]!r}"
        elif "out" in r and not any(d in k["error"] for d in DOCUMENTED):
            problem = f"Jinja2 rendered {r['out'][:150]!r} but capmoe failed: {k['error'][:200]}"
        if problem:
            failed += 1
            print(f"FAIL {cid} {cases['templates'][case['template']][:300]!r}: {problem}")
        else:
            passed += 1
    print(f"mutants rendered by both: {rendered}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def load_abs(p):
    with open(p, encoding="utf-8") as f:
        return json.load(f)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        check(*sys.argv[2:5])
