#!/usr/bin/env python3
"""record_transformers.py - turns what tests/jinja/render_transformers.py
wrote (on a machine with transformers, see
tests/fixtures/gen/device_jinja_transformers.sh) into the fixture
tests/jinja/transformers_<version>.json that tests/jinja/compare.py checks
capmoe against: per chat case, transformers' output or error, and a digest
of the case's template and variables (a changed case is then noticed).

    record_transformers.py CASES.json TRANSFORMERS.json OUT.json"""
import hashlib
import json
import sys


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    with open(sys.argv[2], encoding="utf-8") as f:
        rendered = json.load(f)
    v = rendered["_versions"]
    out = {"note": f"What transformers {v['transformers']} (jinja2 {v.get('jinja2')}) renders for the chat cases of "
                   "tests/jinja/make_cases.py: transformers.utils.chat_template_utils.render_jinja_template, run by "
                   "tests/fixtures/gen/device_jinja_transformers.sh (strftime_now pinned to the cases' time). input: "
                   "sha256 of the template and variables, so a changed case is noticed (regenerate with that script "
                   "and tests/jinja/record_transformers.py).",
           "versions": v, "cases": {}}
    for c in cases["cases"]:
        if c["kind"] != "chat":
            continue
        digest = hashlib.sha256((cases["templates"][c["template"]] + "\0" +
                                 json.dumps(c["vars"], sort_keys=True, ensure_ascii=False)).encode()).hexdigest()[:16]
        r = rendered[c["id"]]
        e = {"input": digest}
        e.update({"out": r["out"]} if "out" in r else {"error": r["error"]})
        out["cases"][c["id"]] = e
    with open(sys.argv[3], "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
        f.write("\n")


if __name__ == "__main__":
    main()
