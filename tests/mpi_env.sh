# mpi_env.sh - how the tests start MPI jobs (source it from the repository
# root). MPIRUN_ARGS holds the flags this machine needs: Open MPI refuses
# root without --allow-run-as-root, a 2-core machine needs --oversubscribe
# for 4 ranks, and binding is off so that ranks do not share one core.
# Under AddressSanitizer, Open MPI's own process-lifetime allocations are
# suppressed (tests/san/lsan-mpi.supp; full unwinding so that its frames are
# seen) and its plugins stay loaded so that their frames keep names.
MPIRUN="${MPIRUN:-mpirun}"
MPIRUN_ARGS="--oversubscribe --bind-to none"
[ "$(id -u)" = 0 ] && MPIRUN_ARGS="$MPIRUN_ARGS --allow-run-as-root"
MPI_ASAN_ENV="ASAN_OPTIONS=detect_leaks=1:fast_unwind_on_malloc=0 LSAN_OPTIONS=suppressions=$PWD/tests/san/lsan-mpi.supp OMPI_MCA_mca_base_component_disable_dlclose=1 PMIX_MCA_mca_base_component_disable_dlclose=1"
