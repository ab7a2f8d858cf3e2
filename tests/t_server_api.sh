#!/bin/sh
# t_server_api.sh - black-box test of capmoe-server's HTTP API on 127.0.0.1:
# every error class (400 malformed / types / ranges / context / UTF-8 / deep
# JSON / huge numbers, 401, 404, 405 + Allow, 413 from Content-Length and
# chunked, 429 + Retry-After), routing, and the exact shapes and usage of
# completions, chat, streams, tokenize / detokenize (tests/server/api.mjs).
set -u
cd "$(dirname "$0")/.."
. tests/server/common.sh
BUILD="${CAPMOE_BUILD:-build}"
MODEL_DIR=tests/fixtures/qwen3moe-tiny
tmp=$(mktemp -d)
trap 'srv_kill; rm -rf "$tmp"' EXIT
key="k-$$"
max_body=65536
srv_start "$BUILD/capmoe-server" "$tmp/server.log" --model "$MODEL_DIR" --api-key "$key" \
  --max-body-bytes $max_body --max-running 2 --max-queue 1 --max-batch-tokens 64 || exit 1
rc=0
CAPMOE_URL="$SRV_URL" CAPMOE_KEY="$key" CAPMOE_MODEL_ID=qwen3moe-tiny CAPMOE_MAX_BODY=$max_body \
  node --test-reporter=spec tests/server/api.mjs || rc=1
kill -TERM "$SRV_PID"; srv_wait_exit 20
if [ "$SRV_RC" != 0 ]; then echo "t_server_api: exit status $SRV_RC after SIGTERM (want 0)"; rc=1; fi
if [ "$rc" != 0 ]; then echo "--- server log"; tail -n 30 "$tmp/server.log"; exit 1; fi
echo "t_server_api: ok"
