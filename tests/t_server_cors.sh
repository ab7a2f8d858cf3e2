#!/bin/sh
# t_server_cors.sh - --cors-origins from a real browser: headless Debian
# Chromium opens a page served by another origin (tests/server/cors_page.mjs)
# whose script calls capmoe-server with fetch:
#  - from the allowed origin: a JSON POST with a bearer token (the browser
#    sends a preflight first) answers 200 with the page's X-Request-Id readable
#    (exposed), a stream reads to [DONE], a 401 error body is readable;
#  - from an origin not in the list (http://localhost:PORT instead of
#    http://127.0.0.1:PORT): the browser blocks every call;
# and, with a plain HTTP client, the preflight answers themselves (204 with
# the Access-Control-* headers, 403 for another origin, Vary: Origin, no
# CORS headers without Origin or without cors_origins).
set -u
cd "$(dirname "$0")/.."
. tests/server/common.sh
BIN="${CAPMOE_BUILD:-build}/capmoe-server"
TINY=tests/fixtures/qwen3moe-tiny
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
[ -n "$CHROMIUM" ] || { echo "t_server_cors: chromium not installed (install-deps.sh test)"; exit 1; }
tmp=$(mktemp -d)
page_pid=""; chrome_pid=""
cleanup() {
  srv_kill
  [ -n "$chrome_pid" ] && kill -KILL "$chrome_pid" 2>/dev/null
  [ -n "$page_pid" ] && kill "$page_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
rc=0
fail() { echo "t_server_cors: $*"; rc=1; }

node tests/server/cors_page.mjs "$tmp/page.port" "$tmp/results" &
page_pid=$!
t=0; while [ ! -s "$tmp/page.port" ]; do t=$((t + 1)); [ $t -gt 100 ] && { echo "no page server"; exit 1; }; sleep 0.05; done
PAGE_PORT=$(cat "$tmp/page.port")
ALLOWED="http://127.0.0.1:$PAGE_PORT"

srv_start "$BIN" "$tmp/server.log" --model "$TINY" --api-key k1 \
  --cors-origins "https://elsewhere.example, $ALLOWED" || exit 1

# ---- the preflight answers, seen by a plain client
CAPMOE_URL="$SRV_URL" ALLOWED="$ALLOWED" node -e '
  import("./tests/server/lib.mjs").then(async ({ request, get, assertError }) => {
    const assert = (await import("node:assert/strict")).default;
    const o = process.env.ALLOWED;
    let r = await request("OPTIONS", "/v1/chat/completions", { headers: { Origin: o,
      "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os" } });
    assert.equal(r.status, 204, r.text);
    assert.equal(r.headers["access-control-allow-origin"], o);
    assert.match(r.headers["access-control-allow-methods"], /\bPOST\b/);
    assert.equal(r.headers["access-control-allow-headers"], "authorization,content-type,x-stainless-os");
    assert.ok(Number(r.headers["access-control-max-age"]) > 0);
    assert.match(r.headers.vary, /Origin/);
    assert.equal(r.text, "");
    r = await request("OPTIONS", "/v1/chat/completions", { headers: { Origin: "http://evil.example",
      "Access-Control-Request-Method": "POST" } });
    assertError(r, 403, { code: "origin_not_allowed" });
    assert.equal(r.headers["access-control-allow-origin"], undefined);
    // simple requests: headers for the allowed origin only
    r = await get("/health", { headers: { Origin: o } });
    assert.equal(r.headers["access-control-allow-origin"], o);
    assert.match(r.headers["access-control-expose-headers"], /X-Request-Id/);
    r = await get("/health", { headers: { Origin: "http://evil.example" } });
    assert.equal(r.status, 200);
    assert.equal(r.headers["access-control-allow-origin"], undefined);
    r = await get("/health");
    assert.equal(r.headers["access-control-allow-origin"], undefined);
    // OPTIONS without Origin is no preflight: the route answers 405
    r = await request("OPTIONS", "/v1/models");
    assertError(r, 405);
    console.log("preflight answers: ok");
  }).catch((e) => { console.error(e); process.exit(1); });' || fail "preflight answers"

# ---- Chromium
run_page() { # origin tag
  : > "$tmp/results.$2"
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$tmp/profile-$2" --virtual-time-budget=30000 --dump-dom \
    "$1/page.html?api=$SRV_URL&key=k1&tag=$2" > "$tmp/dom.$2" 2> "$tmp/chromium.$2.log" &
  chrome_pid=$!
  t=0
  until grep -q "\"tag\":\"$2\"" "$tmp/results" 2>/dev/null; do
    t=$((t + 1))
    if [ $t -gt 600 ]; then fail "chromium ($2): no result in 60 s"; tail -n 20 "$tmp/chromium.$2.log"; break; fi
    sleep 0.1
  done
  kill -KILL "$chrome_pid" 2>/dev/null; wait "$chrome_pid" 2>/dev/null; chrome_pid=""
  grep "\"tag\":\"$2\"" "$tmp/results" | head -n 1
}
allowed=$(run_page "$ALLOWED" allowed)
echo "allowed origin: $allowed"
printf '%s' "$allowed" | node -e '
  const r = JSON.parse(require("fs").readFileSync(0, "utf8"));
  const want = (c, m) => { if (!c) { console.error("allowed origin: " + m + ": " + JSON.stringify(r)); process.exitCode = 1; } };
  want(r.chat.status === 200 && r.chat.object === "chat.completion" && r.chat.tokens === 4, "chat");
  want(r.chat.requestId === "from-the-page-allowed", "X-Request-Id not readable");
  want(r.stream.status === 200 && r.stream.done === true && r.stream.chunks >= 1, "stream");
  want(r.unauthorized.status === 401 && r.unauthorized.code === "invalid_api_key", "401 body");' \
  || fail "the page on the allowed origin"
other=$(run_page "http://localhost:$PAGE_PORT" other)
echo "other origin: $other"
printf '%s' "$other" | node -e '
  const r = JSON.parse(require("fs").readFileSync(0, "utf8"));
  const blocked = (x) => x && typeof x.error === "string" && /TypeError/.test(x.error);
  if (r.origin !== "http://localhost:" + process.argv[1] || !blocked(r.chat) || !blocked(r.stream) || !blocked(r.unauthorized)) {
    console.error("other origin: not blocked: " + JSON.stringify(r)); process.exit(1);
  }' "$PAGE_PORT" || fail "the page on another origin"
# what the server saw: the browser's preflights, the refused one as 403
grep -q 'method=OPTIONS path=/v1/chat/completions status=204' "$tmp/server.log" || fail "no 204 preflight record"
grep -q 'method=OPTIONS path=/v1/chat/completions status=403' "$tmp/server.log" || fail "no 403 preflight record"
grep -q 'request_id=from-the-page-allowed' "$tmp/server.log" || fail "the page's request id is not in the log"
kill -TERM "$SRV_PID"; srv_wait_exit 20
[ "$SRV_RC" = 0 ] || fail "exit status $SRV_RC"

# ---- without cors_origins: no CORS headers, preflights are ordinary 405s
srv_start "$BIN" "$tmp/server2.log" --model "$TINY" || exit 1
CAPMOE_URL="$SRV_URL" ALLOWED="$ALLOWED" node -e '
  import("./tests/server/lib.mjs").then(async ({ request, get }) => {
    const assert = (await import("node:assert/strict")).default;
    const r = await request("OPTIONS", "/v1/completions", { headers: { Origin: process.env.ALLOWED,
      "Access-Control-Request-Method": "POST" } });
    assert.equal(r.status, 405);
    assert.equal(r.headers["access-control-allow-origin"], undefined);
    assert.equal((await get("/health", { headers: { Origin: process.env.ALLOWED } })).headers["access-control-allow-origin"], undefined);
  }).catch((e) => { console.error(e); process.exit(1); });' || fail "CORS off"
kill -TERM "$SRV_PID"; srv_wait_exit 20
[ "$rc" = 0 ] && echo "t_server_cors: ok"
exit $rc
