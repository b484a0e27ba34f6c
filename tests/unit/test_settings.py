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
