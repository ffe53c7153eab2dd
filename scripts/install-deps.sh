#!/usr/bin/env bash
# Installs the Debian packages lectern's build, demo and tests need. Idempotent and quick when
# everything is already there. Run as root.
set -euo pipefail
MOTO_VERSION=5.2.1

packages=(
  # images
  mmdebstrap squashfs-tools erofs-utils cpio zstd e2fsprogs dosfstools mtools uidmap arch-test eatmydata
  # the lock file test's local apt repository (apt-ftparchive)
  apt-utils
  # disk images: the EFI stub of unified kernel images, objcopy, sfdisk, qcow2
  systemd-boot-efi binutils fdisk qemu-utils
  # network tests: namespaces, stock clients we did not write, reference servers
  # (busybox-static provides the udhcpc applet the tests use; the udhcpc package conflicts with it)
  iproute2 busybox-static isc-dhcp-client tftp-hpa tftpd-hpa curl dnsmasq-base tcpdump jq
  # VMs: qemu with its iPXE ROMs, iPXE first stages, UEFI firmware; a soft TPM and the stock tools
  # that read it, for the machines bound to their TPM
  qemu-system-x86 ipxe-qemu ipxe ovmf swtpm tpm2-tools
  # the Debian package (scripts/package.sh), and the production box it is set up on: a Debian booted
  # with systemd in a container (systemd-nspawn)
  debhelper dpkg-dev systemd-container
  # benchmark peers and load generators
  kea-dhcp4-server kea-admin nginx-light hyperfine atftp valgrind mkosi
  # streaming tests: the backend role's RTMP module under this nginx; ffmpeg/ffprobe to publish and decode
  # streams; Chromium plays the watch page; ssh logs in to the room test's hosts
  libnginx-mod-rtmp ffmpeg chromium openssh-client
  # observability: promtool checks /metrics and the example alert rules; the hosts' journals go to the
  # box's systemd-journal-remote
  prometheus systemd-journal-remote
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Services some of these packages enable at boot. netbootd is the box's DHCP, TFTP and HTTP server: a
# tftpd-hpa enabled at boot would take port 69 from it, a Kea or an nginx the others; the tests need
# only promtool of prometheus, not a Prometheus server. Disabled only when this run installed them,
# never on a box that already ran them.
declare -A services=(
  [tftpd-hpa]=tftpd-hpa.service [nginx-light]=nginx.service [kea-dhcp4-server]=kea-dhcp4-server.service
  [prometheus]=prometheus.service
)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-deps: run as root, or: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  log="${LECTERN_CACHE:-/var/cache/lectern}/install-deps.log"
  mkdir -p "$(dirname "$log")"
  echo "install-deps: installing ${#missing[@]} Debian packages (apt's output: $log): ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Don't let package installs start services (tftpd-hpa, nginx, kea) on the host's interfaces.
  policy=/usr/sbin/policy-rc.d
  [ -e "$policy" ] || { printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; trap 'rm -f "$policy"' EXIT; }
  # A qemu-utils from backports (what this machine's image ships) needs qemu-system from backports too:
  # from the stable suite, apt would remove it to install qemu-system. The backports suite is added to
  # apt's sources (said, not silent) when the box does not have it.
  backported=() stable=()
  if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q '~bpo'; then
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    for p in "${missing[@]}"; do
      case $p in qemu-system-x86) backported+=("$p") ;; *) stable+=("$p") ;; esac
    done
    if ! grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
      echo "install-deps: qemu-utils is from ${codename}-backports; adding that suite to apt (/etc/apt/sources.list.d/debian-backports.sources) for qemu-system"
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$codename" > /etc/apt/sources.list.d/debian-backports.sources
    fi
  else
    stable=("${missing[@]}")
  fi
  # --no-remove: a package the box already has is never removed to make room; apt stops and says
  # which instead.
  install() { apt-get install -y -q --no-install-recommends --no-remove "$@"; }
  if ! { apt-get update -qq &&
         { [ ${#backported[@]} -eq 0 ] || install -t "${codename}-backports" "${backported[@]}"; } &&
         { [ ${#stable[@]} -eq 0 ] || install "${stable[@]}"; }; } >"$log" 2>&1; then
    echo "install-deps: apt-get failed; the end of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  disabled=()
  for p in "${missing[@]}"; do
    unit=${services[$p]:-}
    if [ -n "$unit" ] && systemctl is-enabled --quiet "$unit" 2>/dev/null; then
      systemctl disable --quiet "$unit" 2>/dev/null && disabled+=("$unit")
    fi
  done
  echo "install-deps: installed ${#missing[@]} packages (log: $log)"
  [ ${#disabled[@]} -eq 0 ] || echo "install-deps: disabled at boot, so that they leave netbootd its ports: ${disabled[*]}"
fi
# Those the box had before: said, not changed.
for unit in "${services[@]}"; do
  # A Prometheus the box already ran takes none of netbootd's ports.
  [ "$unit" != prometheus.service ] || continue
  if [[ " ${disabled[*]:-} " != *" $unit "* ]] && systemctl is-enabled --quiet "$unit" 2>/dev/null; then
    echo "install-deps: note: $unit starts at boot and would contend with netbootd for its ports (systemctl disable $unit)"
  fi
done

# --test: the AWS stand-in the cloud tests run against (moto's server), in a virtualenv beside the caches.
if [ "${1:-}" = --test ] && ! "$LECTERN_MOTO_SERVER" --help >/dev/null 2>&1; then
  echo "install-deps: installing moto $MOTO_VERSION under ${LECTERN_MOTO_SERVER%/bin/*}"
  python3 -m venv "${LECTERN_MOTO_SERVER%/bin/*}"
  "${LECTERN_MOTO_SERVER%/moto_server}/pip" install -q "moto[server]==$MOTO_VERSION"
fi
