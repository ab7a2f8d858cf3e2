# common.sh - shell helpers of the black-box server tests (tests/t_server_*.sh).
# Source from the repository root: . tests/server/common.sh
#
#   srv_start BIN LOG ARGS...  starts BIN --host 127.0.0.1 --port 0 ARGS..., reads
#                              the port from its "listening on" line (http or
#                              https), waits for /health 200 over plain HTTP
#                              (unless SRV_NO_WAIT=1); sets SRV_PID, SRV_PORT,
#                              SRV_URL (http://...)
#   srv_wait_exit SECONDS      waits for SRV_PID to exit; status in SRV_RC
#                              (124: did not exit, then killed)
#   srv_kill                   SIGKILL + reap (for traps)
#   http_status PATH           prints the status code of GET PATH (000 if none)
# Only node is needed for HTTP (no curl).

SRV_PID=""
SRV_PORT=""
SRV_URL=""
SRV_RC=""

http_status() {
  node -e '
    const http = require("http");
    const r = http.get(process.argv[1], (res) => { res.resume(); console.log(res.statusCode); });
    r.setTimeout(5000, () => { r.destroy(); });
    r.on("error", () => console.log("000"));' "$SRV_URL$1"
}

srv_start() {
  _bin="$1"; _log="$2"; shift 2
  if [ ! -x "$_bin" ]; then echo "srv_start: $_bin is not built"; return 1; fi
  # a stale log (a previous server's port) must not be read before the
  # child has truncated it
  rm -f "$_log"
  "$_bin" --host 127.0.0.1 --port 0 "$@" > "$_log" 2>&1 &
  SRV_PID=$!
  _t=0
  SRV_PORT=""
  while [ -z "$SRV_PORT" ]; do
    [ -f "$_log" ] && SRV_PORT=$(sed -n 's/.*listening on https\{0,1\}:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$_log" | head -n 1)
    [ -n "$SRV_PORT" ] && break
    if ! kill -0 "$SRV_PID" 2>/dev/null; then
      wait "$SRV_PID"; SRV_RC=$?; SRV_PID=""
      echo "srv_start: $_bin exited ($SRV_RC) before listening; log:"; tail -n 20 "$_log"
      return 1
    fi
    _t=$((_t + 1)); [ "$_t" -gt 600 ] && { echo "srv_start: no listening line"; srv_kill; return 1; }
    sleep 0.05
  done
  SRV_URL="http://127.0.0.1:$SRV_PORT"
  [ "${SRV_NO_WAIT:-0}" = 1 ] && return 0
  _t=0
  while [ "$(http_status /health)" != 200 ]; do
    if ! kill -0 "$SRV_PID" 2>/dev/null; then
      echo "srv_start: server died while loading; log:"; tail -n 20 "$_log"; SRV_PID=""; return 1
    fi
    _t=$((_t + 1)); [ "$_t" -gt 600 ] && { echo "srv_start: not ready in 60 s"; srv_kill; return 1; }
    sleep 0.1
  done
}

srv_wait_exit() {
  _lim=$(( $1 * 10 )); _t=0
  while kill -0 "$SRV_PID" 2>/dev/null; do
    _t=$((_t + 1))
    if [ "$_t" -gt "$_lim" ]; then srv_kill; SRV_RC=124; return 0; fi
    sleep 0.1
  done
  wait "$SRV_PID"; SRV_RC=$?
  SRV_PID=""
}

srv_kill() {
  [ -n "$SRV_PID" ] || return 0
  kill -KILL "$SRV_PID" 2>/dev/null
  wait "$SRV_PID" 2>/dev/null || true
  SRV_PID=""
}
