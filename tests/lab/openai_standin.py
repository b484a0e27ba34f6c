"""A stand-in OpenAI endpoint for wiring checks of the RAG app without vLLM (stdlib only).

``POST /v1/chat/completions`` answers with a deterministic text that echoes what it received
(message count, the context's source names, the model asked for), so a test can prove that the
app retrieved from Milvus and sent the context on; ``GET /v1/models`` and ``/health`` answer too.
Run: ``python3 openai_standin.py [PORT]`` (default 8000). Not a model: the lab's real vLLM is.
"""

import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "standin-model"


class Handler(BaseHTTPRequestHandler):
    def _send(self, code, payload):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            return self._send(200, {})
        if self.path == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        self._send(404, {"error": "not found"})

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": "not found"})
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        user = request["messages"][-1]["content"]
        sources = re.findall(r"^\[\d+\] \(([^)]+)\)", user, re.M)
        text = f"standin answer: {len(request['messages'])} messages, context from {', '.join(sources) or 'nothing'}"
        self._send(200, {"id": "chatcmpl-standin", "object": "chat.completion", "model": request.get("model", MODEL),
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}],
                         "usage": {"prompt_tokens": len(user.split()), "completion_tokens": len(text.split())}})


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1]) if len(sys.argv) > 1 else 8000), Handler).serve_forever()
