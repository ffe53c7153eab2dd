#!/usr/bin/env bash
# A boot storm of real VMs: GUESTS TCG guests (1 vCPU each, BIOS, qemu's iPXE ROM as the first stage)
# switched on at once boot to their role from netbootd, then again from the reference setup: dnsmasq
# handing out the same addresses and the script URL, nginx serving the same kernel, initrd, host layers
# and root image and netbootd's own per-MAC iPXE scripts. One capture on the lab's LAN measures both:
# per guest, power-on to the first stage's DHCP answered, the initrd's DHCP answered, the root image
# received whole, the booted system's own DHCP answered, and (netbootd only: the reference has no
# report channel) the role reported up; the server's CPU seconds and peak memory; DHCP and HTTP
# retries. Nothing is printed unless every guest reached every milestone and got every file whole.
#
# The guests are streaming backends, the one role that comes up on its own (a source needs its room's
# mixer running, an encoder the mixer's output): the VM tests' fixture master file with GUESTS of them
# added. Its conference is the fixture's, so the role images are the VM tests' byte for byte: the
# bench's store starts as hard links to the VM tests' store (SEED_STORE), its lock is theirs, and
# `imgbuild all` then builds only the new hosts' layers (with a seed that lacks the images it builds
# them, which takes many minutes). It boots VMs for minutes: the test suite runs it with one guest.
#
# Needs root and apt-get install qemu-system-x86 ipxe-qemu ipxe dnsmasq-base nginx-light tcpdump
# Usage: bash qemu-tests/bench/vm-storm.sh
#   GUESTS=4 RUNS=1 (storms per server, every other one the reference first)
#   TIMEOUT=1800 (seconds the slowest guest may take) WORK=$LECTERN_CACHE/vm-storm
#   PROFILE=release (cargo's profile of the binaries; the test suite's tiny run takes its dev build)
#   SEED_STORE=$CARGO_TARGET_DIR/tmp/lectern-test-store (the store the VM tests build)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/../.."
repo=$PWD
. scripts/env.sh

GUESTS=${GUESTS:-4}
RUNS=${RUNS:-1}
TIMEOUT=${TIMEOUT:-1800}
PROFILE=${PROFILE:-release}
WORK=${WORK:-$LECTERN_CACHE/vm-storm}
SEED_STORE=${SEED_STORE:-${LECTERN_TEST_STORE:-$CARGO_TARGET_DIR/tmp/lectern-test-store}}

cargo build --profile "$PROFILE" --locked -p lectern-netboot -p lectern-builder -p lectern-qemu-tests --bins
bin=$CARGO_TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")

mkdir -p "$WORK"
fixtures=builder/tests/fixtures
{
    cat "$fixtures/master.toml"
    for i in $(seq "$GUESTS"); do
        printf '\n[[servers]]\nhostname = "storm-%d"\nrole = "streaming-backend"\nwhere = "bare-metal"\n' "$i"
        printf 'mac = "52:54:00:99:%02x:%02x"\nip = "10.99.0.%d"\n' $((i / 256)) $((i % 256)) $((100 + i))
        printf 'identity = { uuid = "6c656374-6572-6e00-0000-%012d" }\n' $((100 + i))
    done
} >"$WORK/master.toml"
grep -qx 'store = "store"' "$WORK/master.toml" || { echo "the fixture's store line changed" >&2; exit 1; }
install -m 600 "$fixtures/fixture-secrets.toml" "$WORK/fixture-secrets.toml"

store=$WORK/store
if [ ! -d "$store" ] && [ -d "$SEED_STORE/blobs" ]; then
    # Blobs never change under their hash: links are safe. The key is copied (imgbuild may change its
    # owner); with it the images carry the same pin, and the layer cache finds every layer.
    mkdir -p "$store"
    cp -al "$SEED_STORE/blobs" "$store/"
    cp -a "$SEED_STORE/layers" "$SEED_STORE/keys" "$store/"
fi
# The versions the VM tests' layers were built with: their lock, as master.lock beside the master file
# (without it, imgbuild would resolve the layers from the mirror again and build them anew).
if [ -f "$SEED_STORE.lock" ]; then
    cp "$SEED_STORE.lock" "$WORK/master.lock"
fi
"$bin/imgbuild" all --config "$WORK/master.toml" --recipes "$repo/recipes" --overlays "$repo/overlays" >&2

hosts=()
for i in $(seq "$GUESTS"); do hosts+=(--host "storm-$i"); done
# In its place: a signal reaches it, and it takes its lab down.
exec "$bin/lectern-vm-storm" --config "$WORK/master.toml" --netbootd "$bin/netbootd" --runs "$RUNS" --timeout "$TIMEOUT" \
    "${hosts[@]}"
