#!/usr/bin/env python3
"""render_ref.py - the reference renderer: Python's jinja2 (Debian's
python3-jinja2, the engine transformers uses) in the environment that
transformers builds in transformers/utils/chat_template_utils.py
(_compile_jinja_template): ImmutableSandboxedEnvironment(trim_blocks=True,
lstrip_blocks=True, extensions=[loopcontrols, the {% generation %} tag]), its
tojson filter (json.dumps(x, ensure_ascii=False, indent=None,
separators=None, sort_keys=False)), raise_exception (TemplateError) and
strftime_now (datetime.now().strftime, here at the fixed time "now" of the
cases file, in UTC, as the C side renders it).

    render_ref.py CASES.json OUT.json

Same input and output format as tests/jinja/jinja_render.c. Needs only
jinja2 (no transformers): the environment is rebuilt here from the settings
above."""
import json
import sys
from datetime import datetime, timezone

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class Generation(jinja2.ext.Extension):
    """transformers' {% generation %} ... {% endgeneration %} tag: renders its body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_env(now):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.fromtimestamp(now, timezone.utc).strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: render_ref.py CASES.json OUT.json")
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    env = make_env(spec.get("now", 0))
    compiled = {}
    for name, src in spec["templates"].items():
        try:
            compiled[name] = env.from_string(src)
        except Exception as e:  # noqa: BLE001 - any compile error is a result
            compiled[name] = e
    out = {}
    for case in spec["cases"]:
        t = compiled[case["template"]]
        if isinstance(t, Exception):
            out[case["id"]] = {"error": f"{type(t).__name__}: {t}", "compile": True}
            continue
        vars_ = json.loads(case["vars_text"]) if "vars_text" in case else case["vars"]
        try:
            out[case["id"]] = {"out": t.render(**vars_)}
        except Exception as e:  # noqa: BLE001
            out[case["id"]] = {"error": f"{type(e).__name__}: {e}"}
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
