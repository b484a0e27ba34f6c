"""Settings for the nginx load balancer and monitoring (DCGM exporter, gpu_monitor, Prometheus): a mixin of gpufleet.settings.HostSettings (flat keys, validated).

Production defaults. The lab overrides only what differs there (group_data/lab.py): the DCGM
exporter image (a stand-in in the lab registry) and where pip finds gpu_monitor's wheels.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpufleet.settings_input import check_control_file, read_control_file
from gpufleet.versions import exact_debian_version, pinned_image
from operations.monitoring import ALERTMANAGER_GROUP_INTERVAL, ALERTMANAGER_GROUP_WAIT, webhook_url_problem


def check_pem_file(path: str, block: str) -> Path:
    """A control-side PEM file holding a ``-----BEGIN ...{block}-----`` block. Never shows it."""
    if not re.search(rf"-----BEGIN [A-Z ]*{block}-----", read_control_file(path)):
        raise ValueError(f"a PEM file with a {block} block (none found)")
    return Path(path).expanduser()


_NGINX_SIZE = re.compile(r"[0-9]+[kKmMgG]?")
# Prometheus's duration: units from the largest down, each at most once ("1h30m", not "30m1h").
PROMETHEUS_DURATION = r"(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?"


def tls_pair_problem(cert_file: str, key_file: str) -> str | None:
    """Why nginx could not serve this certificate with this key (checked before any host is touched:
    the lb writes the files in place before ``nginx -t``), or None. Never shows the key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).expanduser().read_bytes())
        key = serialization.load_pem_private_key(Path(key_file).expanduser().read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        return f"an unencrypted PEM private key and certificate nginx can load ({type(exc).__name__})"
    same = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, same) != \
            key.public_key().public_bytes(serialization.Encoding.DER, same):
        return "the private key of lb_tls_cert_file's certificate (they do not match)"
    if cert.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc):
        return f"a certificate that has not expired (lb_tls_cert_file expired {cert.not_valid_after_utc:%Y-%m-%d})"
    return None


class EdgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # --- nginx on lb hosts (operations/loadbalancer.py) -------------------------------------------
    lb_port: int = Field(80, ge=1, le=65535)  # where clients reach the replicas (and TLS, when on)
    # Security floors of Debian's `nginx` and `prometheus` (operations/distro_packages.py): this build
    # or a newer one of the same upstream version. None: whatever the distribution has, not held.
    lb_nginx_min_version: str | None = None
    lb_max_fails: int = Field(3, ge=0, le=100)  # passive check: failures within lb_fail_timeout_s ...
    lb_fail_timeout_s: int = Field(10, ge=1, le=3600)  # ... mark a member down for this long
    lb_connect_timeout_s: int = Field(5, ge=1, le=60)  # a dead node fails over fast
    lb_read_timeout_s: int = Field(600, ge=10, le=86400)  # streamed completions: long gaps allowed
    lb_next_upstream_tries: int = Field(3, ge=1, le=16)  # retries on error/timeout/502/503, never after bytes
    lb_next_upstream_timeout_s: int = Field(30, ge=0, le=3600)  # 0: no limit on retrying
    lb_client_max_body_size: str = "64m"  # long prompts, base64 images
    lb_upstream_keepalive: int = Field(64, ge=0, le=10000)  # idle upstream connections per worker
    lb_upstream_keepalive_timeout_s: int = Field(4, ge=1, le=3600)  # below uvicorn's 5 s (vLLM)
    lb_status_port: int = Field(8081, ge=1, le=65535)  # stub_status and config id, 127.0.0.1 only
    lb_app_port: int = Field(8080, ge=1, le=65535)  # the RAG app's upstream (when the fleet runs the app)
    lb_worker_connections: int = Field(8192, ge=512, le=1_000_000)
    # TLS on lb_port: control-side PEM files (both or neither), uploaded to /etc/nginx/gpufleet-tls/
    # (the key root 0600, written like every secret: operations/secrets.py). None: plain HTTP (the
    # lab; a fleet behind a TLS-terminating edge). No plain-HTTP listener is kept beside TLS.
    lb_tls_cert_file: str | None = None
    lb_tls_key_file: str | None = None
    # nginx answers 401 to a request without `Authorization: Bearer <the key of vllm_api_key_file>`
    # before any replica sees it (/lb-health stays open). vLLM checks the same key itself.
    lb_require_api_key: bool = False

    # --- GPU nodes: DCGM exporter, gpu_monitor (operations/monitoring.py) -------------------------
    dcgm_exporter_image: str = "nvcr.io/nvidia/k8s/dcgm-exporter:4.5.3-4.8.2-distroless"
    dcgm_exporter_port: int = Field(9400, ge=1024, le=65535)
    gpu_monitor_port: int = Field(9401, ge=1024, le=65535)
    gpu_monitor_interval_s: float = Field(5.0, ge=0.5, le=3600)
    # Exact pins of gpu_monitor's venv; they match pyproject.toml, where the unit tests run them.
    gpu_monitor_requirements: list[str] = Field(
        default_factory=lambda: ["nvidia-ml-py==13.615.71", "prometheus-client==0.23.1"])
    # Extra `pip install` arguments for that venv: a mirror (--index-url URL) or, air-gapped and in
    # the lab, a wheel directory (--no-index --find-links URL --trusted-host HOST).
    monitor_pip_install_args: list[str] = Field(default_factory=list)
    # Where the exporters on GPU nodes (DCGM exporter, gpu_monitor) listen. Unset: the node's
    # private address (Prometheus scrapes them there), never every interface; "0.0.0.0" only where
    # the private network is the only one (the lab, whose hosts are known by name).
    metrics_listen_address: str | None = None
    # Milvus's /metrics: scraped on milvus_health_port (settings_data.py), where /healthz is too.

    # --- node_exporter on every host (operations/node_exporter.py) --------------------------------
    # On metrics_listen_address (the private address), textfile collector for drift's metrics.
    node_exporter_port: int = Field(9100, ge=1024, le=65535)
    node_exporter_min_version: str | None = None  # see lb_nginx_min_version

    # --- Prometheus on lb hosts --------------------------------------------------------------------
    prometheus_min_version: str | None = None  # see lb_nginx_min_version
    prometheus_port: int = Field(9090, ge=1, le=65535)
    prometheus_scrape_interval_s: int = Field(15, ge=1, le=3600)
    prometheus_retention: str = Field("15d", pattern=r"^[0-9]+(ms|s|m|h|d|w|y)$")
    # Alertmanager (Debian's prometheus-alertmanager) beside Prometheus: a *control-side* file whose one
    # line is the webhook URL alerts are posted to (a secret: such URLs carry tokens; never printed).
    # Read when the settings load: a URL Alertmanager would refuse (operations/monitoring.py
    # webhook_url_problem: a port that is not a number...) is refused then, by this key.
    # None: no Alertmanager; alerts are evaluated and shown in Prometheus only.
    alertmanager_webhook_url_file: str | None = None
    # How long Alertmanager holds a new group's first alert for others of its group (its
    # `group_wait`): 30s, Alertmanager's own default, pages once per node rather than once per alert.
    alertmanager_group_wait: str = ALERTMANAGER_GROUP_WAIT
    # How often a group that has notified sends what changed (its `group_interval`): 5m,
    # Alertmanager's own default. A resolved alert is told at the group's next send; one that fires
    # again before that send is, to the receiver, the firing alert it was told about, and is not
    # told again before the 4h repeat interval. Not zero (amtool refuses it).
    alertmanager_group_interval: str = ALERTMANAGER_GROUP_INTERVAL

    @field_validator("alertmanager_webhook_url_file")
    @classmethod
    def _webhook_url(cls, v: str | None) -> str | None:
        # Read and checked before any host is touched (the operation checks it again when it runs).
        if v is not None:
            problem = webhook_url_problem(check_control_file(v).read_text(encoding="utf-8").strip())
            if problem:
                raise ValueError(f"a file holding one webhook URL Alertmanager can load: {problem} "
                                 "(the value is not shown)")
        return v

    @field_validator("alertmanager_group_wait", "alertmanager_group_interval")
    @classmethod
    def _alertmanager_waits_are_durations(cls, v: str) -> str:
        if not v or not re.fullmatch(PROMETHEUS_DURATION, v):
            raise ValueError(f"{v!r} is not a Prometheus duration such as 10s, 30s or 1m")
        return v

    @field_validator("alertmanager_group_interval")
    @classmethod
    def _group_interval_above_zero(cls, v: str) -> str:
        if not re.search(r"[1-9]", v):
            raise ValueError(f"{v!r} is zero: a group interval above zero such as 10s or 5m (Alertmanager refuses 0)")
        return v
    # How long an alert's condition must hold before it fires, per alert, replacing the `for:` of
    # files/prometheus/alerts.yml: e.g. {"VllmReplicaDown": "10m"} for a fleet whose replicas take
    # longer than 5 minutes to load. Only alerts that have a `for:` can be tuned (the others fire at once).
    alert_hold_for: dict[str, str] = Field(default_factory=dict)

    @field_validator("alert_hold_for")
    @classmethod
    def _hold_times(cls, v: dict[str, str]) -> dict[str, str]:
        from operations.monitoring import alert_hold_times

        shipped = alert_hold_times()
        for alert, duration in v.items():
            if alert not in shipped:
                raise ValueError(f"{alert!r} is not an alert with a `for:` in files/prometheus/alerts.yml "
                                 f"(those are: {', '.join(sorted(shipped))})")
            if not str(duration) or not re.fullmatch(PROMETHEUS_DURATION, str(duration)):
                raise ValueError(f"{alert}: {duration!r} is not a Prometheus duration such as 30s, 5m or 1h30m")
        return v

    @field_validator("lb_tls_cert_file", "lb_tls_key_file")
    @classmethod
    def _pem_file(cls, v: str | None, info) -> str | None:
        if v is not None:
            check_pem_file(v, "PRIVATE KEY" if info.field_name == "lb_tls_key_file" else "CERTIFICATE")
        return v

    @field_validator("lb_nginx_min_version", "prometheus_min_version", "node_exporter_min_version")
    @classmethod
    def _floor_exact(cls, v: str | None) -> str | None:
        return exact_debian_version(v)

    @field_validator("dcgm_exporter_image")
    @classmethod
    def _dcgm_image_pinned(cls, v: str) -> str:
        return pinned_image(v)

    @field_validator("lb_client_max_body_size")
    @classmethod
    def _nginx_size(cls, v: str) -> str:
        if not _NGINX_SIZE.fullmatch(v):
            raise ValueError("an nginx size such as 64m, 512k or 1g")
        return v

    @field_validator("gpu_monitor_requirements")
    @classmethod
    def _requirements_pinned(cls, v: list[str]) -> list[str]:
        loose = [r for r in v if not re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", r)]
        if loose:
            raise ValueError(f"exact pins such as prometheus-client==0.23.1, not {loose}")
        return v

    def edge_consistency_problems(self) -> list[tuple[str, Any, str]]:
        """Port clashes between the load balancer's and the exporters' listeners.

        Called from HostSettings.consistency_problems (settings.py).
        """
        problems: list[tuple[str, Any, str]] = []
        if (self.lb_tls_cert_file is None) != (self.lb_tls_key_file is None):
            missing = "lb_tls_key_file" if self.lb_tls_key_file is None else "lb_tls_cert_file"
            problems.append((missing, None, "set together with "
                             + ("lb_tls_cert_file" if missing == "lb_tls_key_file" else "lb_tls_key_file")
                             + " (TLS needs both the certificate and its key)"))
        if self.lb_tls_cert_file and self.lb_tls_key_file:
            why = tls_pair_problem(self.lb_tls_cert_file, self.lb_tls_key_file)
            if why:
                problems.append(("lb_tls_key_file", self.lb_tls_key_file, why))
        if self.lb_require_api_key and getattr(self, "vllm_api_key_file", None) is None:
            problems.append(("lb_require_api_key", True, "vllm_api_key_file set: the key nginx checks is vLLM's"))
        # lb_app_port is checked with the fleet (gpufleet/fleet_checks.py): it is used only where a node runs the app.
        lb_ports = {"lb_port": self.lb_port, "lb_status_port": self.lb_status_port,
                    "prometheus_port": self.prometheus_port, "node_exporter_port": self.node_exporter_port}
        node_ports = {"dcgm_exporter_port": self.dcgm_exporter_port, "gpu_monitor_port": self.gpu_monitor_port,
                      "node_exporter_port": self.node_exporter_port,
                      "milvus_health_port": getattr(self, "milvus_health_port", 9091)}
        if getattr(self, "gpu_count", 0):
            replicas = getattr(self, "replicas_declared", lambda: [])()
            node_ports.update({f"vllm port of {r.name}": r.port for r in replicas})
        for ports in (lb_ports, node_ports):
            seen: dict[int, str] = {}
            for key, port in ports.items():
                if port in seen and not key.startswith("vllm"):
                    problems.append((key, port, f"a port not already used by {seen[port]}"))
                elif port in seen:
                    problems.append(("vllm_replicas", port, f"a port not already used by {seen[port]}"))
                seen.setdefault(port, key)
        return problems
