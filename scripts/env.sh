# Sourced by the scripts: shared settings. Caches live outside the clone so repeated runs on one
# machine are fast.
export LECTERN_CACHE="${LECTERN_CACHE:-/var/cache/lectern}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LECTERN_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The AWS stand-in the cloud tests start (scripts/install-deps.sh --test installs it).
export LECTERN_MOTO_SERVER="${LECTERN_MOTO_SERVER:-$LECTERN_CACHE/moto/bin/moto_server}"
mkdir -p "$LECTERN_CACHE"
