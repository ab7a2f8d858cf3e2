#!/bin/sh
# t_tool_forms.sh - function calling in each tool-call form, streamed and not
# (tests/client/tools_forms.mjs; on /v1/responses
# tests/client/responses_forms.mjs): the shipped default model in a
# temporary directory whose tokenizer_config.json carries a real template
# (tests/jinja/templates: Qwen3 with <tool_call>, Mistral v0.3 with [TOOL_CALLS], Llama 3.2 with JSON
# calls, DeepSeek-V3 with its markers; Phi-3.5-MoE without tools, where
# required / named is refused). The other files are links to config/model.
# Then the DeepSeek-V3 fixture as it is (its own template and tokenizer).
set -u
cd "$(dirname "$0")/.."
. tests/client/server.sh
BUILD="${CAPMOE_BUILD:-build}"
tmp=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1; rm -rf "$tmp"' EXIT

client_deps || { echo "t_tool_forms: npm ci in tests/client failed"; exit 1; }
key="capmoe-test-$$"
fails=0
for pair in hermes:npm_qwen3 mistral:card_mistral_v3_tools llama3:card_llama3_2_tools deepseek:npm_deepseek_v3 \
            none:card_phi35_moe; do
  form=${pair%%:*}; tpl=${pair#*:}
  dir="$tmp/$form"
  mkdir -p "$dir"
  for f in config/model/*; do
    [ "$(basename "$f")" = tokenizer_config.json ] || ln -s "$(pwd)/$f" "$dir/"
  done
  python3 - config/model/tokenizer_config.json "tests/jinja/templates/$tpl.jinja" "$dir/tokenizer_config.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["chat_template"] = open(sys.argv[2]).read()
json.dump(cfg, open(sys.argv[3], "w"))
PY
  start_server "$BUILD/capmoe-server" "$tmp/$form.log" --model "$dir" --api-key "$key" || exit 1
  rc=0
  CAPMOE_TOOLS_URL="$SERVER_URL" CAPMOE_API_KEY="$key" CAPMOE_TOOL_FORM="$form" \
    node --test-reporter=spec tests/client/tools_forms.mjs || rc=$?
  CAPMOE_TOOLS_URL="$SERVER_URL" CAPMOE_API_KEY="$key" CAPMOE_TOOL_FORM="$form" \
    node --test-reporter=spec tests/client/responses_forms.mjs || rc=$?
  stop_server; src=$?
  case $form in deepseek) logged=deepseek_v3 ;; none) logged=unknown ;; *) logged=$form ;; esac
  if ! grep "model loaded; ready" "$tmp/$form.log" | grep -q "tool_calls=$logged"; then
    echo "t_tool_forms: the ready record does not say tool_calls=$logged"; rc=1
  fi
  if [ "$src" != 0 ] || [ "$rc" != 0 ]; then
    echo "t_tool_forms: $form ($tpl) failed (rc $rc, server $src); server log:"; tail -n 30 "$tmp/$form.log"
    fails=$((fails + 1))
  fi
done
# a model directory as shipped with its own template and tokenizer (the
# DeepSeek-V3 fixture: the markers tokenized by its own vocabulary)
start_server "$BUILD/capmoe-server" "$tmp/fixture.log" --model tests/fixtures/deepseekv3-tiny \
  --api-key "$key" || exit 1
rc=0
CAPMOE_TOOLS_URL="$SERVER_URL" CAPMOE_API_KEY="$key" CAPMOE_TOOL_FORM=deepseek \
  node --test-reporter=spec tests/client/tools_forms.mjs || rc=$?
stop_server; src=$?
if [ "$src" != 0 ] || [ "$rc" != 0 ]; then
  echo "t_tool_forms: tests/fixtures/deepseekv3-tiny failed (rc $rc, server $src); server log:"
  tail -n 30 "$tmp/fixture.log"; fails=$((fails + 1))
fi
[ "$fails" = 0 ] || exit 1
echo "t_tool_forms: ok"
