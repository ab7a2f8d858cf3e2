#!/bin/sh
# t_server_deepseek.sh - capmoe-server serving chat from DeepSeek-V2 and
# DeepSeek-V3 checkpoints (the parity fixtures): the prompt is the model's own
# chat template (DeepSeek-V2 "User: ... Assistant:", DeepSeek-V3
# "<｜User｜>...<｜Assistant｜>"), so usage.prompt_tokens is the token count of
# that rendering, and the greedy reply is what `capmoe generate` gives for
# those ids (latent attention through the scheduler: prompt, then decode
# steps with the latent KV cache); /metrics reports the latent KV bytes per
# token.
set -u
cd "$(dirname "$0")/.."
. tests/server/common.sh
BUILD="${CAPMOE_BUILD:-build}"
tmp=$(mktemp -d)
trap 'srv_kill; rm -rf "$tmp"' EXIT
BOS='<｜begin▁of▁sentence｜>'
rc=0

jget() { # jget EXPR: evaluates EXPR on the JSON object read from stdin (python3)
  python3 -c 'import json, sys; j = json.load(sys.stdin); v = eval(sys.argv[1]); print(v if isinstance(v, str) else json.dumps(v))' "$1"
}

post_chat() { # prints the response body of a greedy chat completion
  node -e '
    const http = require("http");
    const body = JSON.stringify({messages: [{role: "system", content: "Be brief."},
                                            {role: "user", content: "hello world"}],
                                 max_tokens: 6, temperature: 0});
    const u = new URL(process.argv[1] + "/v1/chat/completions");
    const r = http.request(u, {method: "POST", headers: {"Content-Type": "application/json"}}, (res) => {
      let d = ""; res.on("data", (c) => d += c);
      res.on("end", () => { if (res.statusCode !== 200) { console.error(res.statusCode, d); process.exit(1); }
                            console.log(d); });
    });
    r.on("error", (e) => { console.error(e.message); process.exit(1); });
    r.end(body);' "$SRV_URL"
}

get_metrics() {
  node -e '
    const http = require("http");
    http.get(process.argv[1] + "/metrics", (res) => { let d = ""; res.on("data", (c) => d += c);
      res.on("end", () => console.log(d)); });' "$SRV_URL"
}

for fx in deepseekv2-tiny deepseekv3-tiny; do
  dir=tests/fixtures/$fx
  case $fx in
    deepseekv2-*) text="Be brief.

User: hello world

Assistant:" ;;
    *) text="Be brief.<｜User｜>hello world<｜Assistant｜>" ;;
  esac
  # tokenize adds the BOS the template writes as text
  tok=$("$BUILD/capmoe" tokenize --model "$dir" --text "$text") || { rc=1; continue; }
  n=$(echo "$tok" | jget 'len(j["ids"])')
  first=$(echo "$tok" | jget 'j["ids"][0]')
  ids=$(echo "$tok" | jget '",".join(map(str, j["ids"]))')
  want=$("$BUILD/capmoe" generate --model "$dir" --ids "$ids" --max-tokens 6 --stop-at-eos |
         jget 'j["text"]') || { rc=1; continue; }
  srv_start "$BUILD/capmoe-server" "$tmp/$fx.log" --model "$dir" --max-batch-tokens 4 --max-running 2 || { rc=1; continue; }
  out=$(post_chat) || { echo "t_server_deepseek: $fx: chat request failed"; rc=1; }
  got_n=$(echo "$out" | jget 'j["usage"]["prompt_tokens"]')
  got=$(echo "$out" | jget 'j["choices"][0]["message"]["content"]')
  if [ "$first" != 0 ] || [ "$got_n" != "$n" ]; then
    echo "t_server_deepseek: $fx: prompt_tokens $got_n, want $n (the template's rendering, BOS id $first)"
    rc=1
  fi
  if [ "$got" != "$want" ]; then
    echo "t_server_deepseek: $fx: reply '$got', want '$want' (capmoe generate on the same ids)"
    rc=1
  fi
  kv=$(get_metrics | sed -n 's/^capmoe_kv_cache_token_bytes \(.*\)/\1/p')
  layers=$(jget 'j["num_hidden_layers"]' < "$dir/config.json")
  row=$(jget 'j["kv_lora_rank"] + j["qk_rope_head_dim"]' < "$dir/config.json")
  if [ "$kv" != "$((layers * row * 4))" ]; then
    echo "t_server_deepseek: $fx: capmoe_kv_cache_token_bytes $kv, want $((layers * row * 4))"
    rc=1
  fi
  kill -TERM "$SRV_PID"; srv_wait_exit 20
  [ "$SRV_RC" = 0 ] || { echo "t_server_deepseek: $fx: exit status $SRV_RC"; rc=1; }
  [ "$rc" = 0 ] && echo "t_server_deepseek: $fx ok ($n prompt tokens, reply '$got')"
done
[ "$rc" = 0 ] || exit 1
echo "t_server_deepseek: ok"
