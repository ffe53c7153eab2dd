#!/usr/bin/env bash
# Size against time for the root image's file system and compression: how big each choice makes
# one role's root, how long it takes to build, and how long reading every file back takes once
# the image is in RAM, as a diskless host holds it (the kernel decompresses on every first read).
# Needs root (loop mounts, drop_caches) and squashfs-tools, erofs-utils.
# Usage: bash builder/bench/compression.sh path/to/root.squashfs   (a role's image from a store)
set -euo pipefail
shopt -s inherit_errexit
image=$(realpath "$1")
work=$(mktemp -d)
mnt="$work/mnt"
ram=$(mktemp -d -p /dev/shm)
cleanup() {
    umount "$mnt" 2>/dev/null || true
    rm -rf "$work" "$ram"
}
trap cleanup EXIT
trap "exit 1" INT TERM HUP
mkdir "$mnt"
unsquashfs -quiet -no-progress -dest "$work/root" "$image" >/dev/null
files=$(find "$work/root" -type f | wc -l)
tree_mib=$(du -sm --apparent-size "$work/root" | cut -f1)
echo "root: $(basename "$(dirname "$image")")/$(basename "$image"), $files files, $tree_mib MiB"
echo
echo "| file system, compression | size (MiB) | build (s) | read every file from RAM (s) |"
echo "|---|---|---|---|"

seconds_since() { awk -v ns=$(($(date +%s%N) - $1)) 'BEGIN { printf "%.1f", ns / 1e9 }'; }

# row LABEL TYPE BUILD-COMMAND...: builds $ram/image with the command, then mounts it and reads it.
row() {
    local label=$1 type=$2 start build read size
    shift 2
    rm -f "$ram/image"
    start=$(date +%s%N)
    "$@" >/dev/null
    build=$(seconds_since "$start")
    size=$(du -m --apparent-size "$ram/image" | cut -f1)
    mount -t "$type" -o loop,ro "$ram/image" "$mnt"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    start=$(date +%s%N)
    find "$mnt" -type f -print0 | xargs -0 -r cat >/dev/null
    read=$(seconds_since "$start")
    umount "$mnt"
    echo "| $label | $size | $build | $read |"
}

squashfs() { mksquashfs "$work/root" "$ram/image" -noappend -no-progress -quiet -b 1M "$@"; }
row "squashfs zstd 3, 1 MiB blocks (imgbuild today)" squashfs squashfs -comp zstd -Xcompression-level 3
row "squashfs zstd 9" squashfs squashfs -comp zstd -Xcompression-level 9
row "squashfs zstd 15" squashfs squashfs -comp zstd -Xcompression-level 15
row "squashfs zstd 19" squashfs squashfs -comp zstd -Xcompression-level 19
row "squashfs xz" squashfs squashfs -comp xz
row "squashfs lz4 high compression" squashfs squashfs -comp lz4 -Xhc
row "squashfs gzip 9" squashfs squashfs -comp gzip
row "squashfs zstd 3, 128 KiB blocks" squashfs mksquashfs "$work/root" "$ram/image" -noappend -no-progress -quiet -comp zstd -Xcompression-level 3
row "erofs lz4hc 12, 128 KiB clusters" erofs mkfs.erofs --quiet -zlz4hc,12 -C131072 "$ram/image" "$work/root"
row "erofs lz4hc 12, 1 MiB clusters" erofs mkfs.erofs --quiet -zlz4hc,12 -C1048576 "$ram/image" "$work/root"
