#!/usr/bin/env bash
# Two "hosts" on this machine for multi-host MPI tests: network namespaces NAME1 and NAME2, each with its own
# network stack, joined by a veth pair on a private /24 that exists only inside them, each name resolvable
# inside both (/etc/netns/NAME/hosts, which `ip netns exec` mounts over /etc/hosts). Needs root and iproute2.
#
#   scripts/netns_hosts.sh up [NAME1 NAME2 SUBNET]     (default repq-h1 repq-h2 10.77.0)
#   scripts/netns_hosts.sh down [NAME1 NAME2]
#   scripts/netns_hosts.sh link up|down [NAME2]        NAME2's end of the link (a cut link, and back)
#   scripts/netns_hosts.sh rsh HOST COMMAND...         run COMMAND in HOST's namespace, with HOST as its host
#                                                      name: Open MPI's plm_rsh_agent, in place of ssh
#
# mpirun started in the first namespace then launches a rank on each host with the agent:
#   ip netns exec repq-h1 mpirun --host repq-h1,repq-h2 -np 2 --mca plm_rsh_agent "scripts/netns_hosts.sh rsh" \
#     --mca btl tcp,self --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 ./train ...
set -euo pipefail
cmd=${1:?usage: $0 up|down|link|rsh ...}
shift
case "$cmd" in
  up)
    h1=${1:-repq-h1} h2=${2:-repq-h2} net=${3:-10.77.0}
    ip netns add "$h1"
    ip netns add "$h2"
    ip link add "veth-$h1" netns "$h1" type veth peer name "veth-$h2" netns "$h2"
    ip -n "$h1" addr add "$net.1/24" dev "veth-$h1"
    ip -n "$h2" addr add "$net.2/24" dev "veth-$h2"
    for h in "$h1" "$h2"; do
      # A cut link fails a TCP connection with data in flight after tcp_retries2 retransmissions: 15 by
      # default (15 minutes), during which mpirun waits for the daemon it cannot reach; 4 is ~6 s
      # (docs/distributed.md: the same setting on a real cluster)
      ip netns exec "$h" sysctl -qw net.ipv4.tcp_retries2=4
      ip -n "$h" link set lo up
      ip -n "$h" link set "veth-$h" up
      mkdir -p "/etc/netns/$h"
      printf '127.0.0.1 localhost\n%s.1 %s\n%s.2 %s\n' "$net" "$h1" "$net" "$h2" > "/etc/netns/$h/hosts"
    done
    ;;
  down)
    h1=${1:-repq-h1} h2=${2:-repq-h2}
    for h in "$h1" "$h2"; do
      ip netns pids "$h" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
      ip netns del "$h" 2>/dev/null || true
      rm -rf "/etc/netns/$h"
    done
    ;;
  link)
    state=${1:?link up|down} h2=${2:-repq-h2}
    ip -n "$h2" link set "veth-$h2" "$state"
    ;;
  rsh)
    host=$1
    shift
    # its own host name too (a UTS namespace), as MPI_Get_processor_name reports it
    exec ip netns exec "$host" unshare --uts sh -c "hostname $host; $*"
    ;;
  *)
    echo "$0: unknown command '$cmd' (up, down, link, rsh)" >&2
    exit 2
    ;;
esac
