#!/bin/sh
# t_server_connlimit.sh - connection limits on both builds (plain and ASan +
# UBSan): the server keeps accepting after its connection limit was reached
# and freed many times (issue 17, item 1), new connections that send nothing
# are closed after the header timeout, a per-address limit holds, a NUL in a
# JSON string is refused (item 2), and a second server on a port in use fails
# at start instead of sharing it. tests/server/connlimit.mjs does the HTTP.
set -u
cd "$(dirname "$0")/.."
. tests/server/common.sh
MODEL_DIR=tests/fixtures/qwen3moe-tiny
tmp=$(mktemp -d)
trap 'srv_kill; rm -rf "$tmp"' EXIT
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
rc=0

check_exit() { # name log
  kill -TERM "$SRV_PID"; srv_wait_exit 30
  if [ "$SRV_RC" != 0 ]; then echo "$1: exit status $SRV_RC after SIGTERM (want 0)"; rc=1; fi
  if grep -q -E "ERROR: (Address|Leak)Sanitizer|runtime error:" "$2"; then
    echo "$1: sanitizer report:"; grep -A 30 -E "ERROR: |runtime error:" "$2" | head -60; rc=1
  fi
}

for build in "${CAPMOE_BUILD:-build}" "${CAPMOE_ASAN:-build-asan}"; do
  BIN="$build/capmoe-server"
  [ -x "$BIN" ] || { echo "t_server_connlimit: $BIN not built"; rc=1; continue; }
  cycles=40; [ "$build" = "${CAPMOE_ASAN:-build-asan}" ] && cycles=20
  srv_start "$BIN" "$tmp/server.log" --model "$MODEL_DIR" --max-connections 8 \
    --header-timeout-s 1 --connection-timeout-s 30 || { rc=1; continue; }
  CAPMOE_URL="$SRV_URL" CONN_LIMIT=8 CONN_CYCLES=$cycles \
    node --test-reporter=spec tests/server/connlimit.mjs || rc=1

  # a second server on the same port must fail, not share it
  if timeout 30 "$BIN" --model "$MODEL_DIR" --host 127.0.0.1 --port "$SRV_PORT" > "$tmp/second.log" 2>&1; then
    echo "t_server_connlimit: a second server on port $SRV_PORT started"; rc=1
  elif ! grep -q "Address already in use" "$tmp/second.log"; then
    echo "t_server_connlimit: second server's message lacks 'Address already in use':"
    cat "$tmp/second.log"; rc=1
  fi
  check_exit "t_server_connlimit ($BIN)" "$tmp/server.log"

  srv_start "$BIN" "$tmp/server2.log" --model "$MODEL_DIR" --max-connections-per-ip 3 ||
    { rc=1; continue; }
  CAPMOE_URL="$SRV_URL" CONN_PER_IP=3 node --test-reporter=spec tests/server/connlimit.mjs || rc=1
  check_exit "t_server_connlimit per-ip ($BIN)" "$tmp/server2.log"
  [ "$rc" != 0 ] && { echo "--- server log ($BIN)"; tail -n 20 "$tmp/server.log"; }
done
[ "$rc" = 0 ] && echo "t_server_connlimit: ok"
exit $rc
