"""Secrets never shown: operations/secrets.py, its use by vllm.replica and app.container, and the RAG app's key.

Each test plants known, unique secret values and greps everything that could show them: every
command an operation yields (as pyinfra prints it, as the shell gets it, as drift describes it),
its noop text, pyinfra's log lines with ``--diff`` on, and the real CLI's output with
``--diff -vvv --debug`` on ``@local``. The write command itself is run by a real ``sh`` to check
that it is atomic, root-only from the first byte, and leaves nothing behind when it fails.
The command-level cases are in tests/operations/secrets.env_file (make_secrets_cases.py).
"""

from __future__ import annotations

import base64
import grp
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import secrets as random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pyinfra.api import OperationValueError, StringCommand
from pyinfra.api.command import FileUploadCommand, FunctionCommand
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState, create_host

from gpufleet.drift import describe_command
from operations import app, secrets, vllm

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
USER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def _secret(kind: str) -> str:
    return f"{kind}-gpufleetUNIT{random.token_hex(12)}"


def _forms(secret: str) -> list[str]:
    """The secret, and how an encoding of it could show: base64 at each alignment, hex."""
    forms = [secret, secret.encode().hex()]
    for pad in range(3):
        encoded = base64.b64encode(b"x" * pad + secret.encode()).decode()
        forms.append(encoded[4 if pad else 0:-4])  # the part that does not depend on neighbours
    return forms


def _assert_absent(text: str, values: list[str], where: str) -> None:
    for value in values:
        for form in _forms(value):
            if form in text:  # not `assert`: its message would print the text, secret included
                pytest.fail(f"a secret shows in {where}", pytrace=False)


# ----------------------------------------------------------------------------- control side -------
def test_read_secret(tmp_path):
    f = tmp_path / "t"
    f.write_text("  abc \n")
    assert secrets.read_secret(str(f)) == "abc"
    f.write_text("a\nb\n")
    with pytest.raises(OperationValueError, match="exactly one non-empty line") as err:
        secrets.read_secret(str(f))
    assert "a\nb" not in str(err.value)
    with pytest.raises(OperationValueError, match="cannot read"):
        secrets.read_secret(str(tmp_path / "missing"))
    f.write_bytes(b"\xff\xfe")
    with pytest.raises(OperationValueError, match="not UTF-8"):
        secrets.read_secret(str(f))


def test_env_text_reads_each_file_once_and_checks_names(tmp_path):
    f = tmp_path / "key"
    f.write_text("k1\n")
    assert secrets.env_text({"A": str(f), "B": str(f)}) == "A=k1\nB=k1\n"
    with pytest.raises(OperationValueError, match="not an environment variable name"):
        secrets.env_text({"A=B": str(f)})


# ----------------------------------------------------------------------------- the generators -----
def _files(tmp_path, **values):
    paths = {}
    for name, value in values.items():
        path = tmp_path / name
        path.write_text(value + "\n")
        path.chmod(0o600)
        paths[name] = str(path)
    return paths


def _ok(mode=600):
    return {"mode": mode, "user": "root", "group": "root"}


def _absent():
    return {"exists": False, "running": False, "status": None, "restarting": False, "spec": None,
            "image_id": None, "image": None, "restart_count": 0}


def _run(op, kwargs, facts, caplog):
    """Run ``op``'s generator with --diff on; (commands, noop text, log text).

    A secret is never uploaded: pyinfra's upload stages in /tmp under sudo and shows a diff.
    """
    state = FakeState()
    state.config.DIFF = True
    host = create_host(state, facts=facts)
    caplog.clear()
    with caplog.at_level(logging.DEBUG), ctx_state.use(state), ctx_host.use(host):
        commands = [c if not isinstance(c, str) else StringCommand(c.strip()) for c in op._inner(**kwargs)]
    assert not [c for c in commands if isinstance(c, FileUploadCommand)], commands
    return commands, host.noop_description or "", caplog.text


class _DriftHost:
    name = "n1"

    def get_fact(self, *args, **kwargs):
        raise AssertionError("drift read a host file to describe a secret")


def _every_text(command) -> str:
    """Everything pyinfra, the shell, the harness and drift can show of one command."""
    texts = [str(command), repr(command), describe_command(_DriftHost(), command)[0]]
    if isinstance(command, StringCommand):
        texts += [command.get_raw_value(), command.get_masked_value()]
    if isinstance(command, FunctionCommand):
        texts += [repr(command.args), repr(command.kwargs)]
    texts += [repr(v) for k, v in command.connector_arguments.items() if k != "_stdin"]
    return "\n".join(texts)


def _stdin_text(command) -> str | None:
    stdin = command.connector_arguments.get("_stdin")
    return base64.b64decode(stdin).decode() if stdin else None


SCENARIOS = ["missing", "rotated", "converged", "loose-mode"]


def _file_facts(path, scenario, text):
    if scenario == "missing":
        return {"files.File": {f"path={path}": None}}
    sha = hashlib.sha256(("OLD=x\n" if scenario == "rotated" else text).encode()).hexdigest()
    return {"files.File": {f"path={path}": _ok(644 if scenario == "loose-mode" else 600)},
            "files.Sha256File": {f"path={path}": sha}}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_env_file_never_shows_the_secret(tmp_path, caplog, scenario):
    key = _secret("sk")
    paths = _files(tmp_path, key=key)
    dest = "/etc/gpufleet/vllm-api-key.env"
    text = f"VLLM_API_KEY={key}\n"
    commands, noop, logs = _run(secrets.env_file, {"dest": dest, "variables": {"VLLM_API_KEY": paths["key"]}},
                                _file_facts(dest, scenario, text), caplog)
    for command in commands:
        _assert_absent(_every_text(command), [key], f"{scenario}: {command!r}")
    _assert_absent(noop + logs, [key], f"{scenario}: noop/log")
    written = [c for c in commands if isinstance(c, secrets.SecretWrite)]
    if scenario in ("missing", "rotated"):
        [write] = written
        assert _stdin_text(write) == text and write.connector_arguments["_get_pty"] is False
        assert "(secret, not shown)" in logs and dest in logs
        assert describe_command(_DriftHost(), write)[0].startswith(f"{dest}: ")
    else:
        assert written == []
        assert [str(c) for c in commands] == ([f"chmod 600 {dest}"] if scenario == "loose-mode" else [])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_vllm_replica_never_shows_token_or_key(tmp_path, caplog, scenario):
    token, key = _secret("hf"), _secret("sk")
    paths = _files(tmp_path, token=token, key=key)
    tok_text = f"HF_TOKEN={token}\nHUGGING_FACE_HUB_TOKEN={token}\n"
    key_text = f"VLLM_API_KEY={key}\n"
    facts = {"files.File": {}, "files.Sha256File": {},
             "files.Directory": {"path=/var/lib/gpufleet/hf-cache": {"mode": 755, "user": "root", "group": "root"},
                                 "path=/var/lib/gpufleet/vllm-cache/vllm-n1-vllm-0":
                                     {"mode": 700, "user": "root", "group": "root"}},
             "docker.ContainerState": {"container=vllm-n1-vllm-0": _absent()}}
    for path, text in ((vllm.HF_TOKEN_ENV_FILE, tok_text), (vllm.API_KEY_ENV_FILE, key_text)):
        for fact, value in _file_facts(path, scenario, text).items():
            facts[fact].update(value)
    kwargs = dict(container="vllm-n1-vllm-0", image="gpufleet/vllm-rtx5090:abc", model="Qwen/Qwen3-32B-AWQ",
                  served_model_name="qwen3-32b-awq", port=8000, gpus=[0, 1], bind_address="10.0.0.11",
                  hf_token_file=paths["token"], api_key_file=paths["key"])
    commands, noop, logs = _run(vllm.replica, kwargs, facts, caplog)
    for command in commands:
        _assert_absent(_every_text(command), [token, key], f"{scenario}: {command!r}")
    _assert_absent(noop + logs, [token, key], f"{scenario}: noop/log")
    run = [str(c) for c in commands if str(c).startswith("docker run")]
    assert run and f"--env-file {vllm.HF_TOKEN_ENV_FILE} --env-file {vllm.API_KEY_ENV_FILE}" in run[0]
    stdin = sorted(t for t in map(_stdin_text, commands) if t)
    assert stdin == (sorted([tok_text, key_text]) if scenario in ("missing", "rotated") else [])


def test_app_container_gets_the_key_only_through_its_env_file(tmp_path, caplog):
    key = _secret("sk")
    paths = _files(tmp_path, key=key)
    env_file = app.env_file_path()
    kwargs = dict(image="r/app:1", address="10.0.0.5", port=8080, vllm_address="10.0.0.5", vllm_port=8000,
                  model="m", milvus_address="10.0.0.5", api_key_file=paths["key"])
    facts = {"files.File": {f"path={env_file}": None}, "docker.ContainerState": {"container=rag-app": _absent()}}
    commands, noop, logs = _run(app.container, kwargs, facts, caplog)
    for command in commands:
        _assert_absent(_every_text(command), [key], repr(command))
    _assert_absent(noop + logs, [key], "noop/log")
    write, run = commands
    assert _stdin_text(write) == f"VLLM_API_KEY={key}\nAPP_API_KEY={key}\n"
    assert f"--env-file {env_file}" in str(run) and "API_KEY" not in str(run)


def test_operation_cases_hold_no_secret_outside_stdin():
    """Every JSON case of the operations that handle secrets: the fixtures' token and key appear
    in no command, only base64-encoded in a write's ``_stdin``."""
    values = [(ROOT / "tests/fixtures/vllm" / n).read_text().strip() for n in ("hf-token", "api-key")]
    folders = ["secrets.env_file", "vllm.replica", "app.container"]
    for folder in folders:
        for path in sorted((ROOT / "tests/operations" / folder).glob("*.json")):
            for command in json.loads(path.read_text()).get("commands", []):
                shown = {k: v for k, v in command.items() if k != "_stdin"} if isinstance(command, dict) else command
                _assert_absent(json.dumps(shown), values, f"{folder}/{path.name}")
                assert "--api-key" not in json.dumps(shown)


# ----------------------------------------------------------------------------- the write command --
def _sh(command: str, stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], input=stdin, capture_output=True, timeout=30)


def test_write_command_is_atomic_root_only_and_leaves_nothing_behind(tmp_path):
    dest = tmp_path / "etc gpufleet" / "x.env"  # a new directory, with a space
    command = secrets.write_command(str(dest), USER, GROUP, "600")
    done = _sh(command, base64.b64encode(b"K=first\n") + b"\n")
    assert done.returncode == 0, done.stderr
    assert dest.read_text() == "K=first\n" and (dest.stat().st_mode & 0o777) == 0o600
    assert os.listdir(dest.parent) == ["x.env"]
    inode = dest.stat().st_ino
    # A failed decode, and a failed chown: the old file stays whole, the temporary one is gone.
    for bad_command, stdin in ((command, b"!!! not base64\n"),
                               (secrets.write_command(str(dest), "no-such-user-gpufleet", GROUP), b"Sz1uZXcK\n")):
        failed = _sh(bad_command, stdin)
        assert failed.returncode != 0
        assert dest.read_text() == "K=first\n" and os.listdir(dest.parent) == ["x.env"]
    # A rewrite replaces the file (a new inode: readers saw the old one or the new one, whole).
    assert _sh(command, base64.b64encode(b"K=second\n")).returncode == 0
    assert dest.read_text() == "K=second\n" and dest.stat().st_ino != inode
    assert os.listdir(dest.parent) == ["x.env"]


def test_write_command_interrupted_removes_its_temporary_file(tmp_path):
    dest = tmp_path / "x.env"
    proc = subprocess.Popen(["sh", "-c", secrets.write_command(str(dest), USER, GROUP)], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    for _ in range(100):  # until mktemp has made it
        if os.listdir(tmp_path):
            break
        time.sleep(0.05)
    [temp] = os.listdir(tmp_path)
    assert temp.startswith(".x.env.gpufleet-") and (tmp_path / temp).stat().st_mode & 0o077 == 0
    proc.terminate()  # what the SSH session's hang-up or a Ctrl-C does
    proc.stdin.close()
    assert proc.wait(timeout=10) != 0
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- the real CLI -------
DEPLOY = """
from pyinfra import host
from operations import secrets
secrets.env_file(name="secret env file", dest=host.data.dest,
                 variables={"VLLM_API_KEY": host.data.key_file, "APP_API_KEY": host.data.key_file},
                 user=host.data.owner, group=host.data.owner_group)
"""


def _pyinfra(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYINFRA_PROGRESS": "off", "PYTHONPATH": str(ROOT)}
    return subprocess.run([str(BIN / "pyinfra"), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=env, stdin=subprocess.DEVNULL)


def test_pyinfra_cli_with_diff_and_debug_never_prints_old_or_new_secret(tmp_path):
    """`pyinfra @local deploy --diff -vvv --debug`: create, rotate (--dry, then for real), converge."""
    control, remote = tmp_path / "control", tmp_path / "host" / "etc" / "gpufleet"
    control.mkdir()
    (control / "deploy.py").write_text(DEPLOY)
    key_file = control / "api-key"
    dest = remote / "app.env"
    data = ["--data", f"dest={dest}", "--data", f"key_file={key_file}", "--data", f"owner={USER}",
            "--data", f"owner_group={GROUP}"]
    first, second = _secret("sk"), _secret("sk")
    outputs = []

    key_file.write_text(first + "\n")
    created = _pyinfra(control, "-y", "--diff", "-vvv", "--debug", "@local", "deploy.py", *data)
    outputs.append(created.stdout + created.stderr)
    assert created.returncode == 0, created.stderr[-2000:]
    assert f"{dest}: missing (secret, not shown)" in outputs[-1]
    assert dest.read_text() == f"VLLM_API_KEY={first}\nAPP_API_KEY={first}\n"
    assert dest.stat().st_mode & 0o777 == 0o600 and os.listdir(remote) == ["app.env"]

    key_file.write_text(second + "\n")
    planned = _pyinfra(control, "--dry", "--diff", "-vvv", "--debug", "@local", "deploy.py", *data)
    outputs.append(planned.stdout + planned.stderr)
    assert f"{dest}: content differs (secret, not shown)" in outputs[-1]
    as_json = _pyinfra(control, "--json", "--diff", "@local", "deploy.py", *data)
    outputs.append(as_json.stdout + as_json.stderr)
    rotated = _pyinfra(control, "-y", "--diff", "-vvv", "--debug", "@local", "deploy.py", *data)
    outputs.append(rotated.stdout + rotated.stderr)
    assert rotated.returncode == 0 and dest.read_text().count(second) == 2
    again = _pyinfra(control, "-y", "--diff", "-vvv", "@local", "deploy.py", *data)
    outputs.append(again.stdout + again.stderr)
    assert "secret up to date (sha256 matches" in outputs[-1]

    for output in outputs:
        _assert_absent(output, [first, second], "pyinfra's output")
    assert os.listdir(remote) == ["app.env"]
    # Every file the runs left on the control side (the deploy dir, pyinfra-debug.log if any).
    for path in control.rglob("*"):
        if path.is_file() and path != key_file:
            _assert_absent(path.read_text(errors="replace"), [first, second], str(path))


# ----------------------------------------------------------------------------- drift --------------
def test_drift_says_a_secret_differs_without_reading_or_showing_it():
    write = secrets.SecretWrite("/etc/gpufleet/hf-token.env", "content differs", secrets.write_command("/x"),
                                b"HF_TOKEN=hf_value\n")
    line, details = describe_command(_DriftHost(), write)
    assert line == "/etc/gpufleet/hf-token.env: content differs (secret, not shown)" and details == []


# ----------------------------------------------------------------------------- the RAG app --------
RAG_APP = ROOT / "lab/images/rag-app"


def _load_app(monkeypatch, vllm_url: str, key: str):
    monkeypatch.setenv("VLLM_API_URL", vllm_url)
    monkeypatch.setenv("VLLM_MODEL", "m")
    monkeypatch.setenv("VLLM_API_KEY", key)
    monkeypatch.setenv("APP_API_KEY", key)
    monkeypatch.syspath_prepend(str(RAG_APP))
    spec = importlib.util.spec_from_file_location("rag_app_under_test", RAG_APP / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _FakeVllm(BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _FakeVllm.seen.append(self.headers.get("Authorization"))
        body = json.dumps({"choices": [{"message": {"content": "an answer"}}], "model": "m"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(handler) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _call(url: str, method: str = "GET", body: dict | None = None, key: str | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers, method=method),
                                    timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_rag_app_sends_the_key_to_vllm_and_requires_it_from_clients(monkeypatch, caplog):
    key = _secret("sk")
    fake_vllm, vllm_url = _serve(_FakeVllm)
    module = _load_app(monkeypatch, f"{vllm_url}/v1", key)

    class Client:  # Milvus: one hit
        def search(self, *args, **kwargs):
            return [[{"entity": {"source": "a.md", "text": "NCCL is pinned in the image"}, "distance": 0.9}]]

    module.STATE.status, module.STATE.client = "ok", Client()
    server, url = _serve(module.Handler)
    _FakeVllm.seen = []
    try:
        with caplog.at_level(logging.DEBUG):
            question = {"question": "How is NCCL pinned?"}
            assert _call(f"{url}/query", "POST", question)[0] == 401
            assert _call(f"{url}/query", "POST", question, key="wrong")[0] == 401
            assert _call(f"{url}/anything", key=None)[0] == 401
            code, health = _call(f"{url}/health")
            assert code == 200 and json.loads(health)["auth"] == "bearer"
            assert _FakeVllm.seen == []  # nothing reached the model without the key
            code, answer = _call(f"{url}/query", "POST", question, key=key)
            assert code == 200 and json.loads(answer)["answer"] == "an answer"
            assert _FakeVllm.seen == [f"Bearer {key}"]
        _assert_absent(health + answer + caplog.text, [key], "the app's answers and logs")
    finally:
        server.shutdown()
        fake_vllm.shutdown()


def test_rag_app_without_a_key_needs_none(monkeypatch):
    fake_vllm, vllm_url = _serve(_FakeVllm)
    module = _load_app(monkeypatch, f"{vllm_url}/v1", "")
    server, url = _serve(module.Handler)
    try:
        code, health = _call(f"{url}/health")
        assert json.loads(health)["auth"] == "off"
        assert _call(f"{url}/nothing")[0] == 404
    finally:
        server.shutdown()
        fake_vllm.shutdown()


# ----------------------------------------------------------------------------- secret names -------
SECRET_NAMES = ["PGPASSWORD", "DBPASSWORD", "MYSQL_PWD", "APP_SECRETS", "CLIENTSECRET", "REDIS_PASSWORD1",
                "HF_TOKEN", "GITHUBTOKEN", "OPENAI_API_KEY", "MYAPIKEY", "SSH_PRIVATE_KEY", "JWT_SIGNING_KEY",
                "GOOGLE_APPLICATION_CREDENTIALS", "AWS_ACCESS_KEY_ID", "pgpassword"]
PLAIN_NAMES = ["VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU",
               "TORCHDYNAMO_DISABLE", "HF_HUB_OFFLINE", "HF_HOME", "VLLM_MAX_TOKENS", "MAX_NUM_BATCHED_TOKENS",
               "TOKENIZERS_PARALLELISM", "KEYCLOAK_URL", "NCCL_DEBUG", "PWD", "OLDPWD", "PATH"]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_a_secret_named_variable_is_refused_as_data_and_masked_by_doctor(name):
    # Both readers of the rule: the settings refuse it as data; doctor masks it in `docker inspect`.
    from gpufleet.settings import validate_host_data
    from operations.facts.doctor import _env

    for key in ("vllm_env", "app_env"):
        _, issues = validate_host_data("gpu-node-01", {key: {name: "Zq9-not-a-pattern"}})
        [issue] = [i for i in issues if i.key == key]
        assert issue.host == "gpu-node-01" and f"no secrets ({name})" in issue.expected
        assert "Zq9-not-a-pattern" not in repr(issue.value)
    assert _env([f"{name}=Zq9-not-a-pattern"]) == {name: "***"}


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_a_plain_variable_is_neither_refused_nor_masked(name):
    from gpufleet.settings import validate_host_data
    from operations.facts.doctor import _env

    _, issues = validate_host_data("gpu-node-01", {"app_env": {name: "1"}})
    assert issues == []
    assert _env([f"{name}=1"]) == {name: "1"}
