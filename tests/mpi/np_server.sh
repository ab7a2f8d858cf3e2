#!/bin/sh
# np_server.sh - starts capmoe-server under mpirun for the tests:
#   CAPMOE_MPI_NP=2 CAPMOE_MPI_BIN=build/capmoe-server tests/mpi/np_server.sh ARGS...
# runs `mpirun -np 2 build/capmoe-server --ep mpi ARGS...` with the flags of
# tests/mpi_env.sh (and, with CAPMOE_MPI_ASAN=1, the sanitizer environment
# passed to every rank). exec: signals sent to this script reach mpirun,
# which forwards them to the ranks.
cd "$(dirname "$0")/../.."
. tests/mpi_env.sh
np="${CAPMOE_MPI_NP:-2}"
bin="${CAPMOE_MPI_BIN:-build/capmoe-server}"
if [ "${CAPMOE_MPI_ASAN:-0}" = 1 ]; then
  # shellcheck disable=SC2086
  export $MPI_ASAN_ENV
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
  exec "$MPIRUN" $MPIRUN_ARGS -x ASAN_OPTIONS -x LSAN_OPTIONS -x UBSAN_OPTIONS \
    -x OMPI_MCA_mca_base_component_disable_dlclose -x PMIX_MCA_mca_base_component_disable_dlclose \
    -np "$np" "$bin" --ep mpi "$@"
fi
# shellcheck disable=SC2086
exec "$MPIRUN" $MPIRUN_ARGS -np "$np" "$bin" --ep mpi "$@"
