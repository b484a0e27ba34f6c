"""What the lab's rollout tests share: steady load through lb-1, every answer checked, and the
`gpufleet rollout` CLI run as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from gpufleet.lab.topology import LB_HTTP_PORT_BASE, lab_group_data

LB_URL = f"http://127.0.0.1:{LB_HTTP_PORT_BASE + 1}"


def lb_app_url() -> str:
    """lb-1's RAG app upstream (lb_app_port), at lb-1's address on the lab's Docker network."""
    ip = subprocess.run(["docker", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                         "lb-1"], capture_output=True, text=True, check=True).stdout.strip()
    return f"http://{ip}:8080"


@dataclass
class SteadyLoad:
    """Clients sending completions through the load balancer without pause, each answer checked;
    ``app_clients`` more ask the RAG app through it (answer and sources checked)."""

    clients: int = 2
    app_clients: int = 0
    pause_s: float = 3.0
    ok: int = 0
    app_ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self):
        for i in range(self.clients):
            t = threading.Thread(target=self._client, args=(i % 2 == 1,), daemon=True)
            t.start()
            self._threads.append(t)
        url = lb_app_url() if self.app_clients else None
        for _ in range(self.app_clients):
            t = threading.Thread(target=self._app_client, args=(url,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=200)

    def _app_client(self, url: str) -> None:
        # One short document of its own, asked for by its own words with top_k 1: the prompt (system
        # prompt, one chunk, the question) then fits a window as small as the rollouts here set (384).
        word = f"qz{uuid.uuid4().hex[:6]}"
        source = f"steady-load/{word}.md"

        def post(path: str, body: dict) -> dict:
            request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=180) as answer:
                    return json.loads(answer.read().decode())
            except urllib.error.HTTPError as exc:  # the body says which part failed (the app's JSON)
                raise RuntimeError(f"HTTP {exc.code}: {exc.read().decode()[:300]}") from None

        try:
            post("/documents", {"source": source, "text": f"{word} pumps run at night"})
        except Exception as exc:  # noqa: BLE001
            self.failures.append(f"app ingest: {type(exc).__name__}: {exc}")
            return
        while not self._stop.is_set():
            try:
                reply = post("/query", {"question": f"When do {word} pumps run?", "top_k": 1})
            except Exception as exc:  # noqa: BLE001 - every failure is counted, whatever it is
                self.failures.append(f"app: {type(exc).__name__}: {exc}")
                self._stop.wait(self.pause_s)
                continue
            self._stop.wait(self.pause_s)
            if [s.get("source") for s in reply.get("sources") or []] == [source] and isinstance(reply.get("answer"), str):
                self.app_ok += 1
            else:
                self.failures.append(f"app: unexpected answer {str(reply)[:200]!r}")

    def _client(self, stream: bool) -> None:
        model = lab_group_data()["vllm_served_model_name"]
        while not self._stop.is_set():
            body = {"model": model, "prompt": "The fleet", "max_tokens": 8, "stream": stream}
            request = urllib.request.Request(f"{LB_URL}/v1/completions", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=180) as answer:
                    text = answer.read().decode()
                good = ("data: [DONE]" in text) if stream else bool(json.loads(text)["choices"])
            except Exception as exc:  # noqa: BLE001 - every failure is counted, whatever it is
                self.failures.append(f"{'stream' if stream else 'plain'}: {type(exc).__name__}: {exc}")
                continue
            # Steady, not saturating: on the lab's 2 CPU cores, a vLLM CPU engine busy-waits for 1 s
            # after each request (vLLM's shm_broadcast), and a replica starting beside it needs CPU.
            self._stop.wait(self.pause_s)
            if good:
                self.ok += 1
            else:
                self.failures.append(f"{'stream' if stream else 'plain'}: incomplete answer {text[-200:]!r}")


def start_rollout(*args: str, state_dir) -> subprocess.Popen:
    from gpufleet import PROJECT_ROOT

    return subprocess.Popen([str(Path(sys.executable).parent / "gpufleet"), "rollout", "inventory/lab.py", "--yes",
                             "--json", *args], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "GPUFLEET_STATE_DIR": str(state_dir)})


def finish_rollout(run: subprocess.Popen, state_dir) -> tuple[int, dict, str]:
    out, err = run.communicate(timeout=1800)
    report = json.loads(out) if out.strip().startswith("{") else {}
    (Path(state_dir) / f"rollout-{time.time():.0f}.log").write_text(err)  # kept for a post-mortem
    return run.returncode, report, err


def rollout(*args: str, state_dir) -> tuple[int, dict, str]:
    return finish_rollout(start_rollout(*args, state_dir=state_dir), state_dir)
