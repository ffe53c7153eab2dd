#!/usr/bin/env bash
# The whole test suite: formatting, clippy, then every test (unit, integration, network
# namespaces, image builds, VMs). Installs what it needs. Run as root from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. scripts/prerequisites.sh

scripts/install-deps.sh --test

# Tests that need root, namespaces, mmdebstrap, qemu or moto fail loudly instead of skipping.
export LECTERN_REQUIRE_NETNS=1 LECTERN_IMAGE_TESTS=1 LECTERN_REQUIRE_MOTO=1

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== the Debian package (cargo's dev profile: the build the tests below use)"
LECTERN_DEB=$(DEB_BUILD_OPTIONS="noopt nostrip noddebs" scripts/package.sh)
export LECTERN_DEB
echo "== cargo test, side by side (scripts/run-tests.sh)"
scripts/run-tests.sh --locked
echo "== benchmarks, on a tiny input (that they still run and check what they measure)"
DHCP_CLIENTS=20 DHCP_SECONDS=2 TFTP_MB=1 HTTP_MB=8 HTTP_CLIENTS=4 SECRET_FETCHES=5 TPM_BOOTS=2 \
    bash netboot-server/bench/bench.sh "${CARGO_TARGET_DIR:-target}/debug/netbootd"
HOSTS=3 ROOT_MB=4 KERNEL_MB=1 INITRD_MB=1 RATE=1gbit \
    bash netboot-server/bench/storm.sh "${CARGO_TARGET_DIR:-target}/debug/netbootd"
tiny=$(mktemp -d -p "$LECTERN_CACHE" bench.XXXXXX)
trap 'rm -rf "$tiny"' EXIT
chmod 755 "$tiny" # the reference's nginx workers (www-data) read the VM storm's store under it
mksquashfs recipes overlays "$tiny/root.squashfs" -quiet -no-progress
bash builder/bench/compression.sh "$tiny/root.squashfs"
# One run: imgbuild and mkosi build the encoder role cold, warm and after a bitrate change (~6 min).
RUNS=1 EMPTY_CACHE_RUNS=0 bash builder/bench/mkosi.sh "${CARGO_TARGET_DIR:-target}/debug/imgbuild"
# One guest per server, from the images the VM tests built (~4 min).
GUESTS=1 PROFILE=dev TIMEOUT=600 WORK="$tiny/vm-storm" bash qemu-tests/bench/vm-storm.sh
