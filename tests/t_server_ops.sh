#!/bin/sh
# t_server_ops.sh - capmoe-server as an operator runs it (issue 16):
#  a. the whole configuration is checked against the model before the
#     socket opens: --ep-ranks 3 with the default model's 8 experts, a
#     context beyond max_position_embeddings, an unreadable TLS file exit 1
#     with a message naming the problem and no "listening" record;
#  b. text logs: timestamped leveled records, an access record per request
#     with its request id (X-Request-Id, the client's or generated, also in
#     error bodies), tokens, finish reason, policy and gamma; libmicrohttpd's
#     messages are records too (tests/server/ops.mjs, mode access);
#  c. --log-format json: every line the server writes is a JSON record, the
#     access records carry typed fields;
#  d. statistical seed test over HTTP: unseeded identical requests differ,
#     a seed repeats (mode seeds);
#  e. SIGHUP reload while a stream runs (mode reload), then SIGTERM: exit 0.
# b and e run on both builds (plain and ASan + UBSan).
set -u
cd "$(dirname "$0")/.."
. tests/server/common.sh
TINY=tests/fixtures/qwen3moe-tiny
tmp=$(mktemp -d)
trap 'srv_kill; rm -rf "$tmp"' EXIT
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
rc=0
fail() { echo "t_server_ops: $*"; rc=1; }
t0=$(date +%s)
step() { echo "t_server_ops: $1 ($(( $(date +%s) - t0 ))s): $(grep -E '^. (pass|fail) ' "$tmp/node.out" 2>/dev/null | tr '\n' ' ')"; }

stop_check() { # name log: SIGTERM, exit 0, no sanitizer report
  kill -TERM "$SRV_PID"; srv_wait_exit 30
  [ "$SRV_RC" = 0 ] || fail "$1: exit status $SRV_RC after SIGTERM (want 0)"
  if grep -q -E "ERROR: (Address|Leak)Sanitizer|runtime error:" "$2"; then
    fail "$1: sanitizer report"; grep -A 30 -E "ERROR: |runtime error:" "$2" | head -60
  fi
}

BIN="${CAPMOE_BUILD:-build}/capmoe-server"
ASAN_BIN="${CAPMOE_ASAN:-build-asan}/capmoe-server"

# ---- a. refused before listening
refuse() { # want-message args...
  _want="$1"; shift
  "$BIN" --host 127.0.0.1 --port 0 "$@" > "$tmp/refuse.log" 2>&1; _rc=$?
  if [ "$_rc" != 1 ] || ! grep -q -- "$_want" "$tmp/refuse.log" || grep -q "listening" "$tmp/refuse.log"; then
    fail "$*: exit $_rc, want 1 with '$_want' before listening:"; cat "$tmp/refuse.log"
  fi
}
refuse "ep_ranks: R=3 ranks cannot split the model's E=8 experts evenly (E must be divisible by R; possible: 1, 2, 4, 8)" \
  --model config/model --ep-ranks 3
refuse "ep_ranks: R=16 ranks cannot split the model's E=8 experts" --model config/model --ep-ranks 16 --policy rank_drop
refuse "context: 4096 exceeds the model's max_position_embeddings (1024)" --model config/model --context 4096
refuse "tls_cert: $tmp/none.pem" --model config/model --tls-cert "$tmp/none.pem" --tls-key "$tmp/none.pem"
mkdir "$tmp/notok"; cp config/model/config.json "$tmp/notok/"
refuse "has no readable tokenizer.json" --model "$tmp/notok"
# and R = 2 starts (its dispatch is valid for every policy)
srv_start "$BIN" "$tmp/r2.log" --model config/model --ep-ranks 2 --policy rank_drop || fail "--ep-ranks 2 did not start"
[ -n "$SRV_PID" ] && stop_check "--ep-ranks 2" "$tmp/r2.log"

# ---- b. access log, request ids (both builds)
for bin in "$BIN" "$ASAN_BIN"; do
  [ -x "$bin" ] || { fail "$bin not built"; continue; }
  log="$tmp/access.log"
  srv_start "$bin" "$log" --model "$TINY" --api-key k1 --policy drop --capacity-factor 1.5 \
    --min-tokens 4 --max-body-bytes 65536 || { fail "$bin: no start"; continue; }
  CAPMOE_URL="$SRV_URL" CAPMOE_MODE=access CAPMOE_LOG="$log" CAPMOE_KEY=k1 \
    node --test-reporter=spec tests/server/ops.mjs > "$tmp/node.out" 2>&1 || { fail "$bin: access"; cat "$tmp/node.out"; }
  step "access log on $bin"
  stop_check "$bin access" "$log"
  grep -q "info  SIGTERM: no new requests" "$log" || fail "no SIGTERM record"
  grep -q "info  stopped$" "$log" || fail "no stopped record"
done

# ---- c. JSON records
log="$tmp/json.log"
srv_start "$BIN" "$log" --model "$TINY" --api-key k1 --log-format json --max-body-bytes 65536 || exit 1
CAPMOE_URL="$SRV_URL" CAPMOE_MODE=json CAPMOE_KEY=k1 \
  node --test-reporter=spec tests/server/ops.mjs > "$tmp/node.out" 2>&1 || { fail "json"; cat "$tmp/node.out"; }
step "json log"
stop_check "json" "$log"
node -e '
  const lines = require("fs").readFileSync(process.argv[1], "utf8").trimEnd().split("\n");
  const recs = lines.map((l, i) => { try { return JSON.parse(l); } catch { throw new Error(`line ${i + 1} is not JSON: ${l}`); } });
  for (const r of recs) {
    if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(r.time)) throw new Error("time: " + JSON.stringify(r));
    if (!["debug", "info", "warn", "error"].includes(r.level) || typeof r.msg !== "string") throw new Error(JSON.stringify(r));
  }
  const acc = recs.filter((r) => r.msg === "request");
  const s = acc.find((r) => r.request_id === "stream-1");
  if (!s || s.status !== 200 || typeof s.bytes !== "number" || typeof s.duration_ms !== "number" ||
      s.completion_tokens !== 12 || s.finish_reason !== "length" || s.policy !== "none" || s.gamma !== "1" ||
      s.gamma_applied !== "none" || typeof s.dispatches !== "number") throw new Error("stream record: " + JSON.stringify(s));
  if (!acc.some((r) => r.status === 401) || !acc.some((r) => r.status === 413) || !acc.some((r) => r.status === 404))
    throw new Error("4xx records missing");
  if (!recs.some((r) => r.source === "libmicrohttpd" && r.level === "warn")) throw new Error("no libmicrohttpd record");
  console.log(`json log: ${recs.length} records, ${acc.length} access records`);' "$log" || fail "JSON records"

# ---- d. seeds over HTTP
srv_start "$BIN" "$tmp/seeds.log" --model "$TINY" || exit 1
CAPMOE_URL="$SRV_URL" CAPMOE_MODE=seeds node --test-reporter=spec tests/server/ops.mjs > "$tmp/node.out" 2>&1 \
  || { fail "seeds"; cat "$tmp/node.out"; }
step seeds
stop_check "seeds" "$tmp/seeds.log"

# ---- e. SIGHUP reload (both builds; the default model, whose streams take seconds)
for bin in "$BIN" "$ASAN_BIN"; do
  [ -x "$bin" ] || continue
  cfg="$tmp/reload.json"
  sed 's/"port": 8080/"port": 0/' config/capmoe.json > "$cfg"
  log="$tmp/reload.log"
  srv_start "$bin" "$log" --config "$cfg" --model config/model --max-running 16 --max-batch-tokens 64 \
    || { fail "$bin: no start"; continue; }
  CAPMOE_URL="$SRV_URL" CAPMOE_MODE=reload CAPMOE_LOG="$log" CAPMOE_PID="$SRV_PID" CAPMOE_CONFIG_FILE="$cfg" \
    node --test-reporter=spec tests/server/ops.mjs > "$tmp/node.out" 2>&1 || { fail "$bin: reload"; cat "$tmp/node.out"; }
  step "reload on $bin"
  stop_check "$bin reload" "$log"
done

[ "$rc" != 0 ] && for f in "$tmp"/*.log; do echo "--- $f"; tail -n 15 "$f"; done
[ "$rc" = 0 ] && echo "t_server_ops: ok"
exit $rc
