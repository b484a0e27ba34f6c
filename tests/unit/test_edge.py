"""The load balancer's nginx config and Prometheus's scrape config, rendered from the production
inventory; target checks on a real /api/v1/targets answer; edge settings."""

import json
import re
from pathlib import Path

import yaml

from gpufleet import PROJECT_ROOT, deploy_args
from gpufleet.fleet import load_fleet
from gpufleet.settings import HostSettings
from operations import loadbalancer, monitoring

PROD = str(PROJECT_ROOT / "inventory" / "prod.py")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "prometheus"
SERVER = re.compile(r"^\s*server (\S+):(\d+)( down| max_fails=(\d+) fail_timeout=(\d+)s);\s+# (\S+)", re.M)


def _upstream(text):
    return text[text.index("upstream vllm {"):text.index("}", text.index("upstream vllm {"))]


def test_nginx_has_one_member_per_replica_of_the_inventory():
    fleet = load_fleet(PROD, cwd=str(PROJECT_ROOT))
    args = deploy_args.lb_args(fleet, "lb-01")
    text, config_id = loadbalancer.render(args["replicas"], [], args["options"])
    found = [(m[0], int(m[1]), m[5]) for m in SERVER.findall(_upstream(text))]
    assert found == [(r.address, r.port, r.name) for r in fleet.replicas]
    assert len(found) == 4 and all(" down" not in line for line in _upstream(text).splitlines())
    assert "least_conn;" in text and "keepalive 64;" in text and "proxy_buffering off;" in text
    assert "proxy_next_upstream error timeout http_502 http_503;" in text and "non_idempotent" not in text.split(
        "proxy_next_upstream error")[1].split(";")[0]
    assert "listen 80 default_server;" in text and "listen 127.0.0.1:8081;" in text
    assert f'return 200 "{config_id}\\n";' in text


def test_drained_member_is_down_and_changes_the_config_id():
    fleet = load_fleet(PROD, cwd=str(PROJECT_ROOT))
    args = deploy_args.lb_args(fleet, "lb-01")
    live, live_id = loadbalancer.render(args["replicas"], [], args["options"])
    drained, drained_id = loadbalancer.render(args["replicas"], ["gpu-node-02-vllm-0", "gone-vllm-0"], args["options"])
    rows = {m[5]: m[2] for m in SERVER.findall(_upstream(drained))}
    assert rows["gpu-node-02-vllm-0"] == " down" and rows["gpu-node-01-vllm-0"].startswith(" max_fails=3")
    assert drained_id != live_id and len(rows) == 4  # a marker for an unknown replica adds nothing


def test_split_node_gives_two_members_on_two_ports():
    fleet = load_fleet(PROD, cwd=str(PROJECT_ROOT), overrides={
        "vllm_tensor_parallel_size": 1, "vllm_model": "Qwen/Qwen3-8B-AWQ", "vllm_quantization": "awq_marlin",
        "vllm_replicas": [{"name": "vllm-0", "gpus": [0], "port": 8000}, {"name": "vllm-1", "gpus": [1], "port": 8001}]})
    args = deploy_args.lb_args(fleet, "lb-01")
    text, _ = loadbalancer.render(args["replicas"], [], args["options"])
    assert len(SERVER.findall(_upstream(text))) == 8 == len(fleet.replicas)
    prom = yaml.safe_load(monitoring.render_prometheus(**deploy_args.prometheus_args(fleet, "lb-01")))
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert len(jobs["vllm"]["static_configs"]) == 8 and len(jobs["dcgm"]["static_configs"]) == 4


def test_prometheus_has_a_target_per_replica_and_per_node_exporter():
    fleet = load_fleet(PROD, cwd=str(PROJECT_ROOT))
    args = deploy_args.prometheus_args(fleet, "lb-01")
    prom = yaml.safe_load(monitoring.render_prometheus(**args))
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert prom["global"]["scrape_interval"] == "15s"
    assert [(c["targets"], c["labels"]["replica"]) for c in jobs["vllm"]["static_configs"]] == [
        ([f"{r.address}:{r.port}"], r.name) for r in fleet.replicas]
    for job, port in (("dcgm", 9400), ("gpu_monitor", 9401)):
        assert [c["targets"] for c in jobs[job]["static_configs"]] == [[f"{n.address}:{port}"] for n in fleet.nodes]
    # Milvus only where it runs: the vector_db host (a host of its own in production), with its node_exporter.
    assert [c["targets"] for c in jobs["milvus"]["static_configs"]] == [["10.40.0.31:9091"]]
    assert ["10.40.0.31:9100"] in [c["targets"] for c in jobs["node"]["static_configs"]]
    # Prometheus listens on the lb's private address (inventory/prod.py), and scrapes itself there.
    assert args["options"]["listen_address"] == fleet.hosts["lb-01"].address == "10.40.0.21"
    assert jobs["prometheus"]["static_configs"][0]["targets"] == ["10.40.0.21:9090"]
    assert monitoring.prometheus_defaults(9090, "15d", "10.40.0.21").endswith(
        '"--web.listen-address=10.40.0.21:9090 --storage.tsdb.retention.time=15d"\n')
    assert ":9090 " in monitoring.prometheus_defaults(9090, "15d", "0.0.0.0")  # every interface, as before


def test_exporters_are_scraped_where_metrics_listen_address_puts_them(tmp_path):
    # gpu-node-01 puts its exporters on a metrics network of their own and also runs Milvus (on its
    # private address); gpu-node-02 listens on every interface; gpu-node-03 and lb-01 leave it unset.
    inventory = tmp_path / "metrics.py"
    inventory.write_text(
        'gpu_nodes = [("gpu-node-01", {"private_address": "10.40.1.11", "metrics_listen_address": "10.50.1.11"}),\n'
        '             ("gpu-node-02", {"private_address": "10.40.1.12", "metrics_listen_address": "0.0.0.0"}),\n'
        '             ("gpu-node-03", {"private_address": "10.40.1.13"})]\n'
        'lb = [("lb-01", {"private_address": "10.40.0.21"})]\n'
        'vector_db = [("gpu-node-01", {})]\n')
    fleet = load_fleet(str(inventory), cwd=str(PROJECT_ROOT))
    prom = yaml.safe_load(monitoring.render_prometheus(**deploy_args.prometheus_args(fleet, "lb-01")))
    targets = {j["job_name"]: {c["labels"]["node"]: c["targets"] for c in j["static_configs"]}
               for j in prom["scrape_configs"] if j["job_name"] in ("dcgm", "gpu_monitor", "node", "milvus")}
    assert targets["dcgm"] == {"gpu-node-01": ["10.50.1.11:9400"], "gpu-node-02": ["10.40.1.12:9400"],
                               "gpu-node-03": ["10.40.1.13:9400"]}
    assert targets["gpu_monitor"] == {"gpu-node-01": ["10.50.1.11:9401"], "gpu-node-02": ["10.40.1.12:9401"],
                                      "gpu-node-03": ["10.40.1.13:9401"]}
    assert targets["node"] == {"gpu-node-01": ["10.50.1.11:9100"], "gpu-node-02": ["10.40.1.12:9100"],
                               "gpu-node-03": ["10.40.1.13:9100"], "lb-01": ["10.40.0.21:9100"]}
    # Milvus is published on its own bind address (the private one here), not on the exporters'.
    assert targets["milvus"] == {"gpu-node-01": ["10.40.1.11:9091"]}


def test_edge_port_clashes():
    clash = HostSettings(lb_status_port=80)
    assert ("lb_status_port", 80, "a port not already used by lb_port") in clash.edge_consistency_problems()
    node = HostSettings(gpu_count=2, gpu_monitor_port=8000)
    assert any(k == "vllm_replicas" for k, _, _ in node.edge_consistency_problems())


def test_edge_settings_refuse_loose_pins():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        HostSettings(dcgm_exporter_image="nvcr.io/nvidia/k8s/dcgm-exporter:latest")
    with pytest.raises(ValidationError):
        HostSettings(gpu_monitor_requirements=["prometheus-client>=0.20"])


def test_dcgm_counters_are_dev_fields_only():
    rows = [line.split(",")[0].strip() for line in monitoring.dcgm_counters().splitlines()
            if line.strip() and not line.startswith("#")]
    assert rows and all(r.startswith("DCGM_FI_DEV_") for r in rows)
    spec = monitoring.dcgm_spec("img:1", 9400, "x")
    cmd = spec.run_command()
    assert "--gpus all" in cmd and "--cap-add" not in cmd and "0.0.0.0:9400:9400" in cmd  # no SYS_ADMIN: no DCP fields


def test_unit_runs_the_venv_python_quietly():
    unit = monitoring.monitor_unit(9401, "0.0.0.0", 5.0)
    assert "ExecStart=/opt/gpufleet/gpu-monitor/venv/bin/python /opt/gpufleet/gpu-monitor/gpu_monitor.py" in unit
    assert "--port 9401 --addr 0.0.0.0 --interval 5.0 --quiet" in unit and "Restart=always" in unit
    json.dumps(deploy_args.prometheus_args(load_fleet(PROD, cwd=str(PROJECT_ROOT)), "lb-01"))  # JSON-safe args


def _pem(tmp_path, name, block):
    path = tmp_path / name
    path.write_text(f"-----BEGIN {block}-----\nTUlJQ...\n-----END {block}-----\n")
    return str(path)


def test_tls_and_the_api_key_at_the_lb_render_paths_never_the_key(tmp_path):
    fleet = load_fleet(PROD, cwd=str(PROJECT_ROOT))
    args = deploy_args.lb_args(fleet, "lb-01")
    key_file = tmp_path / "api-key"
    key_file.write_text("sk-test-0123456789abcdef\n")
    on = {**args["options"], "tls_cert_file": _pem(tmp_path, "cert.pem", "CERTIFICATE"),
          "tls_key_file": _pem(tmp_path, "key.pem", "PRIVATE KEY"), "api_key_file": str(key_file)}
    text, config_id = loadbalancer.render(args["replicas"], [], on)
    assert "listen 80 ssl default_server;" in text and "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert f"ssl_certificate {loadbalancer.TLS_CERT};" in text and f"ssl_certificate_key {loadbalancer.TLS_KEY};" in text
    assert f"include {loadbalancer.API_KEY_MAP};" in text and "return 401" in text
    assert "sk-test-0123456789abcdef" not in text  # the key lives in the root-only map file only
    files = loadbalancer.edge_files(on)
    # A case-sensitive regex entry: nginx matches a map's plain strings ignoring case (and hashes
    # them: a long key would not fit its buckets).
    assert '"~^Bearer sk-test-0123456789abcdef$" 1;' in files[loadbalancer.API_KEY_MAP][0]
    assert files[loadbalancer.TLS_KEY][1] == "600" and files[loadbalancer.TLS_CERT][1] == "644"
    # A rotated API key keeps the config id (it is in the world-readable nginx.conf; the operation
    # reloads nginx instead); a rotated certificate changes it.
    key_file.write_text("sk-test-rotated-000000000000\n")
    assert loadbalancer.render(args["replicas"], [], on)[1] == config_id
    Path(on["tls_cert_file"]).write_text(Path(on["tls_cert_file"]).read_text() + "\n")
    assert loadbalancer.render(args["replicas"], [], on)[1] != config_id
    # Off, the id is what it was before these options existed (tests/operations/loadbalancer.nginx
    # hold those ids): upgrading gpufleet reloads no lb.
    # The same for a fleet without the RAG app behind the lb (its port is not in that id either).
    vllm_only = [m for m in args["replicas"] if "upstream" not in m]
    off_id = loadbalancer.render(vllm_only, [], args["options"])[1]
    monkey_defaults = {k: v for k, v in loadbalancer.DEFAULT_OPTIONS.items()
                       if k not in ("tls_cert_file", "tls_key_file", "api_key_file", "app_listen_port")}
    rows = [{**m, "drained": False} for m in loadbalancer.members(vllm_only)]
    legacy = {k: v for k, v in args["options"].items() if k in monkey_defaults}
    assert off_id == loadbalancer.short_digest([rows, {**monkey_defaults, **legacy}]) != config_id


def test_a_key_nginx_cannot_hold_is_refused_without_showing_it(tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text('bad"key\n')
    try:
        loadbalancer.edge_files({"api_key_file": str(key_file)})
    except Exception as exc:  # noqa: BLE001 - OperationValueError
        assert "bad" not in str(exc) and "bearer token" in str(exc)
    else:
        raise AssertionError("a key with a quote was accepted")


def test_tls_settings_need_both_files_and_the_api_key_needs_vllms(tmp_path):
    cert = _pem(tmp_path, "cert.pem", "CERTIFICATE")
    half = HostSettings(lb_tls_cert_file=cert)
    assert any(k == "lb_tls_key_file" for k, _, _ in half.edge_consistency_problems())
    no_key = HostSettings(lb_require_api_key=True)
    assert ("lb_require_api_key", True, "vllm_api_key_file set: the key nginx checks is vLLM's") in \
        no_key.edge_consistency_problems()
    for field, block in (("lb_tls_cert_file", "CERTIFICATE"), ("lb_tls_key_file", "PRIVATE KEY")):
        wrong = tmp_path / f"{field}.txt"
        wrong.write_text("not a pem\n")
        try:
            HostSettings(**{field: str(wrong)})
        except ValueError as exc:
            assert f"a PEM file with a {block} block" in str(exc)
        else:
            raise AssertionError(f"{field}: a file without a {block} block was accepted")


def _pair(tmp_path, name, days=1):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=2))
            .not_valid_after(now + datetime.timedelta(days=days)).sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_a_certificate_and_a_key_that_do_not_match_or_an_expired_one_are_refused(tmp_path):
    from gpufleet.settings_edge import tls_pair_problem

    cert_a, key_a = _pair(tmp_path, "a")
    cert_b, key_b = _pair(tmp_path, "b")
    assert tls_pair_problem(cert_a, key_a) is None
    mismatch = HostSettings(lb_tls_cert_file=cert_a, lb_tls_key_file=key_b).edge_consistency_problems()
    assert ("lb_tls_key_file", key_b, "the private key of lb_tls_cert_file's certificate (they do not match)") in mismatch
    old_cert, old_key = _pair(tmp_path, "old", days=-1)
    assert "has not expired" in tls_pair_problem(old_cert, old_key)
    assert "BEGIN" not in str(mismatch)  # nothing of the key's content in the message


# --- the lb certificate's expiry as a node_exporter textfile metric ---------------------------------

def _tls_expiry_commands(facts: dict, cert_file):
    """``(commands, no-op text)`` of loadbalancer.tls_expiry_metric against a fake lb host."""
    from pyinfra.context import ctx_host, ctx_state
    from pyinfra_testing.util import FakeState, create_host

    state = FakeState()
    host = create_host(state, facts=facts)
    with ctx_state.use(state), ctx_host.use(host):
        commands = list(loadbalancer.tls_expiry_metric._inner(cert_file=cert_file))
    return commands, host.noop_description


def _certificate(tmp_path, not_after):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lb.example")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(not_after - datetime.timedelta(days=90)).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def test_the_certificate_served_is_written_as_its_expiry_metric(tmp_path):
    import datetime

    not_after = datetime.datetime(2027, 3, 1, 12, 0, tzinfo=datetime.timezone.utc)
    cert_file = _certificate(tmp_path, not_after)
    metric = loadbalancer.TLS_EXPIRY_METRIC
    commands, _ = _tls_expiry_commands({"files.File": {f"path={metric}": None},
                                        "files.Directory": {f"path={metric}": None,
                                                            "path=/var/lib/prometheus/node-exporter": {"mode": 755}}},
                                       cert_file)
    [upload] = [c for c in commands if type(c).__name__ == "FileUploadCommand"]
    text = upload.src.getvalue()
    assert metric.startswith("/var/lib/prometheus/node-exporter/") and metric.endswith(".prom")
    [sample] = [line for line in text.splitlines() if not line.startswith("#")]
    assert sample == (f'gpufleet_lb_tls_cert_not_after_timestamp_seconds{{path="{loadbalancer.TLS_CERT}"}} '
                      f"{int(not_after.timestamp())}")
    assert "# TYPE gpufleet_lb_tls_cert_not_after_timestamp_seconds gauge" in text


def test_tls_off_removes_a_metric_left_behind_and_is_quiet_without_one():
    metric = loadbalancer.TLS_EXPIRY_METRIC
    commands, _ = _tls_expiry_commands({"files.File": {f"path={metric}": {"mode": 644, "size": 200}}}, None)
    assert [str(c) for c in commands] == [f"rm -f {metric}"]
    commands, noop = _tls_expiry_commands({"files.File": {f"path={metric}": None}}, None)
    assert commands == [] and "TLS is off" in noop


def test_the_expiry_alerts_read_the_metric_the_deploy_writes():
    rules = {r["alert"]: r["expr"] for g in yaml.safe_load(monitoring.alert_rules())["groups"] for r in g["rules"]
             if "alert" in r}
    for alert in ("LbCertificateExpiresSoon", "LbCertificateExpired"):
        assert loadbalancer.TLS_EXPIRY_NAME in rules[alert]
