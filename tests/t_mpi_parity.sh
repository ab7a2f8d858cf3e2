#!/bin/sh
# t_mpi_parity.sh - expert parallelism across MPI processes (--ep mpi) on the
# four parity fixtures, with 2 and 4 ranks on this machine (loopback /
# shared memory): policy none equals the single-process batch, every
# capacity policy equals per-rank single-process runs
# (tests/mpi_parity_check.py); then one fixture under AddressSanitizer.
set -eu
cd "$(dirname "$0")/.."
. tests/mpi_env.sh
B="${CAPMOE_BUILD:-build}"; A="${CAPMOE_ASAN:-build-asan}"
export MPIRUN
for f in mixtral-tiny olmoe-tiny qwen2moe-tiny qwen3moe-tiny; do
  python3 tests/mpi_parity_check.py "tests/fixtures/$f" "$B/capmoe" 2 4
done
if [ -x "$A/capmoe" ]; then
  # shellcheck disable=SC2086
  env $MPI_ASAN_ENV python3 tests/mpi_parity_check.py tests/fixtures/qwen2moe-tiny "$A/capmoe" 2
fi
echo "t_mpi_parity: ok"
