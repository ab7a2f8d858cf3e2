#!/bin/sh
# t_mpi_server.sh - capmoe-server under `mpirun -np 2 ... --ep mpi` on this
# machine (shared memory between the two processes):
#  1. the official OpenAI client test (tests/client/openai_client.mjs)
#     passes unchanged against it (ASan + UBSan build);
#  2. concurrent streams spread over both ranks, every rank's series in
#     /metrics, promtool accepts the exposition (tests/mpi/spread.mjs);
#  3. SIGTERM (to mpirun, which forwards it) drains and every rank exits 0;
#  4. a rank killed mid-generation: the clients get an error naming it well
#     within the step timeout, not a hang, and the job ends non-zero
#     (tests/mpi/fault.mjs).
set -u
cd "$(dirname "$0")/.."
. tests/client/server.sh
. tests/mpi_env.sh
BUILD="${CAPMOE_BUILD:-build}"; ASAN="${CAPMOE_ASAN:-build-asan}"
MODEL_DIR=tests/fixtures/qwen3moe-tiny   # ChatML template, 8 experts
tmp=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1; rm -rf "$tmp"' EXIT
fail() { echo "t_mpi_server: $*"; [ -f "$tmp/server.log" ] && tail -n 40 "$tmp/server.log"; exit 1; }
client_deps || fail "npm ci in tests/client failed"
key="capmoe-test-$$"
export CAPMOE_MPI_NP=2

# 1-3 on the sanitizer build when there is one
BIN="$ASAN/capmoe-server"; CAPMOE_MPI_ASAN=1
[ -x "$BIN" ] || { BIN="$BUILD/capmoe-server"; CAPMOE_MPI_ASAN=0; }
export CAPMOE_MPI_BIN="$BIN" CAPMOE_MPI_ASAN
start_server tests/mpi/np_server.sh "$tmp/server.log" --model "$MODEL_DIR" --api-key "$key" \
  --max-running 8 || fail "the server did not start"
grep -q "rank 1 of 2 (pid" "$tmp/server.log" || fail "rank 1 did not report"
CAPMOE_URL="$SERVER_URL" CAPMOE_API_KEY="$key" CAPMOE_CHATML=1 \
  node --test-reporter=spec tests/client/openai_client.mjs || fail "the OpenAI client tests failed"
CAPMOE_URL="$SERVER_URL" CAPMOE_API_KEY="$key" \
  node --test-reporter=spec tests/mpi/spread.mjs || fail "spread / metrics checks failed"
if command -v promtool >/dev/null 2>&1; then
  http_get "$SERVER_URL/metrics" > "$tmp/metrics.txt" || fail "GET /metrics failed"
  promtool check metrics < "$tmp/metrics.txt" || fail "promtool rejects /metrics"
fi
# Open MPI's mpirun itself exits 1 whenever it was signalled, whatever its
# processes return: the ranks' own clean stops are read from the log.
stop_server; rc=$?
[ "$rc" = 0 ] || [ "$rc" = 1 ] || fail "mpirun exit status $rc after SIGTERM"
grep -q "info  stopped$" "$tmp/server.log" || fail "rank 0 did not stop cleanly"
grep -q "info  rank 1: stopped$" "$tmp/server.log" || fail "rank 1 did not stop cleanly"
if grep -q -E "MPI_ABORT|exited on signal|aborting" "$tmp/server.log"; then fail "a rank did not stop cleanly"; fi
if grep -q -E "ERROR: (Address|Leak)Sanitizer|runtime error:" "$tmp/server.log"; then
  grep -A 30 -E "ERROR: |runtime error:" "$tmp/server.log" | head -60; fail "sanitizer report"
fi

# 4. a rank dies (plain build: timing matters)
export CAPMOE_MPI_BIN="$BUILD/capmoe-server" CAPMOE_MPI_ASAN=0
STOP_TIMEOUT=30
start_server tests/mpi/np_server.sh "$tmp/server.log" --model config/model --max-running 8 \
  --ep-step-timeout-s 8 || fail "the server did not start (fault case)"
victim=$(sed -n 's/.*rank 1 of 2 (pid \([0-9]*\)).*/\1/p' "$tmp/server.log" | head -n 1)
[ -n "$victim" ] || fail "no pid for rank 1 in the log"
CAPMOE_URL="$SERVER_URL" CAPMOE_VICTIM_PID="$victim" CAPMOE_FAULT_LIMIT_MS=15000 \
  node tests/mpi/fault.mjs || fail "fault: client checks failed"
# the job must end by itself, non-zero
t=0
while kill -0 "$SERVER_PID" 2>/dev/null && [ $t -lt 300 ]; do sleep 0.1; t=$((t + 1)); done
kill -0 "$SERVER_PID" 2>/dev/null && fail "fault: the job did not end within 30 s"
wait "$SERVER_PID"; rc=$?; SERVER_PID=""
[ "$rc" != 0 ] || fail "fault: mpirun exit status 0 after a rank died"
grep -q "expert-parallel failure: .*rank 1" "$tmp/server.log" || fail "fault: rank 0 did not name rank 1"
echo "t_mpi_server: ok (fault: mpirun exit status $rc)"
