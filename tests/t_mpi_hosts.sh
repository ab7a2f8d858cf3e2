#!/bin/sh
# t_mpi_hosts.sh - --ep mpi across hosts: two network namespaces on this
# machine (tests/mpi/hosts.sh), one rank in each, talking over TCP only
# (tests/mpi/hosts_mpirun.sh: hostfile, an rsh agent, btl_tcp_if_include):
#  1. parity with single-process runs across the hosts (every policy);
#  2. ranks given different model directories are refused, naming the rank;
#  3. capmoe-server with rank 0 on one host and rank 1 on the other answers
#     a greedy completion exactly as `capmoe generate` does in one process,
#     and stops cleanly on SIGTERM.
# Needs root and iproute2 (CI runs as root; docker/install-deps.sh installs it).
set -u
cd "$(dirname "$0")/.."
. tests/client/server.sh
BUILD="${CAPMOE_BUILD:-build}"
tmp=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  sh tests/mpi/hosts.sh down 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "t_mpi_hosts: $*"; [ -f "$tmp/server.log" ] && tail -n 30 "$tmp/server.log"; exit 1; }
sh tests/mpi/hosts.sh down 2>/dev/null
sh tests/mpi/hosts.sh up 2 > "$tmp/up.log" 2>&1 || { cat "$tmp/up.log"; fail "cannot create the test hosts"; }
MPIRUN="$PWD/tests/mpi/hosts_mpirun.sh"
export MPIRUN

# 1. parity over TCP
python3 tests/mpi_parity_check.py tests/fixtures/qwen3moe-tiny "$BUILD/capmoe" 2 || fail "parity across hosts"

# 2. a different model on rank 1
if "$MPIRUN" -np 1 "$BUILD/capmoe" logits --model "$PWD/tests/fixtures/mixtral-tiny" --ids 1,2,3 \
     --out "$tmp/x.f32" --ep mpi : -np 1 "$BUILD/capmoe" logits \
     --model "$PWD/tests/fixtures/qwen3moe-tiny" --ids 1,2,3 --out "$tmp/x.f32" --ep mpi \
     > "$tmp/mismatch.log" 2>&1; then
  fail "ranks with different models were not refused"
fi
grep -q "rank 1 .*serves a different model directory" "$tmp/mismatch.log" ||
  { cat "$tmp/mismatch.log"; fail "the refusal does not name rank 1 and the model"; }

# 3. the server across the hosts
port=$(free_port)
url="http://198.18.1.11:$port"
"$MPIRUN" -np 2 "$BUILD/capmoe-server" --ep mpi --model "$PWD/config/model" --host 198.18.1.11 \
  --port "$port" > "$tmp/server.log" 2>&1 &
pid=$!
t=0
until http_get "$url/health" > /dev/null 2>&1; do
  kill -0 "$pid" 2>/dev/null || fail "the server exited"
  t=$((t + 1)); [ $t -gt 240 ] && fail "the server was not ready in 60 s"
  sleep 0.25
done
want=$("$BUILD/capmoe" generate --model config/model --prompt "In the beginning" --max-tokens 16 |
       python3 -c 'import json,sys; print(json.load(sys.stdin)["text"])')
got=$(node -e '
  fetch(process.argv[1] + "/v1/completions", {method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({prompt: "In the beginning", max_tokens: 16, temperature: 0, ignore_eos: true})})
    .then(r => r.json()).then(j => console.log(j.choices[0].text)).catch(e => { console.error(e); process.exit(1); });' "$url") ||
  fail "the completion request failed"
[ "$got" = "$want" ] || fail "across hosts: '$got' != single process: '$want'"
http_get "$url/metrics" > "$tmp/metrics.txt" || fail "GET /metrics"
grep -q 'capmoe_ep_alltoall_bytes_total{rank="1",direction="received"} [1-9]' "$tmp/metrics.txt" ||
  fail "rank 1 received nothing over the network"
kill -TERM "$pid"
t=0
while kill -0 "$pid" 2>/dev/null; do t=$((t + 1)); [ $t -gt 300 ] && fail "no stop in 30 s"; sleep 0.1; done
wait "$pid"; pid=""
grep -q -E "(capmoe-server:| info ) stopped$" "$tmp/server.log" || fail "rank 0 did not stop cleanly"
grep -q "rank 1: stopped" "$tmp/server.log" || fail "rank 1 did not stop cleanly"
echo "t_mpi_hosts: ok"
