#!/usr/bin/env bash
# A boot storm: N simulated hosts switched on at once, against netbootd and against the reference setup
# (dnsmasq handing out the addresses and the boot file, nginx serving the same files), one after the
# other on the same links. Each host is a veth of its own on the venue's bridge, with its own MAC, and
# boots as a netbooted machine does: DHCP as iPXE does it (no client id), the iPXE script, every file it
# names (kernel, host layer, initrd) and the root image from the kernel's command line, then DHCP again
# as the booted system does it (with a client id). Each download is checked against its size. The server
# sits behind a port of its own, shaped to RATE when set (tbf: the venue's real bottleneck).
#
# Reports per server and N: the time until the last host has its root image, beside the floor the link
# rate sets for the bytes moved; server CPU-seconds per boot and peak memory (every process of the server's
# namespace); retries; how long the server took to answer DHCP (from a capture at its port); addresses
# each host was given. Needs root and
#   apt-get install dnsmasq-base nginx-light busybox-static curl iproute2 tcpdump
# Usage: bash netboot-server/bench/storm.sh [path/to/release/netbootd]
#   HOSTS="10 30 90" ROOT_MB=300 RATE=1gbit (empty: unshaped)
set -euo pipefail
shopt -s inherit_errexit
. "$(dirname "$0")/lib.sh"

NETBOOTD=$(realpath "${1:-${CARGO_TARGET_DIR:-target}/release/netbootd}")
export RUST_LOG=warn
HOSTS=${HOSTS:-10 30 90}
ROOT_MB=${ROOT_MB:-300}
KERNEL_MB=${KERNEL_MB:-8}
INITRD_MB=${INITRD_MB:-30}
RATE=${RATE:-}

work=$(mktemp -d ${BENCH_TMP:+-p "$BENCH_TMP"})
srv=lnb-storm-s-$$ lan=lnb-storm-l-$$ cli=lnb-storm-c-$$
cleanup() {
    for ns in "$srv" "$cli"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    done
    sleep 0.5
    for ns in "$srv" "$lan" "$cli"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
# A signal (a timeout, Ctrl-C) ends the run through the EXIT trap as well: nothing is left running.
trap "exit 1" INT TERM HUP
in_srv() { ip netns exec "$srv" "$@"; }
in_cli() { ip netns exec "$cli" "$@"; }

max=0
for n in $HOSTS; do [ "$n" -gt "$max" ] && max=$n; done

# The server's port, the bridge, and a veth per host (its end in the client namespace).
for ns in "$srv" "$lan" "$cli"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
ip -n "$lan" link add br0 type bridge
ip -n "$lan" link set br0 up
ip -n "$srv" link add vs type veth peer name vl netns "$lan"
ip -n "$srv" addr add 10.99.0.1/16 dev vs
ip -n "$srv" link set vs up
ip -n "$lan" link set vl master br0 up
if [ -n "$RATE" ]; then
    in_srv tc qdisc add dev vs root tbf rate "$RATE" burst 256k latency 100ms
fi
mac_of() { printf '02:5e:00:00:%02x:%02x' $(($1 / 256)) $(($1 % 256)); }
for i in $(seq "$max"); do
    ip -n "$cli" link add "h$i" address "$(mac_of "$i")" type veth peer name "p$i" netns "$lan"
    ip -n "$lan" link set "p$i" master br0 up
    ip -n "$cli" link set "h$i" up
done
# Many interfaces on one subnet in one namespace: each answers ARP only for its own address.
in_cli sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 net.ipv4.conf.all.rp_filter=0

# The files: named by content hash, as netbootd's store names them; a host layer per host.
mkdir -p "$work/a" "$work/layers" "$work/state" "$work/www/ipxe" "$work/www/host" "$work/nginx"
chmod 755 "$work"
stored() {
    head -c "${2}M" /dev/urandom >"$work/a/tmp"
    local sum
    sum=$(sha256sum "$work/a/tmp" | cut -d' ' -f1)
    mv "$work/a/tmp" "$work/a/$sum"
    eval "$1=$sum"
}
stored kernel "$KERNEL_MB"
stored initrd "$INITRD_MB"
stored root "$ROOT_MB"
for i in $(seq "$max"); do
    head -c 16K /dev/urandom >"$work/layers/h$i.cpio"
    mkdir -p "$work/www/host/$(mac_of "$i")"
    cp "$work/layers/h$i.cpio" "$work/www/host/$(mac_of "$i")/layer"
done
ln -s "$work/a" "$work/www/a"

# What each host does, in the client namespace: prints "milliseconds DHCP-retries HTTP-retries
# address-count" or fails.
cat >"$work/udhcpc.sh" <<'UDHCPC'
#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr flush dev "$interface"
ip addr add "$ip/16" dev "$interface"
echo "$ip" >>"$LEASES"
UDHCPC
chmod +x "$work/udhcpc.sh"
cat >"$work/host.sh" <<'HOST'
#!/bin/bash
# host.sh INDEX MAC WORK
set -euo pipefail
i=$1 mac=$2 work=$3 link=h$1
export LEASES=$work/leases.$i
: >"$LEASES"
dhcp_retries=0 fetch_retries=0
start=$(date +%s%N)
# dhcp ARGS...: one lease, as iPXE or the booted system asks; every extra try counted.
dhcp() {
    local log
    log=$(busybox udhcpc -i "$link" -n -q -f -t 5 -T 1 -s "$work/udhcpc.sh" "$@" 2>&1) || { echo "$log" >&2; return 1; }
    local discovers
    discovers=$(grep -ci 'discover' <<<"$log" || true)
    dhcp_retries=$((dhcp_retries + discovers - 1))
}
# fetch URL SIZE: downloads URL, three tries at most, and checks its size.
fetch() {
    local try got
    for try in 1 2 3; do
        got=$(curl -s --interface "$link" -o /dev/null -w '%{http_code} %{size_download}' "$1" || true)
        [ "$got" = "200 $2" ] && return
        fetch_retries=$((fetch_retries + 1))
    done
    echo "host $i: $1 gave $got, not 200 $2" >&2
    return 1
}
size() { stat -c %s "$work/a/${1##*/}" 2>/dev/null || stat -c %s "$work/www/host/$mac/layer"; }
dhcp -C
server=http://10.99.0.1:8080
script=$(curl -sf --interface "$link" "$server/ipxe/$mac")
# The kernel, each initrd, and the root image its command line names, in the script's order.
urls=$(awk '/^kernel/ { print $2; for (f = 3; f <= NF; f++) if (sub(/^lectern\.root=/, "", $f)) print $f }
            /^initrd/ { print $NF }' <<<"$script")
for url in $urls; do
    fetch "$url" "$(size "$url")"
done
dhcp -x hostname:"h$i"
end=$(date +%s%N)
echo "$(( (end - start) / 1000000 )) $dhcp_retries $fetch_retries $(sort -u "$LEASES" | wc -l)"
HOST
chmod +x "$work/host.sh"

# The server's DHCP answer times, from a capture on its port: for each reply, the time since the
# request it answers (the last one with its xid and kind) arrived. Prints "median max" in ms.
dhcp_answer_ms() {
    tcpdump -r "$1" -n -tt -v 2>/dev/null | awk '
        /^[0-9]+\.[0-9]+ IP/ { t = $1 }
        /BOOTP\/DHCP, Request/ { dir = "q"; match($0, /xid 0x[0-9a-f]+/); xid = substr($0, RSTART + 4, RLENGTH - 4) }
        /BOOTP\/DHCP, Reply/ { dir = "r"; match($0, /xid 0x[0-9a-f]+/); xid = substr($0, RSTART + 4, RLENGTH - 4) }
        /DHCP-Message \(53\)/ {
            kind = $NF
            if (dir == "q") asked[xid, kind == "Discover" ? "Offer" : "ACK"] = t
            else if ((xid, kind) in asked) print (t - asked[xid, kind]) * 1000
        }' | sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "%.0f %.0f", v[int((NR + 1) / 2)], v[NR]; else printf "- -" }'
}

# Datagrams the server's namespace dropped for a full socket receive buffer (whoever's socket).
udp_receive_drops() { in_srv awk '/^Udp:/ { if (seen) print $6; seen = 1 }' /proc/net/snmp; }

# storm NAME N: boots N hosts at once against the server just started; prints its row.
storm() {
    local name=$1 n=$2 before after t0 t1 i
    rm -f "$work"/result.* "$work"/leases.*
    for i in $(seq "$n"); do ip -n "$cli" addr flush dev "h$i"; done
    # On the server's port's far end, so that its CPU is not counted as the server's.
    ip netns exec "$lan" tcpdump -i vl -n -U --immediate-mode -s 400 -w "$work/dhcp.pcap" 'udp port 67 or udp port 68' 2>"$work/tcpdump.log" &
    local capture=$!
    for _ in $(seq 100); do grep -q 'listening on' "$work/tcpdump.log" && break; sleep 0.1; done
    before=$(ns_cpu_ticks "$srv")
    local drops_before
    drops_before=$(udp_receive_drops)
    t0=$(date +%s%N)
    local booting=()
    for i in $(seq "$n"); do
        in_cli "$work/host.sh" "$i" "$(mac_of "$i")" "$work" >"$work/result.$i" 2>"$work/error.$i" &
        booting+=($!)
    done
    for i in "${booting[@]}"; do
        if ! wait "$i"; then
            cat "$work"/error.* >&2
            echo "$name: a host did not boot" >&2
            exit 1
        fi
    done
    t1=$(date +%s%N)
    after=$(ns_cpu_ticks "$srv")
    kill "$capture"
    wait "$capture" 2>/dev/null || true
    local answers
    answers=$(dhcp_answer_ms "$work/dhcp.pcap")
    local bytes=$(( (KERNEL_MB + INITRD_MB + ROOT_MB) * 1048576 * n ))
    local floor="-"
    if [ -n "$RATE" ]; then
        floor=$(awk -v b="$bytes" -v r="$RATE" 'BEGIN { sub(/gbit/, "e9", r); sub(/mbit/, "e6", r); printf "%.1f s", b * 8 / r }')
    fi
    cat "$work"/result.* | awk -v name="$name" -v n="$n" -v ms=$(( (t1 - t0) / 1000000 )) -v floor="$floor" \
        -v cpu=$((after - before)) -v hz="$(getconf CLK_TCK)" -v peak="$(ns_peak_kib "$srv")" \
        -v drops=$(($(udp_receive_drops) - drops_before)) -v answers="$answers" '
        { dhcp += $2; http += $3; addresses[$4]++ }
        END {
            list = ""; for (a in addresses) list = list sprintf("%s%d hosts: %d", list == "" ? "" : ", ", addresses[a], a)
            split(answers, answer, " ")
            printf "| %s | %d | %.1f s | %s | %.3f | %.0f MiB | %d + %d | %s / %s ms | %d | %s |\n", name, n, ms / 1000, floor,
                cpu / hz / n, peak / 1024, dhcp, http, answer[1], answer[2], drops, list
        }'
}

start_netbootd() {
    local hosts=() i
    for i in $(seq "$max"); do hosts+=(--host "$(mac_of "$i"),h$i"); done
    rm -f "$work/state/"*
    in_srv "$NETBOOTD" serve-static --interface vs --server-ip 10.99.0.1 --netmask 255.255.0.0 \
        --pool 10.99.1.1-10.99.1.250 --state-dir "$work/state" --tftp-root "$work/a" --artifact-dir "$work/a" \
        --kernel "$kernel" --initrd "$initrd" --root-image "$root" --layer-dir "$work/layers" "${hosts[@]}" \
        >"$work/netbootd.log" 2>&1 &
    wait_for 8080
}
start_reference() {
    local i
    for i in $(seq "$max"); do
        printf '#!ipxe\nkernel http://10.99.0.1:8080/a/%s initrd=initrd0 initrd=initrd1 lectern.root=http://10.99.0.1:8080/a/%s\ninitrd --name initrd0 http://10.99.0.1:8080/host/%s/layer\ninitrd --name initrd1 http://10.99.0.1:8080/a/%s\nboot\n' \
            "$kernel" "$root" "$(mac_of "$i")" "$initrd" >"$work/www/ipxe/$(mac_of "$i")"
    done
    nginx_conf "$work/nginx" "$work/www"
    in_srv nginx -c "$work/nginx/nginx.conf" >"$work/nginx.log" 2>&1 &
    in_srv dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --no-resolv --no-hosts --no-ping \
        --interface=vs --bind-interfaces --dhcp-authoritative --user=root \
        --dhcp-range=10.99.1.1,10.99.1.250,255.255.0.0,1h --dhcp-leasefile="$work/dnsmasq.leases" \
        --dhcp-boot=undionly.kpxe --pid-file="$work/dnsmasq.pid" >"$work/dnsmasq.log" 2>&1 &
    wait_for 8080
}
wait_for() {
    for _ in $(seq 100); do
        in_srv ss -Hlnt "sport = :$1" | grep -q . && return
        sleep 0.1
    done
    echo "no server on port $1" >&2
    cat "$work"/*.log >&2
    exit 1
}
stop_servers() {
    ip netns pids "$srv" | xargs -r kill 2>/dev/null || true
    while [ -n "$(ip netns pids "$srv")" ]; do sleep 0.1; done
}

echo "| server | hosts | last root image | link-rate floor | server CPU-s per boot | peak memory | retries (DHCP + HTTP) | DHCP answer, median / slowest | UDP receive drops at the server | addresses per host |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for n in $HOSTS; do
    start_netbootd
    storm netbootd "$n"
    stop_servers
    start_reference
    storm "dnsmasq $(dnsmasq --version | head -1 | grep -oP 'version \K\S+') + nginx $(nginx -v 2>&1 | grep -oP '/\K\S+')" "$n"
    stop_servers
    rm -f "$work/dnsmasq.leases"
done
