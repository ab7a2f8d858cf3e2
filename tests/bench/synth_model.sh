# synth_model.sh - sourced by the benchmark scripts (bench_short.sh,
# serve_bench.sh) from the repository root:
#
#   synth_model CAPMOE DIR "OPTIONS"
#
# writes a random checkpoint with `CAPMOE synth OPTIONS --out DIR` unless DIR
# already holds one made with exactly these options (recorded in
# DIR/synth-options). Returns non-zero if capmoe synth fails.
synth_model() {
  sm_capmoe="$1"; sm_dir="$2"; sm_opts="$3"
  if [ -f "$sm_dir/model.safetensors" ] && [ "$(cat "$sm_dir/synth-options" 2>/dev/null)" = "$sm_opts" ]; then
    return 0
  fi
  echo "writing $sm_dir (capmoe synth $sm_opts)" >&2
  rm -rf "$sm_dir"
  # shellcheck disable=SC2086 # the options are words
  "$sm_capmoe" synth $sm_opts --out "$sm_dir" > /dev/null || return 1
  echo "$sm_opts" > "$sm_dir/synth-options"
}
