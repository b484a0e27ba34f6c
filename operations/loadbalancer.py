"""nginx in front of the vLLM replicas and the RAG app: one upstream member each, drain and undrain.

Decisions (see also files/nginx/nginx.conf.j2):

- gpufleet owns the whole ``/etc/nginx/nginx.conf`` on lb hosts. A new file is written beside it
  (``nginx.conf.gpufleet-new``) and tested with ``nginx -t -c`` *before* it replaces the live one;
  after ``systemctl reload-or-restart nginx`` the operation waits until the running workers serve
  the new config id on 127.0.0.1:<lb_status_port>/gpufleet-config. A failed test leaves the live
  file untouched; a failed reload puts the old file back and reloads again (dstack's write_conf,
  with the test first). Nothing runs when the rendered file equals the host's and nginx serves it.
- Passive health checks only (nginx OSS): ``max_fails``/``fail_timeout`` per member, retries on
  ``error timeout http_502 http_503`` with a tries limit; never for a POST that reached a member,
  never after bytes went to the client.
- The drained set is state on the lb host: one marker file per replica in
  ``/etc/nginx/gpufleet/drained/<replica>`` (its content says when and why). Every render reads
  it, so a deploy keeps a drained member ``down`` (it never undrains silently), ``ls`` shows it,
  and drift reads it through the ``NginxState`` fact. ``drain``/``undrain`` change the marker
  first and then the config: if the reload fails, the intent is recorded and the next deploy
  applies it. A marker for a replica no longer in the inventory is ignored (and left in place).
- Two upstreams: ``vllm`` (every replica, on ``listen_port``) and, when the fleet runs the RAG
  app, ``rag_app`` (every node's app, ``<node>-rag-app``, on ``app_listen_port``). A member
  carries its upstream (``"upstream": "rag_app"``; none means ``vllm``), and the config says it
  (``# <name> upstream=rag_app``), so drain, undrain and membership treat both alike; "no live
  member left" is counted per upstream.
- Membership follows the replicas, not only the inventory (:func:`membership`): a replica new to
  the config in place *joins* ``down`` until it answers ``/health`` from the lb host, and one
  removed from the inventory *stays* a member while it still answers, until the node that runs
  it retires it. So a deploy or a rollout step on the lb never sends traffic to a replica that
  does not run yet, and never cuts one that still serves; a replica is retired (drained, then
  stopped by its node's deploy) and a new one undrained by ``gpufleet rollout``.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from io import StringIO
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, OperationError, OperationValueError, StringCommand, operation
from pyinfra.facts.files import File

from operations import secrets

from operations.facts.edge import DRAINED_DIR, NGINX_CONF, NginxState, UpstreamHealth
from operations.digests import short_digest
from operations.node_exporter import TEXTFILE_DIR
from operations.util import Staged, put_text, render_file, swap_script

TEMPLATE = Path(__file__).resolve().parents[1] / "files" / "nginx" / "nginx.conf.j2"
NEW = f"{NGINX_CONF}.gpufleet-new"
OLD = f"{NGINX_CONF}.gpufleet-old"

# Keys of ``options`` and their defaults; gpufleet.deploy_args.lb_options() fills them from a host's settings.
DEFAULT_OPTIONS: dict[str, Any] = {
    "listen_port": 80, "status_port": 8081, "max_fails": 3, "fail_timeout_s": 10, "connect_timeout_s": 5,
    "read_timeout_s": 600, "next_upstream_tries": 3, "next_upstream_timeout_s": 30,
    "client_max_body_size": "64m", "keepalive": 64, "keepalive_timeout_s": 4, "worker_connections": 8192,
    "tls_cert_file": None, "tls_key_file": None, "api_key_file": None, "app_listen_port": 8080,
}
# TLS and the API key at the lb: files nginx reads, written from control-side files (operations/secrets.py).
_EDGE_FILE_OPTIONS = ("tls_cert_file", "tls_key_file", "api_key_file")
TLS_DIR = "/etc/nginx/gpufleet-tls"
TLS_CERT = f"{TLS_DIR}/cert.pem"
TLS_KEY = f"{TLS_DIR}/key.pem"
API_KEY_MAP = "/etc/nginx/gpufleet-api-key.conf"
VLLM_UPSTREAM = "vllm"
APP_UPSTREAM = "rag_app"
_BEARER_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]+$")  # RFC 6750 b64token: nothing to escape in nginx


def edge_files(opts: dict[str, Any]) -> dict[str, tuple[str | None, str]]:
    """``{path on the lb: (content or None for absent, mode)}``: TLS certificate and key, API key map.

    Read from the control-side files named in ``opts`` (never shown: operations/secrets.py). The
    map's entry is a case-sensitive regex: nginx matches a map's plain strings ignoring case and
    hashes them (a key longer than ~40 characters would not fit ``map_hash_bucket_size``).

    >>> from pathlib import Path; import tempfile; f = Path(tempfile.mkdtemp()) / "k"
    >>> _ = f.write_text("sk-a.b+c9")
    >>> edge_files({"api_key_file": str(f)})[API_KEY_MAP][0].splitlines()[3]
    '    "~^Bearer sk-a[.]b[+]c9$" 1;'
    """
    out: dict[str, tuple[str | None, str]] = {TLS_CERT: (None, "644"), TLS_KEY: (None, "600"), API_KEY_MAP: (None, "600")}
    if opts.get("tls_cert_file") and opts.get("tls_key_file"):
        for dest, path in ((TLS_CERT, opts["tls_cert_file"]), (TLS_KEY, opts["tls_key_file"])):
            try:
                out[dest] = (Path(path).expanduser().read_text(), out[dest][1])
            except OSError as exc:
                raise OperationValueError(f"cannot read {path}: {exc.strerror}") from None
    if opts.get("api_key_file"):
        key = secrets.read_secret(opts["api_key_file"])
        if not _BEARER_TOKEN.match(key):
            raise OperationValueError(f"the key in {opts['api_key_file']} has characters a bearer token cannot "
                                      "have (letters, digits and ._~+/=- only); not shown")
        pattern = "".join(f"[{c}]" if c in ".+" else c for c in key)  # the only regex characters a token has
        out[API_KEY_MAP] = ("# Managed by gpufleet (operations/loadbalancer.py): the API key nginx checks.\n"
                            "map $http_authorization $gpufleet_api_key_ok {\n    default 0;\n"
                            f'    "~^Bearer {pattern}$" 1;\n}}\n', "600")
    return out


def _edge_commands(opts: dict[str, Any], converge: list, remove_unused: bool = False) -> list:
    """The edge files' writes, then the config's ``converge`` commands, then what follows them:
    a reload when only the API key rotated (it is not part of the config id), and, with
    ``remove_unused``, the removal of files that are off, once the config that used them is gone.

    TLS files are written in place before ``nginx -t`` runs: a pair that validation accepted (the
    key is the certificate's, gpufleet/settings_edge.py) cannot make the test fail.
    """
    files = edge_files(opts)
    writes = [c for dest, (text, mode) in files.items() if text is not None
              for c in secrets.secret_file(dest, text, mode=mode)]
    after = []
    if any(getattr(c, "secret_dest", None) == API_KEY_MAP for c in writes) and not converge:
        after.append("nginx -t -q && systemctl reload-or-restart nginx")
    if remove_unused:
        after += [f"rm -f {shlex.quote(dest)}" for dest, (text, _) in files.items()
                  if text is None and host.get_fact(File, path=dest)]
    return writes + converge + after


def upstream_of(member: dict[str, Any]) -> str:
    """The nginx upstream a member belongs to: ``vllm`` unless it says otherwise."""
    return member.get("upstream") or VLLM_UPSTREAM


def members(replicas) -> list[dict[str, Any]]:
    """Replicas (gpufleet Replica objects or dicts) as ``[{"name", "address", "port"}]`` (+ ``upstream``
    for a member of an upstream other than ``vllm``: the config id of a vLLM-only config stays as it was)."""
    out = []
    for r in replicas:
        d = r if isinstance(r, dict) else r.model_dump()
        member = {"name": d["name"], "address": d.get("address") or d.get("node"), "port": int(d["port"])}
        if upstream_of(d) != VLLM_UPSTREAM:
            member["upstream"] = upstream_of(d)
        out.append(member)
    return out


def membership(replicas, state: dict, move_at_once: bool = False) -> tuple[list[dict[str, Any]], set[str]]:
    """``(members, joining)``: the inventory's replicas plus the removed ones that still serve.

    Read against the config in place (``state["members"]``, the NginxState fact): a replica not
    in it, or rendered there as joining, is *joining* and rendered ``down`` until it answers
    ``/health`` from this host; a member no longer in the inventory is kept while it answers (its
    node has not retired it yet). A member whose address or port changed (a new ``vllm_port``)
    *moves* once its new target answers; until then it stays where it answers now (its node has
    not been rolled yet), or joins at the new one if neither answers. ``move_at_once`` (a
    maintenance window, which recreates every replica in the same run) takes the new target.
    Health is asked only when there is such a difference, so a converged lb sends no probe.
    """
    wanted = members(replicas)
    current = state.get("members") or []
    names = {m["name"] for m in wanted}
    known = {m["name"]: m for m in current if not m.get("joining")}  # a joining member is new until it answers
    new = [m for m in wanted if m["name"] not in known] if current else []
    removed = [m for m in current if m["name"] not in names]
    moved = [] if move_at_once else [m for m in wanted if m["name"] in known and _target(m) != _target(known[m["name"]])]
    if not new and not removed and not moved:
        return wanted, set()
    previous = [{**known[m["name"]], "name": m["name"] + PREVIOUS_TARGET} for m in moved]
    health = host.get_fact(UpstreamHealth, members=new + removed + moved + previous)
    joining = {m["name"] for m in new if not health.get(m["name"])}
    rows = []
    moved_names = {m["name"] for m in moved}
    for m in wanted:
        if m["name"] in moved_names and not health.get(m["name"]):
            was = known[m["name"]]
            if health.get(m["name"] + PREVIOUS_TARGET):  # still served where it was: it stays there for now
                m = {**m, "address": was["address"], "port": was["port"]}
            else:
                joining.add(m["name"])
        rows.append(m)
    return rows + [m for m in removed if health.get(m["name"])], joining


# How membership names a moved member's probe at the target it has now (UpstreamHealth answers by name).
PREVIOUS_TARGET = "@previous"


def _target(member: dict[str, Any]) -> tuple[str, int]:
    return member["address"], int(member["port"])


def render(replicas, drained=(), options: dict | None = None, joining=()) -> tuple[str, str]:
    """``(nginx.conf text, config id)``; members named in ``drained`` or ``joining`` are marked ``down``."""
    opts = {**DEFAULT_OPTIONS, **(options or {})}
    wanted = members(replicas)
    if not any(upstream_of(m) == VLLM_UPSTREAM for m in wanted):
        raise OperationError("no vLLM replica in the inventory: an upstream needs at least one member")
    drained, joining = set(drained), set(joining)
    # "joining" only where it is true: the config id of every config without one stays the same.
    rows = [{**m, "drained": m["name"] in drained | joining, **({"joining": True} if m["name"] in joining else {})}
            for m in wanted]
    # The TLS files' digests are part of the id: a rotated certificate is tested and reloaded. The
    # API key's is not (the id is in the world-readable nginx.conf): its rotation reloads nginx
    # from _edge_commands.
    files = {dest: secrets.content_digest(text) for dest, (text, _) in edge_files(opts).items()
             if text is not None and dest != API_KEY_MAP}
    # Options that are off leave the id as it was before they existed: no reload of every lb for them.
    has_app = any(upstream_of(m) == APP_UPSTREAM for m in wanted)
    id_opts = {k: v for k, v in opts.items()
               if not (k in _EDGE_FILE_OPTIONS and v is None) and (has_app or k != "app_listen_port")}
    config_id = short_digest([rows, id_opts, files] if files else [rows, id_opts])
    text = render_file(
        TEMPLATE, members=[m for m in rows if upstream_of(m) == VLLM_UPSTREAM],
        app_members=[m for m in rows if upstream_of(m) == APP_UPSTREAM], config_id=config_id, drained_dir=DRAINED_DIR, tls=TLS_CERT in files, tls_cert=TLS_CERT,
        tls_key=TLS_KEY, api_key_map=API_KEY_MAP if opts.get("api_key_file") else None, **opts)
    return text, config_id


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def apply_script(config_id: str, status_port: int, test_new: bool = True) -> str:
    """Shell text: test the new file, move it in, reload, wait for the new config id; roll back on failure."""
    url = f"http://127.0.0.1:{int(status_port)}/gpufleet-config"
    checks = [f'if ! out=$(nginx -t -q -c {NEW} 2>&1); then rm -f {NEW}; '
              f'echo "gpufleet: nginx -t rejects the new config, {NGINX_CONF} unchanged: $out" >&2; exit 1; fi']
    return swap_script(
        [Staged(NEW, NGINX_CONF, OLD, staged=test_new)], checks if test_new else [],
        reload="systemctl reload-or-restart nginx", tries=40, interval="0.25",
        probe=f'if [ "$(curl -fsS -m 2 {url} 2>/dev/null)" = {config_id} ]; then ok=1; break; fi',
        failed=f"nginx does not serve config {config_id} after reload")


def _converge(text: str, config_id: str, status_port: int, state: dict):
    if state["config_sha1"] != _sha1(text):
        yield FileUploadCommand(StringIO(text), NEW)
        yield StringCommand(apply_script(config_id, status_port))
    elif state["live_config_id"] != config_id:
        # The file is right but the running nginx serves something else (stopped, never reloaded).
        yield StringCommand(apply_script(config_id, status_port, test_new=False))


@operation()
def nginx(replicas: list, options: dict | None = None, move_at_once: bool = False):
    """
    Render /etc/nginx/nginx.conf from the inventory's replicas; test, swap in, reload, roll back.

    + replicas: every load-balanced replica (``Fleet.replicas`` or ``[{"name", "address", "port"}]``)
    + options: nginx tuning, see ``DEFAULT_OPTIONS`` (gpufleet fills it with ``gpufleet.deploy_args.lb_options``)
    + move_at_once: a member whose address or port changed takes its new target now, not once it
      answers there (:func:`membership`): for a maintenance window, which recreates the replicas
      in the same run

    Replicas drained on this host (marker files in /etc/nginx/gpufleet/drained/) stay ``down``.

    **Example:**

    .. code:: python

        loadbalancer.nginx(replicas=[{"name": "gpu-node-01-vllm-0", "address": "10.40.1.11", "port": 8000}],
                           options={"listen_port": 80, "status_port": 8081})
    """
    opts = {**DEFAULT_OPTIONS, **(options or {})}
    state = host.get_fact(NginxState, status_port=opts["status_port"])
    rows, joining = membership(replicas, state, move_at_once)
    text, config_id = render(rows, state["drained"], opts, joining)
    commands = _edge_commands(opts, list(_converge(text, config_id, opts["status_port"], state)), remove_unused=True)
    if not commands:
        drained = [m["name"] for m in rows if m["name"] in state["drained"]]
        host.noop(f"nginx serves config {config_id} ({len(rows)} members"
                  + (f", drained: {', '.join(drained)})" if drained else ")"))
        return
    yield from commands


def _check_known(replica: str, rows) -> None:
    names = [m["name"] for m in rows]
    if replica not in names:
        raise OperationError(f"no replica {replica!r} in the inventory (replicas: {', '.join(names)})")


def _names(replica: str | list[str]) -> list[str]:
    return [replica] if isinstance(replica, str) else list(replica)


def _listed(names: list[str]) -> str:
    """``"a is"`` / ``"a, b are"``: the subject of a no-op's description."""
    return f"{names[0]} is" if len(names) == 1 else f"{', '.join(names)} are"


@operation()
def drain(replica: str | list[str], replicas: list, options: dict | None = None, reason: str = "rollout",
          allow_no_live_member: bool = False, only_if_member: bool = False):
    """
    Take replicas out of the load balancer: record each as drained, render it ``down``, reload once.

    + replica: a replica's name, e.g. ``gpu-node-01-vllm-0`` (``gpufleet inventory`` lists them), or
      a list of names drained together (a node's replicas and its RAG app: one nginx reload)
    + replicas, options: as for ``nginx``
    + reason: written into the marker file (``cat /etc/nginx/gpufleet/drained/<replica>``)
    + allow_no_live_member: drain even when no other member would be left to serve
    + only_if_member: nothing to do (rather than an error) for a replica the config does not have,
      e.g. one removed from the inventory that this lb never served

    After a reload nginx sends no new request to the member; requests in flight finish on the
    old workers (up to read timeout + 60 s). Wait for the replica's ``vllm:num_requests_running``
    to reach 0 before stopping it.

    **Example:**

    .. code:: python

        loadbalancer.drain(replica=["gpu-node-01-vllm-0", "gpu-node-01-rag-app"], reason="vLLM v0.11.1",
                           replicas=replicas, options=options)
    """
    opts = {**DEFAULT_OPTIONS, **(options or {})}
    state = host.get_fact(NginxState, status_port=opts["status_port"])
    rows, joining = membership(replicas, state)
    names = _names(replica)
    if only_if_member:
        names = [n for n in names if n in {m["name"] for m in rows}]
        if not names:
            host.noop(f"{_listed(_names(replica))} not a member")
            return
    for name in names:
        _check_known(name, rows)
    drained = set(state["drained"]) | set(names)
    for upstream in sorted({upstream_of(m) for m in rows if m["name"] in names}):
        live = [m["name"] for m in rows if m["name"] not in drained | joining and upstream_of(m) == upstream]
        if not live and not allow_no_live_member:
            raise OperationError(f"draining {', '.join(names)} would leave no live member in upstream {upstream} "
                                 "behind the load balancer (pass allow_no_live_member=True to accept the outage)")
    text, config_id = render(rows, drained, opts, joining)
    commands = _edge_commands(opts, list(_converge(text, config_id, opts["status_port"], state)))
    new = [n for n in names if n not in state["drained"]]
    if not new and not commands:
        host.noop(f"{_listed(names)} drained")
        return
    if new:
        note = f"drained by gpufleet: {reason}"
        yield " && ".join([f"install -d -m 0755 {DRAINED_DIR}"] + [
            f'printf "%s at %s\\n" {shlex.quote(note)} "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > {shlex.quote(f"{DRAINED_DIR}/{name}")}'
            for name in new])
    yield from commands


@operation()
def undrain(replica: str | list[str], replicas: list, options: dict | None = None):
    """
    Put drained replicas back into the load balancer (remove their markers, render them live, reload once).

    + replica, replicas, options: as for ``drain``

    A replica that is new and does not answer ``/health`` yet stays ``down`` (joining); a retired
    one (no longer in the inventory, no longer answering) loses its marker and leaves the config.

    **Example:**

    .. code:: python

        loadbalancer.undrain(replica=["gpu-node-01-vllm-0", "gpu-node-01-rag-app"], replicas=replicas,
                             options=options)
    """
    opts = {**DEFAULT_OPTIONS, **(options or {})}
    state = host.get_fact(NginxState, status_port=opts["status_port"])
    rows, joining = membership(replicas, state)
    names = []
    for name in _names(replica):
        if name not in state["drained"] and name not in {m["name"] for m in rows}:
            if name in {m["name"] for m in members(replicas)}:
                _check_known(name, rows)
            continue  # e.g. a retired replica this lb never had
        names.append(name)
    if not names:
        host.noop(f"{_listed(_names(replica))} neither drained nor a member")
        return
    drained = set(state["drained"]) - set(names)
    text, config_id = render(rows, drained, opts, joining)
    commands = _edge_commands(opts, list(_converge(text, config_id, opts["status_port"], state)))
    markers = [n for n in names if n in state["drained"]]
    if not markers and not commands:
        host.noop(f"{_listed(names)} not drained")
        return
    if markers:
        yield "rm -f " + " ".join(shlex.quote(f"{DRAINED_DIR}/{n}") for n in markers)
    yield from commands


# --- the certificate's expiry, for Prometheus --------------------------------------------------

TLS_EXPIRY_METRIC = f"{TEXTFILE_DIR}/gpufleet_lb_tls.prom"
TLS_EXPIRY_NAME = "gpufleet_lb_tls_cert_not_after_timestamp_seconds"


def certificate_not_after(cert_file: str) -> int:
    """The control-side PEM certificate's notAfter, in seconds since the epoch."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).expanduser().read_bytes())
    except (OSError, ValueError) as exc:
        raise OperationValueError(f"cannot read the certificate {cert_file}: {exc}") from None
    return int(cert.not_valid_after_utc.timestamp())


def tls_expiry_text(not_after: int) -> str:
    """node_exporter textfile lines for the certificate nginx serves.

    >>> tls_expiry_text(1800000000).splitlines()[-1]
    'gpufleet_lb_tls_cert_not_after_timestamp_seconds{path="/etc/nginx/gpufleet-tls/cert.pem"} 1800000000'
    """
    return (f"# HELP {TLS_EXPIRY_NAME} When the certificate this load balancer serves expires (gpufleet deploy).\n"
            f"# TYPE {TLS_EXPIRY_NAME} gauge\n"
            f'{TLS_EXPIRY_NAME}{{path="{TLS_CERT}"}} {int(not_after)}\n')


@operation()
def tls_expiry_metric(cert_file: str | None):
    """
    The served certificate's expiry as a metric: node_exporter's textfile collector reads it, the
    alerts ``LbCertificateExpiresSoon`` (14 days) and ``LbCertificateExpired`` fire on it.

    + cert_file: the *control-side* certificate (settings' ``lb_tls_cert_file``); None: TLS is
      off, and a metric left from when it was on is removed (an expired certificate nobody serves
      must not page)

    Written by the deploy that installs the certificate, so the metric is the certificate nginx
    serves; the date is read on the control host (no tool on the lb needed).

    **Example:**

    .. code:: python

        loadbalancer.tls_expiry_metric(cert_file=settings.lb_tls_cert_file)
    """
    if cert_file is None:
        if host.get_fact(File, path=TLS_EXPIRY_METRIC):
            yield f"rm -f {TLS_EXPIRY_METRIC}"
        else:
            host.noop("TLS is off: no certificate to watch")
        return
    yield from put_text(TLS_EXPIRY_METRIC, tls_expiry_text(certificate_not_after(cert_file)))
