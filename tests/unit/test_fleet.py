"""The fleet as inventories declare it, through pyinfra's own inventory loader, and the CLI."""

import json

from click.testing import CliRunner

from gpufleet import PROJECT_ROOT
from gpufleet.cli import main
from gpufleet.fleet import load_fleet

PROD = str(PROJECT_ROOT / "inventory" / "prod.py")


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_prod_inventory_has_four_nodes_two_lbs_and_a_replica_per_node():
    fleet = load_fleet(PROD, cwd=str(PROJECT_ROOT))
    assert [n.name for n in fleet.nodes] == ["gpu-node-01", "gpu-node-02", "gpu-node-03", "gpu-node-04"]
    assert [h.name for h in fleet.load_balancers] == ["lb-01", "lb-02"]
    assert [(r.name, r.address, r.gpus, r.port) for r in fleet.replicas][0] == (
        "gpu-node-01-vllm-0", "10.40.1.11", [0, 1], 8000)
    assert all(n.data["ssh_strict_host_key_checking"] == "yes" for n in fleet.hosts.values())


def test_group_data_lab_overrides_only_the_lab():
    lab = load_fleet(str(PROJECT_ROOT / "inventory" / "lab.py"), cwd=str(PROJECT_ROOT))
    prod = load_fleet(PROD, cwd=str(PROJECT_ROOT))
    assert lab.nodes[0].settings.lab_gpus and prod.nodes[0].settings.lab_gpus is None


def test_validate_prod_exits_0(monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    result = run("validate", "inventory/prod.py")
    assert result.exit_code == 0, result.output
    assert "7 hosts valid" in result.output


def test_validate_with_bad_data_override_exits_1_and_names_host_key_value(monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    result = run("validate", "inventory/prod.py", "--data", "vllm_gpu_memory_utilization=1.7", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    keys = {(e["host"], e["key"], e["value"]) for e in report["errors"]}
    assert ("gpu-node-03", "vllm_gpu_memory_utilization", 1.7) in keys
    assert len(report["errors"]) == 7  # every host, in one run


def test_validate_override_uses_pyinfra_value_parsing(monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    # JSON lists parse as lists, as with `pyinfra --data`: a valid override must pass.
    ok = run("validate", "inventory/prod.py", "--data", 'vllm_extra_args=["--enable-prefix-caching"]')
    assert ok.exit_code == 0, ok.output


def test_replica_names_must_be_unique_fleet_wide(tmp_path, monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    inv = tmp_path / "dup.py"
    inv.write_text('gpu_nodes = [("a", {"vllm_replicas": [{"name": "x-y", "gpus": [0, 1], "port": 8000}]}),'
                   ' ("a-x", {"vllm_replicas": [{"name": "y", "gpus": [0, 1], "port": 8000}]})]\n')
    result = run("validate", str(inv))
    assert result.exit_code == 1
    assert "unique in the fleet" in result.stderr


def test_inventory_json_lists_nodes_and_replicas(monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    result = run("inventory", "inventory/prod.py", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert len(data["nodes"]) == 4
    assert [r["node"] for r in data["replicas"]] == [n["name"] for n in data["nodes"]]
    assert all(r["gpus"] == [0, 1] for r in data["replicas"])


def test_missing_inventory_is_a_clear_error(monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    result = run("validate", "inventory/nope.py")
    assert result.exit_code == 1
    assert "an inventory file that exists" in result.stderr


def test_every_version_pin_lives_in_group_data_all():
    """Each image, version and requirement pin has its fleet value in group_data/all.py, where a
    change of pin is made (app_image is the operator's own application, None by default)."""
    import runpy

    from gpufleet import PROJECT_ROOT
    from gpufleet.settings import HostSettings

    pinned = runpy.run_path(str(PROJECT_ROOT / "group_data" / "all.py"))
    keys = [k for k in HostSettings.model_fields if k.endswith(("_image", "_version", "_requirements"))]
    assert len(keys) > 8
    assert [k for k in keys if k not in pinned and k != "app_image"] == []
