#!/bin/sh
# t_server_tls.sh - HTTPS (--tls-cert / --tls-key; libmicrohttpd with GnuTLS)
# with real TLS clients, on both builds, and IPv6 listen addresses:
#  - a CA and a server certificate for 127.0.0.1 / localhost made here with
#    openssl; the server says https:// in its listening record;
#  - curl verifying the certificate against that CA: /health, a completion
#    and a streamed completion; curl without the CA refuses the certificate
#    (so the check is real); a plain-HTTP client gets no HTTP answer;
#  - node's https client (the same CA) streams a chat completion;
#  - capmoe-server --healthcheck with the same configuration exits 0, and 1
#    once the server is gone;
#  - a key that does not match the certificate, or a file that is not PEM,
#    is refused at start (exit 1, no listening record);
#  - --host ::1: the listening record prints the address in brackets
#    (http://[::1]:PORT) and a client reaches it over IPv6.
set -u
cd "$(dirname "$0")/.."
. tests/server/common.sh
TINY=tests/fixtures/qwen3moe-tiny
tmp=$(mktemp -d)
trap 'srv_kill; rm -rf "$tmp"' EXIT
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
rc=0
fail() { echo "t_server_tls: $*"; rc=1; }
command -v openssl > /dev/null || { echo "t_server_tls: openssl missing (install-deps.sh test)"; exit 1; }
command -v curl > /dev/null || { echo "t_server_tls: curl missing (install-deps.sh test)"; exit 1; }

# ---- certificates
cd "$tmp"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
  -subj "/CN=capmoe test CA" > openssl.log 2>&1 || { cat openssl.log; exit 1; }
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost" \
  >> openssl.log 2>&1 || { cat openssl.log; exit 1; }
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 \
  -extfile ext.cnf >> openssl.log 2>&1 || { cat openssl.log; exit 1; }
openssl req -newkey rsa:2048 -nodes -keyout other.key -out other.csr -subj "/CN=other" >> openssl.log 2>&1
echo "not a pem file" > garbage.pem
cd - > /dev/null

for build in "${CAPMOE_BUILD:-build}" "${CAPMOE_ASAN:-build-asan}"; do
  BIN="$build/capmoe-server"
  [ -x "$BIN" ] || { fail "$BIN not built"; continue; }
  log="$tmp/server.log"
  SRV_NO_WAIT=1 srv_start "$BIN" "$log" --model "$TINY" --tls-cert "$tmp/server.pem" \
    --tls-key "$tmp/server.key" || { fail "$BIN: no start"; continue; }
  URL="https://127.0.0.1:$SRV_PORT"
  grep -q "listening on https://127.0.0.1:$SRV_PORT " "$log" || fail "no https:// listening record"
  t=0
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --cacert "$tmp/ca.pem" "$URL/health")" = 200 ]; do
    t=$((t + 1)); [ $t -gt 300 ] && { fail "$BIN: /health over TLS never 200"; break; }; sleep 0.1
  done
  out=$(curl -sS --fail --cacert "$tmp/ca.pem" "$URL/v1/completions" -H 'Content-Type: application/json' \
        -d '{"prompt": "hello", "max_tokens": 5, "temperature": 0}') || fail "$BIN: curl completion over TLS failed"
  echo "$out" | grep -q '"completion_tokens":5' || fail "$BIN: completion over TLS: $out"
  out=$(curl -sS -N --fail --cacert "$tmp/ca.pem" "$URL/v1/completions" -H 'Content-Type: application/json' \
        -d '{"prompt": "hello", "max_tokens": 5, "stream": true}') || fail "$BIN: curl stream over TLS failed"
  echo "$out" | tail -n 2 | grep -q '^data: \[DONE\]$' || fail "$BIN: stream over TLS: $out"
  # curl with the system CAs only: the certificate must be refused
  if curl -s -o /dev/null "$URL/health" 2> /dev/null; then fail "$BIN: curl accepted an unknown CA"; fi
  curl -s -o /dev/null -w '%{ssl_verify_result}' --cacert "$tmp/ca.pem" "$URL/health" | grep -qx 0 \
    || fail "$BIN: certificate not verified"
  # plain HTTP to the TLS port: no HTTP answer
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$SRV_PORT/health")
  [ "$code" = 000 ] || fail "$BIN: plain HTTP on the TLS port answered $code"
  # node's https client
  NODE_EXTRA_CA_CERTS="$tmp/ca.pem" node -e '
    const https = require("https");
    const req = https.request(process.argv[1] + "/v1/chat/completions", {method: "POST",
      headers: {"content-type": "application/json"}}, (res) => {
      const authorized = res.socket.authorized, proto = res.socket.getProtocol();
      let t = ""; res.setEncoding("utf8"); res.on("data", (c) => t += c);
      res.on("end", () => {
        const ok = res.statusCode === 200 && authorized === true && t.trimEnd().endsWith("data: [DONE]");
        console.log(ok ? "node https: ok, " + proto : "node https: " + res.statusCode + " " + authorized + " " + t);
        process.exit(ok ? 0 : 1);
      });
    });
    req.on("error", (e) => { console.log(String(e)); process.exit(1); });
    req.end(JSON.stringify({messages: [{role: "user", content: "hi"}], max_tokens: 4, stream: true}));' "$URL" \
    > "$tmp/node.out" 2>&1 || { fail "$BIN: node https client"; cat "$tmp/node.out"; }
  # the HEALTHCHECK command with the same configuration
  CAPMOE_TLS_CERT="$tmp/server.pem" CAPMOE_TLS_KEY="$tmp/server.key" CAPMOE_PORT="$SRV_PORT" \
    "$BIN" --healthcheck > "$tmp/hc.out" 2>&1 || { fail "$BIN: --healthcheck over TLS"; cat "$tmp/hc.out"; }
  port=$SRV_PORT
  kill -TERM "$SRV_PID"; srv_wait_exit 30
  [ "$SRV_RC" = 0 ] || fail "$BIN: exit status $SRV_RC after SIGTERM"
  if grep -q -E "ERROR: (Address|Leak)Sanitizer|runtime error:" "$log"; then
    fail "$BIN: sanitizer report"; grep -A 30 -E "ERROR: |runtime error:" "$log" | head -50
  fi
  CAPMOE_TLS_CERT="$tmp/server.pem" CAPMOE_TLS_KEY="$tmp/server.key" CAPMOE_PORT="$port" \
    "$BIN" --healthcheck > /dev/null 2>&1 && fail "$BIN: --healthcheck answered 0 with no server"
done
[ "$rc" = 0 ] && echo "t_server_tls: TLS with curl and node: ok"

# ---- refusals at start
BIN="${CAPMOE_BUILD:-build}/capmoe-server"
for pair in "server.pem other.key" "garbage.pem server.key" "server.pem garbage.pem"; do
  set -- $pair
  "$BIN" --host 127.0.0.1 --port 0 --model "$TINY" --tls-cert "$tmp/$1" --tls-key "$tmp/$2" > "$tmp/bad.log" 2>&1; code=$?
  if [ "$code" != 1 ] || grep -q "listening" "$tmp/bad.log" || ! grep -q "TLS" "$tmp/bad.log"; then
    fail "cert $1 key $2: exit $code, want 1 with a TLS message before listening:"; cat "$tmp/bad.log"
  fi
done

# ---- IPv6
if [ -f /proc/net/if_inet6 ] && grep -q '^00000000000000000000000000000001 ' /proc/net/if_inet6; then
  log="$tmp/v6.log"
  "$BIN" --host ::1 --port 0 --model "$TINY" > "$log" 2>&1 &
  SRV_PID=$!
  port=""; t=0
  while [ -z "$port" ] && [ $t -lt 300 ]; do
    port=$(sed -n 's/.*listening on http:\/\/\[::1\]:\([0-9]*\) .*/\1/p' "$log"); t=$((t + 1)); sleep 0.05
  done
  if [ -z "$port" ]; then
    fail "--host ::1: no 'listening on http://[::1]:PORT' record:"; cat "$log"
  else
    t=0
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://[::1]:$port/health")" = 200 ]; do
      t=$((t + 1)); [ $t -gt 300 ] && { fail "--host ::1: /health never 200"; break; }; sleep 0.1
    done
    grep -q 'remote=::1' "$log" || fail "--host ::1: the access record does not show the IPv6 client"
  fi
  kill -TERM "$SRV_PID"; srv_wait_exit 20
  [ "$SRV_RC" = 0 ] || fail "--host ::1: exit $SRV_RC"
  [ "$rc" = 0 ] && echo "t_server_tls: IPv6 listen address in brackets: ok"
else
  echo "t_server_tls: no IPv6 loopback here; the IPv6 part is skipped"
fi
[ "$rc" = 0 ] && echo "t_server_tls: ok"
exit $rc
