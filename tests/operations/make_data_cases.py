"""Regenerate the milvus.* and app.* operation cases: `.venv/bin/python tests/operations/make_data_cases.py` from the repo root.

Digests and `docker run` lines come from operations/milvus.py and operations/app.py; review the diff
of the JSON files before committing it (that review is the test).
"""
import base64
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, ".")
from operations import secrets  # noqa: E402
from operations.app import API_KEY_VARIABLES, MILVUS_PASSWORD_VARIABLE, app_spec, env_file_path  # noqa: E402
from operations.milvus import (AUTH_ENV, EMBED_ETCD_YAML, MINIO_ENV, ROOT_PASSWORD_VARIABLE,  # noqa: E402
                               credentials_command, milvus_specs, wait_commands)

T = Path("tests/operations")
IMG = "milvusdb/milvus:v2.6.11"
CFG = "/etc/gpufleet/milvus/embedEtcd.yaml"
SHA1 = hashlib.sha1(EMBED_ETCD_YAML.encode()).hexdigest()

def running(spec_digest, image):
    return {"exists": True, "running": True, "status": "running", "restarting": False, "spec": spec_digest,
            "image_id": "sha256:aa", "image": image, "restart_count": 0}
ABSENT = {"exists": False, "running": False, "status": None, "restarting": False, "spec": None,
          "image_id": None, "image": None, "restart_count": 0}
CFG_FACTS = {"files.File": {f"path={CFG}": {"mode": 644, "user": "root", "group": "root"}},
             "files.Sha1File": {f"path={CFG}": SHA1},
             "files.Directory": {"path=/etc/gpufleet/milvus": {"mode": 755}}}
NO_CFG_FACTS = {"files.File": {f"path={CFG}": None}, "files.Sha1File": {f"path={CFG}": None},
                "files.Directory": {"path=/etc/gpufleet/milvus": None, f"path={CFG}": None}}
NET = {"object_id=milvus": [{"Name": "milvus", "Driver": "bridge"}]}
def creds(generation):
    return {"milvus.CredentialsGeneration": {f"path={MINIO_ENV}": generation}}
def states(**kw):
    return {f"container={k}": v for k, v in kw.items()}
def write(folder, name, case):
    if folder == "milvus.standalone" and "exception" not in case:
        # Without a root password file the operation makes sure Milvus's auth env file is absent.
        case["facts"]["files.File"] = {f"path={AUTH_ENV}": None, **case["facts"].get("files.File", {})}
    (T / folder / f"{name}.json").write_text(json.dumps(case, indent=2) + "\n")

emb = milvus_specs("embedded", IMG, "10.0.0.5")
std = milvus_specs("standalone", IMG, "10.0.0.5")
emb_kw = {"mode": "embedded", "image": IMG, "address": "10.0.0.5"}
std_kw = {"mode": "standalone", "image": IMG, "address": "10.0.0.5"}
# The three standalone containers running the default specs (the converged host).
STD_RUNNING = states(**{"milvus-etcd": running(std[0].digest(), std[0].image),
                        "milvus-minio": running(std[1].digest(), std[1].image),
                        "milvus-standalone": running(std[2].digest(), IMG)})


def recreated_with_credentials(generation, specs):
    """A credentials file written, then MinIO and Milvus recreated with it (etcd untouched)."""
    return [credentials_command(MINIO_ENV, generation),
            "docker stop milvus-minio >/dev/null; docker rm -f milvus-minio >/dev/null", specs[1].run_command(),
            "docker stop milvus-standalone >/dev/null; docker rm -f milvus-standalone >/dev/null",
            specs[2].run_command()]

write("milvus.standalone", "embedded_fresh_host_runs_one_container", {
    "kwargs": emb_kw,
    "facts": {**NO_CFG_FACTS, "docker.ContainerState": states(**{"milvus-etcd": ABSENT, "milvus-minio": ABSENT, "milvus-standalone": ABSENT})},
    "commands": ["mkdir -p /etc/gpufleet/milvus", "chown root:root /etc/gpufleet/milvus", ["upload", EMBED_ETCD_YAML, CFG],
                 "chown root:root " + CFG, "chmod 644 " + CFG, emb[0].run_command()]})
write("milvus.standalone", "embedded_converged_is_noop", {
    "kwargs": emb_kw,
    "facts": {**CFG_FACTS, "docker.ContainerState": states(**{"milvus-etcd": ABSENT, "milvus-minio": ABSENT,
              "milvus-standalone": running(emb[0].digest(), IMG)})},
    "commands": [], "noop_description": "milvus (embedded) runs as declared on 10.0.0.5:19530"})
write("milvus.standalone", "standalone_fresh_host_runs_etcd_minio_milvus_on_private_network", {
    "kwargs": std_kw,
    "facts": {"docker.DockerNetwork": {"object_id=milvus": []}, **creds(None),
              "docker.ContainerState": states(**{"milvus-etcd": ABSENT, "milvus-minio": ABSENT, "milvus-standalone": ABSENT})},
    "commands": ["docker network create milvus", credentials_command(MINIO_ENV, 1), std[0].run_command(),
                 std[1].run_command(), std[2].run_command()]})
write("milvus.standalone", "standalone_converged_is_noop", {
    "kwargs": std_kw,
    "facts": {"docker.DockerNetwork": NET, **creds(1), "docker.ContainerState": STD_RUNNING},
    "commands": [], "noop_description": "milvus (standalone) runs as declared on 10.0.0.5:19530"})
write("milvus.standalone", "lost_credentials_file_is_regenerated_and_minio_and_milvus_recreated_together", {
    "kwargs": std_kw,
    "facts": {"docker.DockerNetwork": NET, **creds(None), "docker.ContainerState": STD_RUNNING},
    "commands": recreated_with_credentials(1, std)})
rotated = milvus_specs("standalone", IMG, "10.0.0.5", credentials_generation=2)
write("milvus.standalone", "raised_credentials_generation_rotates_them_and_recreates_minio_and_milvus", {
    "kwargs": {**std_kw, "credentials_generation": 2},
    "facts": {"docker.DockerNetwork": NET, **creds(1), "docker.ContainerState": STD_RUNNING},
    "commands": recreated_with_credentials(2, rotated)})
new_img = "milvusdb/milvus:v2.6.12"
std_new = milvus_specs("standalone", new_img, "10.0.0.5")
write("milvus.standalone", "changed_image_recreates_only_milvus", {
    "kwargs": {**std_kw, "image": new_img},
    "facts": {"docker.DockerNetwork": NET, **creds(1), "docker.ContainerState": STD_RUNNING},
    "commands": ["docker stop milvus-standalone >/dev/null; docker rm -f milvus-standalone >/dev/null",
                 std_new[2].run_command()]})
write("milvus.standalone", "switch_to_embedded_removes_etcd_and_minio", {
    "kwargs": emb_kw,
    "facts": {**CFG_FACTS, "docker.ContainerState": STD_RUNNING},
    "commands": ["docker rm -f milvus-etcd >/dev/null", "docker rm -f milvus-minio >/dev/null",
                 "docker stop milvus-standalone >/dev/null; docker rm -f milvus-standalone >/dev/null",
                 emb[0].run_command()]})
named = milvus_specs("embedded", IMG, "172.20.0.5")
write("milvus.standalone", "host_name_resolved_on_host_for_the_bind", {
    "kwargs": {**emb_kw, "address": "gpu-node-1"},
    "facts": {**CFG_FACTS, "net.ResolvedAddress": {"name_or_ip=gpu-node-1": "172.20.0.5"},
              "docker.ContainerState": states(**{"milvus-etcd": ABSENT, "milvus-minio": ABSENT, "milvus-standalone": ABSENT})},
    "commands": [named[0].run_command()]})
write("milvus.standalone", "loopback_resolution_refused", {
    "kwargs": {**emb_kw, "address": "gpu-node-1"},
    "facts": {"net.ResolvedAddress": {"name_or_ip=gpu-node-1": "127.0.1.1"}},
    "exception": {"name": "OperationError", "message": "'gpu-node-1' resolves to 127.0.1.1 (loopback) on the host: other hosts could not reach it. Set private_address (or the *_bind_address setting) to the host's private IP"}})

# Authentication on: Milvus with COMMON_SECURITY_AUTHORIZATIONENABLED=true and --env-file AUTH_ENV,
# which holds COMMON_SECURITY_DEFAULTROOTPASSWORD (written 0600, content on stdin, never in a command).
ROOT_FILE = "tests/fixtures/vllm/api-key"  # any one-line file stands for the root password file
auth_text = secrets.env_text({ROOT_PASSWORD_VARIABLE: ROOT_FILE})
auth_write = {"_stdin": base64.b64encode(auth_text.encode()).decode() + "\n", "_get_pty": False,
              "command": secrets.write_command(AUTH_ENV)}
AUTH_PRESENT = {"files.File": {f"path={AUTH_ENV}": {"mode": 600, "user": "root", "group": "root"}},
                "files.Sha256File": {f"path={AUTH_ENV}": hashlib.sha256(auth_text.encode()).hexdigest()}}
std_auth = milvus_specs("standalone", IMG, "10.0.0.5", authentication=True)
emb_auth = milvus_specs("embedded", IMG, "10.0.0.5", authentication=True)
write("milvus.standalone", "auth_on_writes_root_password_env_file_and_recreates_only_milvus", {
    "kwargs": {**std_kw, "root_password_file": ROOT_FILE},
    "facts": {"docker.DockerNetwork": NET, **creds(1), "docker.ContainerState": STD_RUNNING},
    "commands": [auth_write, "docker stop milvus-standalone >/dev/null; docker rm -f milvus-standalone >/dev/null",
                 std_auth[2].run_command()]})
write("milvus.standalone", "auth_on_converged_is_noop", {
    "kwargs": {**std_kw, "root_password_file": ROOT_FILE},
    "facts": {"docker.DockerNetwork": NET, **creds(1), **AUTH_PRESENT, "docker.ContainerState": states(**{
        "milvus-etcd": running(std_auth[0].digest(), std_auth[0].image),
        "milvus-minio": running(std_auth[1].digest(), std_auth[1].image),
        "milvus-standalone": running(std_auth[2].digest(), IMG)})},
    "commands": [], "noop_description": "milvus (standalone) runs as declared on 10.0.0.5:19530"})
# A changed root password file rewrites the env file but does not recreate Milvus: Milvus reads the
# password only when it first creates root (operations/milvus_users.py changes a running one's).
write("milvus.standalone", "auth_root_password_changed_rewrites_file_without_recreating", {
    "kwargs": {**emb_kw, "root_password_file": ROOT_FILE},
    "facts": {**CFG_FACTS, "files.File": {**CFG_FACTS["files.File"], **AUTH_PRESENT["files.File"]},
              "files.Sha256File": {f"path={AUTH_ENV}": "0" * 64},
              "docker.ContainerState": states(**{"milvus-etcd": ABSENT, "milvus-minio": ABSENT,
                                                 "milvus-standalone": running(emb_auth[0].digest(), IMG)})},
    "commands": [auth_write]})
write("milvus.standalone", "auth_off_removes_root_password_file_and_recreates", {
    "kwargs": emb_kw,
    "facts": {**CFG_FACTS, "files.File": {**CFG_FACTS["files.File"], **AUTH_PRESENT["files.File"]},
              "docker.ContainerState": states(**{"milvus-etcd": ABSENT, "milvus-minio": ABSENT,
                                                 "milvus-standalone": running(emb_auth[0].digest(), IMG)})},
    "commands": [f"rm -f {AUTH_ENV}",
                 "docker stop milvus-standalone >/dev/null; docker rm -f milvus-standalone >/dev/null",
                 emb[0].run_command()]})

# The users step on a Milvus that is not healthy yet (a fresh host's plan): Milvus is not asked,
# the change is planned as one function call on the control host; its arguments are file paths.
users_kw = {"address": "10.0.0.5", "port": 19530, "root_password_file": "~/.config/gpufleet/milvus-root-password",
            "app_user": "gpufleet_app", "app_password_file": "~/.config/gpufleet/milvus-app-password",
            "collections": ["gpufleet_docs"]}
write("milvus_users.users", "milvus_not_healthy_yet_plans_the_users_step", {
    "kwargs": users_kw,
    "facts": {"net.HttpOk": {"url=http://10.0.0.5:9091/healthz": False}},
    "commands": [["_apply", ["10.0.0.5", 19530, users_kw["root_password_file"], "gpufleet_app",
                             users_kw["app_password_file"], ["gpufleet_docs"]], {}]]})

write("milvus.ready", "healthy_is_noop", {
    "kwargs": {"address": "10.0.0.5", "health_port": 9091, "timeout": 180},
    "facts": {"net.HttpOk": {"url=http://10.0.0.5:9091/healthz": True}},
    "commands": [], "noop_description": "milvus healthy at http://10.0.0.5:9091/healthz"})
write("milvus.ready", "unhealthy_waits_then_fails_with_logs", {
    "kwargs": {"address": "10.0.0.5", "health_port": 9091, "timeout": 180},
    "facts": {"net.HttpOk": {"url=http://10.0.0.5:9091/healthz": False}},
    "commands": [wait_commands("http://10.0.0.5:9091/healthz", "milvus-standalone", 180, "milvus")]})

APP_IMG = "registry.internal/rag-app:1.4.2"
app_kw = {"image": APP_IMG, "address": "10.0.0.5", "port": 8080, "vllm_address": "10.0.0.5", "vllm_port": 8000,
          "model": "qwen3-32b-awq", "milvus_address": "10.0.0.5"}
APP_ENV = env_file_path()
NO_KEY = {"files.File": {f"path={APP_ENV}": None}}
a = app_spec(APP_IMG, "10.0.0.5", 8080, "http://10.0.0.5:8000/v1", "qwen3-32b-awq", "http://10.0.0.5:19530")
write("app.container", "fresh_host_runs_app_wired_to_node_replica", {
    "kwargs": app_kw, "facts": {**NO_KEY, "docker.ContainerState": states(**{"rag-app": ABSENT})},
    "commands": [a.run_command()]})
write("app.container", "converged_is_noop", {
    "kwargs": app_kw, "facts": {**NO_KEY, "docker.ContainerState": states(**{"rag-app": running(a.digest(), APP_IMG)})},
    "commands": [], "noop_description": f"rag-app runs spec {a.digest()}"})
# The API key on: the app gets its own 0600 env file (content base64 on stdin, never in a command)
# holding VLLM_API_KEY and APP_API_KEY, passed with --env-file; the container is recreated.
KEY_FILE = "tests/fixtures/vllm/api-key"
key_text = secrets.env_text(dict.fromkeys(API_KEY_VARIABLES, KEY_FILE))
keyed = app_spec(APP_IMG, "10.0.0.5", 8080, "http://10.0.0.5:8000/v1", "qwen3-32b-awq", "http://10.0.0.5:19530",
                 env_files={APP_ENV: secrets.content_digest(key_text)})
write("app.container", "api_key_on_writes_env_file_and_recreates", {
    "kwargs": {**app_kw, "api_key_file": KEY_FILE},
    "facts": {**NO_KEY, "docker.ContainerState": states(**{"rag-app": running(a.digest(), APP_IMG)})},
    "commands": [{"_stdin": base64.b64encode(key_text.encode()).decode() + "\n", "_get_pty": False,
                  "command": secrets.write_command(APP_ENV)},
                 "docker stop -t 30 rag-app >/dev/null; docker rm -f rag-app >/dev/null", keyed.run_command()]})
write("app.container", "api_key_converged_is_noop", {
    "kwargs": {**app_kw, "api_key_file": KEY_FILE},
    "facts": {"files.File": {f"path={APP_ENV}": {"mode": 600, "user": "root", "group": "root"}},
              "files.Sha256File": {f"path={APP_ENV}": hashlib.sha256(key_text.encode()).hexdigest()},
              "docker.ContainerState": states(**{"rag-app": running(keyed.digest(), APP_IMG)})},
    "commands": [], "noop_description": f"rag-app runs spec {keyed.digest()}"})
write("app.container", "api_key_off_removes_env_file_and_recreates", {
    "kwargs": app_kw,
    "facts": {"files.File": {f"path={APP_ENV}": {"mode": 600, "user": "root", "group": "root"}},
              "docker.ContainerState": states(**{"rag-app": running(keyed.digest(), APP_IMG)})},
    "commands": [f"rm -f {APP_ENV}", "docker stop -t 30 rag-app >/dev/null; docker rm -f rag-app >/dev/null",
                 a.run_command()]})
# Milvus authentication: MILVUS_USER in the environment (a name), MILVUS_PASSWORD in the app's 0600
# env file beside the API keys; the container is recreated.
MILVUS_PW_FILE = "tests/fixtures/vllm/api-key"  # any one-line file stands for the app's Milvus password file
both_text = secrets.env_text({**dict.fromkeys(API_KEY_VARIABLES, KEY_FILE), MILVUS_PASSWORD_VARIABLE: MILVUS_PW_FILE})
milvus_auth = app_spec(APP_IMG, "10.0.0.5", 8080, "http://10.0.0.5:8000/v1", "qwen3-32b-awq", "http://10.0.0.5:19530",
                       env_files={APP_ENV: secrets.content_digest(both_text)}, milvus_user="gpufleet_app")
write("app.container", "milvus_auth_user_in_env_password_in_env_file_and_recreates", {
    "kwargs": {**app_kw, "api_key_file": KEY_FILE, "milvus_user": "gpufleet_app", "milvus_password_file": MILVUS_PW_FILE},
    "facts": {"files.File": {f"path={APP_ENV}": {"mode": 600, "user": "root", "group": "root"}},
              "files.Sha256File": {f"path={APP_ENV}": hashlib.sha256(key_text.encode()).hexdigest()},
              "docker.ContainerState": states(**{"rag-app": running(keyed.digest(), APP_IMG)})},
    "commands": [{"_stdin": base64.b64encode(both_text.encode()).decode() + "\n", "_get_pty": False,
                  "command": secrets.write_command(APP_ENV)},
                 "docker stop -t 30 rag-app >/dev/null; docker rm -f rag-app >/dev/null", milvus_auth.run_command()]})
lb = app_spec(APP_IMG, "10.0.0.5", 8080, "http://10.0.1.10:80/v1", "qwen3-32b-awq", "http://10.0.0.5:19530")
write("app.container", "lb_target_recreates_with_lb_url", {
    "kwargs": {**app_kw, "vllm_address": "lb-1", "vllm_port": 80},
    "facts": {**NO_KEY, "net.ResolvedAddress": {"name_or_ip=lb-1": "10.0.1.10"},
              "docker.ContainerState": states(**{"rag-app": running(a.digest(), APP_IMG)})},
    "commands": ["docker stop -t 30 rag-app >/dev/null; docker rm -f rag-app >/dev/null", lb.run_command()]})
a2 = app_spec("registry.internal/rag-app:1.5.0", "10.0.0.5", 8080, "http://10.0.0.5:8000/v1", "qwen3-32b-awq", "http://10.0.0.5:19530")
write("app.container", "changed_image_recreates", {
    "kwargs": {**app_kw, "image": "registry.internal/rag-app:1.5.0"},
    "facts": {**NO_KEY, "docker.ContainerState": states(**{"rag-app": running(a.digest(), APP_IMG)})},
    "commands": ["docker stop -t 30 rag-app >/dev/null; docker rm -f rag-app >/dev/null", a2.run_command()]})
write("app.ready", "healthy_is_noop", {
    "kwargs": {"address": "10.0.0.5", "port": 8080},
    "facts": {"net.HttpOk": {"url=http://10.0.0.5:8080/health": True}},
    "commands": [], "noop_description": "rag app healthy at http://10.0.0.5:8080/health"})
write("app.ready", "unhealthy_waits_then_fails_with_logs", {
    "kwargs": {"address": "10.0.0.5", "port": 8080, "timeout": 120},
    "facts": {"net.HttpOk": {"url=http://10.0.0.5:8080/health": False}},
    "commands": [wait_commands("http://10.0.0.5:8080/health", "rag-app", 120, "rag app")]})
