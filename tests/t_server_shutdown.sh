#!/bin/sh
# t_server_shutdown.sh - the life cycle of capmoe-server, black box:
#  - SIGTERM with a streamed and a non-streamed generation running: both
#    complete in full within the grace period, new requests get 503 +
#    Retry-After + Connection: close on the still open socket (so load
#    balancers see the drain), the exit status is 0;
#  - a grace period shorter than the work: requests cancelled (503 / an SSE
#    error event + [DONE]), exit 0 soon after the grace period;
#  - a second SIGTERM cancels at once;
#  - /health is 503 (OpenAI error shape, unavailable_error, Retry-After) while
#    the model loads, and a model that fails to load exits 1 naming the file;
#  - --healthcheck exit codes; start-up refusals of bad options and models.
set -u
cd "$(dirname "$0")/.."
. tests/server/common.sh
BUILD="${CAPMOE_BUILD:-build}"
BIN="$BUILD/capmoe-server"
MODEL_DIR=tests/fixtures/qwen3moe-tiny
# The drain cases need generations that outlast a 0.3 s grace period on any
# machine: 16 sequences of 1000 tokens of the default model (2 to 4 s here;
# the tiny fixture finishes its 500-token ones in about 0.2 s); the graceful
# case uses 300 tokens each, which end well inside its 30 s even when other
# work loads the 2 cores (1000 did not, at a load average of 12).
DRAIN_MODEL=config/model
tmp=$(mktemp -d)
trap 'srv_kill; rm -rf "$tmp"' EXIT
fail() { echo "t_server_shutdown: $*"; [ -f "$tmp/server.log" ] && tail -n 20 "$tmp/server.log"; exit 1; }

for mode in graceful grace-expiry second-signal; do
  case $mode in
    graceful) grace=30 ;;
    grace-expiry) grace=0.3 ;;
    second-signal) grace=30 ;;
  esac
  srv_start "$BIN" "$tmp/server.log" --model "$DRAIN_MODEL" --max-running 16 --max-batch-tokens 64 \
    --grace-period-s $grace || exit 1
  start=$(date +%s)
  CAPMOE_URL="$SRV_URL" CAPMOE_PID="$SRV_PID" CAPMOE_MODE=$mode node tests/server/shutdown.mjs \
    || fail "$mode: client checks failed"
  srv_wait_exit 20
  [ "$SRV_RC" = 0 ] || fail "$mode: exit status $SRV_RC (want 0)"
  [ $(( $(date +%s) - start )) -le 15 ] || fail "$mode: shutdown too slow"
  grep -q "SIGTERM: no new requests" "$tmp/server.log" || fail "$mode: no drain message"
done

# --healthcheck against a live server, then against nothing
srv_start "$BIN" "$tmp/server.log" --model "$MODEL_DIR" || exit 1
"$BIN" --healthcheck --port "$SRV_PORT" || fail "--healthcheck on a ready server: $?"
port=$SRV_PORT
kill -TERM "$SRV_PID"; srv_wait_exit 20
[ "$SRV_RC" = 0 ] || fail "exit status $SRV_RC"
"$BIN" --healthcheck --port "$port" 2> "$tmp/hc.err" && fail "--healthcheck on a dead port answered 0"
grep -q "healthcheck" "$tmp/hc.err" || fail "--healthcheck gave no reason"

# loading: tests/server/load_gate.c (LD_PRELOAD) holds the open of
# model.safetensors until $tmp/gate exists; the file itself is empty, so the
# load then fails
cc -shared -fPIC -o "$tmp/load_gate.so" tests/server/load_gate.c -ldl || fail "cannot build load_gate.so"
mkdir "$tmp/slow"
cp "$MODEL_DIR"/config.json "$MODEL_DIR"/tokenizer.json "$MODEL_DIR"/tokenizer_config.json "$tmp/slow/"
: > "$tmp/slow/model.safetensors"
# (for the server only; ASan insists on coming first among the libraries
# unless told otherwise)
saved_asan="${ASAN_OPTIONS:-}"
export LD_PRELOAD="$tmp/load_gate.so" CAPMOE_TEST_LOAD_GATE="$tmp/gate"
export ASAN_OPTIONS="${saved_asan:+$saved_asan:}verify_asan_link_order=0"
SRV_NO_WAIT=1 srv_start "$BIN" "$tmp/server.log" --model "$tmp/slow"; rc=$?
unset LD_PRELOAD CAPMOE_TEST_LOAD_GATE
if [ -n "$saved_asan" ]; then export ASAN_OPTIONS="$saved_asan"; else unset ASAN_OPTIONS; fi
[ $rc = 0 ] || exit 1
CAPMOE_URL="$SRV_URL" node -e '
  import("./tests/server/lib.mjs").then(async ({ get, post, assertError }) => {
    const assert = (await import("node:assert/strict")).default;
    let r = await get("/health");
    assertError(r, 503, { type: "unavailable_error", code: "model_loading" });
    assert.equal(r.json.error.message, "Loading model");
    assert.ok(Number(r.headers["retry-after"]) > 0);
    assertError(await post("/v1/completions", { prompt: "x" }), 503, { type: "unavailable_error" });
    assertError(await post("/tokenize", { prompt: "x" }), 503, { type: "unavailable_error" });
    r = await get("/v1/models");
    assert.equal(r.status, 200);
    assert.equal(r.json.data[0].id, "slow");
    assert.equal((await get("/metrics")).status, 200);
  }).catch((e) => { console.error(e); process.exit(1); });' || fail "answers while loading"
"$BIN" --healthcheck --port "$SRV_PORT" 2>/dev/null && fail "--healthcheck answered 0 while loading"
# open the gate: the empty weights file fails to load, exit 1 with the reason
: > "$tmp/gate"
srv_wait_exit 20
[ "$SRV_RC" = 1 ] || fail "failed load: exit status $SRV_RC (want 1)"
grep -q "cannot load the model" "$tmp/server.log" || fail "failed load: no message"
grep -q "model.safetensors" "$tmp/server.log" || fail "failed load: the file is not named"

# start-up refusals
"$BIN" --port 70000 > /dev/null 2> "$tmp/err"; rc=$?
[ $rc = 2 ] && grep -q -- "--port: 70000 is out of range" "$tmp/err" || fail "--port 70000: rc $rc $(cat "$tmp/err")"
CAPMOE_MAX_RUNNING=abc "$BIN" > /dev/null 2> "$tmp/err"; rc=$?
[ $rc = 2 ] && grep -q "CAPMOE_MAX_RUNNING" "$tmp/err" || fail "CAPMOE_MAX_RUNNING=abc: rc $rc"
"$BIN" --model "$tmp/nothing-here" --port 0 > /dev/null 2> "$tmp/err"; rc=$?
[ $rc = 1 ] && grep -q "nothing-here" "$tmp/err" || fail "missing model: rc $rc $(cat "$tmp/err")"
"$BIN" --help > "$tmp/help" || fail "--help failed"
for o in --model --host --port --policy --capacity-factor --ep-ranks --renormalize --api-key \
         --max-batch-tokens --max-running --max-queue --grace-period-s --max-body-bytes; do
  grep -q -- "$o" "$tmp/help" || fail "--help lacks $o"
done
echo "t_server_shutdown: ok"
