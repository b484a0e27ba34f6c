"""The data tier's placement and load balancing (issue 12): one Milvus host, the app behind the lbs."""

from __future__ import annotations

import pytest
from pyinfra.api import OperationError

from gpufleet import PROJECT_ROOT, deploy_args
from gpufleet.fleet import load_fleet
from gpufleet.rollout_steps import _members_of
from operations import loadbalancer

PROD = str(PROJECT_ROOT / "inventory/prod.py")
APP = {"app_image": "registry.internal/rag-app:1.4.2"}


@pytest.fixture(scope="module")
def fleet():
    return load_fleet(PROD, APP, cwd=str(PROJECT_ROOT))


def test_one_milvus_host_and_every_node_app_behind_the_lbs(fleet):
    assert fleet.vector_db.name == "db-01" and not fleet.vector_db.is_gpu_node
    assert fleet.vector_db.milvus_address == "10.40.0.31"  # its private address: what the apps dial
    assert [m["name"] for m in fleet.app_members] == [f"gpu-node-0{i}-rag-app" for i in range(1, 5)]
    assert {(m["address"], m["port"], m["upstream"]) for m in fleet.app_members} == {
        (f"10.40.1.1{i}", 8080, "rag_app") for i in range(1, 5)}
    # A rollout drains a node's app with its replica, and checks both are back after it.
    assert _members_of(fleet.hosts["gpu-node-02"]) == ["gpu-node-02-vllm-0", "gpu-node-02-rag-app"]
    assert _members_of(load_fleet(PROD, cwd=str(PROJECT_ROOT)).hosts["gpu-node-02"]) == ["gpu-node-02-vllm-0"]


def test_milvus_listening_everywhere_is_dialled_at_the_private_address():
    fleet = load_fleet(PROD, {**APP, "milvus_bind_address": "0.0.0.0"}, cwd=str(PROJECT_ROOT))
    assert fleet.vector_db.milvus_address == "10.40.0.31"


def test_the_lb_config_has_an_app_upstream_with_a_member_per_node(fleet):
    args = deploy_args.lb_args(fleet, "lb-01")
    text, config_id = loadbalancer.render(args["replicas"], ["gpu-node-03-rag-app"], args["options"])
    app_block = text[text.index("upstream rag_app {"):]
    app_block = app_block[:app_block.index("}")]
    assert app_block.count("server 10.40.1.1") == 4
    assert "server 10.40.1.13:8080 down;  # gpu-node-03-rag-app DRAINED" in app_block
    vllm_block = text[text.index("upstream vllm {"):text.index("upstream rag_app {")]
    assert vllm_block.count(":8000 ") == 4 and ":8080" not in vllm_block
    assert "listen 8080;" in text and "proxy_pass http://rag_app;" in text
    # Another lb_app_port is another listener, and another config id.
    other = {**args["options"], "app_listen_port": 8090}
    text2, id2 = loadbalancer.render(args["replicas"], [], other)
    assert "listen 8090;" in text2 and id2 != config_id


class NginxHost:
    """An lb whose nginx config in place has ``members``, ``drained`` of them drained."""

    def __init__(self, members, drained):
        self.state = {"config_sha1": None, "drained": list(drained), "live_config_id": None, "members": members}

    def get_fact(self, fact, **kwargs):
        if fact.__name__ == "NginxState":
            return self.state
        if fact.__name__ == "UpstreamHealth":
            return {m["name"]: True for m in kwargs["members"]}
        return None

    def noop(self, text):
        pass


def test_no_live_member_left_is_counted_per_upstream(fleet, monkeypatch):
    args = deploy_args.lb_args(fleet, "lb-01")
    rows = loadbalancer.members(args["replicas"])
    apps = [m["name"] for m in rows if m.get("upstream") == "rag_app"]
    # Every app but node 4's is drained: draining node 4's app would leave the app upstream empty,
    # whatever the vLLM upstream has live.
    monkeypatch.setattr(loadbalancer, "host", NginxHost(rows, apps[:3]))
    with pytest.raises(OperationError, match="no live member in upstream rag_app"):
        list(loadbalancer.drain._inner(replica="gpu-node-04-rag-app", **args))
    # The node's members drained together are refused as a whole (its vLLM replica is not drained alone).
    with pytest.raises(OperationError, match="no live member in upstream rag_app"):
        list(loadbalancer.drain._inner(replica=["gpu-node-04-vllm-0", "gpu-node-04-rag-app"], **args))
    # Node 4's vLLM replica still drains: three vLLM members stay live (drained apps do not count).
    commands = list(loadbalancer.drain._inner(replica="gpu-node-04-vllm-0", **args))
    assert any("drained/gpu-node-04-vllm-0" in str(c) for c in commands)


def _split(commands) -> tuple[list[str], list[str], list[str]]:
    """``(shell commands, uploaded texts, reload scripts)`` of an operation's commands."""
    shells, uploads, reloads = [], [], []
    for c in commands:
        if type(c).__name__ == "FileUploadCommand":
            uploads.append(c.src.getvalue())
        else:
            text = str(c)
            (reloads if "reload" in text else shells).append(text)
    return shells, uploads, reloads


def test_a_nodes_members_drain_and_undrain_together_in_one_reload(fleet, monkeypatch):
    args = deploy_args.lb_args(fleet, "lb-01")
    rows = loadbalancer.members(args["replicas"])
    node4 = ["gpu-node-04-vllm-0", "gpu-node-04-rag-app"]
    monkeypatch.setattr(loadbalancer, "host", NginxHost(rows, []))
    shells, uploads, reloads = _split(loadbalancer.drain._inner(replica=node4, **args))
    # One new config with both members down: one `nginx -t`, one reload.
    assert len(uploads) == 1 and len(reloads) == 1
    [markers] = [c for c in shells if "drained/" in c]
    for name in node4:
        assert f"drained/{name}" in markers
        assert f"# {name} DRAINED" in uploads[0]
    # Undrained together: both markers removed by one command, one config with neither down.
    monkeypatch.setattr(loadbalancer, "host", NginxHost(rows, node4))
    shells, uploads, reloads = _split(loadbalancer.undrain._inner(replica=node4, **args))
    [removal] = [c for c in shells if c.startswith("rm -f")]
    assert all(f"drained/{name}" in removal for name in node4)
    assert len(uploads) == 1 and len(reloads) == 1 and "DRAINED" not in uploads[0]


@pytest.mark.parametrize("data, key, expected", [
    ({"app_image": "registry.internal/rag-app:1"}, "app_image", "a host in inventory group vector_db"),
])
def test_the_app_without_a_milvus_host_is_refused(tmp_path, data, key, expected):
    from gpufleet.settings import SettingsError

    inventory = tmp_path / "inventory.py"
    inventory.write_text("gpu_nodes = [('gpu-node-01', {'private_address': '10.40.1.11'})]\n")
    with pytest.raises(SettingsError) as refused:
        load_fleet(str(inventory), data, cwd=str(PROJECT_ROOT))
    [issue] = [i for i in refused.value.issues if i.key == key]
    assert issue.host == "gpu-node-01" and expected in issue.expected


def test_lb_app_port_must_be_free_only_where_the_app_is_served():
    from gpufleet.settings import SettingsError

    load_fleet(PROD, {"lb_port": 8080}, cwd=str(PROJECT_ROOT))  # no app in the fleet: 8080 is free to use
    with pytest.raises(SettingsError) as refused:
        load_fleet(PROD, {**APP, "lb_port": 8080}, cwd=str(PROJECT_ROOT))
    issues = [i for i in refused.value.issues if i.key == "lb_app_port"]
    assert {i.host for i in issues} == {"lb-01", "lb-02"} and "lb_port" in issues[0].expected
