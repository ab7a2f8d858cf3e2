#!/usr/bin/env python3
"""compare.py - compares capmoe's renders with the references.

    compare.py CASES.json PY.json C.json JS.json DIVERGENCES.json [TRANSFORMERS.json]

PY.json (Python's jinja2) is the truth. For every case:
  chat, snippet  capmoe's output is byte-identical to Jinja2's, or both fail;
                 when Jinja2 fails with raise_exception's TemplateError,
                 capmoe's message carries the same text
  bad/compile    both refuse the template when compiling it
  bad/render     Jinja2 fails while rendering; capmoe fails too (compiling
                 or rendering)
  bad/refused    capmoe refuses the template when compiling it (a construct
                 Jinja2 has but chat templates do not need)
JS.json (@huggingface/jinja) is the second reference, on the real chat
templates: capmoe's output equals it byte for byte, except for the cases
DIVERGENCES.json lists, each with the reason the JavaScript engine differs
from Jinja2 there (verified: it must differ from Jinja2 on each of them, so
the list cannot go stale). Prints "N passed, N failed"."""
import fnmatch
import hashlib
import json
import sys


def load(p):
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def first_diff(a, b):
    n = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
    return f"at char {n}: ...{a[max(0, n - 30):n + 30]!r} vs ...{b[max(0, n - 30):n + 30]!r}"


def main():
    cases, py, c, js, div = (load(p) for p in sys.argv[1:6])
    tf = load(sys.argv[6])["cases"] if len(sys.argv) > 6 else None
    tf_same = 0
    divergences = div["divergences"]
    passed = failed = 0
    js_same = js_listed = 0
    used = set()
    for case in cases["cases"]:
        cid, kind = case["id"], case["kind"]
        r, k = py[cid], c[cid]
        problem = None
        if kind in ("chat", "snippet"):
            if "out" in r:
                if "out" not in k:
                    problem = f"Jinja2 rendered {r['out'][:200]!r} but capmoe failed: {k['error']}"
                elif k["out"] != r["out"]:
                    problem = "outputs differ " + first_diff(r["out"], k["out"])
            else:
                if "out" in k:
                    problem = f"Jinja2 failed ({r['error']}) but capmoe rendered {k['out'][:200]!r}"
                elif r["error"].startswith("TemplateError: ") and r["error"][15:] not in k["error"]:
                    problem = f"raise_exception messages differ: {r['error']!r} vs {k['error']!r}"
        else:
            expect = case["expect"]
            if expect == "compile" and not (r.get("compile") and k.get("compile")):
                problem = f"both should refuse it at compile time: Jinja2 {r}, capmoe {k}"
            elif expect == "render" and ("out" in r or r.get("compile") or "out" in k):
                problem = f"Jinja2 should fail while rendering and capmoe fail: Jinja2 {r}, capmoe {k}"
            elif expect == "refused" and not k.get("compile"):
                problem = f"capmoe should refuse it at compile time: {k}"
            elif "error" in k and not k["error"].strip():
                problem = "empty error message"
        if kind == "chat" and tf is not None:
            t = tf.get(cid)
            digest = hashlib.sha256((cases["templates"][case["template"]] + "\0" +
                                     json.dumps(case["vars"], sort_keys=True, ensure_ascii=False)).encode()).hexdigest()[:16]
            if t is None or t["input"] != digest:
                problem = problem or ("not recorded with transformers, or its template / variables changed since: "
                                      "regenerate with tests/fixtures/gen/device_jinja_transformers.sh")
            elif ("out" in t) != ("out" in k) or ("out" in t and t["out"] != k["out"]):
                problem = problem or f"differs from transformers: {t} vs {k}"
            else:
                tf_same += 1
        if kind == "chat":
            j = js[cid]
            same = ("out" in j and "out" in k and j["out"] == k["out"]) or ("error" in j and "error" in k)
            listed = [d for d in divergences if fnmatch.fnmatchcase(cid, d["cases"])]
            if same:
                js_same += 1
            elif listed:
                js_listed += 1
                used.update(d["cases"] for d in listed)
                jpy = ("out" in j and "out" in r and j["out"] == r["out"]) or ("error" in j and "error" in r)
                if jpy:
                    problem = problem or f"listed as a @huggingface/jinja divergence, but it agrees with Jinja2: {j}"
            else:
                detail = first_diff(j["out"], k["out"]) if "out" in j and "out" in k else f"{j} vs {k}"
                problem = problem or f"capmoe and @huggingface/jinja differ ({detail}), not a listed divergence"
        if problem:
            failed += 1
            print(f"FAIL {cid}: {problem}")
        else:
            passed += 1
    for d in divergences:
        if d["cases"] not in used:
            failed += 1
            print(f"FAIL divergence entry {d['cases']!r} matches no differing case (stale)")
    n_chat = sum(1 for x in cases["cases"] if x["kind"] == "chat")
    print(f"chat renders: {n_chat} ({len({x['template'] for x in cases['cases'] if x['kind'] == 'chat'})} templates); "
          f"identical to @huggingface/jinja: {js_same}, listed divergences of @huggingface/jinja from Jinja2: {js_listed}"
          + (f"; identical to transformers 5.17 (recorded): {tf_same}" if tf is not None else ""))
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
