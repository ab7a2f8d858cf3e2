#!/bin/sh
# t_server_regime.sh - the server's per-batch regime choice end to end:
#  a. decode_policy piggyback below regime_tokens 7 over policy drop: after
#     six concurrent completions (prompts batched into one prefill of more than 7
#     tokens, then decode steps
#     of 2..6 sequences), /metrics counts dispatches of both regimes, the
#     activated-experts histogram, and the ready log names the measured
#     crossover (capmoe_moe_regime_crossover_tokens > 0);
#  b. SIGHUP with decode_policy "off" (a live option): later dispatches are
#     all of the main regime;
#  c. regime_tokens "auto" from CAPMOE_REGIME_TOKENS: the server starts and
#     uses the crossover it measured.
set -u
cd "$(dirname "$0")/.."
. tests/server/common.sh
BIN="${CAPMOE_BUILD:-build}/capmoe-server"
MODEL=tests/fixtures/qwen3moe-tiny
tmp=$(mktemp -d)
trap 'srv_kill; rm -rf "$tmp"' EXIT
rc=0
fail() { echo "t_server_regime: $*"; rc=1; }

# N concurrent completions of 8 tokens, then the /metrics text into $1
load_and_scrape() {
  node -e '
    const http = require("http");
    const url = process.argv[1];
    function post(body) {
      return new Promise((res, rej) => {
        const r = http.request(url + "/v1/completions", {method: "POST",
          headers: {"Content-Type": "application/json"}}, (rs) => {
            let d = ""; rs.on("data", (c) => d += c); rs.on("end", () => res([rs.statusCode, d])); });
        r.on("error", rej); r.end(JSON.stringify(body)); });
    }
    (async () => {
      const prompts = ["The quick brown fox jumps over", "Hello world, hello there, hello",
        "In the beginning was the word and", "Numbers: 0 1 2 3 4 5 6 7", "Tokens, tokens everywhere; experts",
        "It is a test; they are here"];
      const out = await Promise.all(prompts.map((p) => post({model: "qwen3moe-tiny", prompt: p, max_tokens: 8,
        temperature: 0, ignore_eos: true})));
      for (const [code, d] of out) if (code !== 200) { console.error("status", code, d); process.exit(1); }
      http.get(url + "/metrics", (rs) => { let d = ""; rs.on("data", (c) => d += c);
        rs.on("end", () => { process.stdout.write(d); }); });
    })().catch((e) => { console.error(e); process.exit(1); });' "$SRV_URL" > "$1"
}
metric() { # NAME FILE -> value (0 if absent)
  v=$(grep -F "$1 " "$2" | grep -v '^#' | awk '{print $2}' | head -n 1); echo "${v:-0}"
}

# ---- a.
cfg="$tmp/cfg.json"
cat > "$cfg" <<JSON
{"model": "$MODEL", "port": 0, "policy": "drop", "capacity_factor": 1.0, "min_tokens": 0,
 "decode_policy": "piggyback", "piggyback_k0": 1, "regime_tokens": 7, "max_running": 8}
JSON
srv_start "$BIN" "$tmp/a.log" --config "$cfg" || exit 1
load_and_scrape "$tmp/m1.txt" || fail "a: requests failed"
dec=$(metric 'capmoe_moe_dispatches_total{limited="false",regime="decode"}' "$tmp/m1.txt")
main=$(metric 'capmoe_moe_dispatches_total{limited="true",regime="main"}' "$tmp/m1.txt")
act=$(metric 'capmoe_moe_activated_experts_count' "$tmp/m1.txt")
cross=$(metric 'capmoe_moe_regime_crossover_tokens' "$tmp/m1.txt")
echo "a: decode-regime dispatches $dec, limited main-regime dispatches $main, activated observations $act, crossover $cross"
[ "$dec" -gt 0 ] 2>/dev/null || fail "a: no dispatch ran the decode policy"
[ "$main" -gt 0 ] 2>/dev/null || fail "a: no prompt dispatch ran policy drop"
[ "$act" -gt 0 ] 2>/dev/null || fail "a: capmoe_moe_activated_experts not observed"
[ "$cross" -gt 0 ] 2>/dev/null || fail "a: no measured crossover"
grep -q "memory/compute crossover: $cross tokens" "$tmp/a.log" || fail "a: the ready log does not name the crossover"
grep -q '^capmoe_moe_piggybacked_pairs_total ' "$tmp/m1.txt" || fail "a: no piggybacked counter"

# ---- b. SIGHUP: decode_policy off
sed 's/"decode_policy": "piggyback"/"decode_policy": "off"/' "$cfg" > "$cfg.new" && mv "$cfg.new" "$cfg"
kill -HUP "$SRV_PID"
t=0; until grep -q "configuration reloaded" "$tmp/a.log"; do
  t=$((t + 1)); [ $t -gt 100 ] && { fail "b: no reload logged"; break; }; sleep 0.1; done
grep "configuration reloaded" "$tmp/a.log" | grep -q "decode_policy" || fail "b: the reload does not name decode_policy"
load_and_scrape "$tmp/m2.txt" || fail "b: requests failed"
dec2=$(metric 'capmoe_moe_dispatches_total{limited="false",regime="decode"}' "$tmp/m2.txt")
main2=$(metric 'capmoe_moe_dispatches_total{limited="false",regime="main"}' "$tmp/m2.txt")
echo "b: decode-regime dispatches $dec -> $dec2; unlimited main-regime $main2"
[ "$dec2" = "$dec" ] || fail "b: decode-regime dispatches grew after decode_policy off"
kill -TERM "$SRV_PID"; srv_wait_exit 30; [ "$SRV_RC" = 0 ] || fail "a/b: exit $SRV_RC"

# ---- c. auto through the environment
CAPMOE_DECODE_POLICY=piggyback CAPMOE_REGIME_TOKENS=auto srv_start "$BIN" "$tmp/c.log" --model "$MODEL" \
  || { fail "c: no start"; exit 1; }
load_and_scrape "$tmp/m3.txt" || fail "c: requests failed"
cross3=$(metric 'capmoe_moe_regime_crossover_tokens' "$tmp/m3.txt")
echo "c: crossover $cross3"
[ "$cross3" -gt 0 ] 2>/dev/null || fail "c: no measured crossover"
kill -TERM "$SRV_PID"; srv_wait_exit 30; [ "$SRV_RC" = 0 ] || fail "c: exit $SRV_RC"
[ "$rc" = 0 ] && echo "t_server_regime: ok"
exit $rc
