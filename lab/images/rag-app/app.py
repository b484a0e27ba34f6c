"""A small, real RAG service: documents in Milvus, answers from vLLM's OpenAI API.

Configuration (environment; operations/app.py sets it):

    VLLM_API_URL       OpenAI base URL, e.g. http://10.0.0.5:8000/v1 (the node's replica or the LB)
    VLLM_MODEL         the served model name (vLLM --served-model-name)
    MILVUS_URI         http://10.0.0.5:19530
    APP_PORT           port to listen on (default 8080)
    MILVUS_COLLECTION  collection name (default gpufleet_docs)
    MILVUS_RETRY_S     how long a query or an ingest waits for a Milvus that does not answer (default 90)
    RAG_TOP_K          chunks retrieved per question (default 4)
    EMBED_DIM          hashing-embedding size (default 256; see rag.py)
    DOCS_DIR           *.md / *.txt files indexed at start (default: the documents shipped in the image)
    VLLM_MAX_TOKENS    completion length (default 256); VLLM_TIMEOUT_S (default 120)
    VLLM_API_KEY       sent to vLLM as ``Authorization: Bearer`` (vLLM's --api-key / VLLM_API_KEY)
    APP_API_KEY        required from clients as ``Authorization: Bearer`` on every request but
                       ``GET /health``; unset: no authentication (a lab or a trusted network only)
    MILVUS_USER        the app's Milvus user, and MILVUS_PASSWORD its password (Milvus with
                       authentication); unset: Milvus without authentication

The keys and MILVUS_PASSWORD come from a root-only env file (``docker run --env-file``, operations/app.py), never
from a command line; the app never logs or returns them. With vLLM's key on, the deploy sets
APP_API_KEY to the same key, so :8080 is no unauthenticated way to the model.

On start it connects to Milvus (retrying while Milvus comes up), creates the collection if it is
missing, upserts every chunk of the documents (stable ids: restarting never duplicates) and
deletes the chunks of documents that changed or went away.
Until that is done ``GET /health`` answers 503; then 200.

``GET /health`` stays open (liveness checks, the Docker HEALTHCHECK, the deploy's gate); it says
whether authentication is on, never the key. A request without the right key gets 401 with
``WWW-Authenticate: Bearer`` before anything else is looked at.

Every replica of the app shares one Milvus (the fleet's ``vector_db`` host), so a document
ingested through any replica is found by all of them:
``POST /documents {"source": "runbook.md", "text": "..."}`` chunks, embeds and upserts it
(``origin`` "ingested"; the same source again replaces its chunks) and answers
``{"source", "chunks"}``. A start re-indexes only the image's own documents (``origin`` "image"):
it never deletes what was ingested, whichever replica restarts.

On SIGTERM (``docker stop``) it stops accepting, finishes the requests in flight, then exits.

``POST /query {"question": "...", "top_k": 4}`` embeds the question, searches Milvus with
consistency_level="Strong" (a search right after an insert sees it), asks
``/chat/completions`` with the retrieved chunks as context and returns
``{"answer", "sources": [{"source", "score", "text"}], "model"}``. vLLM failing gives 502,
Milvus failing 503, a bad request 400 — always JSON.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import rag

log = logging.getLogger("rag-app")

VLLM_API_URL = os.environ.get("VLLM_API_URL", "http://127.0.0.1:8000/v1").rstrip("/")
VLLM_MODEL = os.environ.get("VLLM_MODEL", "")
MILVUS_URI = os.environ.get("MILVUS_URI", "http://127.0.0.1:19530")
APP_PORT = int(os.environ.get("APP_PORT", "8080"))
COLLECTION = os.environ.get("MILVUS_COLLECTION", "gpufleet_docs")
TOP_K = int(os.environ.get("RAG_TOP_K", "4"))
EMBED_DIM = int(os.environ.get("EMBED_DIM", str(rag.DEFAULT_DIM)))
DOCS_DIR = Path(os.environ.get("DOCS_DIR", str(Path(__file__).with_name("docs"))))
MAX_TOKENS = int(os.environ.get("VLLM_MAX_TOKENS", "256"))
VLLM_TIMEOUT_S = float(os.environ.get("VLLM_TIMEOUT_S", "120"))
MILVUS_WAIT_S = float(os.environ.get("MILVUS_WAIT_S", "600"))
MILVUS_RETRY_S = float(os.environ.get("MILVUS_RETRY_S", "90"))
VLLM_API_KEY = os.environ.get("VLLM_API_KEY", "").strip()
APP_API_KEY = os.environ.get("APP_API_KEY", "").strip()
# Milvus with authentication: the app's own user (the deploy's env file holds the password).
MILVUS_USER = os.environ.get("MILVUS_USER", "").strip()
MILVUS_PASSWORD = os.environ.get("MILVUS_PASSWORD", "").strip()


class State:
    status = "starting"
    error: str | None = None
    documents = 0
    chunks = 0
    client = None


STATE = State()


def load_documents(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.glob("*")) if p.suffix in (".md", ".txt")}


def index_documents() -> None:
    """Connect to Milvus (retrying), create the collection if missing, upsert every chunk."""
    from pymilvus import MilvusClient

    deadline = time.monotonic() + MILVUS_WAIT_S
    while True:
        try:
            client = MilvusClient(uri=MILVUS_URI, timeout=10, user=MILVUS_USER, password=MILVUS_PASSWORD)
            if not client.has_collection(COLLECTION):
                client.create_collection(COLLECTION, dimension=EMBED_DIM, metric_type="COSINE",
                                         consistency_level="Strong")
                log.info("created collection %s (dim %d)", COLLECTION, EMBED_DIM)
            documents = load_documents(DOCS_DIR)
            rows = rag.documents_to_rows(documents, EMBED_DIM)
            if rows:
                client.upsert(COLLECTION, rows)
            # Chunks of the image's documents that changed or went away since the last start (not
            # what clients ingested: other replicas share this collection).
            keep = ", ".join(str(row["id"]) for row in rows)
            client.delete(COLLECTION, filter=f'origin == "image" and id not in [{keep}]' if rows
                          else 'origin == "image"')
            STATE.client, STATE.documents, STATE.chunks = client, len(documents), len(rows)
            STATE.status, STATE.error = "ok", None
            log.info("indexed %d chunks of %d documents into %s at %s", len(rows), len(documents), COLLECTION,
                     MILVUS_URI)
            return
        except Exception as exc:  # Milvus not up yet, or refusing: retry until the deadline
            STATE.error = f"milvus at {MILVUS_URI}: {exc}"
            if time.monotonic() > deadline:
                STATE.status = "error"
                log.error("giving up: %s", STATE.error)
                return
            log.warning("waiting for Milvus: %s", exc)
            time.sleep(3)


def with_milvus(call, *args, **kwargs):
    """``call`` on Milvus, retried for up to MILVUS_RETRY_S while Milvus does not answer.

    Milvus restarting (an upgrade through ``gpufleet rollout``, a Docker restart on its host) then
    makes answers slower, not failed; a Milvus that stays away fails the request after that time.
    """
    deadline = time.monotonic() + MILVUS_RETRY_S
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # pymilvus raises its own types for every kind of unavailability
            if time.monotonic() >= deadline:
                raise
            log.warning("milvus call failed, retrying: %s", str(exc).splitlines()[0][:200])
            time.sleep(1)


def retrieve(question: str, top_k: int) -> list[dict]:
    result = with_milvus(STATE.client.search, COLLECTION, [rag.embed(question, EMBED_DIM)], limit=top_k,
                         output_fields=["text", "source"], consistency_level="Strong")
    return [{"source": hit["entity"].get("source"), "text": hit["entity"].get("text"),
             "score": round(float(hit["distance"]), 4)} for hit in result[0]]


def ask_vllm(messages: list[dict]) -> tuple[str, str]:
    body = {"messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}
    if VLLM_MODEL:
        body["model"] = VLLM_MODEL
    headers = {"Content-Type": "application/json"}
    if VLLM_API_KEY:
        headers["Authorization"] = f"Bearer {VLLM_API_KEY}"
    request = urllib.request.Request(f"{VLLM_API_URL}/chat/completions", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=VLLM_TIMEOUT_S) as response:
        reply = json.load(response)
    return reply["choices"][0]["message"]["content"], reply.get("model", VLLM_MODEL)


IMAGE_SOURCES = frozenset(load_documents(DOCS_DIR))  # what a start indexes (origin "image")
SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")  # safe inside a Milvus filter string


def ingest(source: str, text: str) -> int:
    """Replace the chunks of ``source`` with those of ``text``; the number of chunks stored."""
    rows = rag.documents_to_rows({source: text}, EMBED_DIM, origin="ingested")
    with_milvus(STATE.client.delete, COLLECTION, filter=f'source == "{source}"')
    if rows:
        with_milvus(STATE.client.upsert, COLLECTION, rows)
    return len(rows)


class InFlight:
    """Requests being answered, so a stop can wait for them."""

    def __init__(self):
        self.count, self.idle = 0, threading.Condition()

    def __enter__(self):
        with self.idle:
            self.count += 1

    def __exit__(self, *exc):
        with self.idle:
            self.count -= 1
            self.idle.notify_all()

    def wait(self, timeout: float) -> bool:
        with self.idle:
            return self.idle.wait_for(lambda: self.count == 0, timeout)


IN_FLIGHT = InFlight()


class Handler(BaseHTTPRequestHandler):
    server_version = "gpufleet-rag/1"

    def _send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):  # one line per request (the request line: no headers, no key)
        log.info("%s %s", self.address_string(), fmt % args)

    def _authorized(self) -> bool:
        """True when no key is required or the request carries it; otherwise answer 401 and say False."""
        if rag.bearer_ok(self.headers.get("Authorization"), APP_API_KEY):
            return True
        data = json.dumps({"error": "missing or wrong API key (Authorization: Bearer <key>)"}).encode()
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Bearer realm="gpufleet-rag"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return False

    def do_GET(self):
        if self.path.split("?")[0] == "/health":
            payload = {"status": STATE.status, "collection": COLLECTION, "documents": STATE.documents,
                       "chunks": STATE.chunks, "milvus": MILVUS_URI, "vllm": VLLM_API_URL, "model": VLLM_MODEL,
                       "auth": "bearer" if APP_API_KEY else "off"}
            if STATE.error and STATE.status != "ok":
                payload["error"] = STATE.error
            self._send(200 if STATE.status == "ok" else 503, payload)
        elif self._authorized():
            self._send(404, {"error": "not found; try GET /health or POST /query"})

    def do_POST(self):
        with IN_FLIGHT:
            if not self._authorized():
                return None
            path = self.path.split("?")[0]
            if path == "/documents":
                return self._ingest()
            if path != "/query":
                return self._send(404, {"error": "not found; try POST /query or POST /documents"})
            return self._query()

    def _ingest(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            source, text = request.get("source"), request.get("text")
        except (ValueError, AttributeError) as exc:
            return self._send(400, {"error": f"expected a JSON object with source and text: {exc}"})
        if not isinstance(source, str) or not SOURCE_NAME.match(source):
            return self._send(400, {"error": "source must be a name of letters, digits and ._/- (up to 200)"})
        if source in IMAGE_SOURCES:  # their ids are the image's: every start would write over it
            return self._send(409, {"error": f"{source} is a document of the app's image; ingest it under "
                                             "another name"})
        if not isinstance(text, str) or not rag.words(text):
            return self._send(400, {"error": "text must be a non-empty string"})
        if STATE.status != "ok":
            return self._send(503, {"error": f"not ready ({STATE.status}): {STATE.error}"})
        try:
            chunks = ingest(source, text)
        except Exception as exc:
            return self._send(503, {"error": f"milvus upsert failed: {exc}"})
        log.info("ingested %s: %d chunks", source, chunks)
        return self._send(200, {"source": source, "chunks": chunks})

    def _query(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            question = request.get("question")
            top_k = int(request.get("top_k", TOP_K))
        except (ValueError, AttributeError) as exc:
            return self._send(400, {"error": f"expected a JSON object with a question: {exc}"})
        if not isinstance(question, str) or not rag.words(question):
            return self._send(400, {"error": "question must be a non-empty string"})
        if not 1 <= top_k <= 50:
            return self._send(400, {"error": "top_k must be between 1 and 50"})
        if STATE.status != "ok":
            return self._send(503, {"error": f"not ready ({STATE.status}): {STATE.error}"})
        try:
            hits = retrieve(question, top_k)
        except Exception as exc:
            return self._send(503, {"error": f"milvus search failed: {exc}"})
        try:
            answer, model = ask_vllm(rag.build_messages(question, hits))
        except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as exc:
            return self._send(502, {"error": f"vLLM at {VLLM_API_URL} failed: {exc}", "sources": hits})
        self._send(200, {"answer": answer, "sources": hits, "model": model})


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    server = ThreadingHTTPServer(("0.0.0.0", APP_PORT), Handler)
    server.daemon_threads = True
    # PID 1 ignores SIGTERM unless it handles it: stop serving cleanly on `docker stop`.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    threading.Thread(target=index_documents, daemon=True).start()
    log.info("listening on :%d; vLLM %s (model %s, key %s); Milvus %s; clients' key %s", APP_PORT, VLLM_API_URL,
             VLLM_MODEL or "?", "sent" if VLLM_API_KEY else "none", MILVUS_URI,
             "required" if APP_API_KEY else "not required")
    server.serve_forever()
    server.server_close()  # stop accepting at once: a connection queued now would wait for nothing
    # The requests in flight finish within Docker's stop timeout (30 s; a rollout drained this
    # replica first, so only what was already running is left).
    finished = IN_FLIGHT.wait(timeout=25)
    log.info("stopped" if finished else "stopped with requests still in flight after 25 s")


if __name__ == "__main__":
    main()
