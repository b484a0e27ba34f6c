"""Milvus standalone on the fleet's Milvus host (inventory group ``vector_db``: a GPU node or a host
of its own), in either of Milvus's two single-node modes; and its health gate.

``mode="standalone"`` is Milvus's official docker-compose file (milvus-io/milvus
deployments/docker/standalone/docker-compose.yml) as three containers on a private Docker network:

- ``milvus-etcd``: etcd with the compose file's compaction/quota settings, data on a named volume;
- ``milvus-minio``: MinIO (``minio server /minio_data``), data on a named volume;
- ``milvus-standalone``: ``milvus run standalone`` with ``ETCD_ENDPOINTS=milvus-etcd:2379`` and
  ``MINIO_ADDRESS=milvus-minio:9000``, data on a named volume at /var/lib/milvus.

``mode="embedded"`` is Milvus's ``scripts/standalone_embed.sh``: one ``milvus-standalone``
container with ``ETCD_USE_EMBED=true``, ``COMMON_STORAGETYPE=local`` and the script's
embedEtcd.yaml (written to /etc/gpufleet/milvus/ on the host and mounted read-only).

Both modes run the same command, ``milvus run standalone``; the lab's Milvus image (PyPI's packaged
server, lab/images/milvus) accepts and ignores it, so the lab passes exactly these arguments.

Ports: only Milvus publishes, and only 19530 (gRPC + REST) and 9091 (/healthz, /metrics), both on
the host's private address — never 0.0.0.0 unless an operator sets ``milvus_bind_address`` to it.
etcd (2379) and MinIO (9000/9001) are not published at all: in standalone mode they are reachable
only from containers on the private network; the embedded etcd stays inside its container.
A host *name* is resolved on the host (``getent ahostsv4``), because ``docker run -p`` needs an
IP; a name that resolves to loopback (Debian's 127.0.1.1 for the host name) is refused rather than
silently publishing Milvus where no other host can reach it.

Switching modes removes the other mode's containers; data is not migrated between the modes
(embedded keeps etcd and segments under /var/lib/milvus, standalone in etcd and MinIO volumes).
MinIO does not keep its default ``minioadmin`` credentials: :func:`standalone` generates a
root user and password *on the Milvus host* (``/etc/gpufleet/milvus/minio.env``, root 0600, written
with its final mode), and both MinIO (``MINIO_ROOT_USER``/``MINIO_ROOT_PASSWORD``) and Milvus
(``MINIO_ACCESS_KEY_ID``/``MINIO_SECRET_ACCESS_KEY``, Milvus's documented variables for
``minio.accessKeyID``/``minio.secretAccessKey``) read that file with ``--env-file``. The values are
never on the control host, in a command line or in any output; only the file's first line, a
generation number, is ever read back. Rotate by raising ``milvus_minio_credentials_generation``:
new values are generated and MinIO and Milvus are recreated with them (MinIO accepts new root
credentials at start; the data is not encrypted with them).

Authentication (``root_password_file``, the control-side ``milvus_root_password_file``): Milvus
runs with ``COMMON_SECURITY_AUTHORIZATIONENABLED=true`` (Milvus's environment override of
``common.security.authorizationEnabled``: its config reads ``A_B_C`` for ``a.b.c``) and reads
``COMMON_SECURITY_DEFAULTROOTPASSWORD`` (``common.security.defaultRootPassword``, Milvus >= 2.4.x:
root's password when Milvus first creates root) from a root-only env file written with
operations.secrets (``/etc/gpufleet/milvus/auth.env``, 0600, atomic, compared by digest, never
shown), passed with ``--env-file`` — the precedent of the HF token's env file, with its trade-off:
``docker inspect`` shows an env file's variables to whoever may run docker, i.e. root. The spec
names that file by a fixed mark, not its content's digest: the password only matters when root is
created, so a changed file does not recreate Milvus. Root's password in a running Milvus, and the
app's user, are the deploy's next step (operations/milvus_users.py). Without a root password file
the variable is left out and the env file removed (Milvus then runs without authentication, which
the fleet checks allow only when ``milvus_authentication = False`` is written).

Milvus runs under Docker's default seccomp profile. The upstream compose file sets
``seccomp:unconfined`` without a stated reason; the default profile blocks syscalls such as
``mount``, ``bpf`` or ``ptrace`` that a database has no business making, and allows the NUMA calls
(``mbind``, ``get_mempolicy``) only with CAP_SYS_NICE. If a host's Milvus fails at start with
"operation not permitted", ``milvus_seccomp_unconfined = true`` for that host restores the
upstream setting, as a written, per-host decision.

Every container goes through operations.containers (spec digest label: recreated when it changes).
"""

from __future__ import annotations

import ipaddress
import shlex

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.facts.docker import DockerNetwork

from operations import secrets
from operations.util import put_text
from operations.containers import ContainerSpec
from operations.containers import container as _container
from operations.containers import interrupts
from operations.facts.docker import ContainerState
from operations.facts.milvus import GENERATION_MARK, CredentialsGeneration
from operations.facts.net import HttpOk, ResolvedAddress
from operations.digests import short_digest

MILVUS = "milvus-standalone"
ETCD = "milvus-etcd"
MINIO = "milvus-minio"
MILVUS_COMMAND = ["milvus", "run", "standalone"]
CONFIG_DIR = "/etc/gpufleet/milvus"
DATA_DIR = "/var/lib/milvus"
MINIO_ENV = f"{CONFIG_DIR}/minio.env"  # generated on the host: MinIO's root credentials, for both
AUTH_ENV = f"{CONFIG_DIR}/auth.env"  # from the control host's root password file: Milvus's initial root password
# Milvus's environment overrides of common.security.authorizationEnabled / defaultRootPassword.
AUTH_ON = {"COMMON_SECURITY_AUTHORIZATIONENABLED": "true"}
ROOT_PASSWORD_VARIABLE = "COMMON_SECURITY_DEFAULTROOTPASSWORD"
SECCOMP_UNCONFINED = ["--security-opt", "seccomp=unconfined"]

# scripts/standalone_embed.sh's embedEtcd.yaml; 2379 stays inside the container (not published).
EMBED_ETCD_YAML = """\
listen-client-urls: http://0.0.0.0:2379
advertise-client-urls: http://0.0.0.0:2379
quota-backend-bytes: 4294967296
auto-compaction-mode: revision
auto-compaction-retention: '1000'
"""

# The compose file's health check, so `docker ps` shows (healthy) like an upstream install.
HEALTH_ARGS = ["--health-cmd", "curl -f http://localhost:9091/healthz", "--health-interval", "30s",
               "--health-start-period", "90s", "--health-timeout", "20s", "--health-retries", "3"]


def bind_address(address: str) -> str:
    """The IPv4 address to publish on: ``address`` itself if it is an IP, else what it resolves to on the host."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        pass
    resolved = host.get_fact(ResolvedAddress, name_or_ip=address)
    if not resolved:
        raise OperationError(f"{address!r} does not resolve on the host; set private_address to the host's private IP")
    if ipaddress.ip_address(resolved).is_loopback:
        raise OperationError(
            f"{address!r} resolves to {resolved} (loopback) on the host: other hosts could not reach it. "
            "Set private_address (or the *_bind_address setting) to the host's private IP")
    return resolved


def _digest(text: str) -> str:
    return short_digest(text)


def milvus_specs(mode: str, image: str, address: str, port: int = 19530, health_port: int = 9091,
                 etcd_image: str = "quay.io/coreos/etcd:v3.5.25",
                 minio_image: str = "minio/minio:RELEASE.2024-05-28T17-19-04Z",
                 volume: str = "milvus-data", etcd_volume: str = "milvus-etcd", minio_volume: str = "milvus-minio",
                 network: str = "milvus", prefix: str = "milvus", config_dir: str = CONFIG_DIR,
                 credentials_generation: int = 1, seccomp_unconfined: bool = False,
                 authentication: bool = False) -> list[ContainerSpec]:
    """The containers of one Milvus, in start order (pure: ``address`` is already an IP).

    ``authentication``: Milvus with authorization on and the root password env file (AUTH_ENV).

    ``prefix`` and ``config_dir`` exist for tests beside a real install; the operation uses the defaults.
    The MinIO credentials file is named with its generation, never its content: the containers
    are recreated when the generation changes.
    """
    hardening = SECCOMP_UNCONFINED if seccomp_unconfined else []
    names = {"milvus": f"{prefix}-standalone", "etcd": f"{prefix}-etcd", "minio": f"{prefix}-minio"}
    ports = [f"{address}:{port}:19530", f"{address}:{health_port}:9091"]
    common = {"restart": "unless-stopped", "labels": {"io.gpufleet.role": "milvus"}}
    auth_env = dict(AUTH_ON) if authentication else {}
    # A fixed mark, not the content's digest: the root password is read only when root is created.
    auth_file = {f"{config_dir}/auth.env": "root-password"} if authentication else {}
    if mode == "embedded":
        return [ContainerSpec(
            name=names["milvus"], image=image, command=list(MILVUS_COMMAND), ports=ports,
            env={"ETCD_USE_EMBED": "true", "ETCD_DATA_DIR": f"{DATA_DIR}/etcd",
                 "ETCD_CONFIG_PATH": "/milvus/configs/embedEtcd.yaml", "COMMON_STORAGETYPE": "local",
                 "DEPLOY_MODE": "STANDALONE", **auth_env}, env_files=auth_file,
            volumes=[f"{volume}:{DATA_DIR}", f"{config_dir}/embedEtcd.yaml:/milvus/configs/embedEtcd.yaml:ro"],
            extra_args=[*hardening, *HEALTH_ARGS],
            **{**common, "labels": {**common["labels"], "io.gpufleet.config": _digest(EMBED_ETCD_YAML)}},
        )]
    if mode != "standalone":
        raise OperationError(f"milvus mode {mode!r}: expected 'standalone' or 'embedded'")
    etcd = ContainerSpec(
        name=names["etcd"], image=etcd_image, networks=[network], volumes=[f"{etcd_volume}:/etcd"],
        env={"ETCD_AUTO_COMPACTION_MODE": "revision", "ETCD_AUTO_COMPACTION_RETENTION": "1000",
             "ETCD_QUOTA_BACKEND_BYTES": "4294967296", "ETCD_SNAPSHOT_COUNT": "50000"},
        command=["etcd", f"-advertise-client-urls=http://{names['etcd']}:2379", "-listen-client-urls",
                 "http://0.0.0.0:2379", "--data-dir", "/etcd"],
        extra_args=["--health-cmd", "etcdctl endpoint health", "--health-interval", "30s",
                    "--health-timeout", "20s", "--health-retries", "3"],
        **common)
    credentials = {f"{config_dir}/minio.env": f"generation-{int(credentials_generation)}"}
    minio = ContainerSpec(
        name=names["minio"], image=minio_image, networks=[network], volumes=[f"{minio_volume}:/minio_data"],
        env_files=credentials,
        command=["minio", "server", "/minio_data", "--console-address", ":9001"],
        extra_args=["--health-cmd", "curl -f http://localhost:9000/minio/health/live", "--health-interval", "30s",
                    "--health-timeout", "20s", "--health-retries", "3"],
        **common)
    milvus = ContainerSpec(
        name=names["milvus"], image=image, command=list(MILVUS_COMMAND), ports=ports, networks=[network],
        env={"ETCD_ENDPOINTS": f"{names['etcd']}:2379", "MINIO_ADDRESS": f"{names['minio']}:9000", **auth_env},
        env_files={**credentials, **auth_file}, volumes=[f"{volume}:{DATA_DIR}"], extra_args=[*hardening, *HEALTH_ARGS],
        **common)
    return [etcd, minio, milvus]


def credentials_command(path: str, generation: int) -> str:
    """Shell text that writes new random MinIO root credentials to ``path`` (root 0600 from the
    first byte, atomically), first line ``# gpufleet-generation N``. No value is on a command line
    (printf is the shell's builtin) or printed.

    >>> "umask 077" in credentials_command("/etc/gpufleet/milvus/minio.env", 2)
    True
    """
    directory, q_path = shlex.quote(path.rsplit("/", 1)[0]), shlex.quote(path)
    return "\n".join([
        "set -e", "umask 077",
        f"[ -d {directory} ] || install -d -m 0755 {directory}",
        f"tmp=$(mktemp {directory}/.minio.env.gpufleet-XXXXXX)",
        "trap 'rm -f \"$tmp\"' EXIT",
        "user=gpufleet$(od -An -N8 -tx1 /dev/urandom | tr -d ' \\n')",
        "pass=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \\n')",
        # od's failure would not stop `set -e` (only tr's status counts): check what came out.
        "[ ${#user} -eq 24 ] && [ ${#pass} -eq 48 ] || { echo 'could not read /dev/urandom' >&2; exit 1; }",
        "printf '%s%s\\nMINIO_ROOT_USER=%s\\nMINIO_ROOT_PASSWORD=%s\\nMINIO_ACCESS_KEY_ID=%s\\n"
        f"MINIO_SECRET_ACCESS_KEY=%s\\n' '{GENERATION_MARK}' {int(generation)} "
        "\"$user\" \"$pass\" \"$user\" \"$pass\" > \"$tmp\"",
        "chown 0:0 \"$tmp\"", "chmod 0600 \"$tmp\"",
        f"mv -f \"$tmp\" {q_path}",
        "trap - EXIT",
    ])


class MilvusInterruption(OperationError):
    """A plain deploy would stop the fleet's running Milvus (a changed image or setting)."""


@operation()
def standalone(mode: str, image: str, address: str, port: int = 19530, health_port: int = 9091,
               etcd_image: str = "quay.io/coreos/etcd:v3.5.25",
               minio_image: str = "minio/minio:RELEASE.2024-05-28T17-19-04Z",
               volume: str = "milvus-data", etcd_volume: str = "milvus-etcd", minio_volume: str = "milvus-minio",
               network: str = "milvus", credentials_generation: int = 1, seccomp_unconfined: bool = False,
               root_password_file: str | None = None, allow_interruption: bool = True):
    """
    Run Milvus standalone: etcd + MinIO + Milvus (``mode="standalone"``) or one embedded container.

    + mode: ``"standalone"`` (official compose: three containers) or ``"embedded"`` (standalone_embed.sh)
    + image: Milvus image (``milvus_image``); etcd_image / minio_image for standalone mode
    + address: where to publish 19530 and 9091: an IP, or a name resolved on the host (not loopback)
    + port / health_port: host ports for gRPC+REST and for /healthz
    + volume / etcd_volume / minio_volume: named volumes for the data
    + network: the private Docker network of standalone mode
    + credentials_generation: standalone mode: the generation of MinIO's generated root
      credentials; raise it to rotate them (MinIO and Milvus are recreated)
    + seccomp_unconfined: run Milvus with ``seccomp=unconfined`` as the upstream compose file does
      (default: Docker's default profile)
    + root_password_file: *control-side* file with root's password (``milvus_root_password_file``):
      authentication on, the password in /etc/gpufleet/milvus/auth.env (root 0600, never shown) as
      ``COMMON_SECURITY_DEFAULTROOTPASSWORD``; None: authentication off, that file removed
    + allow_interruption: False refuses (:class:`MilvusInterruption`, while the plan is made) a
      change that would stop a running Milvus, etcd or MinIO container: gpufleet's deploy.py
      passes False outside a rollout and a maintenance window, so that a plain deploy never
      recreates the fleet's Milvus without the rollout's backup and row check

    Converged: no command. A changed setting recreates only the containers whose spec changed;
    switching modes removes the other mode's containers (data is not migrated).

    **Example:**

    .. code:: python

        milvus.standalone(name="Milvus", mode="standalone", image="milvusdb/milvus:v2.6.11",
                          address="10.0.0.5", root_password_file="~/.config/gpufleet/milvus-root-password")
    """
    ip = bind_address(address)
    specs = milvus_specs(mode, image, ip, port, health_port, etcd_image, minio_image, volume, etcd_volume,
                         minio_volume, network, credentials_generation=credentials_generation,
                         seccomp_unconfined=seccomp_unconfined, authentication=root_password_file is not None)
    # Read (and refused, if unreadable) before the first change; the content never leaves this helper.
    auth_variables = {ROOT_PASSWORD_VARIABLE: root_password_file} if root_password_file else None
    commands: list = []  # strings, the config file's upload command, the secret's write command
    regenerated = False
    if mode == "embedded":
        commands += list(put_text(f"{CONFIG_DIR}/embedEtcd.yaml", EMBED_ETCD_YAML))
        stale = [ETCD, MINIO]
    else:
        if not host.get_fact(DockerNetwork, object_id=network):
            commands.append(f"docker network create {shlex.quote(network)}")
        # New values (a fresh host, a raised generation, or a file lost or damaged): MinIO and
        # Milvus are both recreated with them, never one of them alone with the other's old pair.
        regenerated = host.get_fact(CredentialsGeneration, path=MINIO_ENV) != credentials_generation
        if regenerated:
            commands.append(credentials_command(MINIO_ENV, credentials_generation))
        stale = []
    commands += list(secrets.env_file._inner(dest=AUTH_ENV, variables=auth_variables))
    for name in stale:
        if host.get_fact(ContainerState, container=name)["exists"]:
            commands.append(f"docker rm -f {shlex.quote(name)} >/dev/null")
    recreated = {spec.name: mode == "standalone" and MINIO_ENV in spec.env_files and regenerated for spec in specs}
    if not allow_interruption:
        stopped = [spec.name for spec in specs if interrupts(spec, recreate=recreated[spec.name])]
        stopped += [name for name in stale if host.get_fact(ContainerState, container=name)["running"]]
        if stopped:
            raise MilvusInterruption(
                f"Milvus ({mode}) would recreate {', '.join(stopped)} while it serves: roll it out "
                "with `gpufleet rollout INVENTORY` (a backup first, row counts checked after), or allow it for a "
                "maintenance window with --data allow_serving_disruption=true")
    for spec in specs:
        commands += list(_container._inner(spec=spec, recreate=recreated[spec.name]))
    if not commands:
        host.noop(f"milvus ({mode}) runs as declared on {ip}:{port}")
        return
    yield from commands


def wait_commands(url: str, container: str, timeout: int, what: str) -> str:
    """Shell text that polls ``url`` until it answers 2xx, or fails after ``timeout`` s with the logs."""
    q_url, q_name = shlex.quote(url), shlex.quote(container)
    return (
        f"deadline=$(( $(date +%s) + {int(timeout)} )); "
        f"until curl -fs -m 5 -o /dev/null {q_url}; do "
        f"if [ $(date +%s) -ge $deadline ]; then "
        f"echo \"{what} not healthy at {url} after {int(timeout)}s; last log lines of {container}:\" >&2; "
        f"docker logs --tail 40 {q_name} >&2 2>&1; exit 1; fi; sleep 2; done"
    )


def health_url(address: str, health_port: int = 9091) -> str:
    """Where the host itself asks Milvus's ``/healthz``: the address Milvus publishes on (127.0.0.1 for
    every interface). Shared by :func:`ready` and the rollout's validation of a Milvus host of its own."""
    ip = bind_address(address)
    return f"http://{'127.0.0.1' if ip == '0.0.0.0' else ip}:{health_port}/healthz"


@operation()
def ready(address: str, health_port: int = 9091, timeout: int = 180, container: str = MILVUS):
    """
    Wait until Milvus answers ``GET /healthz`` on its published health port, or fail with its last log lines.

    + address: the address Milvus publishes on (an IP, or a name resolved on the host)
    + health_port: the host port of 9091
    + timeout: seconds to wait
    + container: whose logs to show on failure

    Healthy now: no command (so a converged host shows no change in a drift check). Otherwise the
    wait runs on the host with curl. Gate it on the container op if you like: ``_if=milvus.did_change``.
    """
    url = health_url(address, health_port)
    if host.get_fact(HttpOk, url=url):
        host.noop(f"milvus healthy at {url}")
        return
    yield wait_commands(url, container, timeout, "milvus")
