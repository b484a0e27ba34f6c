"""Regenerate the vllm.* operation cases: `.venv/bin/python tests/operations/make_vllm_cases.py` from the repo root.

Run it after editing files/Dockerfile.vllm_rtx5090 or files/vllm_nccl_check.py (their digest is the
image tag) or operations/vllm.py; review the diff of the JSON files before committing it.
"""
import base64
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, ".")
from operations import secrets, vllm  # noqa: E402
from operations.facts.docker import ContainerState  # noqa: E402

OUT = Path("tests/operations")
NAME = "vllm-gpu-node-1-vllm-0"
BASE = dict(container=NAME, image="gpufleet/vllm-rtx5090:0123456789abcdef", model="Qwen/Qwen3-32B-AWQ",
            served_model_name="qwen3-32b-awq", port=8000, gpus=[0, 1], bind_address="10.0.0.11",
            tensor_parallel_size=2, max_model_len=32768, gpu_memory_utilization=0.8, quantization="awq_marlin",
            extra_args=[], env={"NCCL_P2P_DISABLE": "1"}, shm_size="16g", hf_cache_dir="/var/lib/gpufleet/hf-cache",
            shutdown_timeout=30, cache_dir="/var/lib/gpufleet/vllm-cache")
CACHE_DIR = f"/var/lib/gpufleet/vllm-cache/{NAME}"
DIR_OK = {"mode": 755, "user": "root", "group": "root"}
NO_SECRETS = {"path=/etc/gpufleet/hf-token.env": None, "path=/etc/gpufleet/vllm-api-key.env": None}

def spec_of(kw, env_files=None):
    k = dict(kw)
    k["name"] = k.pop("container")
    for x in ("hf_token_file", "api_key_file"):
        k.pop(x, None)
    k["cache_dir"] = vllm.replica_cache_dir(k.pop("cache_dir", None), k["name"])
    return vllm.replica_spec(**k, env_files=env_files or {})

def running(digest):
    return {"exists": True, "running": True, "status": "running", "restarting": False, "spec": digest,
            "image_id": "sha256:aa", "image": BASE["image"], "restart_count": 0}

def write(op, name, case):
    (OUT / op / f"{name}.json").write_text(json.dumps(case, indent=2) + "\n")

# 1. unchanged -> noop
spec = spec_of(BASE)
write("vllm.replica", "unchanged_is_noop", {
    "kwargs": BASE,
    "facts": {"files.File": NO_SECRETS, "files.Directory": {"path=/var/lib/gpufleet/hf-cache": DIR_OK,
                                                        f"path={CACHE_DIR}": dict(DIR_OK, mode=700)},
              "docker.ContainerState": {f"container={NAME}": running(spec.digest())}},
    "commands": [], "noop_description": f"{NAME} runs spec {spec.digest()}"})

# 2. max_model_len changed -> stop (drain) + rm + run with the new arg
new = dict(BASE, max_model_len=16384)
newspec = spec_of(new)
write("vllm.replica", "max_model_len_change_recreates", {
    "kwargs": new,
    "facts": {"files.File": NO_SECRETS, "files.Directory": {"path=/var/lib/gpufleet/hf-cache": DIR_OK,
                                                        f"path={CACHE_DIR}": dict(DIR_OK, mode=700)},
              "docker.ContainerState": {f"container={NAME}": running(spec.digest())}},
    "commands": [f"docker stop -t 45 {NAME} >/dev/null; docker rm -f {NAME}.gpufleet-previous >/dev/null 2>&1; docker rename {NAME} {NAME}.gpufleet-previous && docker update --restart no {NAME}.gpufleet-previous >/dev/null", newspec.run_command()]})

# 3. first run, token + API key already on the host: only --env-file paths and digests on the command line
tok = "tests/fixtures/vllm/hf-token"
key = "tests/fixtures/vllm/api-key"
tok_text = secrets.env_text(dict.fromkeys(vllm.HF_TOKEN_VARIABLES, tok))
key_text = secrets.env_text(dict.fromkeys(vllm.API_KEY_VARIABLES, key))
sec = dict(BASE, hf_token_file=tok, api_key_file=key)
files_ok = {"path=/etc/gpufleet/hf-token.env": {"mode": 600, "user": "root", "group": "root"},
            "path=/etc/gpufleet/vllm-api-key.env": {"mode": 600, "user": "root", "group": "root"}}


def sha256(t):
    return hashlib.sha256(t.encode()).hexdigest()


def secret_write(dest, text):
    """How the harness shows operations.secrets.SecretWrite: the content only base64 on stdin."""
    return {"_stdin": base64.b64encode(text.encode()).decode() + "\n", "_get_pty": False,
            "command": secrets.write_command(dest)}


envf = {vllm.HF_TOKEN_ENV_FILE: secrets.content_digest(tok_text), vllm.API_KEY_ENV_FILE: secrets.content_digest(key_text)}
secspec = spec_of(sec, envf)
write("vllm.replica", "secrets_only_as_env_files", {
    "kwargs": sec,
    "facts": {"files.File": files_ok,
              "files.Sha256File": {"path=/etc/gpufleet/hf-token.env": sha256(tok_text),
                                   "path=/etc/gpufleet/vllm-api-key.env": sha256(key_text)},
              "files.Directory": {"path=/var/lib/gpufleet/hf-cache": DIR_OK,
                                                        f"path={CACHE_DIR}": dict(DIR_OK, mode=700)},
              "docker.ContainerState": {f"container={NAME}": ContainerState.default()}},
    "commands": [secspec.run_command()]})

# 4. token rotated on the control side: the file is rewritten atomically (content on stdin, never in
# a command or a diff), container recreated (digest changed)
old_tok_text = "HF_TOKEN=hf_oldtoken\nHUGGING_FACE_HUB_TOKEN=hf_oldtoken\n"
oldspec = spec_of(sec, {**envf, vllm.HF_TOKEN_ENV_FILE: secrets.content_digest(old_tok_text)})
write("vllm.replica", "rotated_token_recreates", {
    "kwargs": sec,
    "facts": {"files.File": files_ok,
              "files.Sha256File": {"path=/etc/gpufleet/hf-token.env": sha256(old_tok_text),
                                   "path=/etc/gpufleet/vllm-api-key.env": sha256(key_text)},
              "files.Directory": {"path=/var/lib/gpufleet/hf-cache": DIR_OK,
                                                        f"path={CACHE_DIR}": dict(DIR_OK, mode=700)},
              "docker.ContainerState": {f"container={NAME}": running(oldspec.digest())}},
    "commands": [secret_write(vllm.HF_TOKEN_ENV_FILE, tok_text),
                 f"docker stop -t 45 {NAME} >/dev/null; docker rm -f {NAME}.gpufleet-previous >/dev/null 2>&1; docker rename {NAME} {NAME}.gpufleet-previous && docker update --restart no {NAME}.gpufleet-previous >/dev/null", secspec.run_command()]})

# 5. --api-key in extra args is refused
write("vllm.replica", "api_key_on_command_line_refused", {
    "kwargs": dict(BASE, extra_args=["--api-key", "sk-123"]),
    "facts": {"files.File": NO_SECRETS, "files.Directory": {"path=/var/lib/gpufleet/hf-cache": DIR_OK,
                                                        f"path={CACHE_DIR}": dict(DIR_OK, mode=700)},
              "docker.ContainerState": {f"container={NAME}": ContainerState.default()}},
    "exception": {"name": "OperationValueError",
                  "message": "--api-key must not be a command-line argument (it would show in `ps` and `docker inspect`); use vllm_api_key_file / vllm_hf_token_file"}})

# image: exists -> noop; missing -> build + check
IMG = dict(base_image="vllm/vllm-openai:v0.11.0", nccl_version="2.27.7", pip_install_args="")
digest = vllm.inputs_digest(**IMG)
tag = f"gpufleet/vllm-rtx5090:{digest}"
CHECKED = {"mode": 644, "user": "root", "group": "root", "size": 240}
write("vllm.image", "exists_is_noop", {
    "kwargs": IMG,
    "facts": {"docker.ImageState": {f"ref={tag}": {"exists": True, "id": "sha256:bb", "labels": {"io.gpufleet.inputs": digest}}},
              "files.File": {f"path={vllm.checked_marker('sha256:bb')}": CHECKED}},
    "commands": [], "noop_description": f"image {tag} exists (NCCL 2.27.7 on vllm/vllm-openai:v0.11.0)"})
# An interrupted deploy: built (tag and inputs label present) but the check never wrote its marker.
write("vllm.image", "built_but_never_checked_is_checked", {
    "kwargs": IMG,
    "facts": {"docker.ImageState": {f"ref={tag}": {"exists": True, "id": "sha256:bb", "labels": {"io.gpufleet.inputs": digest}}},
              "files.File": {f"path={vllm.checked_marker('sha256:bb')}": None}},
    "commands": [vllm.check_command(tag, "2.27.7", "sm_120")]})
files_sha = {f"path={vllm.BUILD_DIR}/{n}": hashlib.sha1((vllm.FILES / n).read_bytes()).hexdigest()
             for n in (vllm.DOCKERFILE, vllm.CHECK_SCRIPT)}
write("vllm.image", "missing_builds_then_checks", {
    "kwargs": IMG,
    "facts": {"docker.ImageState": {f"ref={tag}": {"exists": False, "id": None, "labels": {}}},
              "files.Directory": {f"path={vllm.BUILD_DIR}": DIR_OK},
              "files.File": {f"path={vllm.BUILD_DIR}/{n}": {"mode": 644, "user": "root", "group": "root"}
                             for n in (vllm.DOCKERFILE, vllm.CHECK_SCRIPT)},
              "files.Sha1File": files_sha},
    "commands": [vllm.build_command(tag, IMG["base_image"], "2.27.7", "", digest),
                 vllm.check_command(tag, "2.27.7", "sm_120")]})
LAB = dict(base_image="lab-registry:5000/gpufleet-lab/vllm-cpu:0.32.0", nccl_version="2.27.3",
           pip_install_args="--no-index --find-links http://lab-repo/wheels/ --trusted-host lab-repo")
ld = vllm.inputs_digest(**LAB)
ltag = f"gpufleet/vllm-rtx5090:{ld}"
write("vllm.image", "pin_bump_builds_new_tag", {
    "kwargs": LAB,
    "facts": {"docker.ImageState": {f"ref={ltag}": {"exists": False, "id": None, "labels": {}}},
              "files.Directory": {f"path={vllm.BUILD_DIR}": DIR_OK},
              "files.File": {f"path={vllm.BUILD_DIR}/{n}": {"mode": 644, "user": "root", "group": "root"}
                             for n in (vllm.DOCKERFILE, vllm.CHECK_SCRIPT)},
              "files.Sha1File": files_sha},
    "commands": [vllm.build_command(ltag, LAB["base_image"], "2.27.3", LAB["pip_install_args"], ld),
                 vllm.check_command(ltag, "2.27.3", "sm_120")]})

write("vllm.ready", "waits_with_function", {
    "kwargs": {"container": NAME, "url": "http://10.0.0.11:8000/", "served_model_name": "qwen3-32b-awq",
               "timeout": 600, "api_key": True},
    "facts": {},
    "commands": [["_wait_ready", [NAME, "http://10.0.0.11:8000", "qwen3-32b-awq", 600, vllm.API_KEY_ENV_FILE],
                  {"interval": 0.5, "log_lines": 40}]]})
print("image tag", tag)
