#!/usr/bin/env bash
# imgbuild against mkosi, the peer for image builds: the encoder role's package set (recipes/base.toml
# + recipes/encoder.toml: same suite, mirror, no recommends) built by both in the same run, one tool
# after the other, the order alternating between runs:
#   cold         no image or layer cache, a warm package cache (each tool its own);
#   warm         again, nothing changed;
#   config-only  examples/fosdem-25.toml with [defaults.encode] video_kbps changed.
# imgbuild builds the role (`imgbuild role encoder`: base, role and config layers, 25 per-host layers).
# mkosi (Debian 12's package, mkosi 14) builds the same packages with the same config files as a
# directory; a wrapper then takes out the kernel and initrd and packs the root with imgbuild's
# mksquashfs options, timed with it. mkosi's cold build is its fastest (no incremental cache made);
# its warm and config-only builds use `--incremental` (the cached trees after the packages and the
# prepare script), whose first build, which makes those caches, is reported as well. mkosi 14 uses
# its caches only with a build script ("This only applies if the two-phase mkosi.build build script
# logic is used"; without one it makes them again at every build): its incremental builds get one
# that does nothing. The room table
# with the bitrates goes into mkosi's image (etc/lectern/encoders.json, from `imgbuild plan --json`),
# as a team without per-host layers would bake it in. Every image is checked before its time counts:
# ffmpeg and the units in the root, a kernel, an initrd, the new bitrate where each tool puts it.
# Needs root, mkosi, debootstrap, squashfs-tools, python3, jq, cpio. Usage:
#   bash builder/bench/mkosi.sh [path/to/imgbuild]
# RUNS (3) runs from warm package caches, after EMPTY_CACHE_RUNS (1) from empty ones (which fill them).
# Caches and images go under BENCH_DIR ($LECTERN_CACHE/bench-mkosi); the package caches stay.
set -euo pipefail
shopt -s inherit_errexit
repo=$(cd "$(dirname "$0")/../.." && pwd)
IMGBUILD=$(realpath "${1:-${CARGO_TARGET_DIR:-target}/release/imgbuild}")
RUNS=${RUNS:-3}
EMPTY_CACHE_RUNS=${EMPTY_CACHE_RUNS:-1}
BENCH_DIR=${BENCH_DIR:-${LECTERN_CACHE:-/var/cache/lectern}/bench-mkosi}
# imgbuild's root image options (builder/src/build.rs), for mkosi's root too.
MKSQUASHFS=(-comp zstd -Xcompression-level 3 -b 1M -noappend -no-progress -quiet)

mkdir -p "$BENCH_DIR"
work=$(mktemp -d -p "$BENCH_DIR" run.XXXXXX)
# mkosi's workspace in memory too, for a row of its own (imgbuild's log says where it built).
memory=$(mktemp -d -p /dev/shm lectern-bench-mkosi.XXXXXX 2>/dev/null || true)
cleanup() { rm -rf "$work" ${memory:+"$memory"}; }
trap cleanup EXIT
trap "exit 1" INT TERM HUP

# --- what both build: the recipes' packages and units --------------------------------------------
recipe() {
    python3 - "$repo/recipes" "$1" <<'PY'
import sys, tomllib
recipes, what = sys.argv[1:]
load = lambda name: tomllib.load(open(f"{recipes}/{name}.toml", "rb"))
base, encoder = load("base"), load("encoder")
if what in ("packages", "units"):
    print(" ".join(base[what] + encoder[what]))
else:
    print(base["debian"][what])
PY
}
packages=$(recipe packages)
units=$(recipe units)
suite=$(recipe suite)
mirror=$(recipe mirror)

# --- the master file: fosdem-25 with its example secrets, and the bitrate to change ---------------
cp "$repo/examples/fosdem-25.toml" "$work/master.toml"
sed -i 's/^file = .*/file = "secrets.toml"/' "$work/master.toml"
install -m 600 "$repo/examples/fosdem-25.secrets.toml.example" "$work/secrets.toml"
plan_kbps() {
    "$IMGBUILD" plan --config "$work/master.toml" --json |
        jq -r '[.hosts[] | select(.role == "encoder") | .config.encoder.encode.video_kbps] | unique | join(",")'
}
kbps=$(plan_kbps)
new_kbps=$((kbps + 300))
# set_kbps N: [defaults.encode] video_kbps = N (the only line that starts with video_kbps).
set_kbps() {
    sed -i "s/^video_kbps = .*/video_kbps = $1/" "$work/master.toml"
    [ "$(plan_kbps)" = "$1" ] || { echo "the master file's encoders do not stream at $1 kbit/s" >&2; exit 1; }
}
encoders=$(jq -r '[.hosts[] | select(.role == "encoder")] | length' < <("$IMGBUILD" plan --config "$work/master.toml" --json))

# --- mkosi's project: the same packages, the image overlay as skeleton, the config overlay as extra --
project=$work/mkosi
mkdir -p "$project/skeleton" "$project/extra/etc/lectern"
cp -a "$repo/overlays/base/image/." "$project/skeleton/"
cp -a "$repo/overlays/base/config/." "$repo/overlays/encoder/config/." "$project/extra/"
find "$project/extra" -name '*.j2' -delete
echo encoder >"$project/extra/etc/lectern/role"
# mkosi_config_files: the room table with its bitrates, from the plan (stream keys shown as ***).
mkosi_config_files() {
    "$IMGBUILD" plan --config "$work/master.toml" --json |
        jq '[.hosts[] | select(.role == "encoder") | {hostname, encoder: .config.encoder}]' \
            >"$project/extra/etc/lectern/encoders.json"
}
cat >"$project/mkosi.conf" <<CONF
[Distribution]
Distribution=debian
Release=$suite
Mirror=$mirror

[Output]
Format=directory
Output=$work/mkosi-out/image
Bootable=no

[Content]
Packages=${packages// /,}
WithDocs=no
SkeletonTree=$project/skeleton
ExtraTree=$project/extra
CONF
# The initrd is built once the packages are in (before mkosi's incremental cache), with the image
# overlay's initramfs hooks; the units are enabled once the config files are in.
printf '#!/bin/sh\nset -eu\nupdate-initramfs -c -k all\n' >"$project/mkosi.prepare"
printf '#!/bin/sh\nset -eu\nsystemctl enable %s\n' "$units" >"$project/mkosi.postinst"
printf '#!/bin/sh\n' >"$project/nothing-to-build"
chmod +x "$project/mkosi.prepare" "$project/mkosi.postinst" "$project/nothing-to-build"
incremental=(--incremental --build-script="$project/nothing-to-build")

# mkosi runs its scripts in systemd-nspawn. Where systemd is not init (a container, a bare VM),
# nspawn has no bus to make a scope unit (--keep-unit stays in the caller's) and /run is no tmpfs
# for its propagation directory: both are given to it in a mount namespace of its own.
mkosi_cmd=(mkosi -C "$project")
if [ ! -d /run/systemd/system ]; then
    mkdir -p "$work/bin"
    printf '#!/bin/sh\nexec /usr/bin/systemd-nspawn --keep-unit "$@"\n' >"$work/bin/systemd-nspawn"
    chmod +x "$work/bin/systemd-nspawn"
    mkosi_cmd=(unshare --mount --propagation private sh -c
        'mount -t tmpfs -o mode=0755 mkosi-nspawn /run/systemd/nspawn && PATH="$0:$PATH" exec "$@"'
        "$work/bin" "${mkosi_cmd[@]}")
fi

# mkosi_build CACHE DEST MKOSI-OPTIONS...: mkosi's image, then kernel and initrd out of the root and
# the root packed as imgbuild packs it, into DEST.
mkosi_build() {
    local cache=$1 dest=$2 root=${MKOSI_ROOT:-$work/mkosi-out/image}
    shift 2
    mkdir -p "$dest" "$(dirname "$root")"
    "${mkosi_cmd[@]}" --cache="$cache" "$@" build >"$work/mkosi.log" 2>&1 ||
        { tail -n 30 "$work/mkosi.log" >&2; exit 1; }
    cp "$root"/boot/vmlinuz-* "$dest/vmlinuz"
    cp "$root"/boot/initrd.img-* "$dest/initrd"
    rm -f "$root"/boot/vmlinuz-* "$root"/boot/initrd.img-* "$root"/vmlinuz* "$root"/initrd.img*
    # It warns of the ACLs systemd's tmpfiles set on the journal's directory (which it leaves out).
    mksquashfs "$root" "$dest/root.squashfs" "${MKSQUASHFS[@]}" 2> >(grep -v '^Unrecognised xattr prefix' >&2)
}

imgbuild_build() {
    "$IMGBUILD" -v --config "$work/master.toml" --store "$work/store" --apt-cache "$1" \
        --recipes "$repo/recipes" --overlays "$repo/overlays" role encoder >"$work/imgbuild.log" 2>&1 ||
        { tail -n 30 "$work/imgbuild.log" >&2; exit 1; }
    grep -m1 '^building in ' "$work/imgbuild.log" >>"$work/scratch"
}

# --- checks: each image is what its row says ------------------------------------------------------
# check_images LABEL DIR KBPS: DIR's vmlinuz is a kernel, initrd an initramfs, root.squashfs holds
# ffmpeg, the encoder's unit (enabled), the image overlay's initramfs script.
check_images() {
    local label=$1 dir=$2 listing
    file -bL "$dir/vmlinuz" | grep -q 'Linux kernel x86 boot executable' || { echo "$label: no kernel" >&2; exit 1; }
    [ "$(stat -L -c %s "$dir/initrd")" -gt $((10 << 20)) ] || { echo "$label: no initrd" >&2; exit 1; }
    listing=$(unsquashfs -l "$dir/root.squashfs")
    for path in usr/bin/ffmpeg usr/lib/systemd/system/lectern-encoder.service \
        etc/initramfs-tools/scripts/lectern etc/systemd/system/lectern-role.target.wants; do
        grep -q "^squashfs-root/$path" <<<"$listing" || { echo "$label: no $path in the root" >&2; exit 1; }
    done
    if grep -q '^squashfs-root/boot/vmlinuz' <<<"$listing"; then echo "$label: the kernel is still in the root" >&2; exit 1; fi
}
# imgbuild's image: the store's current encoder release; its bitrate is in every encoder's host layer.
check_imgbuild() {
    local want=$1 dir=$work/imgbuild-image manifest blob host layers=0 args
    mkdir -p "$dir"
    manifest=$(find "$work/store/manifests/encoder" -name '*.json' | sort | tail -n 1)
    for artifact in vmlinuz initrd root.squashfs; do
        blob=$(jq -r --arg a "$artifact" '.artifacts[$a].sha256' "$manifest")
        ln -sf "$work/store/blobs/sha256/$blob" "$dir/$artifact"
    done
    check_images imgbuild "$dir"
    echo "imgbuild image $(jq -r .image "$manifest")" >>"$work/images"
    for host in $(jq -r '.hosts[] | select(.role == "encoder") | .hostname' < <("$IMGBUILD" plan --config "$work/master.toml" --json)); do
        # A netbooted host's stream key, and so its encoder.args, is in its layer's secrets part; a
        # cloud host's layer holds everything.
        blob=$(find "$work/store/hosts/$host" -name '*.json' | sort | tail -n 1 | xargs jq -r '(.secrets // .blob).sha256')
        args=$(cpio --quiet -i --to-stdout lectern-host/etc/lectern/encoder.args <"$work/store/blobs/sha256/$blob")
        grep -qx -- "${want}k" <<<"$args" || { echo "imgbuild: $host's layer does not stream at ${want}k" >&2; exit 1; }
        layers=$((layers + 1))
    done
    [ "$layers" = "$encoders" ] || { echo "imgbuild: $layers host layers of $encoders" >&2; exit 1; }
}
check_mkosi() {
    local want=$1 dir=$2 got
    check_images mkosi "$dir"
    got=$(unsquashfs -cat "$dir/root.squashfs" etc/lectern/encoders.json |
        jq -r '[.[].encoder.encode.video_kbps] | unique | join(",")')
    [ "$got" = "$want" ] || { echo "mkosi: the image streams at $got kbit/s, not $want" >&2; exit 1; }
}

# --- timing ----------------------------------------------------------------------------------------
# timed NAME COMMAND...: runs it, appends "NAME seconds" to the results.
timed() {
    local name=$1 start
    shift
    start=$(date +%s%N)
    "$@"
    awk -v n="$name" -v ns=$(($(date +%s%N) - start)) 'BEGIN { printf "%s %.2f\n", n, ns / 1e9 }' | tee -a "$work/results"
}

imgbuild_run() {
    local apt=$1 prefix=$2
    rm -rf "$work/store"
    # Every run's store gets the first one's keys (netbootd's, whose pin the images carry, and the
    # journal authority's, whose certificate they carry): the same packages then give the same image,
    # which the ids at the end show.
    if [ -d "$work/keys" ]; then
        mkdir -p "$work/store"
        cp -a "$work/keys" "$work/store/keys"
    fi
    set_kbps "$kbps"
    timed "$prefix.imgbuild.cold" imgbuild_build "$apt"
    check_imgbuild "$kbps"
    [ -d "$work/keys" ] || cp -a "$work/store/keys" "$work/keys"
    timed "$prefix.imgbuild.warm" imgbuild_build "$apt"
    check_imgbuild "$kbps"
    set_kbps "$new_kbps"
    timed "$prefix.imgbuild.config" imgbuild_build "$apt"
    check_imgbuild "$new_kbps"
    sizes imgbuild "$work/imgbuild-image"
    rm -rf "$work/store"
}
mkosi_run() {
    local cache=$1 prefix=$2 dest=$work/mkosi-image
    rm -rf "$work/mkosi-out" "$dest"
    set_kbps "$kbps"
    mkosi_config_files
    timed "$prefix.mkosi.cold" mkosi_build "$cache" "$dest" --force
    check_mkosi "$kbps" "$dest"
    rm -rf "$work/mkosi-out" "$dest"
    # imgbuild builds its trees in memory when the machine has room (builder/src/scratch.rs): mkosi
    # too in this row, its workspace and the tree it outputs.
    if [ -n "$memory" ]; then
        mkdir -p "$memory/mkosi"
        MKOSI_ROOT=$memory/mkosi/image timed "$prefix.mkosi.cold-memory" mkosi_build "$cache" "$dest" \
            --force --workspace-dir="$memory/mkosi" --output="$memory/mkosi/image"
        check_mkosi "$kbps" "$dest"
        rm -rf "$memory/mkosi" "$dest"
    fi
    timed "$prefix.mkosi.cold-incremental" mkosi_build "$cache" "$dest" --force "${incremental[@]}"
    check_mkosi "$kbps" "$dest"
    timed "$prefix.mkosi.warm" mkosi_build "$cache" "$dest" --force "${incremental[@]}"
    check_mkosi "$kbps" "$dest"
    set_kbps "$new_kbps"
    mkosi_config_files
    timed "$prefix.mkosi.config" mkosi_build "$cache" "$dest" --force "${incremental[@]}"
    check_mkosi "$new_kbps" "$dest"
    sizes mkosi "$dest"
}
# sizes TOOL DIR: the image's sizes and its package list, for the comparison at the end.
sizes() {
    stat -L -c '%s' "$2/root.squashfs" "$2/vmlinuz" "$2/initrd" | paste -sd' ' | sed "s/^/$1 /" >>"$work/sizes"
    unsquashfs -cat "$2/root.squashfs" var/lib/dpkg/status |
        awk '/^Package:/ { p = $2 } /^Version:/ { print p, $2 }' | sort >"$work/$1.packages"
}

# run PREFIX IMGBUILD-APT MKOSI-CACHE ORDER: one run of both tools.
run() {
    if [ "$4" = imgbuild-first ]; then
        imgbuild_run "$2" "$1"
        mkosi_run "$3" "$1"
    else
        mkosi_run "$3" "$1"
        imgbuild_run "$2" "$1"
    fi
}

echo "imgbuild $("$IMGBUILD" --version | cut -d' ' -f2-), $(mkosi --version), debootstrap $(debootstrap --version | cut -d' ' -f2),"
echo "$suite from $mirror; $(wc -w <<<"$packages") packages; fosdem-25: $encoders encoders, video_kbps $kbps -> $new_kbps"
touch "$work/results"
for n in $(seq "$EMPTY_CACHE_RUNS"); do
    rm -rf "$BENCH_DIR/empty-apt" "$BENCH_DIR/empty-mkosi-cache"
    mkdir -p "$BENCH_DIR/empty-apt" "$BENCH_DIR/empty-mkosi-cache"
    run empty "$BENCH_DIR/empty-apt" "$BENCH_DIR/empty-mkosi-cache" "$( ((n % 2)) && echo imgbuild-first || echo mkosi-first)"
    # What the empty caches fetched is the warm cache of the runs below.
    rm -rf "$BENCH_DIR/apt" "$BENCH_DIR/mkosi-cache"
    mv "$BENCH_DIR/empty-apt" "$BENCH_DIR/apt"
    mv "$BENCH_DIR/empty-mkosi-cache" "$BENCH_DIR/mkosi-cache"
done
mkdir -p "$BENCH_DIR/apt" "$BENCH_DIR/mkosi-cache"
for n in $(seq "$RUNS"); do
    run warm "$BENCH_DIR/apt" "$BENCH_DIR/mkosi-cache" "$( ((n % 2)) && echo imgbuild-first || echo mkosi-first)"
done

# --- the table: medians, each mkosi time over imgbuild's --------------------------------------------
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
times_of() { awk -v k="$1" '$1 == k { print $2 }' "$work/results"; }
list() { times_of "$1" | paste -sd' ' | sed 's/ /, /g'; }
echo
echo "| build | imgbuild (s, runs) | median | mkosi (s, runs) | median | mkosi / imgbuild |"
echo "|---|---|---|---|---|---|"
# row LABEL IMGBUILD-KEY MKOSI-KEY
row() {
    [ -n "$(list "$2")" ] && [ -n "$(list "$3")" ] || return 0
    local ours theirs
    ours=$(times_of "$2" | median)
    theirs=$(times_of "$3" | median)
    echo "| $1 | $(list "$2") | $ours | $(list "$3") | $theirs | $(awk -v a="$theirs" -v b="$ours" 'BEGIN { printf "%.2f", a / b }') |"
}
for prefix in empty warm; do
    caches=$([ "$prefix" = empty ] && echo ', empty package caches' || true)
    for step in cold warm config; do
        row "$step$caches" "$prefix.imgbuild.$step" "$prefix.mkosi.$step"
    done
    row "cold$caches, mkosi's workspace in memory" "$prefix.imgbuild.cold" "$prefix.mkosi.cold-memory"
    [ -z "$(list "$prefix.mkosi.cold-incremental")" ] ||
        echo "| mkosi's first --incremental build$caches (makes its cache) | | | $(list "$prefix.mkosi.cold-incremental") | $(times_of "$prefix.mkosi.cold-incremental" | median) | |"
done
echo "imgbuild: $(sort "$work/scratch" | uniq -c | awk '{ $1 = $1 " x"; print }' | paste -sd';')"
echo
echo "imgbuild's encoder images, by id (the same packages, master file and key give the same id): $(sort "$work/images" | uniq -c | awk '{ printf "%s%s x%s", (NR > 1 ? ", " : ""), $4, $1 }')"
echo "Sizes of the last run's images (root.squashfs / vmlinuz / initrd, MiB):"
tail -n 2 "$work/sizes" | awk '{ printf "  %s: %.1f / %.1f / %.1f\n", $1, $2 / 1048576, $3 / 1048576, $4 / 1048576 }'
echo "Packages: $(wc -l <"$work/imgbuild.packages") in imgbuild's root, $(wc -l <"$work/mkosi.packages") in mkosi's;" \
    "only in mkosi's: $(join -v 2 "$work/imgbuild.packages" "$work/mkosi.packages" | cut -d' ' -f1 | paste -sd' ')"
echo "  only in imgbuild's: $(join -v 1 "$work/imgbuild.packages" "$work/mkosi.packages" | cut -d' ' -f1 | paste -sd' ')"
echo "  other versions in mkosi's (its sources add $suite-updates and -security): $(join "$work/imgbuild.packages" "$work/mkosi.packages" | awk '$2 != $3 { print $1 }' | paste -sd' ')"
