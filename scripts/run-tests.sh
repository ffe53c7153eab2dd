#!/usr/bin/env bash
# Runs every test executable of the workspace, JOBS at a time (default 2): first the quick ones, whose
# network tests time DHCP answers and are best not run beside image builds; then the image and VM tests,
# the longest first. Most VM tests keep one core busy with a single emulated CPU, so two side by side
# fill a 2-core machine where `cargo test` would run them one after the other. Images are built once and
# shared (the store builds a layer once, whoever asks first). Each executable's output goes to a log of
# its own, printed whole when it fails; a summary of times ends the run. Exits non-zero if any failed.
# Used by scripts/test.sh.
#   JOBS=2 scripts/run-tests.sh [cargo test options, e.g. --locked]
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${JOBS:-2}
logs="${LECTERN_CACHE:-/var/cache/lectern}/test-logs"
rm -rf "$logs"
mkdir -p "$logs"

# The image and VM tests, the longest first (as measured in a cold run on 2 cores).
heavy=(cloud_encoder image_build local_vms boot_base debian_package production_box proxy_boot disk_boot)

echo "== building the tests"
cargo test --workspace --no-run --message-format=json-render-diagnostics "$@" >"$logs/build.json"
# name, executable, package directory (cargo runs each test from its package's directory).
mapfile -t built < <(jq -r 'select(.reason == "compiler-artifact" and .profile.test and .executable != null)
    | [.target.name + (if .target.kind[0] == "lib" then "-unit" elif .target.kind[0] == "bin" then "-bin" else "" end),
       .executable, (.manifest_path | sub("/Cargo.toml$"; ""))] | @tsv' "$logs/build.json")
quick=() slow=()
for entry in "${built[@]}"; do
  case " ${heavy[*]} " in *" ${entry%%$'\t'*} "*) ;; *) quick+=("$entry") ;; esac
done
for name in "${heavy[@]}"; do
  for entry in "${built[@]}"; do [ "${entry%%$'\t'*}" = "$name" ] && slow+=("$entry"); done
done

declare -A running=() started=()
failed=() summary=()
finish() {
  local pid=$1 status=$2 name=${running[$1]}
  local seconds=$(($(date +%s) - started[$1]))
  unset "running[$pid]"
  summary+=("$(printf '%6d s  %s' "$seconds" "$name")")
  if [ "$status" -eq 0 ]; then
    echo "   $name: ok ($seconds s)"
  else
    echo "   $name: FAILED ($seconds s); its output:"
    sed 's/^/     /' "$logs/$name.log"
    failed+=("$name")
  fi
}
# run ENTRY...: each test executable, $jobs at a time; returns when all have ended.
run() {
  local entry name exe dir status done_pid
  for entry in "$@"; do
    IFS=$'\t' read -r name exe dir <<<"$entry"
    while [ "${#running[@]}" -ge "$jobs" ]; do
      status=0
      wait -n -p done_pid "${!running[@]}" || status=$?
      finish "$done_pid" "$status"
    done
    (cd "$dir" && exec "$exe") >"$logs/$name.log" 2>&1 &
    running[$!]=$name
    started[$!]=$(date +%s)
  done
  while [ "${#running[@]}" -gt 0 ]; do
    status=0
    wait -n -p done_pid "${!running[@]}" || status=$?
    finish "$done_pid" "$status"
  done
}
echo "== ${#quick[@]} quick test executables, $jobs at a time (logs: $logs)"
run "${quick[@]}"
echo "== ${#slow[@]} image and VM test executables, $jobs at a time"
run "${slow[@]}"

echo "== doc tests"
cargo test --workspace --doc "$@" >"$logs/doc.log" 2>&1 || { cat "$logs/doc.log"; failed+=(doc); }

echo "== test times, longest first"
printf '%s\n' "${summary[@]}" | sort -rn
if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
