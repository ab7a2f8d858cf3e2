#!/bin/sh
# t_client_matrix.sh - the clients people use against capmoe-server on
# 127.0.0.1 (tests/client/responses_client.mjs): the official openai SDK's
# Responses API (create, stream, errors), the Vercel AI SDK's default
# provider path (/v1/responses) and chat path, LangChain's ChatOpenAI with and
# without useResponsesApi; structured outputs through each; function calling
# (tests/client/tools_client.mjs) on the chat path and on /v1/responses
# (tests/client/responses_tools_client.mjs). Packages pinned in
# tests/client/package.json.
set -u
cd "$(dirname "$0")/.."
. tests/client/server.sh
BUILD="${CAPMOE_BUILD:-build}"
MODEL_DIR=tests/fixtures/qwen3moe-tiny
tmp=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1; rm -rf "$tmp"' EXIT

client_deps || { echo "t_client_matrix: npm ci in tests/client failed"; exit 1; }
key="capmoe-test-$$"
start_server "$BUILD/capmoe-server" "$tmp/server.log" --model "$MODEL_DIR" --api-key "$key" || exit 1
rc=0
CAPMOE_URL="$SERVER_URL" CAPMOE_API_KEY="$key" \
  node --test-reporter=spec tests/client/responses_client.mjs || rc=$?
stop_server; src=$?
if [ "$src" != 0 ]; then
  echo "t_client_matrix: server exit status after SIGTERM: $src (want 0)"; tail -n 30 "$tmp/server.log"; exit 1
fi
if [ "$rc" != 0 ]; then
  echo "t_client_matrix: client tests failed; server log:"; tail -n 30 "$tmp/server.log"; exit 1
fi
# function calling: the default model with a template that writes <tool_call>
# JSON (the real Qwen3 template)
start_server "$BUILD/capmoe-server" "$tmp/tools.log" --model config/model --api-key "$key" \
  --chat-template tests/jinja/templates/npm_qwen3.jinja || exit 1
CAPMOE_TOOLS_URL="$SERVER_URL" CAPMOE_API_KEY="$key" \
  node --test-reporter=spec tests/client/tools_client.mjs || rc=$?
CAPMOE_TOOLS_URL="$SERVER_URL" CAPMOE_API_KEY="$key" \
  node --test-reporter=spec tests/client/responses_tools_client.mjs || rc=$?
stop_server; src=$?
if [ "$src" != 0 ] || [ "$rc" != 0 ]; then
  echo "t_client_matrix: tool tests failed (rc $rc, server $src); server log:"; tail -n 30 "$tmp/tools.log"; exit 1
fi
echo "t_client_matrix: ok"
