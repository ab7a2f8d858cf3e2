#!/bin/sh
# t_docker.sh - what can be checked of the Docker deployment without a Docker
# engine (CI has none):
#  a. docker/Dockerfile installs packages only through docker/install-deps.sh
#     (build stage: `build`, runtime stage: `runtime`), the script the Makefile
#     uses too; every package of `install-deps.sh --list build|runtime|test`
#     exists in apt; every shared library that build/capmoe-server and
#     build/capmoe load belongs (dpkg -S) to a runtime package or to one of
#     their dependencies, and each one they link directly to a listed runtime
#     package (or libc6 / libgcc-s1 of the base image); COPY sources exist.
#  b. promtool check config docker/prometheus.yml
#  c. the Grafana dashboard parses and every capmoe_* / process_* name and
#     label in its queries is exported by a live capmoe-server's /metrics
#     (default model, per-layer expert labels on, after one completion), and
#     each panel that a server in the default configuration leaves empty
#     says why (Grafana's noValue) instead of showing "No data"; the Docker
#     HEALTHCHECK command (capmoe-server --healthcheck, with the image's
#     CAPMOE_* environment) exits 0 against it and 1 once it has stopped.
#  d. `docker-compose config` (the official client, offline) validates
#     docker/docker-compose.yml; its services, healthcheck, ports, mounts and
#     the Prometheus target agree with the Dockerfile and config/capmoe.json.
# Each check is also run once on a broken input, which it must reject.
set -u
cd "$(dirname "$0")/.."
. tests/client/server.sh
BUILD="${CAPMOE_BUILD:-build}"
fail=0
tmp=$(mktemp -d)
cleanup() { stop_server >/dev/null 2>&1; rm -rf "$tmp"; }
trap cleanup EXIT
bad() { echo "t_docker: FAIL: $*"; fail=1; }
ok() { echo "t_docker: ok: $*"; }
PY3=python3
[ -x /usr/bin/python3 ] && PY3=/usr/bin/python3

# ---------------------------------------------------------------- a. packages
df="${T_DOCKER_DOCKERFILE:-docker/Dockerfile}"  # override: try the checks on another file
[ -f "$df" ] || { echo "t_docker: $df missing"; exit 1; }
# RUN lines that call install-deps.sh, prefixed by their stage name
awk '/^FROM /{stage=$NF} /^RUN .*install-deps\.sh/{print stage ": " $0}' "$df" > "$tmp/deps-runs"
nstages=$(grep -c '^FROM ' "$df")
last_stage=$(awk '/^FROM /{s=$NF} END{print s}' "$df")
[ "$nstages" -ge 2 ] || bad "$df: $nstages stage(s), expected a build and a runtime stage"
grep -q '^build: RUN .*install-deps\.sh build\b' "$tmp/deps-runs" \
  || bad "$df: the build stage does not run install-deps.sh build"
grep -q "^$last_stage: RUN .*install-deps\\.sh runtime\\b" "$tmp/deps-runs" \
  || bad "$df: the runtime stage ($last_stage) does not run install-deps.sh runtime"
[ "$(grep -c '^COPY docker/install-deps.sh ' "$df")" -eq 2 ] \
  || bad "$df: both stages must COPY docker/install-deps.sh"
if grep -v '^[[:space:]]*#' "$df" | grep -nE 'apt-get|apt install|dpkg -i|aptitude' > "$tmp/apt-lines"; then
  bad "$df installs packages outside install-deps.sh:"; cat "$tmp/apt-lines"
fi
grep -qE '^ARG DEBIAN_IMAGE=debian:bookworm-slim$' "$df" || bad "$df: base image is not debian:bookworm-slim"
grep -qE 'sh docker/install-deps.sh build' Makefile || bad "Makefile does not install through docker/install-deps.sh build"
if [ -f README.md ] && ! grep -qE 'install-deps\.sh|make run' README.md; then
  bad "README.md names neither docker/install-deps.sh nor make run as the install step"
fi
# COPY sources (not --from) exist in the build context (the repository root)
grep -E '^COPY ' "$df" | grep -v -- '--from' | while read -r _c line; do
  set -- $line
  while [ $# -gt 1 ]; do [ -e "$1" ] || echo "$1"; shift; done
done > "$tmp/missing-copy"
[ -s "$tmp/missing-copy" ] && bad "$df COPYs paths missing from the repository: $(tr '\n' ' ' < "$tmp/missing-copy")"
ok "Dockerfile stages use install-deps.sh ($(tr '\n' ';' < "$tmp/deps-runs"))"

if ! ls /var/lib/apt/lists/*_Packages > /dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq > /dev/null 2>&1; fi
fi
# one apt-cache call for all lists (each call loads the whole cache); a
# package that does not exist must be reported as missing by the same call
all_pkgs=$(for mode in build runtime test; do sh docker/install-deps.sh --list "$mode"; done | tr ' ' '\n' | sort -u)
# shellcheck disable=SC2086
apt-cache show --no-all-versions $all_pkgs capmoe-no-such-package 2>/dev/null \
  | sed -n 's/^Package: //p' | sort -u > "$tmp/found-pkgs"
for p in $all_pkgs; do
  grep -qx "$p" "$tmp/found-pkgs" || bad "install-deps.sh: no apt package '$p'"
done
grep -qx capmoe-no-such-package "$tmp/found-pkgs" \
  && bad "apt-cache show found a package that does not exist: the package check cannot fail"
[ -s "$tmp/found-pkgs" ] || bad "apt-cache show found no package at all (apt lists missing?)"
ok "every package of install-deps.sh --list build/runtime/test exists in apt"

for b in "$BUILD/capmoe-server" "$BUILD/capmoe"; do
  [ -x "$b" ] || { echo "t_docker: $b not built (make all)"; exit 1; }
done
# owner package of every library the binaries load (one dpkg -S call; /lib
# and /usr/lib are one directory under merged /usr, but dpkg knows only the
# path it installed, so both spellings are asked)
for b in "$BUILD/capmoe-server" "$BUILD/capmoe"; do ldd "$b"; done | awk '/=>/ {print $3}' | sort -u > "$tmp/libpaths"
while read -r _p; do
  _r=$(readlink -f "$_p")
  printf '%s\n%s\n%s\n%s\n' "$_p" "$_r" "${_r#/usr}" "/usr$_p"
done < "$tmp/libpaths" | sort -u > "$tmp/candidates"
# shellcheck disable=SC2046
dpkg -S $(cat "$tmp/candidates") 2>/dev/null | grep -v '^diversion' \
  | sed -n 's/^\([^:]*\)\(:[a-z0-9]*\)*: \(.*\)$/\3 \1/p' > "$tmp/owners"
owner_of() {
  _r=$(readlink -f "$1")
  for _p in "$1" "$_r" "${_r#/usr}" "/usr$1"; do
    _o=$(awk -v p="$_p" '$1 == p {print $2; exit}' "$tmp/owners")
    [ -n "$_o" ] && { echo "$_o"; return 0; }
  done
  return 1
}
# check_libs "runtime package list" -> prints problems, one a line
check_libs() {
  _pkgs="$1"
  # shellcheck disable=SC2086
  apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances $_pkgs 2>/dev/null | grep -v '^ ' | sed 's/:.*//' | sort -u > "$tmp/closure"
  for _bin in "$BUILD/capmoe-server" "$BUILD/capmoe"; do
    readelf -d "$_bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' > "$tmp/needed"
    ldd "$_bin" | awk '/=>/ {print $1, $3}' > "$tmp/ldd"
    [ -s "$tmp/ldd" ] || echo "$_bin: ldd lists no libraries"
    while read -r _so _path; do
      if [ "$_path" = "not" ]; then echo "$_bin: $_so not found"; continue; fi
      _own=$(owner_of "$_path") || { echo "$_bin: $_so ($_path) belongs to no package"; continue; }
      grep -qx "$_own" "$tmp/closure" || echo "$_bin: $_so is in $_own, which the runtime packages do not pull in"
      if grep -qx "$_so" "$tmp/needed"; then
        case " $_pkgs libc6 libgcc-s1 " in
          *" $_own "*) ;;
          *) echo "$_bin links $_so directly, but its package $_own is not in the runtime list" ;;
        esac
      fi
    done < "$tmp/ldd"
  done
}
runtime_pkgs=$(sh docker/install-deps.sh --list runtime)
check_libs "$runtime_pkgs" > "$tmp/libs.out"
if [ -s "$tmp/libs.out" ]; then
  bad "runtime packages do not cover the binaries' libraries:"; cat "$tmp/libs.out"
else
  ok "libraries of $BUILD/capmoe-server and $BUILD/capmoe: all from runtime packages ($runtime_pkgs)"
fi
check_libs "$(echo "$runtime_pkgs" | sed 's/libcjson1//')" > "$tmp/libs-neg.out"
grep -q 'libcjson' "$tmp/libs-neg.out" \
  || bad "the library check did not notice a runtime list without libcjson1"
grep -q 'tini' "$df" && echo " $runtime_pkgs " | grep -q ' tini ' \
  || bad "the image runs tini, but tini is not a runtime package"

# ---------------------------------------------------------------- b. promtool
if ! command -v promtool > /dev/null 2>&1; then
  bad "promtool not installed (Debian package prometheus; install-deps.sh test)"
else
  if promtool check config docker/prometheus.yml > "$tmp/promtool.out" 2>&1; then
    ok "promtool check config docker/prometheus.yml"
  else
    bad "promtool check config docker/prometheus.yml:"; cat "$tmp/promtool.out"
  fi
  sed 's/scrape_interval: .*/scrape_interval: 5x/' docker/prometheus.yml > "$tmp/bad-prometheus.yml"
  promtool check config "$tmp/bad-prometheus.yml" > /dev/null 2>&1 \
    && bad "promtool accepted a broken config: the check cannot fail"
fi

# ---------------------------------------------------------------- c. dashboard vs live /metrics
dash=docker/grafana/dashboards/capmoe.json
dsprov=docker/grafana/provisioning/datasources/prometheus.yml
# a server in the default configuration (the shipped file), after some traffic
if start_server "$BUILD/capmoe-server" "$tmp/default.log" --config config/capmoe.json; then
  node -e '
    const body = (p) => ({method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(p)});
    Promise.all([0, 1, 2, 3].map((i) => fetch(process.argv[1] + "/v1/completions",
        body({prompt: "In the beginning God created the heaven and the earth, and the earth was without form " + i, max_tokens: 16}))
      .then((r) => { if (!r.ok) process.exit(1); })))
      .catch((e) => { console.log(String(e)); process.exit(2); });' "$SERVER_URL" \
    || bad "completions on the default configuration failed"
  http_get "$SERVER_URL/metrics" > "$tmp/default-metrics.txt" || bad "GET /metrics (default configuration) failed"
  stop_server || bad "the default-configuration server did not stop cleanly"
else
  bad "could not start $BUILD/capmoe-server with config/capmoe.json"
fi
if start_server "$BUILD/capmoe-server" "$tmp/server.log" --model config/model --metrics-per-layer-expert; then
  node -e '
    fetch(process.argv[1] + "/v1/completions", {method: "POST", headers: {"content-type": "application/json"},
      body: JSON.stringify({prompt: "In the beginning", max_tokens: 8})})
      .then(async r => { const j = await r.json(); if (!r.ok || !j.choices) { console.log(r.status, j); process.exit(1); } })
      .catch(e => { console.log(String(e)); process.exit(2); });' "$SERVER_URL" \
    || bad "a completion on the default model failed"
  http_get "$SERVER_URL/metrics" > "$tmp/metrics.txt" || bad "GET /metrics failed"
  # the expert-parallel panels query the per-rank series of --ep mpi: add the
  # exposition of a 2-rank server (families appear in both: the check reads names)
  sp_pid=$SERVER_PID sp_port=$SERVER_PORT sp_url=$SERVER_URL
  if CAPMOE_MPI_NP=2 CAPMOE_MPI_BIN="$BUILD/capmoe-server" start_server tests/mpi/np_server.sh \
       "$tmp/mpi-server.log" --model tests/fixtures/qwen3moe-tiny; then
    node -e '
      fetch(process.argv[1] + "/v1/completions", {method: "POST", headers: {"content-type": "application/json"},
        body: JSON.stringify({prompt: "In the beginning", max_tokens: 8, n: 2})})
        .then(r => process.exit(r.ok ? 0 : 1)).catch(() => process.exit(2));' "$SERVER_URL" \
      || bad "a completion on the --ep mpi server failed"
    http_get "$SERVER_URL/metrics" >> "$tmp/metrics.txt" || bad "GET /metrics (--ep mpi) failed"
    stop_server >/dev/null
  else
    bad "the --ep mpi server did not start: $(tail -n 5 "$tmp/mpi-server.log")"
  fi
  SERVER_PID=$sp_pid SERVER_PORT=$sp_port SERVER_URL=$sp_url
  if $PY3 tests/docker/check_dashboard.py "$dash" "$tmp/metrics.txt" "$dsprov" "$tmp/default-metrics.txt" > "$tmp/dash.out" 2>&1; then
    ok "$(cat "$tmp/dash.out")"
  else
    bad "dashboard check:"; cat "$tmp/dash.out"
  fi
  sed 's/capmoe_moe_routed_pairs_total/capmoe_moe_routed_pairz_total/' "$dash" > "$tmp/bad-dash.json"
  $PY3 tests/docker/check_dashboard.py "$tmp/bad-dash.json" "$tmp/metrics.txt" "$dsprov" > "$tmp/bad-dash.out" 2>&1 \
    && bad "the dashboard check accepted a metric name /metrics does not export"
  grep -q 'capmoe_moe_routed_pairz_total is not exported' "$tmp/bad-dash.out" \
    || bad "the dashboard check did not name the unknown metric: $(head -n 3 "$tmp/bad-dash.out")"
  # a panel that is empty by default without its explanation is refused
  sed 's/"noValue": "No data under one rank[^"]*"/"noValue": ""/' "$dash" > "$tmp/bad-dash2.json"
  $PY3 tests/docker/check_dashboard.py "$tmp/bad-dash2.json" "$tmp/metrics.txt" "$dsprov" "$tmp/default-metrics.txt" \
    > "$tmp/bad-dash2.out" 2>&1 && bad "the dashboard check accepted an empty panel without its explanation"
  grep -q "panel 'Straggler ratio.*no data under the default configuration" "$tmp/bad-dash2.out" \
    || bad "the empty-panel check did not name the straggler panel: $(head -n 3 "$tmp/bad-dash2.out")"
  # the HEALTHCHECK command, with the environment the image sets
  hc() { CAPMOE_CONFIG=config/capmoe.json CAPMOE_HOST=0.0.0.0 CAPMOE_PORT="$SERVER_PORT" \
         "$BUILD/capmoe-server" --healthcheck > "$tmp/hc.out" 2>&1; }
  if hc; then ok "capmoe-server --healthcheck: exit 0 while the server runs"; else
    bad "capmoe-server --healthcheck failed against a running server: $(cat "$tmp/hc.out")"; fi
  stop_server || bad "the server did not stop cleanly on SIGTERM"
  hc; rc=$?
  [ "$rc" = 1 ] && ok "capmoe-server --healthcheck: exit 1 once the server is gone" \
    || bad "capmoe-server --healthcheck exit $rc with no server (expected 1)"
else
  bad "could not start $BUILD/capmoe-server on config/model"
fi

# ---------------------------------------------------------------- d. compose
if ! command -v docker-compose > /dev/null 2>&1; then
  bad "docker-compose not installed (Debian package docker-compose; install-deps.sh test)"
else
  if docker-compose -f docker/docker-compose.yml config > "$tmp/compose.yml" 2> "$tmp/compose.err"; then
    if $PY3 tests/docker/check_compose.py "$tmp/compose.yml" . > "$tmp/compose.out" 2>&1; then
      ok "docker-compose config: valid; $(cat "$tmp/compose.out")"
    else
      bad "compose files disagree:"; cat "$tmp/compose.out"
    fi
  else
    bad "docker-compose config rejects docker/docker-compose.yml:"; cat "$tmp/compose.err"
  fi
  sed 's/stop_grace_period:/stop_grace_perod:/' docker/docker-compose.yml > "$tmp/bad-compose.yml"
  docker-compose -f "$tmp/bad-compose.yml" config > /dev/null 2>&1 \
    && bad "docker-compose config accepted an unknown service key: the check cannot fail"
fi

if [ "$fail" = 0 ]; then echo "t_docker: all checks passed"; fi
exit "$fail"
