"""The users check's read-only Milvus client (gpufleet/milvus_rpc.py), run as the deploy runs it.

``python -m gpufleet.milvus_users check`` in a child process, against a real gRPC server serving
pymilvus's generated MilvusService (tests/unit/fake_milvus_rbac.py, a process of its own: this
test process runs under gevent, which gRPC does not). The lab test tests/lab/test_data_tier.py
compares the client with pymilvus on a real Milvus.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager

import pytest

from gpufleet import PROJECT_ROOT
from gpufleet.milvus_users import COLLECTION_GRANTS, GLOBAL_GRANTS

PASSWORDS = {"root": "root-pw-1", "gpufleet_app": "app-pw-1"}
ALL_GRANTS = sorted([("Global", "*", p) for p in GLOBAL_GRANTS]
                    + [("Collection", "gpufleet_docs", p) for p in COLLECTION_GRANTS])


@contextmanager
def fake_milvus(grants, app_roles, **more):
    state = {"passwords": PASSWORDS, "grants": grants, "app_roles": app_roles, **more}
    server = subprocess.Popen([sys.executable, "-W", "ignore", str(PROJECT_ROOT / "tests/unit/fake_milvus_rbac.py"),
                               json.dumps(state)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    try:
        yield f"http://127.0.0.1:{int(server.stdout.readline())}"
    finally:
        server.stdin.close()
        server.wait(timeout=30)


def check(uri: str, tmp_path, root_password: str, app_password: str) -> subprocess.CompletedProcess:
    """The check's child as the deploy starts it: the URI on stdin after its start."""
    root, app = tmp_path / "root", tmp_path / "app"
    root.write_text(root_password + "\n")
    app.write_text(app_password + "\n")
    child = ("import sys; from gpufleet import milvus_users; code = milvus_users.main(sys.argv[1:]); "
             "print(sorted(m for m in ('pandas', 'minio', 'pymilvus.orm') if m in sys.modules)); sys.exit(code)")
    return subprocess.run([sys.executable, "-W", "ignore", "-c", child, "check", "--uri", "-",
                           "--root-password-file", str(root), "--app-user", "gpufleet_app",
                           "--app-password-file", str(app), "--collection", "gpufleet_docs"],
                          input=f"{uri}\n", capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)


@pytest.mark.parametrize("grants, app_roles, expected", [
    (ALL_GRANTS, ["gpufleet_app_role"], []),
    ([g for g in ALL_GRANTS if g != ("Collection", "gpufleet_docs", "Search")], ["gpufleet_app_role"],
     ["grant gpufleet_app_role Search on Collection gpufleet_docs"]),
    (ALL_GRANTS, [], ["give gpufleet_app role gpufleet_app_role"]),
])
def test_the_check_reads_users_roles_and_grants_without_importing_pymilvus(tmp_path, grants, app_roles, expected):
    with fake_milvus(grants, app_roles) as uri:
        run = check(uri, tmp_path, PASSWORDS["root"], PASSWORDS["gpufleet_app"])
        assert run.returncode == 0, run.stderr[-1000:]
        answer, imported = run.stdout.strip().splitlines()[-2:]
        assert json.loads(answer) == {"changes": expected}
        # What the Milvus host's plan waits for: pymilvus's ORM (pandas, minio) stays out of it.
        assert imported == "[]"
        rotated = check(uri, tmp_path, PASSWORDS["root"], "rotated-pw-2")
        assert json.loads(rotated.stdout.strip().splitlines()[-2]) == {
            "changes": ["reset gpufleet_app's password (it is not milvus_app_password_file's)", *expected]}


def test_a_root_refused_with_both_passwords_stops_the_check_and_names_no_password(tmp_path):
    with fake_milvus(ALL_GRANTS, ["gpufleet_app_role"]) as uri:
        refused = check(uri, tmp_path, "not-roots-pw", PASSWORDS["gpufleet_app"])
    assert refused.returncode == 1
    assert "refuses user root with the password of milvus_root_password_file" in refused.stderr
    assert "not-roots-pw" not in refused.stderr + refused.stdout


def test_an_error_status_from_milvus_reads_as_unreachable_never_as_nothing_to_do(tmp_path):
    """A call Milvus answers with an error status (as pymilvus's check_status sees it): the check
    says unreachable, so the deploy plans the apply instead of reporting the users as they should be."""
    with fake_milvus(ALL_GRANTS, ["gpufleet_app_role"], refuse_list_users=True) as uri:
        run = check(uri, tmp_path, PASSWORDS["root"], PASSWORDS["gpufleet_app"])
    assert run.returncode == 0, run.stderr[-1000:]
    assert json.loads(run.stdout.strip().splitlines()[-2]) == {"unreachable": "MilvusRefused"}
