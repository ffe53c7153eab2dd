#!/usr/bin/env bash
# The main job, end to end, on the bundled example: check the master file, show the plan, build
# the role images, serve them with netbootd inside a private network namespace and boot VMs
# into their roles. Installs what it needs. Run as root from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

scripts/install-deps.sh
cargo build --release --locked --bins
bin="$CARGO_TARGET_DIR/release"

# The example with its example secrets, in a private work directory.
work="$LECTERN_CACHE/demo"
mkdir -p "$work"
cp examples/master.toml "$work/master.toml"
install -m 600 examples/secrets.toml.example "$work/secrets.toml"
cd "$work"

echo "== imgbuild check"
"$bin/imgbuild" check
echo "== imgbuild plan"
"$bin/imgbuild" plan
