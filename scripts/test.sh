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
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
