#!/bin/sh
# hosts_mpirun.sh ARGS... - mpirun across the test hosts of tests/mpi/hosts.sh
# (started inside the first one, the others reached through `hosts.sh agent`,
# ranks talking TCP on eth0 only: no shared memory between the hosts).
D=/tmp/capmoe-testhosts
here="$(cd "$(dirname "$0")" && pwd)"
root=""; [ "$(id -u)" = 0 ] && root="--allow-run-as-root"
case "${1:-}" in --version) exec mpirun --version ;; esac
exec ip netns exec capmoe-t1 mpirun $root --hostfile "$D/hostfile" \
  --mca plm_rsh_agent "$here/hosts.sh agent" --mca btl tcp,self \
  --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 "$@"
