# Sourced by the benchmark scripts.

# ns_cpu_ticks NS, ns_peak_kib NS: CPU ticks used and peak memory (VmHWM) summed over every process
# in namespace NS: a server's workers as well as its master.
ns_cpu_ticks() {
    ip netns pids "$1" | xargs -r -I{} awk '{ print $14 + $15 }' /proc/{}/stat | awk '{ s += $1 } END { print s + 0 }'
}
ns_peak_kib() {
    ip netns pids "$1" | xargs -r -I{} awk '/VmHWM/ { print $2 }' /proc/{}/status | awk '{ s += $1 } END { print s + 0 }'
}

# nginx_conf DIR ROOT: writes DIR/nginx.conf for nginx as a video team
# would run it to serve netboot files: sendfile, no access log, listening on the server's address, serving
# ROOT (with /a/ the artifacts under ROOT, as netbootd names them).
nginx_conf() {
    cat >"$1/nginx.conf" <<NGINX
daemon off;
worker_processes auto;
pid $1/nginx.pid;
error_log stderr;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    client_body_temp_path $1;
    server { listen 10.99.0.1:8080; root $2; }
}
NGINX
}
