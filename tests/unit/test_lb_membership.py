"""Load-balancer membership follows the replicas: new ones join down until ready, removed ones leave when gone."""

import pytest

from operations import loadbalancer

NODE1 = {"name": "gpu-node-1-vllm-0", "address": "10.0.0.1", "port": 8000}
NODE1_NEW = {"name": "gpu-node-1-vllm-1", "address": "10.0.0.1", "port": 8001}
NODE2 = {"name": "gpu-node-2-vllm-0", "address": "10.0.0.2", "port": 8000}


class LbHost:
    """The lb host's facts; ``health`` answers UpstreamHealth, and every probe is recorded."""

    def __init__(self, health=None):
        self.health = health
        self.asked = []

    def get_fact(self, fact, **kwargs):
        assert fact.__name__ == "UpstreamHealth"
        if self.health is None:
            raise AssertionError("a converged lb must not probe its members")
        self.asked.append([m["name"] for m in kwargs["members"]])
        return {m["name"]: self.health.get(m["name"], False) for m in kwargs["members"]}


def member_lines(rows, drained=(), joining=()):
    text, _ = loadbalancer.render(rows, drained, None, joining)
    return [line.strip() for line in text.splitlines() if line.strip().startswith("server 10.")]


@pytest.fixture
def lb(monkeypatch):
    def use(health=None):
        fake = LbHost(health)
        monkeypatch.setattr(loadbalancer, "host", fake)
        return fake
    return use


def test_a_converged_lb_asks_nothing(lb):
    fake = lb(health=None)
    rows, joining = loadbalancer.membership([NODE1, NODE2], {"members": [NODE1, NODE2]})
    assert rows == [NODE1, NODE2] and joining == set() and fake.asked == []


def test_a_new_replica_joins_down_until_it_answers(lb):
    fake = lb(health={})
    rows, joining = loadbalancer.membership([NODE1, NODE1_NEW, NODE2], {"members": [NODE1, NODE2]})
    assert fake.asked == [["gpu-node-1-vllm-1"]]
    assert joining == {"gpu-node-1-vllm-1"}
    assert "server 10.0.0.1:8001 down;  # gpu-node-1-vllm-1 JOINING (not ready yet)" in member_lines(rows, (), joining)
    lb(health={"gpu-node-1-vllm-1": True})
    rows, joining = loadbalancer.membership([NODE1, NODE1_NEW, NODE2], {"members": [NODE1, NODE2]})
    assert joining == set()
    assert "server 10.0.0.1:8001 max_fails=3 fail_timeout=10s;  # gpu-node-1-vllm-1" in member_lines(rows)


def test_a_joining_member_stays_down_across_renders_until_it_answers(lb):
    fake = lb(health={})
    in_place = [NODE1, {**NODE1_NEW, "joining": True}, NODE2]  # rendered JOINING by an earlier step
    rows, joining = loadbalancer.membership([NODE1, NODE1_NEW, NODE2], {"members": in_place})
    assert joining == {"gpu-node-1-vllm-1"} and fake.asked == [["gpu-node-1-vllm-1"]]


def test_a_removed_replica_stays_while_it_serves_and_leaves_when_gone(lb):
    lb(health={"gpu-node-1-vllm-1": True})
    rows, _ = loadbalancer.membership([NODE1, NODE2], {"members": [NODE1, NODE1_NEW, NODE2]})
    assert [r["name"] for r in rows] == ["gpu-node-1-vllm-0", "gpu-node-2-vllm-0", "gpu-node-1-vllm-1"]
    lb(health={})
    rows, _ = loadbalancer.membership([NODE1, NODE2], {"members": [NODE1, NODE1_NEW, NODE2]})
    assert [r["name"] for r in rows] == ["gpu-node-1-vllm-0", "gpu-node-2-vllm-0"]


def test_a_fresh_lb_renders_the_inventory_without_probing(lb):
    fake = lb(health=None)
    rows, joining = loadbalancer.membership([NODE1, NODE2], {"members": []})
    assert rows == [NODE1, NODE2] and joining == set() and fake.asked == []


def test_the_nginx_fact_reads_the_members_of_the_config_in_place(tmp_path, monkeypatch):
    from operations.facts import edge
    from operations.facts.edge import NginxState

    app = {"name": "gpu-node-1-rag-app", "address": "10.0.0.1", "port": 8080, "upstream": "rag_app"}
    text, _ = loadbalancer.render([NODE1, NODE1_NEW, app], ["gpu-node-1-vllm-0", app["name"]], None,
                                  {"gpu-node-1-vllm-1"})
    assert "upstream rag_app {" in text and "proxy_pass http://rag_app;" in text
    # The fact's command on the whole rendered file, run here with the host's sh and awk.
    import subprocess

    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    monkeypatch.setattr(edge, "NGINX_CONF", str(conf))
    out = subprocess.run(["sh", "-c", NginxState().command(9)], capture_output=True, text=True).stdout
    state = NginxState().process(out.splitlines())
    assert state["config_sha1"] and state["live_config_id"] is None  # nothing answers on port 9 here
    assert state["members"] == [NODE1, {**NODE1_NEW, "joining": True}, app]
    # Without the app, no app upstream and no app server.
    text, _ = loadbalancer.render([NODE1], [], None)
    assert "rag_app" not in text and "listen 8080" not in text


def test_undrain_of_a_retired_replica_this_lb_never_had_changes_nothing(monkeypatch):
    state = {"config_sha1": None, "drained": [], "live_config_id": None, "members": [NODE1, NODE2]}

    class Host(LbHost):
        def __init__(self):
            super().__init__(health={})
            self.noops = []

        def get_fact(self, fact, **kwargs):
            if fact.__name__ == "NginxState":
                return state
            return super().get_fact(fact, **kwargs)

        def noop(self, text):
            self.noops.append(text)

    fake = Host()
    monkeypatch.setattr(loadbalancer, "host", fake)
    commands = list(loadbalancer.undrain._inner(replica="gpu-node-3-vllm-0", replicas=[NODE1, NODE2]))
    assert commands == [] and fake.noops == ["gpu-node-3-vllm-0 is neither drained nor a member"]


def test_a_member_whose_port_changed_stays_where_it_answers_until_its_new_port_answers(lb):
    # `gpufleet rollout --data vllm_port=8001`: draining the canary renders every lb with the new
    # port, while every node not rolled yet still serves on 8000. Each stays on 8000 until 8001 answers.
    moved = [{**NODE1, "port": 8001}, {**NODE2, "port": 8001}]
    fake = lb(health={"gpu-node-1-vllm-0@previous": True, "gpu-node-2-vllm-0@previous": True})
    rows, joining = loadbalancer.membership(moved, {"members": [NODE1, NODE2]})
    assert rows == [NODE1, NODE2] and joining == set()
    assert sorted(fake.asked[0]) == sorted(["gpu-node-1-vllm-0", "gpu-node-2-vllm-0", "gpu-node-1-vllm-0@previous",
                                            "gpu-node-2-vllm-0@previous"])
    # gpu-node-1 rolled: it answers on 8001 and moves; gpu-node-2 still serves on 8000.
    lb(health={"gpu-node-1-vllm-0": True, "gpu-node-2-vllm-0@previous": True})
    rows, joining = loadbalancer.membership(moved, {"members": [NODE1, NODE2]})
    assert rows == [moved[0], NODE2] and joining == set()
    assert "server 10.0.0.1:8001 max_fails=3 fail_timeout=10s;  # gpu-node-1-vllm-0" in member_lines(rows)
    # Answering nowhere: it joins at the new port (down), as a new replica does.
    lb(health={})
    rows, joining = loadbalancer.membership(moved, {"members": [NODE1, NODE2]})
    assert rows == moved and joining == {"gpu-node-1-vllm-0", "gpu-node-2-vllm-0"}


def test_a_maintenance_window_moves_members_at_once_and_asks_nothing(lb):
    # The window recreates every replica on its new port in the same run, after the lb's step.
    fake = lb(health=None)
    moved = [{**NODE1, "port": 8001}, {**NODE2, "port": 8001}]
    rows, joining = loadbalancer.membership(moved, {"members": [NODE1, NODE2]}, move_at_once=True)
    assert rows == moved and joining == set() and fake.asked == []
