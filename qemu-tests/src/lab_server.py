"""Stand-in for netbootd in VM tests: serves a directory over HTTP (GET/HEAD) and appends every POST to
/api/report as one JSON line to a log file. Usage: lab_server.py DIR ADDRESS PORT REPORT_LOG"""
import http.server
import sys

root, address, port, report_log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=root, **kwargs)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/api/report":
            self.send_error(404)
            return
        with open(report_log, "ab") as log:
            log.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(204)
        self.end_headers()


http.server.ThreadingHTTPServer((address, port), Handler).serve_forever()
