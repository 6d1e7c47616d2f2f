#!/bin/sh
# The `install-cni` init container: installs bpfbridge-cni into the node's CNI bin dir and
# the conflist into its CNI conf dir, each through a rename (the runtime never reads half
# a file), with a host-local range set per pod CIDR of the node (`node-info.sh`'s
# pod-cidrs: IPv4 and IPv6 on a dual-stack node) put in for __POD_RANGES__. The paths are
# the DaemonSet's mounts unless set.
set -e
plugin=${PLUGIN:-/usr/local/bin/bpfbridge-cni}
template=${TEMPLATE:-/config/10-bpfbridge.conflist}
node_info=${NODE_INFO:-/node-info}
bin_dir=${CNI_BIN_DIR:-/host/opt/cni/bin}
conf_dir=${CNI_CONF_DIR:-/host/etc/cni/net.d}

cp "$plugin" "$bin_dir/.bpfbridge-cni.new"
mv "$bin_dir/.bpfbridge-cni.new" "$bin_dir/bpfbridge-cni"

ranges=
while read -r cidr; do
  [ -n "$cidr" ] || continue
  ranges="${ranges:+$ranges, }[{\"subnet\": \"$cidr\"}]"
done < "$node_info/pod-cidrs"
test -n "$ranges" || { echo "no pod CIDR in $node_info/pod-cidrs"; exit 1; }
sed "s#__POD_RANGES__#[$ranges]#" "$template" > "$conf_dir/.10-bpfbridge.conflist.new"
mv "$conf_dir/.10-bpfbridge.conflist.new" "$conf_dir/10-bpfbridge.conflist"
