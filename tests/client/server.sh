# server.sh - shell helpers shared by the client-facing tests
# (t_openai_client.sh, t_prometheus_scrape.sh, t_load.sh) and the benchmark.
# Source it from the repository root: . tests/client/server.sh
#
#   client_deps                   npm ci in tests/client when node_modules is missing
#   free_port                     prints a free TCP port on 127.0.0.1
#   start_server BIN LOG ARGS...  starts BIN --host 127.0.0.1 --port <free> ARGS...,
#                                 waits until GET /health answers 200; sets
#                                 SERVER_PID, SERVER_PORT, SERVER_URL
#   stop_server                   SIGTERM, waits; returns the server's exit status
#   http_get URL                  prints the body; exit 0 only on a 2xx answer
#
# Only node is needed (no curl): the official client's tests need it anyway.

CLIENT_DIR="$(pwd)/tests/client"
SERVER_PID=""
SERVER_READY_TIMEOUT="${SERVER_READY_TIMEOUT:-120}"

client_deps() {
  if [ ! -f "$CLIENT_DIR/node_modules/openai/package.json" ] ||
     [ ! -f "$CLIENT_DIR/node_modules/@langchain/openai/package.json" ] ||
     [ ! -f "$CLIENT_DIR/node_modules/@ai-sdk/openai/package.json" ]; then
    (cd "$CLIENT_DIR" && npm ci --no-audit --no-fund --loglevel=error) || return 1
  fi
}

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

http_get() {
  node -e '
    fetch(process.argv[1]).then(async r => {
      process.stdout.write(await r.text());
      process.exit(r.ok ? 0 : 1);
    }).catch(() => process.exit(2));' "$1"
}

start_server() {
  _bin="$1"; _log="$2"; shift 2
  if [ ! -x "$_bin" ]; then echo "start_server: $_bin is not built"; return 1; fi
  SERVER_PORT=$(free_port)
  SERVER_URL="http://127.0.0.1:$SERVER_PORT"
  "$_bin" --host 127.0.0.1 --port "$SERVER_PORT" "$@" > "$_log" 2>&1 &
  SERVER_PID=$!
  _t=0
  while :; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      wait "$SERVER_PID"; _rc=$?
      echo "start_server: $_bin exited with $_rc before it was ready; log:"; tail -n 30 "$_log"
      SERVER_PID=""
      return 1
    fi
    if http_get "$SERVER_URL/health" > /dev/null 2>&1; then return 0; fi
    _t=$((_t + 1))
    if [ "$_t" -gt $((SERVER_READY_TIMEOUT * 4)) ]; then
      echo "start_server: not ready after ${SERVER_READY_TIMEOUT}s; log:"; tail -n 30 "$_log"
      kill -KILL "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""
      return 1
    fi
    sleep 0.25
  done
}

# SIGTERM, then wait (bounded: SIGKILL after STOP_TIMEOUT seconds, status 124).
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null
  _t=0
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    _t=$((_t + 1))
    if [ "$_t" -gt $(( ${STOP_TIMEOUT:-60} * 10 )) ]; then
      kill -KILL "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null
      SERVER_PID=""; return 124
    fi
    sleep 0.1
  done
  wait "$SERVER_PID"; _rc=$?
  SERVER_PID=""
  return $_rc
}
