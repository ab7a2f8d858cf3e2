#!/bin/sh
# t_fuzz_replay.sh - every fuzz harness of tests/fuzz/ over its committed seed
# corpus (tests/fuzz/corpus/NAME) and the inputs that once crashed it
# (tests/fuzz/regress/NAME), without libFuzzer: the replay_NAME binaries are
# built by `make tests` with gcc and ASan + UBSan (build-asan/fuzz/; the plain
# build's when there is no ASan build). Every harness must have seeds.
set -u
cd "$(dirname "$0")/.."
B="${CAPMOE_ASAN:-build-asan}"
[ -d "$B/fuzz" ] || B="${CAPMOE_BUILD:-build}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
rc=0; n=0
for src in tests/fuzz/fuzz_*.c; do
  name=$(basename "$src" .c); name=${name#fuzz_}
  bin="$B/fuzz/replay_$name"
  if [ ! -x "$bin" ]; then echo "t_fuzz_replay: $bin missing (make tests)"; rc=1; continue; fi
  if [ -z "$(ls "tests/fuzz/corpus/$name" 2>/dev/null)" ]; then
    echo "t_fuzz_replay: no seeds in tests/fuzz/corpus/$name"; rc=1; continue
  fi
  dirs="tests/fuzz/corpus/$name"
  [ -d "tests/fuzz/regress/$name" ] && dirs="$dirs tests/fuzz/regress/$name"
  # shellcheck disable=SC2086
  if out=$("$bin" $dirs 2>&1); then
    echo "t_fuzz_replay: $name: $(echo "$out" | tail -n 1)"
    n=$((n + 1))
  else
    echo "t_fuzz_replay: $name FAILED:"; echo "$out" | tail -n 40; rc=1
  fi
done
[ "$rc" = 0 ] && echo "t_fuzz_replay: ok ($n harnesses, $B)"
exit $rc
