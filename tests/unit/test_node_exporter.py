"""node_exporter on every host (operations/node_exporter.py): where it listens and who scrapes it."""

import yaml

from gpufleet import PROJECT_ROOT, deploy_args
from gpufleet.fleet import load_fleet
from gpufleet.settings import HostSettings
from operations import monitoring, node_exporter

PROD = str(PROJECT_ROOT / "inventory/prod.py")


def test_every_host_is_scraped_on_its_private_address():
    fleet = load_fleet(PROD, cwd=str(PROJECT_ROOT))
    config = yaml.safe_load(monitoring.render_prometheus(**deploy_args.prometheus_args(fleet, "lb-01")))
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "node"]
    scraped = {c["labels"]["node"]: c["targets"] for c in job["static_configs"]}
    hosts = list(fleet.hosts.values())  # GPU nodes, load balancers and the Milvus host
    assert len(hosts) == len(fleet.nodes) + len(fleet.load_balancers) + 1
    assert scraped == {h.name: [f"{h.address}:9100"] for h in hosts}
    assert all(h.address.startswith("10.") for h in hosts)  # private addresses, as the exporters bind


def test_it_listens_on_the_private_address_not_every_interface():
    assert '--web.listen-address=10.40.1.11:9100 ' in node_exporter.defaults_text("10.40.1.11", 9100)
    assert '--web.listen-address=:9100 ' in node_exporter.defaults_text("0.0.0.0", 9100)  # the lab's choice
    assert '--web.listen-address=[fd00::11]:9100 ' in node_exporter.defaults_text("fd00::11", 9100)


def test_its_port_must_not_collide_with_another_exporter():
    problems = HostSettings(gpu_count=2, node_exporter_port=9401).consistency_problems()
    assert ("node_exporter_port", 9401, "a port not already used by gpu_monitor_port") in problems
