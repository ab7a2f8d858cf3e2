#!/bin/sh
# t_openai_client.sh - the official OpenAI Node client (npm "openai", pinned in
# tests/client/package.json) against capmoe-server on 127.0.0.1: completions,
# chat completions, streaming, logprobs, seeds, stop strings and the error
# classes (400 / 401 / 404). Then SIGTERM must end the server with exit 0.
set -u
cd "$(dirname "$0")/.."
. tests/client/server.sh
BUILD="${CAPMOE_BUILD:-build}"
MODEL_DIR="${CAPMOE_CLIENT_MODEL:-tests/fixtures/qwen3moe-tiny}"  # ChatML template
tmp=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1; rm -rf "$tmp"' EXIT

client_deps || { echo "t_openai_client: npm ci in tests/client failed"; exit 1; }
key="capmoe-test-$$"
start_server "$BUILD/capmoe-server" "$tmp/server.log" --model "$MODEL_DIR" --api-key "$key" || exit 1

rc=0
CAPMOE_URL="$SERVER_URL" CAPMOE_API_KEY="$key" CAPMOE_CHATML=1 \
  node --test-reporter=spec tests/client/openai_client.mjs || rc=$?

stop_server; src=$?
if [ "$src" != 0 ]; then
  echo "t_openai_client: server exit status after SIGTERM: $src (want 0); log:"; tail -n 30 "$tmp/server.log"
  exit 1
fi
if [ "$rc" != 0 ]; then
  echo "t_openai_client: client tests failed; server log:"; tail -n 30 "$tmp/server.log"
  exit 1
fi
echo "t_openai_client: ok"
