#!/usr/bin/env python3
"""render_transformers.py - renders the chat cases of make_cases.py with
transformers itself (transformers.utils.chat_template_utils.render_jinja_template,
what apply_chat_template calls), to check that tests/jinja/render_ref.py
rebuilds transformers' environment faithfully. Needs transformers; run by
tests/fixtures/gen/device_jinja_transformers.sh on a machine that has it.

    render_transformers.py CASES.json OUT.json

strftime_now is pinned to the cases' "now" (UTC) by replacing the datetime
that chat_template_utils uses."""
import json
import sys
from datetime import datetime, timezone

import transformers
from transformers.utils import chat_template_utils as ctu


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    now = spec.get("now", 0)

    class FixedDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.fromtimestamp(now, timezone.utc)

    ctu.datetime = FixedDatetime
    out = {"_versions": {"transformers": transformers.__version__}}
    try:
        import jinja2
        out["_versions"]["jinja2"] = jinja2.__version__
    except ImportError:
        pass
    for case in spec["cases"]:
        if case["kind"] != "chat":
            continue
        v = dict(case["vars"])
        messages = v.pop("messages")
        tools = v.pop("tools", None)
        documents = v.pop("documents", None)
        gen = v.pop("add_generation_prompt", False)
        tmpl = spec["templates"][case["template"]]
        try:
            if hasattr(ctu, "render_jinja_template"):
                rendered, _ = ctu.render_jinja_template(conversations=[messages], tools=tools, documents=documents,
                                                         chat_template=tmpl, add_generation_prompt=gen, **v)
                out[case["id"]] = {"out": rendered[0]}
            else:  # older layout: the compiled template, rendered as apply_chat_template does
                out[case["id"]] = {"out": ctu._compile_jinja_template(tmpl).render(
                    messages=messages, tools=tools, documents=documents, add_generation_prompt=gen, **v)}
        except Exception as e:  # noqa: BLE001 - any failure is a result
            out[case["id"]] = {"error": f"{type(e).__name__}: {e}"}
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
