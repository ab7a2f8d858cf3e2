#!/bin/sh
# t_chat_template.sh - capmoe-server renders chat requests with the model's
# own chat template (core/chat.c + the Jinja interpreter), or with
# --chat-template: the prompt a chat request gets is exactly the template's
# text (its tokens are compared with /tokenize of the expected text); a
# template that raises answers 400 with its message; a template capmoe
# cannot compile stops the server at start with the construct and position,
# unless --chat-template (a file or a built-in family) replaces it.
set -u
cd "$(dirname "$0")/.."
. tests/server/common.sh
BUILD="${CAPMOE_BUILD:-build}"
BIN="$BUILD/capmoe-server"
tmp=$(mktemp -d)
trap 'srv_kill; rm -rf "$tmp"' EXIT
fails=0

check() { # messages mode want
  if ! node tests/server/chat_template.mjs "$SRV_URL" "$@"; then fails=$((fails + 1)); fi
}
stop() { kill -TERM "$SRV_PID"; srv_wait_exit 20; }
# start_fails WORD WORD2 ARGS...: the server exits non-zero at start, its log names both words
start_fails() {
  w1="$1"; w2="$2"; shift 2
  "$BIN" --host 127.0.0.1 --port 0 "$@" > "$tmp/fail.log" 2>&1 &
  pid=$!
  t=0; while kill -0 "$pid" 2>/dev/null && [ $t -lt 100 ]; do sleep 0.1; t=$((t + 1)); done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; wait "$pid"; echo "FAIL: server started with $*"; fails=$((fails + 1)); return; fi
  wait "$pid"; rc=$?
  if [ "$rc" = 0 ] || ! grep -q -- "$w1" "$tmp/fail.log" || ! grep -q -- "$w2" "$tmp/fail.log"; then
    echo "FAIL (rc=$rc, want '$w1' and '$w2'): $*"; head -5 "$tmp/fail.log"; fails=$((fails + 1))
  else
    echo "ok   refused at start: $(grep -m1 -- "$w1" "$tmp/fail.log" | head -c 200)"
  fi
}

HI='[{"role": "user", "content": "hi"}]'
CHATML_HI='"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"'

# the model's own templates
srv_start "$BIN" "$tmp/a.log" --model tests/fixtures/qwen3moe-tiny || exit 1
grep -q "chat_template=\"tests/fixtures/qwen3moe-tiny/tokenizer_config.json chat_template\"" "$tmp/a.log" \
  || { echo "FAIL: the log does not name the template"; fails=$((fails + 1)); }
check "$HI" --prompt "$CHATML_HI"
check '[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "h\u00e9 \ud83d\ude80"}]' --prompt \
  '"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhé 🚀<|im_end|>\n<|im_start|>assistant\n"'
stop
srv_start "$BIN" "$tmp/b.log" --model tests/fixtures/mixtral-tiny || exit 1
check "$HI" --prompt '"<s>[INST] hi [/INST]"'
check '[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]' --error \
  '"Conversation roles must alternate user/assistant/user/assistant/..."'
stop

# a model whose template capmoe refuses: no start, unless --chat-template replaces it
mkdir -p "$tmp/m"
for f in tests/fixtures/qwen3moe-tiny/*; do ln -s "$PWD/$f" "$tmp/m/$(basename "$f")"; done
rm "$tmp/m/tokenizer_config.json"
sed 's/{% for message in messages %}/{% for message in messages recursive %}/' \
  tests/fixtures/qwen3moe-tiny/tokenizer_config.json > "$tmp/m/tokenizer_config.json"
start_fails "recursive" "--chat-template" --model "$tmp/m"
start_fails "nosuch" "chatml" --model "$tmp/m" --chat-template nosuch
printf '{%% if %%}' > "$tmp/broken.jinja"
start_fails "broken.jinja, line 1" "expected" --model "$tmp/m" --chat-template "$tmp/broken.jinja"
srv_start "$BIN" "$tmp/c.log" --model "$tmp/m" --chat-template chatml || exit 1
check "$HI" --prompt "$CHATML_HI"
stop
printf '{%% for m in messages %%}[{{ m.role }}] {{ m.content|upper }}\n{%% endfor %%}' > "$tmp/mine.jinja"
CAPMOE_CHAT_TEMPLATE="$tmp/mine.jinja" srv_start "$BIN" "$tmp/d.log" --model "$tmp/m" || exit 1
check "$HI" --prompt '"[user] HI\n"'
stop

if [ "$fails" != 0 ]; then echo "t_chat_template: $fails failure(s)"; exit 1; fi
echo "t_chat_template: ok"
