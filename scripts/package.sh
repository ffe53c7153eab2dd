#!/usr/bin/env bash
# Builds lectern's Debian package from this checkout: `scripts/package.sh [OUT_DIR]` writes
# OUT_DIR/lectern_<version>_amd64.deb (default OUT_DIR: $LECTERN_CACHE/deb) and prints its path.
# The version is debian/changelog's plus the commit's date and hash, so that a later commit
# upgrades an earlier one. DEB_BUILD_OPTIONS=noopt builds cargo's dev profile instead of release.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
out=$(realpath -m "${1:-$LECTERN_CACHE/deb}")
mkdir -p "$out"
for tool in dh dpkg-parsechangelog; do
  command -v "$tool" >/dev/null || { echo "package: $tool is missing (apt-get install debhelper dpkg-dev)" >&2; exit 1; }
done
version=$(dpkg-parsechangelog -S Version)
if commit=$(git log -1 --format='%cd.%h' --date=format-local:%Y%m%d%H%M%S 2>/dev/null); then
  version="$version+git$commit"
  git diff --quiet HEAD 2>/dev/null || version="$version.modified"
fi
export LECTERN_DEB_VERSION=$version LECTERN_DEB_DIR=$out
log="$out/build.log"
echo "package: building lectern $version (log: $log)" >&2
if ! { debian/rules clean && debian/rules binary && debian/rules clean; } >"$log" 2>&1; then
  echo "package: the build failed; the end of $log:" >&2
  tail -n 30 "$log" >&2
  exit 1
fi
echo "$out/lectern_${version}_amd64.deb"
