#!/bin/sh
# t_load.sh - bounded load test (tests/client/load.mjs): LOAD_CLIENTS (32)
# concurrent keep-alive clients for LOAD_SECONDS (30 s) against the plain build,
# every response valid and counted (and equal to the server's own counters),
# zero errors, no RSS growth between 1/3 of the run and the end beyond
# LOAD_RSS_GROWTH_MB (4 MiB); then SIGTERM must give exit 0.
# Then a shorter run against the ASan/UBSan build (LOAD_ASAN_CLIENTS 8 for
# LOAD_ASAN_SECONDS 10 s): the same checks except RSS (ASan's quarantine grows
# it by design), and at exit no LeakSanitizer / ASan / UBSan report.
set -u
cd "$(dirname "$0")/.."
. tests/client/server.sh
BUILD="${CAPMOE_BUILD:-build}"
ASAN_BUILD="${CAPMOE_ASAN:-build-asan}"
MODEL_DIR="${CAPMOE_CLIENT_MODEL:-tests/fixtures/qwen3moe-tiny}"
tmp=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1; rm -rf "$tmp"' EXIT

run_load() { # name, binary, clients, seconds, rss bound (MiB, <0 = off)
  name="$1"; bin="$2"
  echo "== $name: $3 clients for $4 s against $bin"
  start_server "$bin" "$tmp/$name.log" --model "$MODEL_DIR" || return 1
  rc=0
  CAPMOE_URL="$SERVER_URL" SERVER_PID="$SERVER_PID" LOAD_CLIENTS="$3" LOAD_SECONDS="$4" \
    LOAD_RSS_GROWTH_MB="$5" node tests/client/load.mjs || rc=$?
  stop_server; src=$?
  if [ "$src" != 0 ]; then
    echo "$name: server exit status $src after SIGTERM (want 0); log:"; tail -n 40 "$tmp/$name.log"; return 1
  fi
  if grep -q -E 'ERROR: (LeakSanitizer|AddressSanitizer)|runtime error:' "$tmp/$name.log"; then
    echo "$name: sanitizer report in the server log:"; grep -A 30 -E 'ERROR: |runtime error:' "$tmp/$name.log" | head -60; return 1
  fi
  [ "$rc" = 0 ] || { echo "$name: load failed; server log:"; tail -n 20 "$tmp/$name.log"; return 1; }
  echo "$name: ok"
}

client_deps || { echo "t_load: npm ci in tests/client failed"; exit 1; }
run_load plain "$BUILD/capmoe-server" "${LOAD_CLIENTS:-32}" "${LOAD_SECONDS:-30}" "${LOAD_RSS_GROWTH_MB:-4}" || exit 1
if [ "${LOAD_SKIP_ASAN:-0}" != 1 ]; then
  # detect_leaks=1: LeakSanitizer runs at exit and turns any leak into a
  # non-zero exit status (and a report in the log).
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}:detect_leaks=1"
  run_load asan "$ASAN_BUILD/capmoe-server" "${LOAD_ASAN_CLIENTS:-8}" "${LOAD_ASAN_SECONDS:-10}" -1 || exit 1
fi
echo "t_load: ok"
