"""A small OpenAI streaming-completions load client: one request, and one concurrency level of them.

vLLM's own benchmark client (``vllm bench serve``) lives in the vLLM image and needs the model's
tokenizer and a GPU image to run; neither is available on a control host (or in this project's
CI), so gpufleet measures with this client instead. It measures what vLLM's client measures, the
same way, from a streaming ``POST /v1/completions``:

- TTFT: from sending the request to the first chunk that carries a choice;
- inter-token latency (ITL): the gaps between successive such chunks (vLLM streams one chunk per
  decode step, so a chunk is a token, or a few with speculative decoding). A chunk's text may be
  empty: the detokenizer holds back the bytes of an unfinished multi-byte character (CJK, emoji,
  or the lab's random-weight model); it is still a token arriving, as vLLM's own client counts it;
- output tokens: ``usage.completion_tokens`` from the final chunk (``stream_options.include_usage``),
  else the number of chunks;
- end-to-end latency per request.

Prompts are token ids (the completions API takes ``prompt`` as a list of ints), so the input
length is exact without a tokenizer; ``ignore_eos`` (a vLLM extension) makes every request
generate exactly ``max_tokens``. Plain threads and ``http.client`` (stdlib): they work the same
under the gevent monkey-patching the gpufleet CLI applies and in a plain interpreter.

Example::

    level = run_level("http://127.0.0.1:8000", "qwen3-32b-awq", concurrency=8, requests=32,
                      input_len=512, output_len=128)
    level.output_tokens / level.duration  # output tok/s
"""

from __future__ import annotations

import http.client
import json
import random
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

TOKEN_ID_RANGE = (100, 1000)  # ids every tokenizer gpufleet serves has (the lab's tiny model has 1024)


@dataclass
class RequestResult:
    ok: bool
    latency: float
    ttft: float | None = None
    itls: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str | None = None


@dataclass
class LevelResult:
    concurrency: int
    duration: float
    results: list[RequestResult]

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.results if r.ok)


def prompt_ids(length: int, seed: int) -> list[int]:
    """``length`` token ids, the same for a seed (each request gets its own, so no prefix cache hit)."""
    rng = random.Random(seed)
    return [rng.randrange(*TOKEN_ID_RANGE) for _ in range(length)]


def stream_completion(url: str, model: str, prompt: list[int], max_tokens: int, api_key: str | None = None,
                      timeout: float = 600) -> RequestResult:
    """One streaming completion against ``url`` (``http://host:port[/prefix]``); never raises."""
    parts = urllib.parse.urlsplit(url)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True})
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    started = time.perf_counter()
    result = RequestResult(ok=False, latency=0.0)
    conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", parts.path.rstrip("/") + "/v1/completions", body, headers)
        response = conn.getresponse()
        if response.status != 200:
            result.error = f"HTTP {response.status}: {response.read(300).decode(errors='replace').strip()}"
            return result
        last = None
        chunks = 0
        for raw in response:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                break
            now = time.perf_counter()
            chunk = json.loads(data)
            if chunk.get("usage"):
                result.output_tokens = int(chunk["usage"].get("completion_tokens") or 0)
                result.prompt_tokens = int(chunk["usage"].get("prompt_tokens") or 0)
            if chunk.get("choices"):
                chunks += 1
                if last is None:
                    result.ttft = now - started
                else:
                    result.itls.append(now - last)
                last = now
        result.output_tokens = result.output_tokens or chunks
        result.ok = chunks > 0
        if not result.ok:
            result.error = "the stream carried no token"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.latency = time.perf_counter() - started
        conn.close()
    return result


def run_level(url: str, model: str, concurrency: int, requests: int, input_len: int, output_len: int,
              api_key: str | None = None, seed: int = 0, timeout: float = 600) -> LevelResult:
    """``requests`` completions, at most ``concurrency`` in flight at once."""
    prompts = [prompt_ids(input_len, seed * 100_000 + i) for i in range(requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda p: stream_completion(url, model, p, output_len, api_key, timeout), prompts))
    return LevelResult(concurrency, time.perf_counter() - started, results)
