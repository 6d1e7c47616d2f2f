#!/bin/sh
# The `node-info` init container: writes what the Node objects say for this node
# ($NODE_NAME) into the directory $1, for `install-cni.sh` and the agent:
# - pod-cidrs: the node's pod CIDRs, one a line: spec.podCIDRs (an IPv4 and an IPv6 one
#   on a dual-stack cluster), else spec.podCIDR;
# - peer-flags: `--peer-node=CIDR=VIA` for each pod CIDR of every other node, VIA that
#   node's InternalIP of the CIDR's family (a CIDR whose family the node has no InternalIP
#   of is left out: nothing could route it).
set -e
out=$1

# One line per node: name;podCIDRs;podCIDR;InternalIPs (the lists separated by spaces).
kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name};{.spec.podCIDRs[*]};{.spec.podCIDR};{.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}' \
  > "$out/nodes"

family() {
  case "$1" in
    *:*) echo 6 ;;
    *) echo 4 ;;
  esac
}

: > "$out/pod-cidrs"
: > "$out/peer-flags"
while IFS=';' read -r name cidrs cidr addresses; do
  [ -n "$cidrs" ] || cidrs=$cidr
  for cidr in $cidrs; do
    if [ "$name" = "$NODE_NAME" ]; then
      echo "$cidr" >> "$out/pod-cidrs"
      continue
    fi
    for address in $addresses; do
      if [ "$(family "$address")" = "$(family "$cidr")" ]; then
        echo "--peer-node=$cidr=$address" >> "$out/peer-flags"
        break
      fi
    done
  done
done < "$out/nodes"
test -s "$out/pod-cidrs" || {
  echo "node $NODE_NAME has no spec.podCIDRs (kube-controller-manager --allocate-node-cidrs)"
  exit 1
}
