"""The command lines that matter most, written out by hand (issue 14).

The cases in tests/operations/vllm.* and loadbalancer.* are stored by their generators
(tests/operations/make_*_cases.py) from what the operations yield, so they follow the code when it
changes; they catch a change, not a wrong command. Here each operation runs against fixed facts and
its command is compared with text written in this file, independent of the code under test: drop or
change a flag and the test fails. Only values derived from digests of the whole input (the spec
label, nginx's config id) are matched by pattern.

The apt pin cases (tests/operations/nvidia.nccl, pinned_apt.packages) have no generator: they were
written by hand already. The fresh host's NCCL pin is checked here too, beside the other two.
"""

from __future__ import annotations

import re

from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.operations import parse_commands
from pyinfra_testing.util import FakeState, create_host

from operations import loadbalancer, nvidia, vllm

DIGEST = "<16 hex>"  # in an expected text: a short digest (operations/digests.short_digest)


def _run(op, facts: dict, **kwargs) -> list:
    state = FakeState()
    host = create_host(state, facts=facts)
    with ctx_state.use(state), ctx_host.use(host):
        return parse_commands(list(op._inner(**kwargs)))


def _matches(expected: str, actual: str) -> bool:
    pattern = re.escape(expected).replace(re.escape(DIGEST), "[0-9a-f]{16}")
    return re.fullmatch(pattern, actual) is not None


def _assert_matches(expected: str, actual: str) -> None:
    assert _matches(expected, actual), f"\nexpected: {expected}\nactual:   {actual}"


def test_digest_placeholder_matches_only_a_digest():
    assert _matches(f"--label a={DIGEST} x", "--label a=0123456789abcdef x")
    assert not _matches(f"--label a={DIGEST} x", "--label a=0123456789abcde x")
    assert not _matches("--gpus x", "--gpus y")


# ----------------------------------------------------------------------------- vLLM replica -------
REPLICA = "vllm-gpu-node-1-vllm-0"
FRESH_NODE = {
    "files.File": {"path=/etc/gpufleet/hf-token.env": None, "path=/etc/gpufleet/vllm-api-key.env": None},
    "files.Directory": {"path=/var/lib/gpufleet/hf-cache": None, f"path=/var/lib/gpufleet/vllm-cache/{REPLICA}": None},
    "docker.ContainerState": {f"container={REPLICA}": {
        "exists": False, "running": False, "status": None, "restarting": False, "spec": None, "image_id": None,
        "image": None, "restart_count": 0}},
}

DOCKER_RUN = (
    f"docker run -d --name {REPLICA} --restart unless-stopped"
    # The spec digest: drift and the next deploy compare it to decide "recreate".
    f" --label io.gpufleet.spec={DIGEST}"
    " --label io.gpufleet.role=vllm --label io.gpufleet.served-model-name=qwen3-32b-awq"
    # The weights cache is the mounted one, so a recreated replica does not download them again.
    " --env HF_HOME=/root/.cache/huggingface"
    " --env NCCL_P2P_DISABLE=1"
    " --env VLLM_CACHE_ROOT=/var/cache/gpufleet-vllm"
    # Secrets only through root-only env files: never `-e HF_TOKEN=...` or `--api-key ...`, which
    # `ps`, `docker inspect` and pyinfra's output would show.
    " --env-file /etc/gpufleet/hf-token.env --env-file /etc/gpufleet/vllm-api-key.env"
    # Published on the node's private address only, never on every interface.
    " --publish 10.0.0.11:8000:8000"
    " --volume /var/lib/gpufleet/hf-cache:/root/.cache/huggingface"
    f" --volume /var/lib/gpufleet/vllm-cache/{REPLICA}:/var/cache/gpufleet-vllm"
    # Both GPUs of the node, and exactly those (tensor parallel 2).
    " --gpus '\"device=0,1\"'"
    # NCCL's SHM transport between the two GPUs lives in /dev/shm: Docker's 64 MB default hangs it.
    " --shm-size 16g"
    # docker stop waits vLLM's drain (--shutdown-timeout 30) plus a 15 s grace before SIGKILL.
    " --stop-timeout 45"
    " gpufleet/vllm-rtx5090:0123456789abcdef Qwen/Qwen3-32B-AWQ --served-model-name qwen3-32b-awq"
    # 0.0.0.0 inside the container's own network namespace; the host side is the --publish above.
    " --host 0.0.0.0 --port 8000"
    " --tensor-parallel-size 2 --quantization awq_marlin --max-model-len 32768 --gpu-memory-utilization 0.8"
    # On SIGTERM vLLM finishes in-flight requests for this long (the rollout's drain).
    " --shutdown-timeout 30"
)


def test_vllm_replica_docker_run_line():
    commands = _run(vllm.replica, FRESH_NODE, container=REPLICA, image="gpufleet/vllm-rtx5090:0123456789abcdef",
                    model="Qwen/Qwen3-32B-AWQ", served_model_name="qwen3-32b-awq", port=8000, gpus=[0, 1],
                    bind_address="10.0.0.11", tensor_parallel_size=2, max_model_len=32768,
                    gpu_memory_utilization=0.8, quantization="awq_marlin", env={"NCCL_P2P_DISABLE": "1"},
                    shm_size="16g", shutdown_timeout=30, hf_token_file="tests/fixtures/vllm/hf-token",
                    api_key_file="tests/fixtures/vllm/api-key")
    runs = [c for c in commands if isinstance(c, str) and c.startswith("docker run")]
    assert len(runs) == 1
    _assert_matches(DOCKER_RUN, runs[0])
    # The env files are written (from stdin, root only) before the container that reads them starts.
    writes = [c["command"] for c in commands if isinstance(c, dict)]
    assert [w.rsplit(" ", 1)[-1] for w in writes] == ["/etc/gpufleet/hf-token.env", "/etc/gpufleet/vllm-api-key.env"]
    assert all("umask 077" in w and "chmod 600" in w for w in writes)
    assert commands.index(runs[0]) > max(commands.index(c) for c in commands if isinstance(c, dict))


# ----------------------------------------------------------------------------- nginx swap ---------
LB_FRESH = {
    "edge.NginxState": {"status_port=8081": {"config_sha1": None, "drained": [], "live_config_id": None}},
    "files.File": {"path=/etc/nginx/gpufleet-tls/cert.pem": None, "path=/etc/nginx/gpufleet-tls/key.pem": None,
                   "path=/etc/nginx/gpufleet-api-key.conf": None},
}
LB_REPLICAS = [{"name": "gpu-node-1-vllm-0", "address": "gpu-node-1", "port": 8000},
               {"name": "gpu-node-2-vllm-0", "address": "gpu-node-2", "port": 8000}]

NGINX_SWAP = "\n".join([
    "set -u",
    # Test the new file on its own before it goes anywhere near the live one; a rejected file is
    # removed and the live config stays as it was.
    'if ! out=$(nginx -t -q -c /etc/nginx/nginx.conf.gpufleet-new 2>&1); then rm -f /etc/nginx/nginx.conf.gpufleet-new;'
    ' echo "gpufleet: nginx -t rejects the new config, /etc/nginx/nginx.conf unchanged: $out" >&2; exit 1; fi',
    # Keep the live file (with its mode) for the roll-back: a copy that fails (a full disk) stops
    # everything before the swap. Then move the new one in (atomic rename).
    "if [ -e /etc/nginx/nginx.conf ]; then cp -p /etc/nginx/nginx.conf /etc/nginx/nginx.conf.gpufleet-old"
    " || { rm -f /etc/nginx/nginx.conf.gpufleet-old /etc/nginx/nginx.conf.gpufleet-new;"
    ' echo "gpufleet: cannot copy /etc/nginx/nginx.conf to /etc/nginx/nginx.conf.gpufleet-old, nothing changed" >&2;'
    " exit 1; }; fi",
    "moved=0; if mv -f /etc/nginx/nginx.conf.gpufleet-new /etc/nginx/nginx.conf; then moved=1;"
    ' else echo "gpufleet: cannot move the new files in" >&2; fi',
    "ok=0",
    # Reload (restart when stopped), then wait until the workers serve the new config id: a reload
    # that nginx accepted but did not apply is a failure, not a success. No reload without the move.
    'if [ "$moved" = 1 ] && systemctl reload-or-restart nginx; then for i in $(seq 1 40); do'
    ' if [ "$(curl -fsS -m 2 http://127.0.0.1:8081/gpufleet-config 2>/dev/null)" = ' + DIGEST + " ]; then ok=1; break; fi;"
    " sleep 0.25; done; fi",
    'if [ "$ok" = 1 ]; then rm -f /etc/nginx/nginx.conf.gpufleet-old; exit 0; fi',
    f'echo "gpufleet: nginx does not serve config {DIGEST} after reload; rolling back" >&2',
    # Roll back: the kept file goes back and nginx reloads it; the step still fails.
    "if [ -e /etc/nginx/nginx.conf.gpufleet-old ]; then mv -f /etc/nginx/nginx.conf.gpufleet-old /etc/nginx/nginx.conf;"
    " systemctl reload-or-restart nginx || true; fi",
    "exit 1",
])


def test_nginx_writes_beside_the_live_file_then_tests_swaps_reloads_and_rolls_back():
    commands = _run(loadbalancer.nginx, LB_FRESH, replicas=LB_REPLICAS, options={"listen_port": 80, "status_port": 8081})
    assert len(commands) == 2
    upload, script = commands
    # The new config is uploaded beside the live one, never over it.
    assert upload[0] == "upload" and upload[2] == "/etc/nginx/nginx.conf.gpufleet-new"
    _assert_matches(NGINX_SWAP, script)
    # The id the script waits for is the one the uploaded file carries.
    config_id = re.search(r"# config id: ([0-9a-f]{16})\n", upload[1]).group(1)
    assert script.count(config_id) == 2


# ----------------------------------------------------------------------------- apt pins -----------
NCCL_FRESH = {
    "files.File": {"path=/etc/apt/preferences.d/gpufleet-nccl": None},
    "files.Directory": {"path=/etc/apt/preferences.d/gpufleet-nccl": None, "path=/etc/apt/preferences.d": {"mode": 755}},
    "apt.PackageStates": {"packages=['libnccl-dev', 'libnccl2']": {}},
}
APT_GET = ('DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::="--force-confdef"'
           ' -o Dpkg::Options::="--force-confold"')


def test_nccl_pin_preferences_install_and_hold():
    commands = _run(nvidia.nccl, NCCL_FRESH, version="2.27.7", cuda_version="12.9")
    upload = commands[0]
    assert upload[0] == "upload" and upload[2] == "/etc/apt/preferences.d/gpufleet-nccl"
    # Both packages, at NVIDIA's Debian version of NCCL 2.27.7 built for CUDA 12.9; a priority
    # above 1000 makes apt keep (or go back to) that version even when it means a downgrade.
    assert upload[1].endswith(
        "Package: libnccl2 libnccl-dev\n"
        "Pin: version 2.27.7-1+cuda12.9\n"
        "Pin-Priority: 1001\n")
    assert commands[1:] == [
        "chown root:root /etc/apt/preferences.d/gpufleet-nccl",
        "chmod 644 /etc/apt/preferences.d/gpufleet-nccl",
        f"{APT_GET} update",
        # The exact versions; a held or newer package is moved back to the pin.
        f"{APT_GET} install --no-install-recommends --allow-downgrades --allow-change-held-packages"
        " libnccl2=2.27.7-1+cuda12.9 libnccl-dev=2.27.7-1+cuda12.9",
        # Held, so no `apt upgrade` (manual or unattended) moves them.
        "apt-mark hold libnccl-dev libnccl2",
    ]
