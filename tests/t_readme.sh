#!/bin/sh
# t_readme.sh - the README's commands run as written:
#  - no shell block holds a placeholder (DIR, FILE, KEY, "...", [--optional]);
#  - every block marked <!-- t_readme: run --> runs with sh -e from the
#    repository root (paths under /tmp moved into a temporary directory), and
#    its perplexity command prints the perplexity of the quality table's row
#    for the same policy and gamma;
#  - the block marked <!-- t_readme: serve --> starts the server (on a free
#    port through CAPMOE_PORT, since the block sets no port), the curl
#    commands of "Asking it something" get answers from it (8080 replaced by
#    that port), and it stops with exit 0 on SIGTERM;
#  - the docker run line gives a --stop-timeout above grace_period_s.
set -u
cd "$(dirname "$0")/.."
. tests/server/common.sh
BUILD="${CAPMOE_BUILD:-build}"
tmp=$(mktemp -d)
trap 'srv_kill; rm -rf "$tmp"' EXIT
rc=0
fail() { echo "t_readme: $*"; rc=1; }
[ "$BUILD" = build ] || { echo "t_readme: the README's commands use build/; CAPMOE_BUILD=$BUILD"; exit 1; }

# Splits README.md into $tmp/block.N (sh blocks) and $tmp/mark.N (the
# t_readme marker of the line before the block, if any).
awk -v dir="$tmp" '
  /^<!-- t_readme: [a-z]+ -->$/ { mark = $3; next }
  /^```sh$/ { n++; inb = 1; f = dir "/block." n; printf "" > f; if (mark != "") print mark > (dir "/mark." n); mark = ""; next }
  /^```$/ && inb { inb = 0; close(f); next }
  inb { print >> f; next }
  { if ($0 != "") mark = "" }' README.md
ls "$tmp"/block.* > /dev/null 2>&1 || { echo "t_readme: no sh blocks found"; exit 1; }

# ---- placeholders
for b in "$tmp"/block.*; do
  if grep -nE '(^|[^A-Z_])(DIR|FILE|KEY|PATH)([^A-Z_]|$)|\.\.\.|\[--' "$b" > "$tmp/ph"; then
    fail "README block $(basename "$b") holds a placeholder:"; cat "$tmp/ph"
  fi
done

# ---- run blocks
n_run=0
for m in "$tmp"/mark.*; do
  [ "$(cat "$m")" = run ] || continue
  b="$tmp/block.${m##*.}"
  n_run=$((n_run + 1))
  sed "s|/tmp/|$tmp/|g" "$b" > "$tmp/run.sh"
  if ! sh -e "$tmp/run.sh" > "$tmp/run.out" 2> "$tmp/run.err"; then
    fail "README block $(basename "$b") failed:"; tail -n 20 "$tmp/run.err"; continue
  fi
  if grep -q 'capmoe perplexity' "$b" || grep -q '^build/capmoe perplexity' "$b"; then
    pol=$(sed -n 's/.*--policy \([a-z_]*\).*/\1/p' "$b" | tail -n 1)
    gam=$(grep -A1 '^build/capmoe perplexity' "$b" | sed -n 's/.*--capacity-factor \([0-9.]*\).*/\1/p')
    got=$(grep '"perplexity":' "$tmp/run.out" | node -e '
      const l = require("fs").readFileSync(0, "utf8").trim().split("\n");
      console.log(JSON.parse(l[l.length - 1]).perplexity.toFixed(2));')
    want=$(sed -n "s/^| $pol | $gam | \([0-9.]*\) |.*/\1/p" README.md | head -n 1)
    if [ -z "$want" ] || [ "$got" != "$want" ]; then
      fail "perplexity --policy $pol --capacity-factor $gam printed $got; the quality table says '$want'"
    else
      echo "t_readme: perplexity $pol $gam: $got, as in the table"
    fi
  fi
done
[ "$n_run" -ge 1 ] || fail "no block marked <!-- t_readme: run -->"

# ---- serve + client
serve=""
for m in "$tmp"/mark.*; do [ "$(cat "$m")" = serve ] && serve="$tmp/block.${m##*.}"; done
if [ -z "$serve" ]; then
  fail "no block marked <!-- t_readme: serve -->"
else
  port=$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
  cmd=$(grep -v '^#' "$serve" | head -n 1)
  grep -q -- '--port' "$serve" && fail "the serve block sets a port: the test cannot move it"
  CAPMOE_PORT=$port sh -c "exec $cmd" > "$tmp/server.log" 2>&1 &
  SRV_PID=$!
  SRV_URL="http://127.0.0.1:$port"
  t=0
  until [ "$(http_status /health)" = 200 ]; do
    t=$((t + 1))
    if [ $t -gt 600 ] || ! kill -0 "$SRV_PID" 2>/dev/null; then fail "the README's server did not come up:"; tail "$tmp/server.log"; break; fi
    sleep 0.1
  done
  # the block right after "## Asking it something"
  awk '/^## Asking it something/{f=1} f && /^```sh$/{p=1; next} p && /^```$/{exit} p' README.md \
    | sed "s/127\.0\.0\.1:8080/127.0.0.1:$port/g" > "$tmp/client.sh"
  grep -q "curl" "$tmp/client.sh" || fail "no curl block in 'Asking it something'"
  sh -e "$tmp/client.sh" > "$tmp/client.out" 2>&1 || { fail "the README's curl commands failed:"; cat "$tmp/client.out"; }
  grep -q '"object":"text_completion"' "$tmp/client.out" || fail "no completion from the README's curl: $(head -c 300 "$tmp/client.out")"
  grep -q '^data: \[DONE\]$' "$tmp/client.out" || fail "no stream end from the README's curl"
  kill -TERM "$SRV_PID"; srv_wait_exit 40
  [ "$SRV_RC" = 0 ] || fail "the README's server exited $SRV_RC on SIGTERM"
fi

# ---- docker run
grace=$(node -e 'console.log(JSON.parse(require("fs").readFileSync("config/capmoe.json")).grace_period_s)')
st=$(sed -n 's/^docker run .*--stop-timeout \([0-9]*\).*/\1/p' README.md | head -n 1)
[ -n "$st" ] && [ "$st" -gt "${grace%.*}" ] || fail "the README's docker run line needs --stop-timeout above grace_period_s ($grace): '$st'"

[ "$rc" = 0 ] && echo "t_readme: ok ($n_run block(s) run, server and curl commands, docker --stop-timeout $st)"
exit $rc
