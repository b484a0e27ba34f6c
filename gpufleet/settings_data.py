"""Settings for Milvus and the RAG application: a mixin of gpufleet.settings.HostSettings (flat keys, validated).

Milvus (operations/milvus.py) runs on the host of inventory group ``vector_db`` (one host for the
fleet, validated in gpufleet/fleet_checks.py), whose settings these ``milvus_*`` keys are; every
node's RAG app uses it. It runs in one of Milvus's two standalone modes:

- ``milvus_mode = "standalone"`` (the production default): three containers as in Milvus's
  official standalone docker-compose file — etcd (``milvus_etcd_image``), MinIO as the object
  store (``milvus_minio_image``) and Milvus (``milvus_image``, ``milvus run standalone``) — on a
  private Docker network (``milvus_network``); only Milvus publishes ports.
- ``milvus_mode = "embedded"``: one container with embedded etcd and local storage, as in
  Milvus's ``standalone_embed.sh``. The lab uses it (its Milvus image is PyPI's packaged server).

Ports are published on ``milvus_bind_address`` / ``app_bind_address``; None means the host's
``private_address`` (default: its inventory name), resolved *on the host* to an IPv4 address at
deploy time. A name
that resolves to a loopback address (Debian maps the host name to 127.0.1.1) is refused: set
``private_address`` to the host's private IP. "0.0.0.0" is accepted only when set explicitly,
for hosts whose firewall already closes those ports to the world.

Milvus authentication (``milvus_authentication``, on by default): root's password comes from
``milvus_root_password_file`` and the RAG app's user (``milvus_app_user``) logs in with
``milvus_app_password_file``, both *control-side* files of one line, checked like the HF token's
(absolute or ``~/``, readable, one non-empty line) and 6 to 256 characters (Milvus's limits): the
path's form on every host, the content for the Milvus host's (the only one whose files are read;
gpufleet/fleet_checks.py). The fleet checks also refuse a Milvus host with authentication on and no root
password file, and an app with no app password file: a fleet runs Milvus without authentication
only when its data says ``milvus_authentication = False`` in so many words (the password files are
then ignored: :meth:`DataSettings.milvus_root_secret` is what the deploy and backups use). The keys are read from
the Milvus host's settings (group ``vector_db``); every node's app gets the app user from there.

The RAG application (operations/app.py) is the operator's own image (``app_image``); None means
no application container on the node.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpufleet.backup_store import StoreError, is_s3, parse_s3
from gpufleet.settings_input import ipv4_address
from gpufleet.versions import pinned_image

VOLUME_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$"
DOCKER_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$"
# Where the nightly backup timer keeps the fleet's Milvus backups on the control host.
DEFAULT_BACKUP_DIR = "/var/lib/gpufleet/backups"
# What operations/app.py sets in the app's environment from the settings; app_env may not override it.
APP_MANAGED_ENV = ("VLLM_API_URL", "VLLM_MODEL", "MILVUS_URI", "APP_PORT", "MILVUS_COLLECTION", "RAG_TOP_K",
                   "MILVUS_USER")


class DataSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # --- Milvus ----------------------------------------------------------------------------------
    milvus_image: str = "milvusdb/milvus:v2.6.11"
    milvus_port: int = Field(19530, ge=1024, le=65535)
    milvus_mode: Literal["standalone", "embedded"] = "standalone"
    # Pinned as in milvus-io/milvus deployments/docker/standalone/docker-compose.yml.
    milvus_etcd_image: str = "quay.io/coreos/etcd:v3.5.25"
    milvus_minio_image: str = "minio/minio:RELEASE.2024-05-28T17-19-04Z"
    milvus_health_port: int = Field(9091, ge=1024, le=65535)  # /healthz and /metrics
    milvus_bind_address: str | None = None  # None: private_address, resolved on the host
    milvus_volume: str = Field("milvus-data", pattern=VOLUME_NAME)  # /var/lib/milvus
    milvus_etcd_volume: str = Field("milvus-etcd", pattern=VOLUME_NAME)  # standalone mode only
    milvus_minio_volume: str = Field("milvus-minio", pattern=VOLUME_NAME)  # standalone mode only
    milvus_network: str = Field("milvus", pattern=DOCKER_NAME)  # standalone mode: etcd+minio+milvus
    milvus_ready_timeout_s: int = Field(180, ge=10, le=3600)  # compose: start_period 90s
    # Standalone mode: MinIO's root credentials are generated on the Milvus host, never minioadmin;
    # raise the generation to rotate them (MinIO and Milvus are recreated). operations/milvus.py.
    milvus_minio_credentials_generation: int = Field(1, ge=1)
    # Docker's default seccomp profile unless a host's Milvus needs the upstream compose file's
    # seccomp:unconfined (it fails at start with "operation not permitted"): operations/milvus.py.
    milvus_seccomp_unconfined: bool = False
    # Authentication: on unless written off. Control-side secret files (one line each), never values.
    milvus_authentication: bool = True
    milvus_root_password_file: str | None = None
    milvus_app_password_file: str | None = None
    # Milvus's user name rule: a letter, then letters, digits or underscores, at most 32 in all.
    milvus_app_user: str = Field("gpufleet_app", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
    # Drift of the backups (gpufleet/data_drift.py): the newest whole backup of the inventory in
    # milvus_backup_dir (a control-host directory or s3://bucket/prefix, where `gpufleet backup`
    # without --to, its timer and a rollout's backup write) is at most this many hours old, and
    # Milvus has at least its rows.
    # None: backups are not checked.
    milvus_backup_dir: str = Field(DEFAULT_BACKUP_DIR, pattern=r"^(/|~/|s3://)")
    milvus_backup_max_age_h: int | None = Field(26, ge=1, le=24 * 366)  # a nightly timer, and 2 h to finish
    # A bucket as backup location (gpufleet/backup_store.py): its endpoint (None: AWS), region, and a
    # control-side file in the AWS credentials format (None: boto3's chain: AWS_* environment,
    # ~/.aws, an instance role).
    # No user:password@ in it: botocore prints the endpoint in its errors.
    milvus_backup_s3_endpoint: str | None = Field(None, pattern=r"^https?://[^\s/@]+(/[^\s@]*)?$")
    milvus_backup_s3_region: str | None = Field(None, pattern=r"^[a-z0-9-]{1,32}$")
    milvus_backup_s3_credentials_file: str | None = None

    # --- RAG application -------------------------------------------------------------------------
    app_image: str | None = None  # None: no application container
    app_port: int = Field(8080, ge=1024, le=65535)
    app_bind_address: str | None = None  # None: private_address, resolved on the host
    # "node": the replica on the same node (first one); "lb": the first load balancer's lb_port.
    app_vllm_target: Literal["node", "lb"] = "node"
    app_collection: str = Field("gpufleet_docs", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
    app_top_k: int = Field(4, ge=1, le=50)
    app_env: dict[str, str] = Field(default_factory=dict)  # extra, non-secret environment
    app_ready_timeout_s: int = Field(180, ge=10, le=3600)

    @field_validator("milvus_image", "milvus_etcd_image", "milvus_minio_image", "app_image")
    @classmethod
    def _data_image_pinned(cls, v: str | None) -> str | None:
        return None if v is None else pinned_image(v)

    @field_validator("milvus_bind_address", "app_bind_address")
    @classmethod
    def _bind_is_ip(cls, v: str | None) -> str | None:
        return None if v is None else ipv4_address(v, "an IP address literal (or leave unset for the host's private_address)")

    @field_validator("milvus_backup_dir")
    @classmethod
    def _backup_location(cls, v: str) -> str:
        if is_s3(v):
            try:
                parse_s3(v)
            except StoreError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("milvus_root_password_file", "milvus_app_password_file", "milvus_backup_s3_credentials_file")
    @classmethod
    def _milvus_password_path(cls, v: str | None) -> str | None:
        # The form only: the content is checked for the Milvus host alone (fleet_checks.py), so that
        # an ad-hoc target (`gpufleet verify @local` on a node) needs no Milvus secret on this machine.
        if v is not None and not v.startswith(("/", "~")):
            raise ValueError("an absolute or ~/ path outside the repository (secrets are never in the checkout)")
        return v

    @field_validator("app_env")
    @classmethod
    def _app_env_not_ours(cls, v: dict[str, str]) -> dict[str, str]:
        clash = sorted(set(v) & set(APP_MANAGED_ENV))
        if clash:
            raise ValueError(f"no keys the deploy sets itself ({', '.join(clash)}); use the matching setting")
        return v

    def milvus_root_secret(self) -> str | None:
        """Root's password file when authentication is on, else None (the deploy then runs Milvus without)."""
        return self.milvus_root_password_file if self.milvus_authentication else None

    def milvus_app_secret(self) -> str | None:
        """The app user's password file when authentication is on, else None."""
        return self.milvus_app_password_file if self.milvus_authentication else None

    def data_problems(self) -> list[tuple[str, Any, str]]:
        """Port clashes between Milvus, the app and the vLLM replicas of the same host."""
        problems = []
        used: dict[int, str] = {self.milvus_port: "milvus_port"}
        if self.milvus_health_port in used:
            problems.append(("milvus_health_port", self.milvus_health_port,
                             f"a port other than {used[self.milvus_health_port]}"))
        used[self.milvus_health_port] = "milvus_health_port"
        replicas = self.replicas_declared() if hasattr(self, "replicas_declared") else []
        for replica in replicas:
            used.setdefault(replica.port, f"vLLM replica {replica.name}")
        if self.app_image and self.app_port in used:
            problems.append(("app_port", self.app_port, f"a port other than {used[self.app_port]}'s"))
        return problems
