#!/usr/bin/env bash
# The main job, end to end, on the bundled example: check the master file, show the plan, build the role
# images and host layers, serve them with netbootd inside a private network namespace, PXE-boot one whole
# room (mixer, sources, encoder) and the streaming backend as VMs, show their boot phases as they come up,
# and print what a viewer gets: each host's state, the room's HLS URL and an ffprobe summary of the stream.
# Installs what it needs. Run as root from anywhere. `--keep` leaves everything running until Enter.
#
# Needs: Debian 12, root, a Rust toolchain >= 1.85 (rustup's is found in the invoking user's home under sudo),
# ~11 GB free under /var/cache/lectern, ~10 minutes the first time (images), ~4 minutes after.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
. scripts/env.sh
. scripts/prerequisites.sh

keep=()
[ "${1:-}" = "--keep" ] && keep=(--keep)

scripts/install-deps.sh
echo "== cargo build --release (binaries in $CARGO_TARGET_DIR/release)"
cargo build --release --locked --bins
bin="$CARGO_TARGET_DIR/release"

# The example with its example secrets, in a private work directory; its store and lock file stay there, so
# a second run reuses every unchanged layer. qemu emulates the VMs' CPUs here (no KVM), too slowly to mix 720p in
# real time: the demo's copy streams the room at 360p and 5 fps with x264's fastest preset (with a 240p
# variant instead of 480p).
work="$LECTERN_CACHE/demo"
mkdir -p "$work"
room=cornil
sed -e 's/^video = { mode = "720p", framerate = 25 }$/video = { mode = "360p", framerate = 5 }/' \
  -e 's/^encode = { video_kbps = 2000 }$/encode = { video_kbps = 800, preset = "ultrafast", variants = [{ name = "240p", height = 240, video_kbps = 300 }] }/' \
  examples/master.toml >"$work/master.toml"
[ "$(grep -c -e 'mode = "360p"' -e 'name = "240p"' "$work/master.toml")" = 2 ] ||
  { echo "demo: could not set $room to 360p in the copy of examples/master.toml" >&2; exit 1; }
install -m 600 examples/secrets.toml.example "$work/secrets.toml"
cd "$work"

echo "== imgbuild check"
"$bin/imgbuild" check
echo "== imgbuild plan"
"$bin/imgbuild" plan
# The demo takes today's Debian: `imgbuild update` resolves the lock beside the copy (master.lock) from the
# mirror, building the layers of which it has new versions (all of them the first time) and printing what
# changed; a production box runs it only when it means to take updates. `imgbuild all` then builds from
# the lock, reusing those layers.
echo "== imgbuild update (the package versions of every layer, in master.lock; minutes the first time)"
"$bin/imgbuild" update --recipes "$repo/recipes" --overlays "$repo/overlays"
echo "== imgbuild all (role images + per-host layers from master.lock; seconds when its layers are built)"
"$bin/imgbuild" all --recipes "$repo/recipes" --overlays "$repo/overlays"

echo "== booting room $room and the streaming backend (netbootd check first; TCG VMs: a few minutes)"
"$bin/lectern-lab" --config master.toml --room "$room" --netbootd "$bin/netbootd" "${keep[@]}"
