#!/bin/sh
# t_server_soak.sh - a short soak of capmoe-server (plain build): 16 clients
# for 60 s by default (SOAK_CLIENTS, SOAK_SECONDS; `make soak` runs longer),
# a mix of completions, chat, streams, n > 1, logprobs, /tokenize and streams
# abandoned mid-way (tests/server/soak.mjs). Nothing may be lost, resident
# memory must stay bounded, and after it every gauge is back to idle, then
# SIGTERM exits 0. Prints sent / completed / errors and RSS at start and end.
set -u
cd "$(dirname "$0")/.."
. tests/server/common.sh
BIN="${CAPMOE_BUILD:-build}/capmoe-server"
MODEL_DIR=tests/fixtures/qwen3moe-tiny
tmp=$(mktemp -d)
trap 'srv_kill; rm -rf "$tmp"' EXIT
srv_start "$BIN" "$tmp/server.log" --model "$MODEL_DIR" --max-running 8 --access-log=false || exit 1
rc=0
CAPMOE_URL="$SRV_URL" SOAK_PID="$SRV_PID" node tests/server/soak.mjs || rc=1
# idle again: nothing running or waiting, no KV cache held
node -e '
  const http = require("http");
  http.get(process.argv[1] + "/metrics", (res) => {
    let t = ""; res.on("data", (c) => (t += c));
    res.on("end", () => {
      const v = (n) => Number((t.split("\n").find((l) => l.startsWith(n + " ")) || "x NaN").split(" ")[1]);
      const bad = ["capmoe_requests_running", "capmoe_requests_waiting", "capmoe_kv_cache_tokens"].filter((n) => v(n) !== 0);
      if (bad.length) { console.log("t_server_soak: not idle after the soak: " + bad.join(", ")); process.exit(1); }
    });
  });' "$SRV_URL" || rc=1
kill -TERM "$SRV_PID"; srv_wait_exit 60
if [ "$SRV_RC" != 0 ]; then echo "t_server_soak: exit status $SRV_RC after SIGTERM (want 0)"; rc=1; fi
if [ "$rc" != 0 ]; then echo "--- server log"; tail -n 30 "$tmp/server.log"; exit 1; fi
echo "t_server_soak: ok"
