"""Settings: what a host's data may say, and every way it can be wrong."""

import pytest

from gpufleet.settings import HostSettings, validate_host_data

COMMIT = "0123456789abcdef0123456789abcdef01234567"
GPU_NODE = {"gpu_count": 2, "gpu_memory_gib": 31.84, "ssh_hostname": "10.0.0.1", "_sudo": True,
            "vllm_model_revision": COMMIT}


def errors(data):
    settings, issues = validate_host_data("gpu-node-01", {**GPU_NODE, **data})
    return settings, {(i.key, i.severity): i for i in issues}


def test_valid_gpu_node_has_one_tp2_replica_and_ignores_pyinfra_keys():
    settings, issues = validate_host_data("gpu-node-01", GPU_NODE)
    assert issues == []
    [replica] = settings.replicas_declared()
    assert (replica.gpus, replica.port) == ([0, 1], 8000)


@pytest.mark.parametrize(
    ("key", "value", "expected_fragment"),
    [
        ("vllm_prot", 8000, "known gpufleet key"),
        ("gpu_count", "two", "valid integer"),
        ("vllm_gpu_memory_utilization", 1.5, "less than or equal to 0.98"),
        ("vllm_port", 80, "greater than or equal to 1024"),
        ("nvidia_driver_version", "580.*", "exact driver version"),
        ("container_toolkit_version", ">=1.17", "exact Debian package version"),
        ("nccl_version", "2.27", "exact NCCL version"),
        ("vllm_image", "vllm/vllm-openai:latest", "not :latest"),
        ("vllm_image", "vllm/vllm-openai", "explicit tag"),
        ("vllm_env", {"NCCL_MIN_NRINGS": "4"}, "deprecated NCCL variable"),
        ("vllm_env", {"VLLM_USE_V1": "0"}, "V0 engine"),
        ("nvidia_kernel_modules", "closed", "'open' or 'proprietary'"),
        ("rollout_drain_timeout_s", 0, "greater than or equal to 1"),  # 0 fails every drain
    ],
)
def test_each_bad_value_names_key_value_and_expectation(key, value, expected_fragment):
    settings, found = errors({key: value})
    assert settings is None
    issue = found[(key, "error")]
    assert issue.host == "gpu-node-01"
    assert issue.value == value
    assert expected_fragment in issue.expected


@pytest.mark.parametrize(
    ("data", "key", "expected_fragment"),
    [
        ({"vllm_tensor_parallel_size": 4}, "vllm_tensor_parallel_size", "at most gpu_count (2)"),
        ({"nvidia_driver_branch": 550, "nvidia_driver_version": "550.163.01"}, "nvidia_driver_branch", ">= 570"),
        ({"nvidia_kernel_modules": "proprietary"}, "nvidia_kernel_modules", "no proprietary modules"),
        ({"nvidia_driver_version": "575.57.08"}, "nvidia_driver_version", "on nvidia_driver_branch 580"),
        ({"vllm_model": "Qwen/Qwen3-235B-A22B"}, "vllm_model", "weights need"),
    ],
)
def test_inconsistent_combinations_are_errors(data, key, expected_fragment):
    settings, found = errors(data)
    assert settings is None
    assert expected_fragment in found[(key, "error")].expected


def test_proprietary_modules_are_fine_before_blackwell():
    settings, issues = validate_host_data(
        "old", {**GPU_NODE, "gpu_compute_capability": "8.9", "nvidia_kernel_modules": "proprietary",
                "nvidia_driver_branch": 550, "nvidia_driver_version": "550.163.01"})
    assert settings is not None, issues


def test_two_replicas_on_one_gpu_or_port_are_errors():
    replicas = [{"name": "a", "gpus": [0], "port": 8000}, {"name": "b", "gpus": [0], "port": 8000}]
    settings, issues = validate_host_data("n", {**GPU_NODE, "vllm_tensor_parallel_size": 1, "vllm_replicas": replicas})
    expected = [i.expected for i in issues]
    assert settings is None
    assert any("GPU 0 free (already used by a)" in e for e in expected)
    assert any("port 8000 free (already used by a)" in e for e in expected)


def test_split_node_into_two_tp1_replicas_is_valid():
    replicas = [{"name": "vllm-0", "gpus": [0], "port": 8000}, {"name": "vllm-1", "gpus": [1], "port": 8001}]
    settings, issues = validate_host_data(
        "n", {**GPU_NODE, "vllm_tensor_parallel_size": 1, "vllm_model": "Qwen/Qwen3-8B", "vllm_quantization": None,
              "vllm_max_model_len": 8192, "vllm_replicas": replicas})
    assert [i for i in issues if i.severity == "error"] == []
    assert [r.port for r in settings.replicas_declared()] == [8000, 8001]


def test_every_error_is_reported_at_once_field_and_combination():
    _, found = errors({"vllm_prot": 1, "nccl_version": "2.27", "vllm_tensor_parallel_size": 3})
    assert {("vllm_prot", "error"), ("nccl_version", "error"), ("vllm_tensor_parallel_size", "error")} <= set(found)


def test_debug_env_is_an_error_unless_a_debugging_session_says_so():
    # gpufleet/settings_input.py: a fleet tool applies data to every node, so these are errors.
    settings, found = errors({"vllm_env": {"NCCL_DEBUG": "INFO"}, "vllm_extra_args": ["--enforce-eager"]})
    assert settings is None
    assert "allow_debug_settings" in found[("vllm_env", "error")].expected
    assert ("vllm_extra_args", "warning") in found  # --enforce-eager only costs speed: a warning
    settings, found = errors({"vllm_env": {"NCCL_DEBUG": "INFO"}, "allow_debug_settings": True})
    assert settings is not None and ("vllm_env", "warning") in found
    settings, found = errors({"vllm_env": {"NCCL_DEBUG": "WARN"}})
    assert settings is not None and found == {}


def test_docker_keys_are_ours_but_connector_keys_pass_through():
    settings, issues = validate_host_data("n", {**GPU_NODE, "docker_engine_min_version": "20.10.24+dfsg1-1+deb12u1+b6",
                                                "docker_platform": "linux/amd64"})
    assert issues == [] and settings.docker_engine_min_version == "20.10.24+dfsg1-1+deb12u1+b6"
    _, found = errors({"docker_enigne_version": "1"})
    assert ("docker_enigne_version", "error") in found


def test_the_model_revision_is_a_commit_and_a_branch_is_refused():
    commit = COMMIT
    _, found = errors({"vllm_model_revision": "main"})
    issue = found[("vllm_model_revision", "error")]
    assert issue.host == "gpu-node-01" and issue.value == "main" and "40 hex digits" in issue.expected
    _, found = errors({"vllm_model_revision": commit})
    assert not [k for k in found if k[1] == "error"]
    assert [w[0] for w in HostSettings(gpu_count=2).warnings()] == ["vllm_model_revision"]  # unpinned: said, not fatal
    assert HostSettings(gpu_count=2, vllm_model_revision=commit).warnings() == []
    assert HostSettings(gpu_count=2, vllm_model="/models/qwen3-tiny").warnings() == []  # a directory has no revisions


def test_a_vllm_warning_is_said_for_the_gpu_nodes_only():
    from gpufleet.fleet import load_fleet

    fleet = load_fleet("inventory/prod.py", {"vllm_extra_args": ["--enforce-eager"]})
    warned = {w.host for w in fleet.warnings if w.key == "vllm_extra_args"}
    assert warned == {h.name for h in fleet.nodes} and warned and len(fleet.hosts) > len(warned)


# ---------------------------------------------------------------------------- review mends -----
@pytest.mark.parametrize("args", [["--api_key", "TopSecretValue123"], ["--api_key=TopSecretValue123"],
                                  ["--dtype", "float32", "--hf_token", "TopSecretValue123"]])
def test_a_secret_flag_spelt_with_underscores_is_refused_and_its_value_never_shown(args):
    # vLLM reads --api_key as --api-key: the refusal and the redaction must read it the same way.
    import json

    from gpufleet.settings import format_issues

    _, issues = validate_host_data("gpu-node-01", {**GPU_NODE, "vllm_extra_args": args})
    [issue] = [i for i in issues if i.key == "vllm_extra_args"]
    assert issue.host == "gpu-node-01" and ("_file" in issue.expected and "no --" in issue.expected)
    shown = format_issues(issues) + json.dumps([i.as_dict() for i in issues]) + repr(issue.value)
    assert "TopSecretValue123" not in shown
    assert "***" in json.dumps(issue.as_dict())


@pytest.mark.parametrize("mirror", [
    "http://mirror.internal/$(reboot)", "http://mirror.internal/`id`", 'http://mirror.internal/"x',
    "http://mirror.internal/'x", "http://mirror.internal/a b", "http://mirror.internal\nTypes: deb",
    "http://mirror.internal/\n", "http://svc:Hunter2Pw@mirror.internal/", "ftp://mirror.internal/",
    "mirror.internal", "http:///nvidia", "http://mirror.internal/a\\b",
])
def test_apt_mirror_is_a_plain_http_url(mirror):
    # It goes into a deb822 sources file and into the key fetch's shell command.
    settings, found = errors({"apt_mirror": mirror})
    assert settings is None
    issue = found[("apt_mirror", "error")]
    assert issue.host == "gpu-node-01" and "http:// or https:// URL" in issue.expected
    assert "Hunter2Pw" not in repr(issue.value)


def test_the_mirrors_and_key_names_in_use_stay_valid():
    for mirror in ("http://lab-repo", "https://mirror.internal/nvidia/", "http://10.40.0.5:8080/cuda"):
        settings, found = errors({"apt_mirror": mirror, "nvidia_repo_key_name": "gpufleet-lab.pub"})
        assert settings is not None and found == {}, (mirror, found)


@pytest.mark.parametrize("name", ["../../keys/x.pub", "a b.pub", "x.pub\n", "$(id).pub", "x.pub;id", ""])
def test_the_repo_key_name_is_a_file_name(name):
    settings, found = errors({"nvidia_repo_key_name": name})
    assert settings is None
    assert "a file name" in found[("nvidia_repo_key_name", "error")].expected


@pytest.mark.parametrize(("key", "value"), [
    ("nccl_version", "2.27.7\n"),
    ("vllm_image", "vllm/vllm-openai:v0.20.1\n"),
    ("nvidia_driver_version", "580.95.05\n"),
    ("container_toolkit_version", "1.17.8-1\n"),
    ("nccl_cuda_version", "12.9\n"),
    ("vllm_shm_size", "16g\n"),
    ("supported_os", ["Debian 12\n"]),
    ("lb_client_max_body_size", "64m\n"),
    ("gpu_monitor_requirements", ["prometheus-client==0.23.1\n"]),
])
def test_a_trailing_newline_is_not_an_exact_value(key, value):
    # re.match's "$" matches before a final newline; the value would end up on a command line with it.
    settings, found = errors({key: value})
    assert settings is None
    issue = found[(key, "error")]
    assert issue.host == "gpu-node-01" and issue.value == value


def test_the_validators_outside_the_settings_refuse_a_trailing_newline_too():
    from pyinfra.api import OperationValueError

    from gpufleet.backup_store import StoreError, parse_s3
    from gpufleet.fleet_checks import inventory_problems
    from operations import secrets

    with pytest.raises(StoreError, match="expected s3://BUCKET"):
        parse_s3("s3://fleet-backups/milvus\n")
    issues = inventory_problems([("gpu-node-01\n", ["gpu_nodes"], {"private_address": "10.0.0.1"})], [], {})
    assert [(i.key, i.value) for i in issues if i.key == "inventory name"] == [("inventory name", "gpu-node-01\n")]
    with pytest.raises(OperationValueError, match="not an environment variable name"):
        secrets.env_text({"VLLM_API_KEY\n": "/nonexistent"})
    with pytest.raises(OperationValueError, match="three octal digits"):
        secrets._check_args("/etc/gpufleet/x.env", "600\n")
