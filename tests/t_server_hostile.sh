#!/bin/sh
# t_server_hostile.sh - hostile and careless clients against the ASan + UBSan
# build of capmoe-server (build-asan/capmoe-server): byte-at-a-time bodies,
# endless headers, garbage, lying Content-Length, pipelining, clients that
# vanish mid-stream or mid-wait (their sequences must be freed at once), mass
# resets (tests/server/hostile.mjs). Then SIGTERM: exit 0 and no sanitizer
# report (leaks included). Falls back to the plain build when no ASan build.
set -u
cd "$(dirname "$0")/.."
. tests/server/common.sh
BIN="${CAPMOE_ASAN:-build-asan}/capmoe-server"
[ -x "$BIN" ] || BIN="${CAPMOE_BUILD:-build}/capmoe-server"
MODEL_DIR=tests/fixtures/qwen3moe-tiny
tmp=$(mktemp -d)
trap 'srv_kill; rm -rf "$tmp"' EXIT
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
srv_start "$BIN" "$tmp/server.log" --model "$MODEL_DIR" --max-running 8 \
  --connection-timeout-s 5 || exit 1
rc=0
CAPMOE_URL="$SRV_URL" node --test-reporter=spec tests/server/hostile.mjs || rc=1
kill -TERM "$SRV_PID"; srv_wait_exit 30
if [ "$SRV_RC" != 0 ]; then echo "t_server_hostile: exit status $SRV_RC after SIGTERM (want 0)"; rc=1; fi
if grep -q -E "ERROR: (Address|Leak)Sanitizer|runtime error:" "$tmp/server.log"; then
  echo "t_server_hostile: sanitizer report:"; grep -A 30 -E "ERROR: |runtime error:" "$tmp/server.log" | head -60; rc=1
fi
if [ "$rc" != 0 ]; then echo "--- server log ($BIN)"; tail -n 30 "$tmp/server.log"; exit 1; fi
echo "t_server_hostile: ok ($BIN)"
