"""A Docker Engine API stand-in for the facts' shell: HTTP over a unix socket, as dockerd serves it,
answering each path from a table and 404 ``{"message": "No such …"}`` (dockerd's words) otherwise.

The facts' commands are run for real (dash, the real ``curl``); only the daemon is stood in. Run
as a process of its own (the unit tests' process runs under gevent)::

    python tests/unit/fake_docker_api.py SOCKET ROUTES_JSON LOG

``ROUTES_JSON`` maps a path (with its query, as the fact asks for it) to ``[status, document]``.
Each request's path is appended to ``LOG``. It serves until its stdin closes.
"""

from __future__ import annotations

import json
import os
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler


def serve(socket_path: str, routes: dict, log_path: str) -> socketserver.UnixStreamServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # curl reuses one connection for all the paths it asks for

        def do_GET(self):  # noqa: N802 - http.server's name
            with open(log_path, "a") as log:
                log.write(self.path + "\n")
            status, document = routes.get(self.path, [404, None])
            if document is None and status == 404:
                kind = "image" if self.path.startswith("/images/") else "container"
                name = self.path.split("/", 2)[-1].rsplit("/json", 1)[0]
                document = {"message": f"No such {kind}: {name}"}
            # dockerd's JSON: compact (Go's encoder), each document ending with a newline.
            body = (json.dumps(document, separators=(",", ":")) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self):
            return "unix"

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    server = Server(socket_path, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    socket_path, routes_json, log_path = sys.argv[1:4]
    server = serve(socket_path, json.loads(routes_json), log_path)
    print("ready", flush=True)
    sys.stdin.read()
    server.shutdown()
    os.unlink(socket_path)
