#!/bin/sh
# t_install.sh - `make install` and running what it installed:
#  - make install DESTDIR=D PREFIX=/usr stages the binaries in D/usr/bin, the
#    default model in D/usr/share/capmoe/model, the configuration in
#    D/etc/capmoe/capmoe.json (naming /usr/share/capmoe/model), the systemd
#    unit in D/usr/lib/systemd/system (paths of that PREFIX), README and
#    LICENSE in D/usr/share/doc/capmoe; nothing outside D;
#  - make install PREFIX=P (a real install under a temporary prefix): the
#    installed capmoe and capmoe-server print the build's version, and
#    `capmoe CMD --help` prints its usage and exits 0 for every command; the
#    server started by the unit's own ExecStart line serves the installed
#    model, reloads on the unit's ExecReload signal and drains within
#    TimeoutStopSec; `systemd-analyze verify` accepts the unit without a
#    warning, which is hardened (DynamicUser, ProtectSystem=strict, ...) and
#    waits longer than the drain (TimeoutStopSec > grace_period_s);
#  - a second install keeps an edited configuration; uninstall removes the
#    rest.
set -u
cd "$(dirname "$0")/.."
. tests/server/common.sh
BUILD="${CAPMOE_BUILD:-build}"
tmp=$(mktemp -d)
trap 'srv_kill; rm -rf "$tmp"' EXIT
rc=0
fail() { echo "t_install: $*"; rc=1; }

# ---- staged install
D="$tmp/stage"
make -s install BUILD="$BUILD" DESTDIR="$D" PREFIX=/usr > "$tmp/make.log" 2>&1 || { cat "$tmp/make.log"; exit 1; }
(cd "$D" && find . -type f | sort) > "$tmp/files"
cat > "$tmp/want" <<EOF
./etc/capmoe/capmoe.json
./usr/bin/capmoe
./usr/bin/capmoe-server
./usr/lib/systemd/system/capmoe.service
$(for f in config/model/*; do echo "./usr/share/capmoe/model/$(basename "$f")"; done)
./usr/share/doc/capmoe/LICENSE
./usr/share/doc/capmoe/README.md
EOF
sort -o "$tmp/want" "$tmp/want"
diff "$tmp/want" "$tmp/files" > "$tmp/diff" || { fail "staged files differ from the expected list:"; cat "$tmp/diff"; }
[ -x "$D/usr/bin/capmoe-server" ] && [ -x "$D/usr/bin/capmoe" ] || fail "binaries not executable"
grep -q '"model": "/usr/share/capmoe/model"' "$D/etc/capmoe/capmoe.json" || fail "the installed configuration does not name the installed model"
grep -q '^ExecStart=/usr/bin/capmoe-server --config /etc/capmoe/capmoe.json$' "$D/usr/lib/systemd/system/capmoe.service" \
  || fail "the staged unit's ExecStart does not use PREFIX=/usr paths"
cmp -s config/model/model.safetensors "$D/usr/share/capmoe/model/model.safetensors" || fail "model differs"

# ---- a real install under a temporary prefix, run as installed
P="$tmp/prefix"
make -s install BUILD="$BUILD" PREFIX="$P" > "$tmp/make.log" 2>&1 || { cat "$tmp/make.log"; exit 1; }
unit="$P/lib/systemd/system/capmoe.service"
cfg="$P/etc/capmoe/capmoe.json"
for b in capmoe capmoe-server; do
  want=$("$BUILD/$b" --version); got=$("$P/bin/$b" --version) || fail "$b --version failed"
  [ "$got" = "$want" ] || fail "installed $b --version '$got', built '$want'"
  echo "$got" | grep -qE '^capmoe(-server)? [0-9]+\.[0-9]+\.[0-9]+ \(revision [0-9a-f]{7,}|unknown\)' || fail "$b --version: '$got'"
done
# every subcommand's --help: usage on stdout, exit 0
for c in logits tokenize detokenize generate bench perplexity synth; do
  "$P/bin/capmoe" "$c" --help > "$tmp/help.out" 2> "$tmp/help.err" || fail "capmoe $c --help: exit $?"
  grep -q "^usage: capmoe $c " "$tmp/help.out" || fail "capmoe $c --help printed no usage on stdout: $(head -c 200 "$tmp/help.out")"
  [ -s "$tmp/help.err" ] && fail "capmoe $c --help wrote to stderr: $(cat "$tmp/help.err")"
done
"$P/bin/capmoe" --help > /dev/null || fail "capmoe --help: exit $?"
"$P/bin/capmoe-server" --help | grep -q "applied on SIGHUP" || fail "capmoe-server --help does not mark the live options"
# the unit
if command -v systemd-analyze > /dev/null; then
  systemd-analyze verify "$unit" > "$tmp/verify.out" 2>&1 || fail "systemd-analyze verify failed"
  [ -s "$tmp/verify.out" ] && { fail "systemd-analyze verify warns:"; cat "$tmp/verify.out"; }
  sed 's/^ProtectSystem=strict/ProtectSystm=strict/' "$unit" > "$tmp/bad.service"
  systemd-analyze verify "$tmp/bad.service" > "$tmp/verify-bad.out" 2>&1
  grep -q "Unknown key" "$tmp/verify-bad.out" || fail "systemd-analyze verify did not notice a misspelt key"
else
  fail "systemd-analyze missing (Debian package systemd; install-deps.sh test)"
fi
for d in 'DynamicUser=yes' 'ProtectSystem=strict' 'ProtectHome=yes' 'NoNewPrivileges=yes' \
         'PrivateTmp=yes' 'PrivateDevices=yes' 'CapabilityBoundingSet=' 'SystemCallFilter=@system-service' \
         'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' 'ExecReload=/bin/kill -HUP $MAINPID' 'KillSignal=SIGTERM'; do
  grep -qxF "$d" "$unit" || fail "unit lacks $d"
done
stop_s=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)$/\1/p' "$unit")
grace=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).grace_period_s)' "$cfg")
[ -n "$stop_s" ] && [ "$stop_s" -gt "${grace%.*}" ] || fail "TimeoutStopSec=$stop_s is not above grace_period_s=$grace"
# the unit's ExecStart, as systemd would run it (a free port instead of 8080)
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
set -- $exec_start
[ -x "$1" ] || fail "ExecStart names $1, which is not executable"
log="$tmp/server.log"
CAPMOE_PORT=0 "$@" > "$log" 2>&1 &
SRV_PID=$!
port=""; t=0
while [ -z "$port" ] && [ $t -lt 600 ]; do
  port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$log"); t=$((t + 1)); sleep 0.05
done
[ -n "$port" ] || { fail "the installed server did not listen:"; cat "$log"; exit 1; }
grep -q "model $P/share/capmoe/model as 'model'" "$log" || fail "the installed server does not serve the installed model"
SRV_URL="http://127.0.0.1:$port"
t=0; until [ "$(http_status /health)" = 200 ]; do t=$((t + 1)); [ $t -gt 300 ] && { fail "not ready"; break; }; sleep 0.1; done
CAPMOE_URL="$SRV_URL" node -e '
  import("./tests/server/lib.mjs").then(async ({ post }) => {
    const r = await post("/v1/completions", { prompt: "In the beginning", max_tokens: 8, temperature: 0 });
    if (r.status !== 200 || r.json.usage.completion_tokens !== 8) { console.error(r.text); process.exit(1); }
  }).catch((e) => { console.error(e); process.exit(1); });' || fail "a completion from the installed server"
# ExecReload, then the stop
kill -HUP "$SRV_PID"
t=0; until grep -q "SIGHUP: configuration re-read from $cfg" "$log"; do
  t=$((t + 1)); [ $t -gt 100 ] && { fail "no reload record after SIGHUP"; break; }; sleep 0.05; done
kill -TERM "$SRV_PID"; srv_wait_exit "$stop_s"
[ "$SRV_RC" = 0 ] || fail "the installed server exited $SRV_RC after SIGTERM"

# ---- reinstall keeps an edited configuration; uninstall
sed -i 's/"policy": "none"/"policy": "drop"/' "$cfg"
make -s install BUILD="$BUILD" PREFIX="$P" > "$tmp/make.log" 2>&1 || fail "second install failed"
grep -q '"policy": "drop"' "$cfg" || fail "a second install overwrote the edited configuration"
make -s uninstall PREFIX="$P" > "$tmp/make.log" 2>&1 || fail "uninstall failed"
left=$(cd "$P" && find . -type f | sort | tr '\n' ' ')
[ "$left" = "./etc/capmoe/capmoe.json " ] || fail "uninstall left: $left"
[ "$rc" = 0 ] && echo "t_install: ok"
exit $rc
