# Sourced by the README's commands before they change anything: root, a Rust toolchain (rustup's too,
# which sudo's secure PATH hides) of the version the workspace needs, and room for the caches.
if [ "$(id -u)" -ne 0 ]; then
  echo "run as root (sudo $0): the commands install Debian packages and create network namespaces" >&2
  exit 1
fi
if ! command -v cargo >/dev/null; then
  for home in ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)"} "$HOME"; do
    if [ -x "$home/.cargo/bin/cargo" ]; then
      export PATH="$home/.cargo/bin:$PATH"
      # rustup keeps its toolchains in the same home.
      export RUSTUP_HOME="${RUSTUP_HOME:-$home/.rustup}"
      break
    fi
  done
fi
if ! command -v cargo >/dev/null; then
  echo "no cargo: install a Rust toolchain (https://rustup.rs, or apt-get install cargo) and run again" >&2
  exit 1
fi
need_rust=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
have_rust=$(rustc --version | cut -d' ' -f2)
if [ "$(printf '%s\n%s\n' "$need_rust" "$have_rust" | sort -V | head -n 1)" != "$need_rust" ]; then
  echo "rustc $have_rust is older than the $need_rust this workspace needs: rustup update" >&2
  exit 1
fi
free_gb=$(df --output=avail -BG "$LECTERN_CACHE" | tail -n 1 | tr -dc 0-9)
if [ "${free_gb:-0}" -lt 11 ] && [ ! -d "$CARGO_TARGET_DIR" ]; then
  echo "only ${free_gb} GB free under $LECTERN_CACHE; the build caches need about 11 GB" >&2
  exit 1
fi
