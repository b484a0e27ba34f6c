"""A Docker Engine API stand-in for the facts' shell: HTTP over a unix socket, as dockerd serves it,
answering each path from a table and 404 ``{"message": "No such …"}`` (dockerd's words) otherwise.

The facts' commands are run for real (dash, the real ``curl``); only the daemon is stood in. Run
as a process of its own (the unit tests' process runs under gevent)::

    python tests/unit/fake_docker_api.py SOCKET ROUTES_JSON LOG

``ROUTES_JSON`` maps a path (with its query; see :func:`canonical`) to ``[status, document]``; a
list it has no route for answers 500, anything else 404.
Each request's path is appended to ``LOG``. It serves until its stdin closes.
"""

from __future__ import annotations

import json
import os
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, urlsplit


def canonical(url: str) -> tuple:
    """A path and its query as the daemon reads them: the query's order, its encoding and the
    spacing of its JSON filters do not matter.

    >>> canonical('/containers/json?filters=%7B%22volume%22%3A%5B%22%2Fm%2Fb%22%5D%7D&all=1') == \\
    ...     canonical('/containers/json?all=1&filters={"volume": ["/m/b"]}')
    True
    """
    parts = urlsplit(url)
    query = sorted((k, json.dumps(json.loads(v), sort_keys=True) if k == "filters" else v)
                   for k, v in parse_qsl(parts.query))
    return parts.path, tuple(query)


def serve(socket_path: str, routes: dict, log_path: str) -> socketserver.UnixStreamServer:
    routes = {canonical(path): answer for path, answer in routes.items()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # curl reuses one connection for all the paths it asks for

        def do_GET(self):  # noqa: N802 - http.server's name
            with open(log_path, "a") as log:
                log.write(self.path + "\n")
            default = [404, None]
            if canonical(self.path)[0] in ("/containers/json", "/images/json"):
                # dockerd never answers a list with 404: a list the test did not route is a test
                # (or a fact) asking for what it did not mean to, and must not read as "none".
                default = [500, {"message": f"stand-in: no route for {self.path}"}]
            status, document = routes.get(canonical(self.path), default)
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
