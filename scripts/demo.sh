#!/usr/bin/env bash
# The main job, end to end, on the bundled example: check the master file, show the plan, build
# the role images and host layers, serve them with netbootd inside a private network namespace
# and PXE-boot VMs (qemu's own iPXE ROM, BIOS) into their roles until each reports "up".
# Installs what it needs. Run as root from anywhere. `--keep` leaves everything running.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
. scripts/env.sh

keep=false
[ "${1:-}" = "--keep" ] && keep=true

scripts/install-deps.sh
cargo build --release --locked --bins
bin="$CARGO_TARGET_DIR/release"

# The example with its example secrets, in a private work directory; its store stays there, so
# a second run reuses every unchanged layer.
work="$LECTERN_CACHE/demo"
mkdir -p "$work"
cp examples/master.toml "$work/master.toml"
install -m 600 examples/secrets.toml.example "$work/secrets.toml"
cd "$work"

echo "== imgbuild check"
"$bin/imgbuild" check
echo "== imgbuild plan"
"$bin/imgbuild" plan
echo "== imgbuild all (role images + per-host layers; minutes the first time, seconds after)"
"$bin/imgbuild" all --recipes "$repo/recipes" --overlays "$repo/overlays"

# The video LAN of the example, in a namespace of its own: bridge, server address, one tap per VM.
plan=$("$bin/imgbuild" plan --json)
bridge=$(jq -r .network.dhcp.interface <<<"$plan")
server=$(jq -r .netboot.server_ip <<<"$plan")
prefix=$(jq -r .network.prefix_len <<<"$plan")
url=$(jq -r .netboot.base_url <<<"$plan")
ns=lectern-demo
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
}
if ! $keep; then trap cleanup EXIT; fi
ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add "$bridge" type bridge
ip -n "$ns" addr add "$server/$prefix" dev "$bridge"
ip -n "$ns" link set "$bridge" up

echo "== netbootd check"
"$bin/netbootd" check --config master.toml --state-dir "$work/state" || true
echo "== netbootd --config master.toml (log: $work/netbootd.log)"
mkdir -p "$work/state"
ip netns exec "$ns" "$bin/netbootd" --config master.toml --state-dir "$work/state" >"$work/netbootd.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  ip netns exec "$ns" curl -sf "$url/healthz" >/dev/null && break
  sleep 0.2
done

# One room: its mixer and its test-pattern sources (VMs have no capture hardware).
room=cornil
hosts=$(jq -r --arg room "$room" '.hosts[] | select(.room == $room and .netboot and .role != "encoder") | "\(.hostname) \(.mac)"' <<<"$plan")
i=0
while read -r hostname mac; do
  tap="tap$i"; i=$((i + 1))
  ip -n "$ns" tuntap add dev "$tap" mode tap
  ip -n "$ns" link set "$tap" master "$bridge" up
  echo "== booting $hostname ($mac), serial log $work/$hostname.log"
  ip netns exec "$ns" qemu-system-x86_64 -machine pc -accel tcg -m 2048 -nographic -monitor none \
    -serial "file:$work/$hostname.log" -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" \
    -device "virtio-net-pci,netdev=n0,mac=$mac,bootindex=1" -boot n </dev/null >/dev/null 2>&1 &
  pids+=($!)
done <<<"$hosts"

echo "== waiting for every VM to report its role up (TCG: a few minutes)"
deadline=$((SECONDS + 1200))
while :; do
  status=$(ip netns exec "$ns" curl -sf "$url/api/hosts" || echo '[]')
  waiting=$(jq -r --arg room "$room" '[.[] | select(.hostname | startswith($room + "-")) | select(.hostname | endswith("-enc") | not) | select((.timeline.reported_up // .reported_up) == null) | .hostname] | join(" ")' <<<"$status")
  [ -z "$waiting" ] && break
  if [ $SECONDS -ge $deadline ]; then
    echo "demo: still waiting for: $waiting" >&2
    jq . <<<"$status" >&2
    exit 1
  fi
  sleep 10
done
echo "== all up; netbootd's view (GET $url/api/hosts):"
jq --arg room "$room" '[.[] | select(.hostname | startswith($room + "-"))]' <<<"$status"
if $keep; then
  echo "left running: namespace $ns, netbootd and the VMs (pids ${pids[*]}); stop with: ip netns del $ns; kill ${pids[*]}"
fi
