#!/bin/sh
# t_sysinfo.sh - no silent slow path: --version of both binaries names the
# BLAS core, the CPU's features, oneDNN and the threads; a BLAS forced onto
# kernels weaker than the CPU (OPENBLAS_CORETYPE=Prescott on an AVX2 or
# AVX-512 CPU) is warned about in --version, `capmoe bench`'s JSON and
# stderr, the server's start-up log and capmoe_build_info; --threads is
# taken (and checked) by the CLI commands and the server.
# The environment's own OPENBLAS_CORETYPE (Haswell on the development
# machine, on purpose) is kept for everything except the forced cases.
set -eu
cd "$(dirname "$0")/.."
BUILD="${CAPMOE_BUILD:-build}"
M=tests/fixtures/mixtral-tiny
tmp=$(mktemp -d)
. tests/server/common.sh
trap 'srv_kill; rm -rf "$tmp"' EXIT
fail() { echo "t_sysinfo: $*"; exit 1; }

for b in capmoe capmoe-server; do
  "$BUILD/$b" --version > "$tmp/v.txt"
  head -n 1 "$tmp/v.txt" | grep -qE "^$b [0-9]+\.[0-9]+\.[0-9]+ \(revision " || fail "$b --version line 1: $(head -n 1 "$tmp/v.txt")"
  for k in build cpu blas onednn threads; do
    grep -q "^$k: " "$tmp/v.txt" || fail "$b --version has no '$k:' line"
  done
  grep -q "^blas: OpenBLAS [0-9.]*, core [A-Za-z0-9]" "$tmp/v.txt" || fail "$b --version: no BLAS core"
done
cat "$tmp/v.txt"

# Which kernels the CPU deserves (the kernel's view of its flags).
flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
case "$flags" in
  *avx512f*avx512bw*) fix=SKYLAKEX ;;
  *avx2*) fix=HASWELL ;;
  *) fix="" ;;
esac
if [ -z "$fix" ]; then echo "t_sysinfo: no AVX2 on this CPU: the Prescott case cannot be weak; skipped"; exit 1; fi

# Forced onto Prescott (SSE3): one warning naming the core and the fix.
OPENBLAS_CORETYPE=Prescott "$BUILD/capmoe" --version > "$tmp/p.txt"
grep -q "^warning: slow BLAS: OpenBLAS .* runs its Prescott kernels (SSE, forced by OPENBLAS_CORETYPE=Prescott" "$tmp/p.txt" \
  || { cat "$tmp/p.txt"; fail "no Prescott warning in --version"; }
grep -q "fix: OPENBLAS_CORETYPE=$fix" "$tmp/p.txt" || fail "the warning does not name OPENBLAS_CORETYPE=$fix"
[ "$(grep -c '^warning:' "$tmp/p.txt")" = 1 ] || fail "more than one warning line"
OPENBLAS_CORETYPE=Prescott "$BUILD/capmoe-server" --version | grep -q "^warning: slow BLAS" || fail "no warning in capmoe-server --version"

# Kernels matching the CPU: no warning.
OPENBLAS_CORETYPE=$fix "$BUILD/capmoe" --version > "$tmp/ok.txt"
grep -q "^warning:" "$tmp/ok.txt" && { cat "$tmp/ok.txt"; fail "a warning with OPENBLAS_CORETYPE=$fix"; }

# capmoe bench: the sgemm ceiling carries the core and the warning; the
# hand-written peaks are there; --threads sets the engine's threads.
OPENBLAS_CORETYPE=Prescott "$BUILD/capmoe" bench --model $M --policies none --gammas 1.0 --prefill 16 \
  --decode 1 --repeat 1 --decode-steps 2 --sgemm-size 64 --copy-mib 1 --threads 1 > "$tmp/b.json" 2> "$tmp/b.err"
grep -q "capmoe bench: warning: slow BLAS: .*Prescott" "$tmp/b.err" || { cat "$tmp/b.err"; fail "bench printed no warning"; }
node -e '
  const o = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")), m = o.machine;
  const ok = m.threads === 1 && m.sgemm_blas_core === "Prescott" && m.sgemm_blas_slow === true &&
    /Prescott/.test(m.sgemm_warning) && m.system.blas_core === "Prescott" && m.system.threads === 1 &&
    m.peak_fp32_gflops > 0 && m.triad_gbs > 0 && typeof m.system.onednn === "string";
  if (!ok) { console.error(JSON.stringify(m)); process.exit(1); }' "$tmp/b.json" || fail "bench JSON lacks the BLAS report"
"$BUILD/capmoe" bench --model $M --policies none --gammas 1.0 --prefill 16 --decode "" --repeat 1 \
  --sgemm-size 64 --copy-mib 1 --threads 2 > "$tmp/b2.json"
node -e '
  const m = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).machine;
  if (m.threads !== 2 || typeof m.sgemm_blas_core !== "string") { console.error(JSON.stringify(m)); process.exit(1); }' "$tmp/b2.json" \
  || fail "bench --threads 2"

# --threads on the other commands: taken, range-checked.
"$BUILD/capmoe" generate --model $M --ids 1,2,3 --max-tokens 2 --threads 1 > /dev/null || fail "generate --threads 1"
"$BUILD/capmoe" logits --model $M --ids 1,2,3 --out "$tmp/l.bin" --threads 2 > /dev/null || fail "logits --threads 2"
rc=0; "$BUILD/capmoe" logits --model $M --ids 1,2 --out "$tmp/l.bin" --threads 65 2> "$tmp/e.txt" > /dev/null || rc=$?
[ "$rc" = 2 ] && grep -q -- "--threads" "$tmp/e.txt" || fail "--threads 65 not refused (rc $rc)"

# The server: start-up log and capmoe_build_info.
OPENBLAS_CORETYPE=Prescott srv_start "$BUILD/capmoe-server" "$tmp/s.log" --model $M --threads 1
grep -q "slow BLAS: .*Prescott" "$tmp/s.log" || { cat "$tmp/s.log"; fail "no warning in the server log"; }
grep -q "blas_core=Prescott" "$tmp/s.log" || fail "the start-up record lacks blas_core"
node -e '
  fetch(process.argv[1] + "/metrics").then((r) => r.text()).then((t) => {
    const l = t.split("\n").find((x) => x.startsWith("capmoe_build_info{"));
    if (!l || !/blas_core="Prescott"/.test(l) || !/blas_slow="1"/.test(l) || !/threads="1"/.test(l) ||
        !/cpu_features="[^"]*avx2/.test(l)) { console.error(l); process.exit(1); }
  });' "$SRV_URL" || fail "capmoe_build_info lacks the BLAS labels"
echo "t_sysinfo: ok (fix $fix)"
