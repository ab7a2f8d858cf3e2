#!/bin/sh
# t_prometheus_scrape.sh - a real Prometheus server (Debian package
# prometheus) on 127.0.0.1 scrapes capmoe-server every second; after a few
# completions, capmoe_generation_tokens_total (and more) is queried back through
# Prometheus' HTTP API. The live /metrics also passes `promtool check metrics`.
set -u
cd "$(dirname "$0")/.."
. tests/client/server.sh
BUILD="${CAPMOE_BUILD:-build}"
MODEL_DIR="${CAPMOE_CLIENT_MODEL:-tests/fixtures/qwen3moe-tiny}"
for b in prometheus promtool; do
  command -v "$b" >/dev/null 2>&1 || { echo "t_prometheus_scrape: $b not installed (Debian package prometheus)"; exit 1; }
done
tmp=$(mktemp -d)
PROM_PID=""
cleanup() {
  [ -n "$PROM_PID" ] && kill -TERM "$PROM_PID" 2>/dev/null && wait "$PROM_PID" 2>/dev/null
  stop_server >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT

start_server "$BUILD/capmoe-server" "$tmp/server.log" --model "$MODEL_DIR" || exit 1

prom_port=$(free_port)
cat > "$tmp/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: capmoe
    scrape_interval: 1s
    scrape_timeout: 1s
    static_configs:
      - targets: ['127.0.0.1:$SERVER_PORT']
YML
promtool check config "$tmp/prometheus.yml" > "$tmp/promtool-config.out" 2>&1 \
  || { echo "t_prometheus_scrape: bad prometheus config:"; cat "$tmp/promtool-config.out"; exit 1; }
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn > "$tmp/prometheus.log" 2>&1 &
PROM_PID=$!
PROM_URL="http://127.0.0.1:$prom_port"
i=0
until http_get "$PROM_URL/-/ready" > /dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -gt 120 ] || ! kill -0 "$PROM_PID" 2>/dev/null; then
    echo "t_prometheus_scrape: prometheus did not become ready; log:"; tail -n 20 "$tmp/prometheus.log"; exit 1
  fi
  sleep 0.25
done

CAPMOE_URL="$SERVER_URL" PROM_URL="$PROM_URL" node tests/client/scrape_check.mjs \
  || { echo "t_prometheus_scrape: scrape check failed; prometheus log:"; tail -n 20 "$tmp/prometheus.log"; exit 1; }

# The live exposition lints clean.
http_get "$SERVER_URL/metrics" > "$tmp/metrics.txt" || { echo "t_prometheus_scrape: GET /metrics failed"; exit 1; }
rc=0
promtool check metrics < "$tmp/metrics.txt" > "$tmp/promtool.out" 2>&1 || rc=$?
if [ "$rc" != 0 ] || [ -s "$tmp/promtool.out" ]; then
  echo "t_prometheus_scrape: promtool check metrics exit $rc:"; cat "$tmp/promtool.out"; exit 1
fi
grep -q '^capmoe_moe_dispatches_total{limited="false",regime="main"} [1-9]' "$tmp/metrics.txt" \
  || { echo "t_prometheus_scrape: no MoE dispatch counted"; grep capmoe_moe_dispatches "$tmp/metrics.txt"; exit 1; }

stop_server; src=$?
[ "$src" = 0 ] || { echo "t_prometheus_scrape: server exit status $src after SIGTERM"; exit 1; }
echo "t_prometheus_scrape: ok"
