# Sourced by the benchmark scripts. nginx_conf DIR ROOT: writes DIR/nginx.conf for nginx as a video team
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
