"""Secrets on the lab: a deploy with known token and key values never shows them, anywhere.

One module-scoped run plants unique values (``--data`` pointing at temporary 0600 files) and
collects everything the operator and the nightly job would see:

1. ``pyinfra -y --diff -vvv`` with token A and key A (the files are created);
2. rotation to B: ``pyinfra --dry --diff -v`` (no ``-y``: the plan, with pyinfra's diffs), then
   ``gpufleet drift --json --junit --prometheus --report`` (the secret files differ), then
   ``pyinfra -y --diff -v`` (the files are replaced atomically; the old values are never read back);
3. ``gpufleet drift`` again with B, all four outputs.

The lab's Milvus passwords (root's and the app user's, lab/.state) are searched for as well, in
those streams and in the session's first deploy's output (which set them on Milvus).

Then: no A, B or Milvus value in any of those streams or report files, nor in any file the runs wrote on
the control host; on the node, the env files are root 0600, no temporary file is left (in
/etc/gpufleet or /tmp), no process's arguments and no container's arguments hold a value; vLLM
and the RAG app refuse requests without the key, and the app answers with it (it reaches vLLM
with the key). At the end the lab is deployed again without secrets and the files are gone.

Values are never sent to the node on a command line by the test either: the checks on the node
read the values from the node's own env files (``grep -F -f``), and the HTTP checks with the key
build the ``Authorization`` header from those files (``curl -H @-``), as the deploy's probe does.
"""

from __future__ import annotations

import base64
import json
import os
import secrets as random
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from gpufleet import PROJECT_ROOT
from gpufleet.lab.topology import lab_group_data
from tests.lab.conftest import BIN, LAB_INVENTORY, deploy, gpufleet, pyinfra

NODE = "gpu-node-1"
ENV_DIR = "/etc/gpufleet"
ENV_FILES = (f"{ENV_DIR}/hf-token.env", f"{ENV_DIR}/vllm-api-key.env", f"{ENV_DIR}/rag-app.env")
PATTERNS = "/root/.gpufleet-test-secret-patterns"  # the values as the node's files hold them, 0600
MARKER = "/root/.gpufleet-test-secrets-start"
QUESTION = json.dumps({"question": "How is NCCL pinned?"})


def _value(kind: str) -> str:
    return f"{kind}-gpufleetLAB{random.token_hex(16)}"


def _forms(value: str) -> list[str]:
    """The value, and its base64 (every alignment) and hex forms."""
    forms = [value, value.encode().hex()]
    for pad in range(3):
        encoded = base64.b64encode(b"x" * pad + value.encode()).decode()
        forms.append(encoded[4 if pad else 0:-4])
    return forms


def _leaks(text: str, values: list[str]) -> list[str]:
    """Which values show in ``text``, by index (never the value itself: this goes into a report)."""
    return [f"value #{i} ({'raw' if j == 0 else 'encoded'})"
            for i, value in enumerate(values) for j, form in enumerate(_forms(value)) if form in text]


def _check(text: str, values: list[str], where: str) -> None:
    found = _leaks(text, values)
    if found:  # pytest.fail, not assert: assertion rewriting would print the text with the value
        pytest.fail(f"{', '.join(found)} shows in {where}", pytrace=False)


def _redacted(text: str, values: list[str], tail: int = 3000) -> str:
    """``text``'s end for a failure message, every form of every value replaced."""
    for value in values:
        for form in _forms(value):
            text = text.replace(form, "<redacted>")
    return text[-tail:]


def _raw_pyinfra(*args: str) -> subprocess.CompletedProcess:
    """The pyinfra CLI without -y (conftest's helper always adds it): a plan with diffs."""
    env = {**os.environ, "PYINFRA_PROGRESS": "off"}
    return subprocess.run([str(BIN / "pyinfra"), *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=1200, env=env, stdin=subprocess.DEVNULL)


def _drift(workdir: Path, tag: str, data: list[str]) -> tuple[int, dict, dict[str, str]]:
    files = {kind: workdir / f"drift-{tag}.{kind}" for kind in ("json", "xml", "prom")}
    run = gpufleet("drift", LAB_INVENTORY, "--limit", NODE, "--json", *data, "--report", str(files["json"]),
                   "--junit", str(files["xml"]), "--prometheus", str(files["prom"]), check=False, timeout=900)
    texts = {f"drift {tag} stdout": run.stdout, f"drift {tag} stderr": run.stderr}
    texts.update({f"drift {tag} {kind}": path.read_text() for kind, path in files.items() if path.exists()})
    return run.returncode, json.loads(run.stdout), texts


def _files_written_since(started: float, roots: list[Path], skip: set[Path]) -> list[Path]:
    found = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
            dirnames[:] = [d for d in dirnames if d not in (".git", ".venv", "node_modules") and
                           Path(dirpath, d) != PROJECT_ROOT / "lab" / ".cache"]
            for name in filenames:
                path = Path(dirpath, name)
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if (path.is_file() and not path.is_symlink() and st.st_mtime >= started
                        and st.st_size < 50_000_000 and path not in skip):
                    found.append(path)
    return found


@pytest.fixture(scope="module")
def secret_run(deployed, hosts, tmp_path_factory):
    node = hosts[NODE]
    control = tmp_path_factory.mktemp("secrets-control")
    values = {"token_a": _value("hf"), "key_a": _value("sk"), "token_b": _value("hf"), "key_b": _value("sk")}
    files = {}
    for name, value in values.items():
        path = control / name
        path.write_text(value + "\n")
        path.chmod(0o600)
        files[name] = path
    # A maintenance window: these deploys recreate live replicas on purpose (operations/serving_gate.py).
    window = ["--data", "allow_serving_disruption=true"]
    data_a = [*window, "--data", f"vllm_hf_token_file={files['token_a']}", "--data", f"vllm_api_key_file={files['key_a']}"]
    data_b = [*window, "--data", f"vllm_hf_token_file={files['token_b']}", "--data", f"vllm_api_key_file={files['key_b']}"]
    started = time.time() - 1
    # The app image may have been rebuilt (the lab rebuilds it from lab/images/rag-app): pull it, so
    # that the recreated app container runs the image that checks keys.
    prep = node.run(f"touch {MARKER} && rm -f {PATTERNS} && "
                    "docker pull -q \"$(docker inspect --format '{{.Config.Image}}' rag-app)\"")
    assert prep.rc == 0, prep.stderr
    outputs: dict[str, str] = {}
    keep = f"umask 077; sed -n 's/^[A-Z_]*=//p' {' '.join(ENV_FILES)} >> {PATTERNS}"
    # The lab's Milvus passwords (root's, the app user's: control-side files in lab/.state) are
    # searched for too: the app's env file holds the app's, and the session's first deploy set root's.
    milvus_files = [Path(lab_group_data()[k]) for k in ("milvus_root_password_file", "milvus_app_password_file")]
    milvus_values = [f.read_text().strip() for f in milvus_files]
    outputs["session's first deploy (Milvus users)"] = deployed["stderr"]
    result = {"node": node, "values": [*values.values(), *milvus_values], "outputs": outputs, "control": control,
              "skip": {*files.values(), *milvus_files}}
    try:
        # Results are kept in plain locals: pytest's assertion messages show the objects they come from.
        first = pyinfra("--diff", "-vvv", "--limit", NODE, LAB_INVENTORY, "deploy.py", *data_a)
        rc, text = first.returncode, first.stdout + first.stderr
        outputs["deploy A --diff -vvv"] = text
        if rc != 0:
            pytest.fail(f"deploy with token and key A failed:\n{_redacted(text, list(values.values()))}")
        assert "(secret, not shown)" in text  # --diff said that the secret files change, not how
        assert node.run(keep).rc == 0

        planned = _raw_pyinfra("--dry", "--diff", "-v", "--limit", NODE, LAB_INVENTORY, "deploy.py", *data_b)
        outputs["plan B --dry --diff -v"] = planned.stdout + planned.stderr
        result["plan"] = outputs["plan B --dry --diff -v"]
        code, report, texts = _drift(control, "before-B", data_b)
        outputs.update(texts)
        result["drift_before"] = (code, report)

        second = pyinfra("--diff", "-v", "--limit", NODE, LAB_INVENTORY, "deploy.py", *data_b)
        rc, text = second.returncode, second.stdout + second.stderr
        outputs["deploy B --diff -v"] = text
        if rc != 0:
            pytest.fail(f"deploy with token and key B failed:\n{_redacted(text, list(values.values()))}")
        assert node.run(keep).rc == 0
        code, report, texts = _drift(control, "after-B", data_b)
        outputs.update(texts)
        result["drift_after"] = (code, report)
        result["started"] = started
        yield result
    finally:
        node.run(f"rm -f {PATTERNS}")
        restored = deploy("--limit", NODE, *window)
        assert restored["rc"] == 0, restored["stderr"][-3000:]
        for path in ENV_FILES[:2]:
            assert not node.file(path).exists, f"{path} left after a deploy without secrets"
        # The app's env file stays, with the Milvus password alone (Milvus authentication is on in the lab).
        left = node.run(f"sed 's/=.*//' {ENV_FILES[2]}").stdout.split()
        assert left == ["MILVUS_PASSWORD"], left


def test_no_value_in_any_output_or_report(secret_run):
    for where, text in secret_run["outputs"].items():
        _check(text, secret_run["values"], where)
    assert len(secret_run["outputs"]) >= 11  # 3 pyinfra runs, 2 drift runs x (stdout, stderr, 3 files)


def test_no_value_in_any_file_the_runs_wrote_on_the_control_host(secret_run):
    roots = [PROJECT_ROOT, Path(tempfile.gettempdir()), secret_run["control"]]
    written = _files_written_since(secret_run["started"], roots, secret_run["skip"])
    assert any(p.name == "drift-after-B.json" for p in written)  # the scan sees what the runs wrote
    for path in written:
        try:
            text = path.read_bytes().decode(errors="replace")
        except OSError:
            continue
        _check(text, secret_run["values"], str(path))


def test_rotation_shows_that_a_secret_differs_never_how(secret_run):
    plan = secret_run["plan"]
    assert f"{ENV_DIR}/hf-token.env: content differs (secret, not shown)" in plan
    assert f"{ENV_DIR}/vllm-api-key.env: content differs (secret, not shown)" in plan
    code, report = secret_run["drift_before"]
    assert code == 2 and NODE in report["drifted_hosts"]
    causes = [" ".join([d["cause"], *d["details"]]) for h in report["hosts"] for d in h["drift"]]
    wanted = [f"{ENV_DIR}/{n}: content differs (secret, not shown)" for n in ("hf-token.env", "vllm-api-key.env",
                                                                              "rag-app.env")]
    missing = [w for w in wanted if not any(w in c for c in causes)]
    assert missing == [], _redacted("\n".join(causes), secret_run["values"])
    # Converged with B: nothing about the secrets drifts any more.
    code, report = secret_run["drift_after"]
    after = [c for c in (" ".join([d["cause"], *d["details"]]) for h in report["hosts"] for d in h["drift"])
             if "(secret, not shown)" in c]
    assert after == [], _redacted("\n".join(after), secret_run["values"])


def test_secret_files_are_root_0600_with_nothing_left_behind(secret_run):
    node = secret_run["node"]
    for path in ENV_FILES:
        f = node.file(path)
        assert f.exists and f.is_file and f.mode == 0o600 and f.user == "root" and f.group == "root", path
    assert node.run(f"find {ENV_DIR} -name '.*.gpufleet-*'").stdout.strip() == ""
    # No file anywhere in /tmp, /var/tmp, /root or /etc holds a value, but the env files themselves.
    found = node.run(f"grep -rlsF -f {PATTERNS} /tmp /var/tmp /root /etc || true").stdout.split()
    assert sorted(set(found) - {PATTERNS}) == sorted(ENV_FILES)
    new_in_tmp = node.run(f"find /tmp /var/tmp -xdev -type f -newer {MARKER}").stdout.split()
    staged = [p for p in new_in_tmp if "gpufleet" in p or p.endswith(".env") or "_tempfile" in p]
    assert staged == [], staged
    # Both values of each kind were on the node at some time, and the node holds B now; and the
    # app's Milvus password, the same throughout.
    assert len(node.run(f"sort -u {PATTERNS}").stdout.split()) == 5


def test_no_value_in_processes_or_container_arguments(secret_run):
    node = secret_run["node"]
    values = secret_run["values"]
    _check(node.run("ps -eo args").stdout, values, f"`ps` on {NODE}")
    for container in (f"vllm-{NODE}-vllm-0", "rag-app"):
        inspect = node.run(f"docker inspect --format '{{{{json .Path}}}} {{{{json .Args}}}} "
                           f"{{{{json .Config.Labels}}}} {{{{json .Config.Cmd}}}}' {container}")
        assert inspect.rc == 0, inspect.stderr
        _check(inspect.stdout, values, f"{container}'s arguments and labels")
        logs = node.run(f"docker logs --tail 500 {container} 2>&1").stdout
        _check(logs, values, f"{container}'s log")


def test_the_token_and_the_key_reach_the_replica_through_its_environment(secret_run):
    """The replica's environment holds B, compared on the node with its own env files (no value
    is printed or sent); Docker keeps --env-file values there: docker access is root access."""
    node = secret_run["node"]
    for variable, env_file in (("HF_TOKEN", "hf-token.env"), ("HUGGING_FACE_HUB_TOKEN", "hf-token.env"),
                               ("VLLM_API_KEY", "vllm-api-key.env")):
        wanted = f"$(sed -n 's/^{variable}=//p' {ENV_DIR}/{env_file})"
        running = f"$(docker exec vllm-{NODE}-vllm-0 printenv {variable})"
        same = node.run(f'[ -n "{wanted}" ] && [ "{running}" = "{wanted}" ]')
        assert same.rc == 0, f"{variable} in the replica is not the value of {env_file}"


def _http(node, method: str, url: str, key_from: str | None = None, body: str | None = None) -> str:
    """HTTP status of a request made on the node; the key, if any, read there from an env file."""
    auth = f"sed -n 's/^{key_from}=/Authorization: Bearer /p' {ENV_DIR}/rag-app.env" if key_from else "true"
    data = f"-H 'Content-Type: application/json' -d '{body}'" if body else ""
    out = node.run(f"{auth} | curl -s -m 180 -o /dev/null -w '%{{http_code}}' -X {method} -H @- {data} {url}")
    return out.stdout.strip()


def test_vllm_requires_the_key(secret_run):
    node = secret_run["node"]
    assert _http(node, "GET", f"http://{NODE}:8000/v1/models") == "401"
    assert _http(node, "GET", f"http://{NODE}:8000/v1/models", key_from="VLLM_API_KEY") == "200"


def test_rag_app_refuses_without_the_key_and_answers_with_it(secret_run):
    node = secret_run["node"]
    app = f"http://{NODE}:8080"
    health = json.loads(node.run(f"curl -fsS -m 10 {app}/health").stdout)
    assert health["auth"] == "bearer" and health["status"] == "ok"
    _check(json.dumps(health), secret_run["values"], "the app's /health")
    assert _http(node, "POST", f"{app}/query", body=QUESTION) == "401"
    assert node.run(f"curl -s -m 10 -o /dev/null -w '%{{http_code}}' -X POST -H 'Authorization: Bearer wrong' "
                    f"-d '{QUESTION}' {app}/query").stdout.strip() == "401"
    assert _http(node, "POST", f"{app}/query", key_from="APP_API_KEY", body=QUESTION) == "200"
    # The answer came from vLLM through the key (a 502 would mean vLLM refused the app).
    auth = f"sed -n 's/^APP_API_KEY=/Authorization: Bearer /p' {ENV_DIR}/rag-app.env"
    out = node.run(f"{auth} | curl -fsS -m 180 -H @- -d '{QUESTION}' {app}/query")
    assert out.rc == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["model"] == "qwen3-tiny" and answer["sources"]
    _check(out.stdout, secret_run["values"], "the app's answer")
