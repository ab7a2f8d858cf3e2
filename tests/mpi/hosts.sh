#!/bin/sh
# hosts.sh up N | down | agent [opts] HOST CMD... : N "hosts" on this machine
# for the multi-host tests of --ep mpi. Each host is a network namespace
# capmoe-tN with its own eth0 (a veth on the bridge capmoe-tbr, address
# 198.18.1.(10+N)/24, a benchmarking range reachable only between these
# namespaces) and an /etc/hosts line; the hostfile lists them (one slot
# each). mpirun runs inside the first host and starts the others through
# `hosts.sh agent` as its rsh agent, so ranks on different hosts talk over
# TCP exactly as between machines. The machine itself is 198.18.1.1 on the
# bridge (a client there reaches a server in a host). Needs root (CI runs as
# root) and iproute2.
set -eu
D=/tmp/capmoe-testhosts
case "${1:-}" in
up)
  n=${2:?usage: hosts.sh up N}
  mkdir -p "$D"; : > "$D/hostfile"
  ip link add capmoe-tbr type bridge 2>/dev/null || true
  ip link set capmoe-tbr up
  ip addr replace 198.18.1.1/24 dev capmoe-tbr   # this machine reaches the hosts
  i=1
  while [ "$i" -le "$n" ]; do
    h=capmoe-t$i
    ip netns add "$h" 2>/dev/null || true
    ip link add "capmoe-tv$i" type veth peer name eth0 netns "$h" 2>/dev/null || true
    ip link set "capmoe-tv$i" master capmoe-tbr up
    ip -n "$h" addr replace "198.18.1.$((10 + i))/24" dev eth0
    ip -n "$h" link set eth0 up
    ip -n "$h" link set lo up
    grep -q " $h\$" /etc/hosts || echo "198.18.1.$((10 + i)) $h" >> /etc/hosts
    echo "$h slots=1" >> "$D/hostfile"
    i=$((i + 1))
  done;;
down)
  for h in $(ip netns list | awk '/^capmoe-t[0-9]/ {print $1}'); do ip netns del "$h"; done
  ip link del capmoe-tbr 2>/dev/null || true
  sed -i '/ capmoe-t[0-9]*$/d' /etc/hosts
  rm -rf "$D";;
agent) # mpirun's rsh agent: [options] HOST COMMAND...
  shift
  while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done
  h=$1; shift
  exec ip netns exec "$h" /bin/sh -c "$*";;
*) echo "usage: hosts.sh up N | down | agent HOST CMD..." >&2; exit 2;;
esac
