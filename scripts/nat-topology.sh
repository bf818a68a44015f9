#!/usr/bin/env bash
# A NAT playground from network namespaces, the same topology the NAT suite (tests/nat.rs)
# builds: an "internet" bridge (203.0.113.0/24, inside namespaces only), a public host running
# a dustfs testnet, and private hosts behind NAT routers.
#
#   scripts/nat-topology.sh up [cone|symmetric]   build it, start 4 public supplier nodes
#   scripts/nat-topology.sh down                  stop the nodes, delete every namespace
#
# Then, for example (as root):
#   nsenter --net=/var/run/netns/dfsdemo-h1 dustfs --home /tmp/dfsdemo/h1 init \
#       --listen /ip4/0.0.0.0/udp/0/quic-v1 --bootstrap /tmp/dfsdemo/net/bootstrap
#   nsenter --net=/var/run/netns/dfsdemo-h1 dustfs --home /tmp/dfsdemo/h1 mount /mnt/h1
#   dustfs --home /tmp/dfsdemo/h1 status     # connectivity, peer_paths, hole_punched_ms
# Hosts h1 and h2 sit behind their own routers (10.1.0.2, 10.2.0.2).
set -euo pipefail
P=dfsdemo
DIR=/tmp/dfsdemo
B=${DUSTFS:-$(command -v dustfs || echo "$(dirname "$0")/../target/release/dustfs")}

ns() { ip netns add "$1"; ip -n "$1" link set lo up; }
attach() { # port ns ifname cidr
  ip -n $P-wan link add "$1" type veth peer name "$3" netns "$2"
  ip -n $P-wan link set "$1" master br0 up
  ip -n "$2" addr add "$4" dev "$3"
  ip -n "$2" link set "$3" up
}
private() { # n kind
  local n=$1 kind=$2 r=$P-r$1 h=$P-h$1
  ns "$r"; ns "$h"
  attach "r$n" "$r" wan "203.0.113.$((100 + n))/24"
  ip -n "$r" link add lan type veth peer name eth0 netns "$h"
  ip -n "$r" addr add "10.$n.0.1/24" dev lan; ip -n "$r" link set lan up
  ip -n "$h" addr add "10.$n.0.2/24" dev eth0; ip -n "$h" link set eth0 up
  ip -n "$h" route add default via "10.$n.0.1"
  ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
  if [ "$kind" = symmetric ]; then
    ip netns exec "$r" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE --random-fully
  else
    ip netns exec "$r" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE
  fi
  for chain in FORWARD INPUT; do
    ip netns exec "$r" iptables -A $chain -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    ip netns exec "$r" iptables -A $chain -i wan -j DROP
  done
}

case "${1:-}" in
  up)
    kind=${2:-cone}
    ns $P-wan
    ip -n $P-wan link add br0 type bridge; ip -n $P-wan link set br0 up
    ns $P-pub; attach p10 $P-pub eth0 203.0.113.10/24
    private 1 "$kind"; private 2 "$kind"
    mkdir -p $DIR
    nsenter --net=/var/run/netns/$P-pub "$B" testnet up --dir $DIR/net --nodes 4 --ip 203.0.113.10
    echo "topology up ($kind NATs); bootstrap file: $DIR/net/bootstrap; hosts: $P-h1 (10.1.0.2), $P-h2 (10.2.0.2)"
    ;;
  down)
    "$B" testnet down --dir $DIR/net 2>/dev/null || true
    for n in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do ip netns del "$n"; done
    rm -rf $DIR
    echo "topology down"
    ;;
  *) sed -n 2,16p "$0"; exit 2 ;;
esac
