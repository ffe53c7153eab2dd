#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: netbootd against Kea and dnsmasq (DHCP), tftpd-hpa and dnsmasq
# (TFTP) and nginx (HTTP), one server at a time on the same bridge in throwaway network
# namespaces; clients in a second namespace over a veth pair. Needs root and
#   apt-get install kea-dhcp4-server kea-admin dnsmasq-base tftpd-hpa nginx-light curl atftp iproute2 openssl
# Usage: bash netboot-server/bench/bench.sh [path/to/release/netbootd]
# OTHER_NETBOOTD=path/to/netbootd adds TFTP and HTTP rows for that build in the same run, labelled
# OTHER_LABEL: a build from before a change shows what the change did. CALLGRIND=1 (needs valgrind)
# adds each TFTP server's instructions per block.
set -euo pipefail
# A failure inside $(…) stops the run: no row is printed from a measurement that failed.
shopt -s inherit_errexit
. "$(dirname "$0")/lib.sh"

NETBOOTD=$(realpath "${1:-${CARGO_TARGET_DIR:-target}/release/netbootd}")
OTHER_NETBOOTD=${OTHER_NETBOOTD:+$(realpath "$OTHER_NETBOOTD")}
OTHER_LABEL=${OTHER_LABEL:-netbootd, other build}
# Per-request logging off everywhere, as for Kea (ERROR) and dnsmasq (no log-dhcp).
export RUST_LOG=warn
DHCP_CLIENTS=${DHCP_CLIENTS:-1000}   # simulated clients per DHCP run
DHCP_SECONDS=${DHCP_SECONDS:-10}
TFTP_MB=${TFTP_MB:-32}
HTTP_MB=${HTTP_MB:-1024}
HTTP_CLIENTS=${HTTP_CLIENTS:-64}

work=$(mktemp -d ${BENCH_TMP:+-p "$BENCH_TMP"})
server_ns=lnb-bench-s-$$
client_ns=lnb-bench-c-$$
pid=""

stop() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi
}
cleanup() {
    stop
    ip netns del "$server_ns" 2>/dev/null || true
    ip netns del "$client_ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
# A signal (a timeout, Ctrl-C) ends the run through the EXIT trap as well: nothing is left running.
trap "exit 1" INT TERM HUP

in_server() { ip netns exec "$server_ns" "$@"; }
in_client() { ip netns exec "$client_ns" "$@"; }

# start NAME COMMAND...: runs a server in the server namespace and waits for its port.
start() {
    local name=$1 port=$2
    shift 2
    # Not through in_server: a backgrounded function is a subshell, and killing it would
    # leave the server running.
    ip netns exec "$server_ns" "$@" >"$work/$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        if in_server ss -Hlnu "sport = :$port" | grep -q . || in_server ss -Hlnt "sport = :$port" | grep -q .; then
            return
        fi
        sleep 0.1
    done
    echo "$name did not start:" >&2
    cat "$work/$name.log" >&2
    exit 1
}

ip netns add "$server_ns"
ip netns add "$client_ns"
ip -n "$server_ns" link set lo up
ip -n "$client_ns" link set lo up
ip -n "$server_ns" link add br0 type bridge
ip -n "$server_ns" addr add 10.99.0.1/16 dev br0
ip -n "$server_ns" link set br0 up
ip -n "$server_ns" link add vs0 type veth peer name vc0 netns "$client_ns"
ip -n "$server_ns" link set vs0 master br0 up
ip -n "$client_ns" addr add 10.99.0.2/16 dev vc0
ip -n "$client_ns" link set vc0 up

chmod 755 "$work" # nginx workers run as nobody
mkdir -p "$work/tftp" "$work/store" "$work/state" "$work/nginx"
head -c "${TFTP_MB}M" /dev/urandom >"$work/tftp/big.bin"
head -c "${HTTP_MB}M" /dev/urandom >"$work/store/artifact"
mkdir -p "$work/www"
ln -s "$work/store" "$work/www/a" # nginx serves the artifacts at netbootd's paths
pool_first=10.99.1.1
pool_last=10.99.255.250

# verify URL FILE: fails unless URL, fetched once more, has FILE's bytes (a rate counts only what
# arrived whole).
verify() {
    local got want
    got=$(in_client curl -sS --fail --tftp-blksize 1468 "$1" | sha256sum)
    want=$(sha256sum <"$2")
    if [ "$got" != "$want" ]; then
        echo "$1: the bytes served differ from $2" >&2
        exit 1
    fi
}

# SECTIONS picks what runs, e.g. SECTIONS=dhcp for the DHCP rows alone.
SECTIONS=${SECTIONS:-dhcp tftp http secrets tpm}
wanted() { [[ " $SECTIONS " == *" $1 "* ]]; }

echo "| measure | server | result |"
echo "|---|---|---|"

if wanted dhcp; then
# --- DHCP: 4-way exchanges per second, perfdhcp simulating $DHCP_CLIENTS clients ------------
dhcp_rate() {
    local output
    output=$(in_client perfdhcp -4 -l vc0 -r 100000 -R "$DHCP_CLIENTS" -p "$DHCP_SECONDS" 2>&1 || true)
    grep -oP 'Rate: \K[0-9.]+(?= 4-way)' <<<"$output" || { echo "$output" >&2; echo 0; }
}

rm -f "$work/state/"*
start netbootd 67 "$NETBOOTD" serve-static --interface br0 --server-ip 10.99.0.1 --netmask 255.255.0.0 \
    --pool "$pool_first-$pool_last" --state-dir "$work/state" --tftp-root "$work/tftp"
echo "| DHCP exchanges/s | netbootd | $(dhcp_rate) |"
stop

cat >"$work/kea.json" <<KEA
{"Dhcp4": {
  "interfaces-config": {"interfaces": ["br0"], "dhcp-socket-type": "raw"},
  "lease-database": {"type": "memfile", "persist": true, "name": "$work/kea-leases4.csv", "lfc-interval": 0},
  "valid-lifetime": 3600,
  "subnet4": [{"id": 1, "subnet": "10.99.0.0/16", "pools": [{"pool": "$pool_first - $pool_last"}]}],
  "loggers": [{"name": "kea-dhcp4", "severity": "ERROR", "output_options": [{"output": "stderr"}]}]
}}
KEA
KEA_LOCKFILE_DIR=none KEA_PIDFILE_DIR=$work start kea 67 kea-dhcp4 -c "$work/kea.json"
echo "| DHCP exchanges/s | Kea $(kea-dhcp4 -v) | $(dhcp_rate) |"
stop

start dnsmasq 67 dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --no-resolv --no-hosts --no-ping \
    --interface=br0 --bind-interfaces --dhcp-authoritative --user=root --dhcp-lease-max=70000 \
    --dhcp-range="$pool_first,$pool_last,255.255.0.0,1h" --dhcp-leasefile="$work/dnsmasq.leases" \
    --pid-file="$work/dnsmasq.pid"
echo "| DHCP exchanges/s | dnsmasq $(dnsmasq --version | head -1 | grep -oP 'version \K\S+') | $(dhcp_rate) |"
stop


# dora, the Rust DHCP server, when DORA= names its binary (built from its repository for the benchmark
# only: SQLX_OFFLINE=true cargo build --release --bin dora; it prints no version, DORA_VERSION= labels
# the row). Leases in its sqlite database on disk.
if [ -n "${DORA:-}" ]; then
    cat >"$work/dora.yaml" <<DORA_CONFIG
interfaces:
    - br0
networks:
    10.99.0.0/16:
        server_id: 10.99.0.1
        ranges:
            -
                start: $pool_first
                end: $pool_last
                config:
                    lease_time:
                        default: 3600
                options:
                    values:
                        1:
                            type: ip
                            value: 255.255.0.0
DORA_CONFIG
    DORA_LOG=error start dora 67 "$DORA" -c "$work/dora.yaml" -d "$work/dora-leases.db" \
        --external-api 127.0.0.1:3333
    rate=$(dhcp_rate)
    echo "| DHCP exchanges/s | dora ${DORA_VERSION:-} | $rate |"
    stop
fi
fi

if wanted tftp; then
# --- TFTP: one client, curl with 1468-byte blocks (the usual firmware choice) ----------------
tftp_speed() {
    local best=0 speed size
    verify tftp://10.99.0.1/big.bin "$work/tftp/big.bin"
    for _ in 1 2 3; do
        read -r speed size < <(in_client curl -s --tftp-blksize 1468 -o /dev/null \
            -w '%{speed_download} %{size_download}\n' tftp://10.99.0.1/big.bin)
        if [ "$size" != "$((TFTP_MB << 20))" ]; then
            echo "TFTP: $size bytes of $((TFTP_MB << 20)) arrived" >&2
            exit 1
        fi
        best=$(awk -v a="$best" -v b="$speed" 'BEGIN { print (b > a) ? b : a }')
    done
    awk -v bytes="$best" 'BEGIN { printf "%.1f MB/s", bytes / 1e6 }'
}

# The same download asking for RFC 7440's windowsize 8, as UEFI firmware asks for a window: atftp, a
# stock client that negotiates it (curl and tftp-hpa do not). A server that does not know the option
# answers lock-step. The best of three, each download compared with the file.
tftp_window_speed() {
    local best=0 start_ns end_ns speed
    for _ in 1 2 3; do
        rm -f "$work/tftp-out"
        start_ns=$(date +%s%N)
        in_client atftp --option "blksize 1468" --option "windowsize 8" -g -r big.bin -l "$work/tftp-out" \
            10.99.0.1 >/dev/null 2>&1
        end_ns=$(date +%s%N)
        if ! cmp -s "$work/tftp-out" "$work/tftp/big.bin"; then
            echo "TFTP with a window: the bytes differ from the file" >&2
            exit 1
        fi
        speed=$(awk -v b=$((TFTP_MB << 20)) -v ns=$((end_ns - start_ns)) 'BEGIN { print b / (ns / 1e9) }')
        best=$(awk -v a="$best" -v b="$speed" 'BEGIN { print (b > a) ? b : a }')
    done
    awk -v bytes="$best" 'BEGIN { printf "%.1f MB/s", bytes / 1e6 }'
}

# CALLGRIND=1: one more lock-step download from the server under valgrind's callgrind, and the
# user-space instructions it spent per block, from the request to the end of the transfer (a forked
# transfer process's included): a figure the machine's noise does not move, where the rates do.
tftp_instructions() {
    local label=$1 total top counts=$work/callgrind
    shift
    # in.tftpd --secure chroots its transfer processes into the TFTP root, as user nobody: their counts
    # land under the same path inside it, in directories anyone may write to.
    rm -rf "$counts" "$work/tftp$counts"
    mkdir -p "$counts" "$work/tftp$counts"
    chmod 1777 "$counts" "$work/tftp$counts"
    start "$label-callgrind" 69 valgrind --tool=callgrind --callgrind-out-file="$counts/cg.%p" "$@"
    callgrind_control -z "$pid" >/dev/null 2>&1
    in_client curl -sS --tftp-blksize 1468 -o "$work/tftp-out" tftp://10.99.0.1/big.bin
    cmp -s "$work/tftp-out" "$work/tftp/big.bin" || { echo "TFTP under callgrind: the bytes differ" >&2; exit 1; }
    sleep 1 # a forked transfer process writes its counts as it exits
    callgrind_control -d "$pid" >/dev/null 2>&1
    # The server's dump since the zeroing and its children's files, not the one it writes as it stops.
    total=$(find "$counts" "$work/tftp$counts" -name 'cg.*' ! -name "cg.$pid" -exec awk '/^totals:/ { print $2 }' {} + |
        awk '{ s += $1 } END { print s + 0 }')
    stop
    top=${work#/}
    rm -rf "$work/tftp/${top%%/*}"
    [ "$total" -gt 0 ] || { echo "$label: callgrind counted nothing" >&2; exit 1; }
    echo "| TFTP ${TFTP_MB} MB, lock-step (curl), user-space instructions per block (callgrind) | $label | $((total / ((TFTP_MB << 20) / 1468 + 1))) |"
}

# tftp_rows LABEL COMMAND...: both rows for the server COMMAND starts (and with CALLGRIND=1, a third).
tftp_rows() {
    local label=$1 rate
    shift
    start "$label" 69 "$@"
    rate=$(tftp_speed)
    echo "| TFTP ${TFTP_MB} MB, lock-step (curl) | $label | $rate |"
    rate=$(tftp_window_speed)
    echo "| TFTP ${TFTP_MB} MB, windowsize 8 asked (atftp) | $label | $rate |"
    stop
    [ "${CALLGRIND:-}" != 1 ] || tftp_instructions "$label" "$@"
}

for build in "$NETBOOTD" $OTHER_NETBOOTD; do
    label=netbootd
    [ "$build" = "$NETBOOTD" ] || label=$OTHER_LABEL
    tftp_rows "$label" "$build" serve-static --interface br0 --server-ip 10.99.0.1 --netmask 255.255.0.0 \
        --state-dir "$work/state" --tftp-root "$work/tftp"
done
tftp_rows tftpd-hpa in.tftpd --foreground --listen --address 10.99.0.1:69 --secure "$work/tftp"
tftp_rows dnsmasq dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --interface=br0 \
    --bind-interfaces --user=root --enable-tftp --tftp-root="$work/tftp" --pid-file="$work/dnsmasq.pid"
fi

if wanted http; then
# --- HTTP: $HTTP_CLIENTS clients each fetching the whole artifact at once ------------------
# Every transfer's status and byte count is checked, and one more fetch's hash. Each row has a
# server of its own, started for it: its CPU and peak memory are the row's alone.
# throughput_of START_NS: the aggregate rate since START_NS, and the server's CPU and peak memory.
throughput_of() {
    awk -v mb="$HTTP_MB" -v n="$HTTP_CLIENTS" -v ns=$(($(date +%s%N) - $1)) -v cpu="$(ns_cpu_ticks "$server_ns")" \
        -v hz="$(getconf CLK_TCK)" -v peak="$(ns_peak_kib "$server_ns")" \
        'BEGIN { printf "%.0f MB/s aggregate (%.1f s), %.1f s server CPU, %.0f MiB peak", mb * 1.048576 * n / (ns / 1e9), ns / 1e9, cpu / hz, peak / 1024 }'
}
http_throughput() {
    local url=$1 start_ns whole
    local urls=()
    for _ in $(seq "$HTTP_CLIENTS"); do urls+=("$url"); done
    start_ns=$(date +%s%N)
    in_client curl -sS --no-progress-meter --parallel --parallel-max "$HTTP_CLIENTS" \
        -w '%{http_code} %{size_download}\n' $(printf -- '-o /dev/null %s ' "${urls[@]}") >"$work/transfers" || true
    throughput_of "$start_ns"
    whole=$(grep -cx "200 $((HTTP_MB << 20))" "$work/transfers" || true)
    if [ "$whole" != "$HTTP_CLIENTS" ]; then
        echo "HTTP: $whole of $HTTP_CLIENTS transfers arrived whole:" >&2
        sort "$work/transfers" | uniq -c >&2
        exit 1
    fi
    verify "$url" "$work/store/artifact"
}

# The same bytes as Range requests: each client (a curl of its own) fetches the whole artifact in
# $HTTP_RANGES consecutive ranges over one connection. Every answer must be a 206 of the range's size.
HTTP_RANGES=${HTTP_RANGES:-16}
http_ranges_throughput() {
    local url=$1 start_ns whole slice=$(((HTTP_MB << 20) / HTTP_RANGES)) client range
    local args=()
    for range in $(seq 0 $((HTTP_RANGES - 1))); do
        [ "$range" = 0 ] || args+=(--next)
        args+=(-r "$((range * slice))-$(((range + 1) * slice - 1))" -o /dev/null
            -w '%{http_code} %{size_download}\n' "$url")
    done
    start_ns=$(date +%s%N)
    for client in $(seq "$HTTP_CLIENTS"); do
        in_client curl -sS --no-progress-meter "${args[@]}" >"$work/ranges.$client" &
    done
    wait
    throughput_of "$start_ns"
    whole=$(cat "$work"/ranges.* | grep -cx "206 $slice" || true)
    if [ "$whole" != $((HTTP_CLIENTS * HTTP_RANGES)) ]; then
        echo "HTTP ranges: $whole of $((HTTP_CLIENTS * HTTP_RANGES)) arrived whole:" >&2
        cat "$work"/ranges.* | sort | uniq -c >&2
        exit 1
    fi
}

# http_rows LABEL COMMAND...: both rows for the server COMMAND starts.
http_rows() {
    local label=$1 measure rate
    shift
    for measure in http_throughput http_ranges_throughput; do
        start "$label" 8080 "$@"
        rate=$("$measure" http://10.99.0.1:8080/a/artifact)
        stop
        if [ "$measure" = http_throughput ]; then
            echo "| HTTP ${HTTP_MB} MiB x ${HTTP_CLIENTS} | $label | $rate |"
        else
            echo "| HTTP ${HTTP_MB} MiB x ${HTTP_CLIENTS}, ${HTTP_RANGES} ranges each | $label | $rate |"
        fi
    done
}

for build in "$NETBOOTD" $OTHER_NETBOOTD; do
    label=netbootd
    [ "$build" = "$NETBOOTD" ] || label=$OTHER_LABEL
    http_rows "$label" "$build" serve-static --interface br0 --server-ip 10.99.0.1 --netmask 255.255.0.0 \
        --state-dir "$work/state" --tftp-root "$work/tftp" --artifact-dir "$work/store" --kernel artifact
done
nginx_conf "$work/nginx" "$work/www"
http_rows "nginx $(nginx -v 2>&1 | grep -oP '/\K\S+')" nginx -c "$work/nginx/nginx.conf"
fi

if wanted secrets; then
# --- A boot's secrets: its host layer over HTTP, then its secrets over TLS -------------------
# Each fetch is a new connection, as a boot makes; netbootd's CPU is read from /proc around the runs.
SECRET_FETCHES=${SECRET_FETCHES:-200}
mkdir -p "$work/layers"
head -c 16K /dev/urandom >"$work/layers/h1.cpio"
head -c 4K /dev/urandom >"$work/layers/h1.secrets.cpio"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/tls.key" 2>/dev/null
pin="sha256//$(openssl pkey -in "$work/tls.key" -pubout -outform der | openssl dgst -sha256 -binary | base64)"
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%d", ($14 + $15) * 1000 / hz }' "/proc/$1/stat"; }
# per_fetch CURL_ARGS...: the median time of a fetch and netbootd's CPU per fetch.
per_fetch() {
    local before after
    before=$(cpu_ms "$pid")
    for _ in $(seq "$SECRET_FETCHES"); do
        in_client curl -sS --fail -o /dev/null -w '%{time_total}\n' "$@"
    done >"$work/times"
    after=$(cpu_ms "$pid")
    sort -n "$work/times" | awk -v cpu=$((after - before)) -v n="$SECRET_FETCHES" \
        '{ t[NR] = $1 } END { printf "%.2f ms median, %.2f ms server CPU per fetch", t[int((NR + 1) / 2)] * 1000, cpu / n }'
}
start netbootd 8443 "$NETBOOTD" serve-static --interface br0 --server-ip 10.99.0.1 --netmask 255.255.0.0 \
    --state-dir "$work/state" --tftp-root "$work/tftp" --host 52:54:00:00:00:01,10.99.0.2,h1,uuid=0c0ffee0-0000-4000-8000-000000000001 \
    --layer-dir "$work/layers" --tls-key "$work/tls.key"
rate=$(per_fetch http://10.99.0.1:8080/host/h1/layer)
echo "| host layer, 16 KiB over HTTP | netbootd | $rate |"
# The same boot asking again is served (a retry); a boot asks once.
body='{"boot_id":"b1","uuid":"0c0ffee0-0000-4000-8000-000000000001"}'
rate=$(per_fetch --insecure --pinnedpubkey "$pin" -H 'Content-Type: application/json' -d "$body" \
    https://10.99.0.1:8443/host/h1/secrets)
echo "| secrets, 4 KiB over TLS (pinned, identity checked) | netbootd | $rate |"
stop
fi

if wanted tpm; then
# --- What binding a host to its TPM adds: the image's host-secrets script, as the booted host runs it ---
# Against a software TPM (swtpm) in the client namespace, first for h1 bound by its SMBIOS UUID alone, then
# for h1 bound to its TPM as well (create the EK and a key beside it, netbootd seals a credential, the TPM
# recovers it). Skipped without swtpm and tpm2-tools.
TPM_BOOTS=${TPM_BOOTS:-20}
if command -v swtpm >/dev/null && command -v tpm2_createek >/dev/null; then
    script=$(dirname "$0")/../../overlays/base/config/usr/lib/lectern/host-secrets
    machine=$work/machine
    mkdir -p "$work/tpm" "$machine/etc" "$machine/dmi" "$machine/run" "$machine/root" "$work/tpm-layers"
    # What the image's secrets layer is: a cpio of lectern-host/…, here with a 4 KiB file.
    mkdir -p "$work/staging/lectern-host/etc/lectern"
    head -c 4K /dev/urandom >"$work/staging/lectern-host/etc/lectern/secret"
    (cd "$work/staging" && find lectern-host | cpio --quiet -o -H newc) >"$work/tpm-layers/h1.secrets.cpio"
    cp "$work/layers/h1.cpio" "$work/tpm-layers/"
    echo "https://10.99.0.1:8443/" >"$machine/etc/netbootd-url"
    echo "$pin" >"$machine/etc/netbootd.pin"
    echo 0c0ffee0-0000-4000-8000-000000000001 >"$machine/dmi/product_uuid"
    ip netns exec "$client_ns" swtpm socket --tpm2 --tpmstate dir="$work/tpm" \
        --server type=tcp,port=2321,bindaddr=127.0.0.1 --ctrl type=tcp,port=2322,bindaddr=127.0.0.1 \
        --flags not-need-init,startup-clear >"$work/swtpm.log" 2>&1 &
    swtpm_pid=$!
    export TPM2TOOLS_TCTI=swtpm:port=2321
    sleep 0.5
    in_client tpm2_createek -Q -G rsa -c "$work/ek.ctx"
    ek_name=$(in_client tpm2_readpublic -c "$work/ek.ctx" | sed -n 's/^name: //p')
    in_client tpm2_flushcontext -t
    # tpm_boots IDENTITY: the median time of the script and netbootd's CPU per run, every run checked.
    tpm_boots() {
        start netbootd 8443 "$NETBOOTD" serve-static --interface br0 --server-ip 10.99.0.1 --netmask 255.255.0.0 \
            --state-dir "$work/state" --tftp-root "$work/tftp" --host "52:54:00:00:00:01,10.99.0.2,h1,$1" \
            --layer-dir "$work/tpm-layers" --tls-key "$work/tls.key"
        in_client curl -sS --fail -o /dev/null http://10.99.0.1:8080/host/h1/layer
        local before after
        before=$(cpu_ms "$pid")
        for _ in $(seq "$TPM_BOOTS"); do
            local t0=$(date +%s%N)
            LECTERN_ETC=$machine/etc LECTERN_DMI=$machine/dmi LECTERN_RUN=$machine/run LECTERN_ROOT=$machine/root \
                in_client unshare --uts sh -c 'hostname h1 && exec bash "$0"' "$script" >/dev/null
            # Counted only if the secrets arrived.
            cmp -s "$machine/root/etc/lectern/secret" "$work/staging/lectern-host/etc/lectern/secret" || echo failed
            rm -rf "${machine:?}/root/etc"
            echo $(( ($(date +%s%N) - t0) / 1000 ))
        done >"$work/times"
        after=$(cpu_ms "$pid")
        stop
        if grep -q failed "$work/times"; then
            echo "host-secrets did not get h1's secrets" >&2
            return 1
        fi
        sort -n "$work/times" | awk -v cpu=$((after - before)) -v n="$TPM_BOOTS" \
            '{ t[NR] = $1 } END { printf "%.1f ms median, %.2f ms server CPU per boot", t[int((NR + 1) / 2)] / 1000, cpu / n }'
    }
    rate=$(tpm_boots uuid=0c0ffee0-0000-4000-8000-000000000001)
    echo "| host-secrets, SMBIOS identity | netbootd | $rate |"
    rate=$(tpm_boots "uuid=0c0ffee0-0000-4000-8000-000000000001,tpm_ek=$ek_name")
    echo "| host-secrets, SMBIOS + TPM (swtpm) | netbootd | $rate |"
    kill "$swtpm_pid" 2>/dev/null || true
    wait "$swtpm_pid" 2>/dev/null || true
fi
fi
