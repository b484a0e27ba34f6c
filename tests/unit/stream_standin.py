"""A stand-in for vLLM's streaming /v1/completions, on 127.0.0.1 only, for the serving benchmark's tests.

It streams ``max_tokens`` chunks in vLLM's server-sent-events format (one ``data:`` line per token,
a final chunk with ``usage`` when ``stream_options.include_usage`` is set, then ``data: [DONE]``),
chunked over HTTP/1.1 as vLLM's server does, sleeping ``first_token_s`` before the first token and
``token_s`` between tokens. It checks ``Authorization`` when given a key, and records every request.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StreamStandin:
    def __init__(self, token_s: float = 0.002, first_token_s: float = 0.01, api_key: str | None = None,
                 fail_every: int = 0, empty_text: bool = False):
        self.token_s, self.first_token_s, self.api_key, self.fail_every = token_s, first_token_s, api_key, fail_every
        # Every token's text empty, as vLLM streams while its detokenizer waits for the rest of a
        # multi-byte character (and for most tokens of the lab's random-weight model).
        self.empty_text = empty_text
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _json(self, code, payload):
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with standin._lock:
                    standin.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **request})
                    number = len(standin.requests)
                if self.path != "/v1/completions":
                    return self._json(404, {"error": "not found"})
                if standin.api_key and self.headers.get("Authorization") != f"Bearer {standin.api_key}":
                    return self._json(401, {"error": "Unauthorized"})
                if standin.fail_every and number % standin.fail_every == 0:
                    return self._json(500, {"error": "injected failure"})
                with standin._lock:
                    standin.in_flight += 1
                    standin.max_in_flight = max(standin.max_in_flight, standin.in_flight)
                try:
                    self._stream(request)
                finally:
                    with standin._lock:
                        standin.in_flight -= 1

            def _chunk(self, text: str):
                data = text.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _stream(self, request):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                time.sleep(standin.first_token_s)
                n = int(request["max_tokens"])
                for i in range(n):
                    if i:
                        time.sleep(standin.token_s)
                    chunk = {"id": "cmpl-standin", "object": "text_completion", "created": int(time.time()),
                             "model": request["model"], "choices": [{"index": 0, "text": "" if standin.empty_text else f" t{i}",
                                                                     "logprobs": None,
                                                                     "finish_reason": "length" if i == n - 1 else None,
                                                                     "stop_reason": None}], "usage": None}
                    self._chunk(f"data: {json.dumps(chunk)}\n\n")
                if (request.get("stream_options") or {}).get("include_usage"):
                    prompt = request["prompt"]
                    usage = {"prompt_tokens": len(prompt) if isinstance(prompt, list) else len(prompt.split()),
                             "completion_tokens": n}
                    usage["total_tokens"] = usage["prompt_tokens"] + n
                    self._chunk(f"data: {json.dumps({'id': 'cmpl-standin', 'choices': [], 'usage': usage})}\n\n")
                self._chunk("data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
