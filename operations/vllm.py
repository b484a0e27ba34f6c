"""vLLM on a GPU node: the pinned image, one container per replica, and a readiness gate.

- :func:`image` builds ``gpufleet/vllm-rtx5090:<inputs digest>`` on the node from
  files/Dockerfile.vllm_rtx5090 (the upstream vllm-openai image plus the pinned
  ``nvidia-nccl-cu12`` wheel, which is the NCCL vLLM loads; the host's libnccl2 is not), then runs
  files/vllm_nccl_check.py inside it and fails unless NCCL is the pin and torch lists sm_120.
  Only a passed check writes the image's *checked marker*
  (``/var/lib/gpufleet/images/checked/<image id>.json``); an image without one (a deploy
  interrupted between build and check) is checked again, never trusted.
- :func:`replica` runs one ``vllm serve`` container per replica through
  :func:`operations.containers.container` (spec digest label: any change recreates it, nothing
  else touches it). Secrets (Hugging Face token, API key) reach it only through root-only env
  files written by :mod:`operations.secrets` (compared by digest, written atomically, never
  shown); their content digests are part of the spec, so rotating one recreates the container.
- :func:`ready` waits until /health is 200, /v1/models lists the served name and one completion
  comes back; on timeout it fails with the container's last log lines. Gate it on the replica:
  ``vllm.ready(..., _if=replica_op.did_change)``.

Decisions: the image is built on each node rather than pushed from a build host, so a node
needs only the upstream image (or its mirror) and a Python index (or wheel mirror, see
``pip_install_args``); the build is skipped whenever the tag exists, so it costs one
``docker image inspect`` per deploy (and one ``stat`` of the checked marker). The build records the
upstream image it used as labels (``io.gpufleet.base-id``, ``io.gpufleet.base-digests``), because
the tag hashes ``vllm_image`` as a string: a tag re-pushed upstream gives the same tag on top of
different bits, which ``gpufleet drift`` then reports (gpufleet/image_drift.py). The server binds 0.0.0.0 *inside* the container; the host
publishes it on the replica's address only (the node's private address), never on every interface
unless ``bind_address`` says so.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shlex
import time
from io import StringIO
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationValueError, StringCommand, operation
from pyinfra.facts.files import File
from pyinfra.operations import files

from operations import containers, secrets
from operations.containers import ContainerSpec
from operations.facts.docker import CHECK_IN_IMAGE, ImageState
from operations.facts.images import BASE_DIGESTS_LABEL, BASE_ID_LABEL, CHECKED_DIR, checked_marker
from operations.facts.rollout import ReplicaContainers
from operations.util import sudo_arguments
from operations.weights import HF_TOKEN_ENV_FILE, HF_TOKEN_VARIABLES, MODEL_MOUNT

FILES = Path(__file__).resolve().parents[1] / "files"
DOCKERFILE = "Dockerfile.vllm_rtx5090"
CHECK_SCRIPT = "vllm_nccl_check.py"
IMAGE_REPO = "gpufleet/vllm-rtx5090"
INPUTS_LABEL = "io.gpufleet.inputs"
BUILD_DIR = "/var/lib/gpufleet/build/vllm"

CONTAINER_PORT = 8000
HF_HOME = "/root/.cache/huggingface"  # the upstream image runs as root
# vLLM's own cache (VLLM_CACHE_ROOT): torch.compile artefacts and the model-class inspections it
# otherwise redoes in a subprocess at every start. Mounted from the host, one directory per replica
# (no two engines write one cache), so a recreated replica starts from it: vLLM keys what it keeps
# by its version, the model's code and the config, so a new image or flag only adds entries.
VLLM_CACHE_MOUNT = "/var/cache/gpufleet-vllm"
API_KEY_ENV_FILE = f"{secrets.SECRETS_DIR}/vllm-api-key.env"
API_KEY_VARIABLES = ("VLLM_API_KEY",)  # vLLM's server reads it when --api-key is not given
# Never on a command line (`ps`, `docker inspect .Args`, pyinfra's output): use the env files
# (API_KEY_ENV_FILE above, the Hugging Face token's operations.weights.HF_TOKEN_ENV_FILE).
SECRET_ARGS = ("--api-key", "--hf-token")


# ------------------------------------------------------------------------------- image ------------
def inputs_digest(base_image: str, nccl_version: str, pip_install_args: str = "") -> str:
    """Digest of everything that decides the built image: the Dockerfile, the check, the args."""
    h = hashlib.sha256()
    for part in ((FILES / DOCKERFILE).read_bytes(), (FILES / CHECK_SCRIPT).read_bytes(),
                 base_image.encode(), nccl_version.encode(), pip_install_args.encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def image_tag(base_image: str, nccl_version: str, pip_install_args: str = "") -> str:
    """The tag :func:`image` builds: ``gpufleet/vllm-rtx5090:<inputs digest>``."""
    return f"{IMAGE_REPO}:{inputs_digest(base_image, nccl_version, pip_install_args)}"


def arch_of(compute_capability: str) -> str:
    """``"12.0"`` -> ``"sm_120"`` (what torch.cuda.get_arch_list() lists)."""
    major, minor = compute_capability.split(".")
    return f"sm_{major}{minor}"


def build_command(tag: str, base_image: str, nccl_version: str, pip_install_args: str, digest: str,
                  build_dir: str = BUILD_DIR) -> str:
    """Shell that builds ``tag`` on ``base_image`` and labels it with the base's id and repo digests.

    The base is pulled first when missing (the build would pull it anyway), so that the labels name
    exactly the image the build starts from.
    """
    # --network host: RUN steps reach the package mirror the way the host does (its DNS, its
    # routes); in the lab that is how http://lab-repo/ resolves from inside a stand-in host.
    args = ["docker", "build", "--network", "host", "--label", f"{INPUTS_LABEL}={digest}", "-t", tag,
            "--build-arg", f"BASE_IMAGE={base_image}", "--build-arg", f"NCCL_VERSION={nccl_version}",
            "--build-arg", f"PIP_INSTALL_ARGS={pip_install_args}", "--build-arg", f"INPUTS_DIGEST={digest}",
            "-f", f"{build_dir}/{DOCKERFILE}", build_dir]
    base = shlex.quote(base_image)
    labels = f'--label "{BASE_ID_LABEL}=$base_id" --label "{BASE_DIGESTS_LABEL}=$base_digests"'
    build = " ".join(shlex.quote(a) for a in args[:2]) + f" {labels} " + " ".join(shlex.quote(a) for a in args[2:])
    return (f"docker image inspect {base} >/dev/null 2>&1 || docker pull -q {base} >/dev/null || exit 1; "
            f"base_id=$(docker image inspect --format '{{{{.Id}}}}' {base}) && "
            f"base_digests=$(docker image inspect --format '{{{{join .RepoDigests \",\"}}}}' {base}) && {build}")


def check_command(tag: str, nccl_version: str, require_arch: str | None, checked_dir: str = CHECKED_DIR) -> str:
    """Run the check in the image. On success write its checked marker (the check's own report,
    atomically, under the image's id); on failure print why, remove the image (so the next deploy
    builds again instead of trusting it) and exit 1."""
    check = ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", tag, CHECK_IN_IMAGE,
             "--expect-nccl", nccl_version]
    if require_arch:
        check += ["--require-arch", require_arch]
    q = shlex.quote(tag)
    marker = f"{checked_dir}/${{id#sha256:}}.json"
    return (f"id=$(docker image inspect --format '{{{{.Id}}}}' {q}) || exit 1; "
            f"if out=$({' '.join(shlex.quote(a) for a in check)} 2>&1); then echo \"$out\"; "
            f"install -d -m 0755 {shlex.quote(checked_dir)} && printf '%s\\n' \"$out\" > \"{marker}.tmp\" && "
            f"mv -f \"{marker}.tmp\" \"{marker}\" || exit 1; else "
            f"echo \"$out\" >&2; docker image rm {q} >/dev/null 2>&1; "
            f"echo \"gpufleet: {tag} failed its NCCL/architecture check (pin: NCCL {nccl_version}"
            f"{', ' + require_arch if require_arch else ''}); image removed\" >&2; exit 1; fi")


@operation()
def image(base_image: str, nccl_version: str, pip_install_args: str = "", tag: str | None = None,
          build_dir: str = BUILD_DIR, require_arch: str | None = "sm_120"):
    """
    Build the node's vLLM image with NCCL pinned inside, once per set of inputs, and check it.

    + base_image: the upstream vLLM image (settings ``vllm_image``: a pinned tag or ``@sha256:``)
    + nccl_version: the ``nvidia-nccl-cu12`` version to install (settings ``nccl_version``)
    + pip_install_args: extra ``pip install`` arguments (a mirror's ``--index-url``, or
      ``--no-index --find-links URL``); empty installs from PyPI
    + tag: the tag to build (default ``gpufleet/vllm-rtx5090:<inputs digest>``, see :func:`image_tag`)
    + build_dir: where the Dockerfile and the check script are uploaded on the host
    + require_arch: the GPU architecture torch must be built for (``sm_120`` for RTX 5090);
      the check skips it, and says so, when the image's torch has no CUDA; None: no arch check

    Nothing happens when an image with the tag exists, carries this inputs digest and has its
    checked marker. An image with the tag but no marker was built and never checked (a deploy
    interrupted between the two): only the check runs. Otherwise the files are uploaded, the image
    built (labelled with the upstream image it started from), and ``vllm_nccl_check.py`` run in it:
    the operation fails when the NCCL vLLM loads is not ``nccl_version`` or the arch is missing, and
    the bad image is removed; a passed check writes the marker.

    **Example:**

    .. code:: python

        vllm.image(name="vLLM image with NCCL 2.27.7", base_image="vllm/vllm-openai:v0.11.0",
                   nccl_version="2.27.7")
    """
    digest = inputs_digest(base_image, nccl_version, pip_install_args)
    tag = tag or f"{IMAGE_REPO}:{digest}"
    state = host.get_fact(ImageState, ref=tag)
    if state["exists"] and state["labels"].get(INPUTS_LABEL) == digest:
        if host.get_fact(File, path=checked_marker(state["id"])):
            host.noop(f"image {tag} exists (NCCL {nccl_version} on {base_image})")
            return
        # Built, never checked: the deploy that built it stopped before the check. Check it now.
        yield check_command(tag, nccl_version, require_arch)
        return
    yield from files.directory._inner(path=build_dir, user="root", group="root", mode="755")
    for name in (DOCKERFILE, CHECK_SCRIPT):
        yield from files.put._inner(src=StringIO((FILES / name).read_text()), dest=f"{build_dir}/{name}", user="root", group="root",
                                    mode="644")
    yield build_command(tag, base_image, nccl_version, pip_install_args, digest, build_dir)
    yield check_command(tag, nccl_version, require_arch)


# ------------------------------------------------------------------------------- replica ----------
STOP_GRACE_S = 15  # docker stop waits this long beyond vLLM's own drain before SIGKILL


def default_stop_timeout(shutdown_timeout: int | None) -> int | None:
    """``docker stop -t``: vLLM's ``--shutdown-timeout`` plus a grace, so a drain is never cut short.

    >>> default_stop_timeout(30), default_stop_timeout(None)
    (45, None)
    """
    return None if shutdown_timeout is None else shutdown_timeout + STOP_GRACE_S


def replica_spec(*, name: str, image: str, model: str, served_model_name: str, port: int, gpus: list[int],
                 bind_address: str, tensor_parallel_size: int, max_model_len: int, gpu_memory_utilization: float,
                 quantization: str | None = None, extra_args: list[str] | None = None,
                 revision: str | None = None, env: dict[str, str] | None = None, shm_size: str | None = "16g",
                 hf_cache_dir: str | None = "/var/lib/gpufleet/hf-cache", shutdown_timeout: int | None = 30,
                 stop_timeout: int | None = None, restart: str = "unless-stopped",
                 env_files: dict[str, str] | None = None, model_dir: str | None = None,
                 offline: bool = False, cache_dir: str | None = None) -> ContainerSpec:
    """The container one replica runs (pure: what :func:`replica` reconciles, what drift compares).

    ``model_dir``: a host directory of staged weights, mounted read-only and served instead of
    ``model`` (operations/weights.py); ``offline``: ``HF_HUB_OFFLINE=1``, the weights are staged;
    ``cache_dir``: this replica's host directory for vLLM's cache (:func:`replica_cache_dir`).
    """
    extra_args = list(extra_args or [])
    for arg in extra_args:
        if arg.split("=", 1)[0] in SECRET_ARGS:
            raise OperationValueError(f"{arg.split('=', 1)[0]} must not be a command-line argument (it would show "
                                      "in `ps` and `docker inspect`); use vllm_api_key_file / vllm_hf_token_file")
    for arg in ("--tensor-parallel-size", "--max-model-len", "--gpu-memory-utilization", "--port", "--host",
                "--served-model-name", "--quantization", "--shutdown-timeout", "--revision", "--tokenizer-revision"):
        if any(a.split("=", 1)[0] == arg for a in extra_args):
            raise OperationValueError(f"{arg} is set from its own setting; remove it from vllm_extra_args")
    try:
        ipaddress.ip_address(bind_address)
    except ValueError:
        raise OperationValueError(f"bind address {bind_address!r} is not an IP address (docker publishes on IPs; "
                                  "set private_address or vllm_bind_address)") from None
    if model_dir:
        model = MODEL_MOUNT
    command = [model, "--served-model-name", served_model_name, "--host", "0.0.0.0", "--port", str(CONTAINER_PORT),
               "--tensor-parallel-size", str(tensor_parallel_size)]
    if quantization:
        command += ["--quantization", quantization]
    if revision:  # the weights and the tokenizer from one commit of the model's repository
        command += ["--revision", revision, "--tokenizer-revision", revision]
    command += ["--max-model-len", str(max_model_len), "--gpu-memory-utilization", f"{gpu_memory_utilization:g}"]
    if shutdown_timeout is not None:
        command += ["--shutdown-timeout", str(shutdown_timeout)]
    command += extra_args
    if stop_timeout is None:
        stop_timeout = default_stop_timeout(shutdown_timeout)
    host_addr = f"[{bind_address}]" if ":" in bind_address else bind_address
    return ContainerSpec(
        name=name, image=image, command=command,
        env={**({"HF_HOME": HF_HOME} if hf_cache_dir else {}), **({"HF_HUB_OFFLINE": "1"} if offline else {}),
             **({"VLLM_CACHE_ROOT": VLLM_CACHE_MOUNT} if cache_dir else {}), **(env or {})},
        env_files=dict(env_files or {}),
        ports=[f"{host_addr}:{port}:{CONTAINER_PORT}"],
        volumes=([f"{hf_cache_dir}:{HF_HOME}"] if hf_cache_dir else []) + ([f"{model_dir}:{model}:ro"] if model_dir else [])
        + ([f"{cache_dir}:{VLLM_CACHE_MOUNT}"] if cache_dir else []),
        gpus='"device=' + ",".join(str(g) for g in gpus) + '"',
        shm_size=shm_size, restart=restart, stop_timeout=stop_timeout,
        labels={"io.gpufleet.role": "vllm", "io.gpufleet.served-model-name": served_model_name},
    )


def replica_cache_dir(cache_dir: str | None, container: str) -> str | None:
    """The host directory of one replica's vLLM cache under ``vllm_cache_dir`` (None: no cache kept).

    >>> replica_cache_dir("/var/lib/gpufleet/vllm-cache", "vllm-gpu-node-1-vllm-0")
    '/var/lib/gpufleet/vllm-cache/vllm-gpu-node-1-vllm-0'
    """
    return f"{cache_dir.rstrip('/')}/{container}" if cache_dir else None


# The defaults below are the operation's own, for a deploy that calls it without gpufleet's settings;
# gpufleet's deploy.py passes every one of them from settings_vllm.py, where the fleet's are written.
@operation()
def replica(container: str, image: str, model: str, served_model_name: str, port: int, gpus: list[int],
            bind_address: str, tensor_parallel_size: int = 2, max_model_len: int = 32768,
            gpu_memory_utilization: float = 0.80, quantization: str | None = None,
            extra_args: list[str] | None = None, revision: str | None = None,
            env: dict[str, str] | None = None, shm_size: str | None = "16g",
            hf_cache_dir: str | None = "/var/lib/gpufleet/hf-cache", hf_token_file: str | None = None,
            api_key_file: str | None = None, shutdown_timeout: int | None = 30, stop_timeout: int | None = None,
            restart: str = "unless-stopped", model_dir: str | None = None, offline: bool = False,
            cache_dir: str | None = "/var/lib/gpufleet/vllm-cache"):
    """
    Run one vLLM replica: ``vllm serve`` on its GPUs, published on the node's private address.

    + container: container name (deploy.py: ``vllm-<node>-<replica>``)
    + image: the image :func:`image` built (``image_tag(...)``)
    + model, served_model_name: what ``vllm serve`` loads and the name clients ask for
    + port: host port; published as ``bind_address:port`` -> 8000 in the container
    + gpus: GPU indices (``--gpus '"device=0,1"'``); their count is normally tensor_parallel_size
    + bind_address: the node's private IP (``0.0.0.0`` only where the network is private anyway)
    + tensor_parallel_size, max_model_len, gpu_memory_utilization, quantization: vLLM's flags
    + extra_args: more ``vllm serve`` flags (never ``--api-key``: see api_key_file)
    + revision: the model repository's commit (``--revision`` and ``--tokenizer-revision``);
      None: whatever the hub's default branch is when the weights are downloaded
    + env: environment (NCCL_*, VLLM_*); HF_HOME points at the mounted cache
    + shm_size: ``--shm-size`` (NCCL's SHM transport between the two GPUs uses /dev/shm)
    + hf_cache_dir: host directory mounted as the Hugging Face cache; None: no volume
    + hf_token_file, api_key_file: *control-side* files with one secret each; written to
      /etc/gpufleet/hf-token.env and /etc/gpufleet/vllm-api-key.env (root, 0600, atomically, see
      :func:`operations.secrets.env_file`) and passed with ``--env-file``
      (HF_TOKEN/HUGGING_FACE_HUB_TOKEN, VLLM_API_KEY); None removes the host file
    + shutdown_timeout: ``--shutdown-timeout`` — on SIGTERM vLLM drains in-flight requests this long
    + stop_timeout: seconds ``docker stop`` waits before SIGKILL (default shutdown_timeout + 15)
    + restart: Docker restart policy
    + model_dir: host directory of staged weights (:func:`operations.weights.stage`, a URL archive),
      mounted read-only and served in place of ``model``
    + offline: run with ``HF_HUB_OFFLINE=1``: the weights were staged, vLLM never downloads
    + cache_dir: host directory of vLLM's caches, one subdirectory per replica mounted at
      ``VLLM_CACHE_ROOT`` (torch.compile artefacts, model inspections: a recreated replica starts
      without redoing them); None: the cache lives and dies with the container

    A running container whose spec (arguments, env, image, secrets' digests, ...) is unchanged is
    left alone; any change stops it (draining) and runs it again. Secrets never appear in a
    command: only the env files' paths and their content digests do.

    **Example:**

    .. code:: python

        replica = vllm.replica(name="vLLM replica vllm-0", container="vllm-gpu-node-1-vllm-0",
                               image=vllm.image_tag("vllm/vllm-openai:v0.11.0", "2.27.7"),
                               model="Qwen/Qwen3-32B-AWQ", served_model_name="qwen3-32b-awq", port=8000,
                               gpus=[0, 1], bind_address="10.0.0.11", quantization="awq_marlin",
                               hf_token_file="~/.config/gpufleet/hf-token")
    """
    # Every refusal (bad flags, bind address, unreadable secret file) comes before the first change.
    wanted = {HF_TOKEN_ENV_FILE: dict.fromkeys(HF_TOKEN_VARIABLES, hf_token_file) if hf_token_file else None,
              API_KEY_ENV_FILE: dict.fromkeys(API_KEY_VARIABLES, api_key_file) if api_key_file else None}
    env_files = {path: secrets.content_digest(secrets.env_text(v)) for path, v in wanted.items() if v}
    spec = replica_spec(name=container, image=image, model=model, served_model_name=served_model_name, port=port,
                        gpus=gpus, bind_address=bind_address, tensor_parallel_size=tensor_parallel_size,
                        max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                        quantization=quantization, extra_args=extra_args, revision=revision, env=env,
                        shm_size=shm_size,
                        hf_cache_dir=hf_cache_dir, shutdown_timeout=shutdown_timeout, stop_timeout=stop_timeout,
                        restart=restart, env_files=env_files, model_dir=model_dir, offline=offline,
                        cache_dir=replica_cache_dir(cache_dir, container))
    # Every secret file is looked at before the first command: a plan (`--dry`) stops reading an
    # operation at its first command, and each file must still say that it differs.
    secret_commands = [c for path, variables in wanted.items()
                       for c in secrets.env_file._inner(dest=path, variables=variables)]
    yield from secret_commands
    if hf_cache_dir:
        yield from files.directory._inner(path=hf_cache_dir, user="root", group="root", mode="755")
    if cache_dir:
        yield from files.directory._inner(path=replica_cache_dir(cache_dir, container), user="root", group="root",
                                          mode="700")
    # The replaced container is kept, stopped, so that a rollout can roll this replica back.
    yield from containers.container._inner(spec=spec, keep_previous=True)


# ------------------------------------------------------------------------------- ready ------------
def _grep_literal(text: str) -> str:
    """``text`` as a grep basic regular expression that matches only itself."""
    return re.sub(r"([.*^$\\[])", r"\\\1", text)


def probe_script(container: str, url: str, served_model_name: str, api_key_env_file: str | None,
                 max_restarts: int = 3) -> str:
    """One round of the readiness probe, run on the host; prints ``READY`` or what is missing.

    The API key (when there is one) is read from its root-only env file and handed to curl on
    stdin (``-H @-``), so it is never part of a command line.
    """
    q = shlex.quote
    auth = (f"sed -n 's/^VLLM_API_KEY=/Authorization: Bearer /p' {q(api_key_env_file)}"
            if api_key_env_file else "true")
    # The name is data, never shell or JSON text: quoted wherever the script shows it, encoded in the body.
    listed = '"id": *' + _grep_literal(json.dumps(served_model_name))
    body = json.dumps({"model": served_model_name, "prompt": "Hello", "max_tokens": 4, "temperature": 0})
    return "\n".join([
        f"state=$(docker inspect --type container --format '{{{{.State.Status}}}} {{{{.RestartCount}}}}' {q(container)} 2>&1)"
        " || { echo \"FAIL container: $state\"; exit 0; }",
        'case "$state" in running*|restarting*) ;; *) echo "FAIL container $state"; exit 0 ;; esac',
        # A crash loop (restart policy) never gets ready: fail at once, with its logs.
        f'[ "${{state#* }}" -lt {int(max_restarts)} ] || {{ echo "FAIL container restarted ${{state#* }} times"; exit 0; }}',
        f"code=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 {q(url + '/health')}) || code=${{code:-000}}",
        '[ "$code" = 200 ] || { echo "/health: HTTP $code (restarts: ${state#* })"; exit 0; }',
        f"models=$({auth} | curl -s --max-time 10 -H @- {q(url + '/v1/models')})"
        " || { echo \"/v1/models: no answer\"; exit 0; }",
        # printf, not echo: dash's echo rewrites the backslash escapes of the JSON it is given.
        f"printf '%s\\n' \"$models\" | grep -q {q(listed)}"
        f" || {{ echo \"/v1/models does not list \"{q(served_model_name)}\": $(echo \"$models\" | head -c 200)\"; exit 0; }}",
        f"out=$({auth} | curl -s --max-time 120 -H @- -H 'Content-Type: application/json' -d {q(body)}"
        f" {q(url + '/v1/completions')})",
        'case "$out" in *\'"choices"\'*) echo READY ;; *) echo "completion: $(echo "$out" | head -c 200)" ;; esac',
    ])


def _wait_ready(state, host, container: str, url: str, served_model_name: str, timeout: int,
                api_key_env_file: str | None, interval: float = 0.5, log_lines: int = 40):
    return wait_ready(host, container, url, served_model_name, timeout, api_key_env_file is not None,
                      interval, log_lines)


def wait_ready(host, container: str, url: str, served_model_name: str, timeout: int, api_key: bool = False,
               interval: float = 0.5, log_lines: int = 40) -> bool:
    """The probe loop of :func:`ready` on a connected host, outside a deploy: True once ready,
    False (its last ``log_lines`` logged) when the container exited or ``timeout`` passed.
    gpufleet's rollout validates a node's replicas with it in the session of its other checks."""
    sudo = sudo_arguments(host)
    api_key_env_file = API_KEY_ENV_FILE if api_key else None
    script = probe_script(container, url, served_model_name, api_key_env_file)
    started = time.monotonic()
    last_shown, last = -1e9, None
    while True:
        ok, output = host.run_shell_command(StringCommand(script), **sudo)
        line = (output.stdout_lines or ["(no output)"])[-1].strip() if ok else f"probe failed: {output.stderr}"
        elapsed = time.monotonic() - started
        if line == "READY":
            logger.info(f"{host.print_prefix}{container}: ready after {elapsed:.0f}s "
                        f"(/health 200, /v1/models lists {served_model_name}, a completion answered)")
            return True
        if line != last or elapsed - last_shown >= 30:
            logger.info(f"{host.print_prefix}{container}: waiting {elapsed:.0f}s/{timeout}s: {line}")
            last, last_shown = line, elapsed
        if line.startswith("FAIL") or elapsed >= timeout:
            why = line.removeprefix("FAIL ") if line.startswith("FAIL") else f"not ready after {timeout}s ({line})"
            _, logs = host.run_shell_command(
                StringCommand(f"docker logs --tail {int(log_lines)} {shlex.quote(container)} 2>&1"), **sudo)
            logger.error(f"{host.print_prefix}{container}: {why}; its last {log_lines} log lines:")
            for log_line in logs.stdout_lines:
                logger.error(f"{host.print_prefix}  {log_line}")
            return False
        time.sleep(interval)


@operation(is_idempotent=False)
def ready(container: str, url: str, served_model_name: str, timeout: int = 1200, api_key: bool = False,
          interval: float = 0.5, log_lines: int = 40):
    """
    Wait until a vLLM replica serves: /health 200, /v1/models lists it, one completion answers.

    + container: the replica's container name (its state and, on failure, its logs)
    + url: the replica as its clients reach it, e.g. ``http://10.0.0.11:8000``
    + served_model_name: the name /v1/models must list and the completion asks for
    + timeout: seconds before giving up; the operation then fails with the last ``log_lines``
      lines of the container's log
    + api_key: send the key from /etc/gpufleet/vllm-api-key.env (given to :func:`replica` as
      ``api_key_file``); it is read on the host and passed to curl on stdin
    + interval: seconds between probes; one probe is one SSH command and a failed curl, so
      probing twice a second costs nothing and finds the replica ready (and the drained node
      back in rotation) at most half a second late

    Progress is logged while it waits. A container that exited, or is not there, fails at once.
    This always probes (it is a gate, not a state): in deploy.py run it only when the replica
    changed, ``_if=replica_op.did_change``; on its own it checks a running replica.

    **Example:**

    .. code:: python

        r = vllm.replica(...)
        vllm.ready(name="vLLM replica answers", container="vllm-gpu-node-1-vllm-0",
                   url="http://10.0.0.11:8000", served_model_name="qwen3-32b-awq", _if=r.did_change)
    """
    yield FunctionCommand(_wait_ready, (container, url.rstrip("/"), served_model_name, timeout,
                                        API_KEY_ENV_FILE if api_key else None),
                          {"interval": interval, "log_lines": log_lines})


@operation()
def retire_replicas(keep: list[str], stop_timeout: int, cache_dir: str | None = None):
    """
    Stop and remove the replica containers the inventory no longer names (and their kept previous ones).

    + keep: the replica containers this node should run (``vllm-<replica>``)
    + stop_timeout: ``docker stop -t``: vLLM finishes its requests in flight (``--shutdown-timeout``)
    + cache_dir: the replicas' vLLM cache directory (:func:`replica`): a removed replica's own
      subdirectory goes with it

    A removed replica otherwise keeps its GPUs forever. On a live node this interrupts serving,
    so deploy.py puts it behind the serving gate: ``gpufleet rollout`` drains it on every load
    balancer first (operations/loadbalancer.py keeps a removed replica a member while it serves).

    **Example:**

    .. code:: python

        vllm.retire_replicas(keep=["vllm-gpu-node-1-vllm-0"], stop_timeout=45,
                             cache_dir="/var/lib/gpufleet/vllm-cache")
    """
    gone = [c for c in host.get_fact(ReplicaContainers) if c not in keep]
    if not gone:
        host.noop("no replica container outside the inventory")
        return
    for container in gone:
        name, previous = shlex.quote(container), shlex.quote(containers.previous_name(container))
        cache = replica_cache_dir(cache_dir, container)
        yield (f"docker stop -t {int(stop_timeout)} {name} >/dev/null && docker rm {name} >/dev/null && "
               f"{{ docker rm -f {previous} >/dev/null 2>&1 || true; }}"
               + (f" && rm -rf {shlex.quote(cache)}" if cache else ""))
