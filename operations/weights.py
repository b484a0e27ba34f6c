"""Model weights staged on a GPU node before the replicas that serve them start.

:func:`stage` downloads and verifies the weights once, then writes a *staged marker*
(``.gpufleet-staged.json``) in the staged directory, last; the replicas run with
``HF_HUB_OFFLINE=1`` (deploy.py), so a recreate or a rollout never waits on a download and a node
never serves weights it has not verified. Sources (settings ``vllm_model_source``):

- ``url``: an archive (tar; gzip/xz as GNU tar detects them) at an internal HTTP(S) URL with its
  sha256, the usual air-gapped way. Downloaded with curl, refused unless its sha256 is the pinned
  one, unpacked into ``<models_dir>/.incoming/`` and moved to ``<models_dir>/<sha256>/`` only
  when complete, with ``.gpufleet-manifest.sha256`` (``sha256sum -c`` input for every file). The
  replica mounts that directory read-only as its model (:data:`MODEL_MOUNT`).
- ``hub``: ``snapshot_download`` of the model at its revision into the node's Hugging Face cache,
  run inside the node's vLLM image (it has ``huggingface_hub``; the token comes from the
  root-only env file, ``HF_ENDPOINT`` from ``vllm_env`` for a mirror), then every file of the
  snapshot checked against the hash its blob is named by (sha256 for LFS files, git's blob sha1
  for the others): files/stage_hub_weights.py.
- ``image``: the weights are in the image; nothing to stage.

The marker records the source, the pin (sha256 or resolved commit) and the number and bytes of
the files. The operation changes nothing while the marker matches the pin and the directory still
holds those files and bytes (:class:`operations.facts.weights.StagedWeights`); ``gpufleet drift``
reports the operation when it does not (a file removed or truncated, another revision staged).
A full re-hash is ``sha256sum -c --quiet .gpufleet-manifest.sha256`` in the staged directory.

Decisions: staging is not disruptive (a new pin goes to a new directory; nothing a running replica
reads is touched), so the rollout runs it in its *prepare* phase, beside the image build. Old
staged archives are removed by :func:`retain` after the replicas (20 GB each on a real node),
keeping the newest other one for a rollback and any a container mounts.
"""

from __future__ import annotations

import json
import re
import shlex
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import OperationValueError, operation
from pyinfra.operations import files

from operations import secrets
from operations.facts.weights import COUNT_FILES, MANIFEST, MARKER, StagedArchives, StagedWeights

FILES = Path(__file__).resolve().parents[1] / "files"
HUB_SCRIPT = "stage_hub_weights.py"
MODEL_MOUNT = "/gpufleet/model"  # where a replica sees a staged URL archive (read-only)
# The Hugging Face token on the node: one root-only env file (operations/secrets.py), read by the hub
# staging container here and by the replicas (operations/vllm.py), which may fetch from the hub too.
HF_TOKEN_ENV_FILE = f"{secrets.SECRETS_DIR}/hf-token.env"
HF_TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # huggingface_hub, and older readers
HUB_CACHE = "/hf"  # HF_HOME inside the staging container


def url_dir(models_dir: str, sha256: str) -> str:
    """Where an archive with this sha256 is staged.

    >>> url_dir("/var/lib/gpufleet/models", "ab" * 32)[-8:]
    'abababab'
    """
    return f"{models_dir.rstrip('/')}/{sha256}"


def hub_snapshot_dir(hf_cache_dir: str, model: str, revision: str | None) -> str:
    """The snapshot directory the Hugging Face cache keeps for ``model`` at ``revision`` (no
    revision: the commit ``refs/main`` names on the host, resolved by the shell).

    >>> hub_snapshot_dir("/var/lib/gpufleet/hf-cache", "Qwen/Qwen3-32B-AWQ", "0" * 40)[:72]
    '/var/lib/gpufleet/hf-cache/hub/models--Qwen--Qwen3-32B-AWQ/snapshots/000'
    """
    repo = f"{hf_cache_dir.rstrip('/')}/hub/models--{model.replace('/', '--')}"
    return f"{repo}/snapshots/{revision}" if revision else f"{repo}/snapshots/$(cat {shlex.quote(repo)}/refs/main 2>/dev/null)"


def staged_matches(state: dict, source: str, pin: str | None) -> bool:
    """The node's staged directory is the pinned one, complete (files and bytes as recorded).

    >>> ok = {"marker": {"source": "url", "sha256": "a", "files": 2, "bytes": 10}, "files": 2, "bytes": 10}
    >>> staged_matches(ok, "url", "a"), staged_matches({**ok, "bytes": 9}, "url", "a"), staged_matches(ok, "url", "b")
    (True, False, False)
    """
    marker = state.get("marker")
    if not marker or marker.get("source") != source:
        return False
    key = "sha256" if source == "url" else "revision"
    if pin is not None and marker.get(key) != pin:
        return False
    return (marker.get("files"), marker.get("bytes")) == (state["files"], state["bytes"]) and state["files"] > 0


def url_stage_command(url: str, sha256: str, models_dir: str, timeout_s: int) -> str:
    """Shell that downloads, checks, unpacks and moves the archive into place (marker last).

    Everything happens in a private work directory under ``<models_dir>/.incoming`` (removed on
    any exit), so two runs at once or an interrupted one leave nothing the next one trips on. A
    staged directory that is replaced (its files damaged since) is kept aside while a container
    still mounts it: a running replica's files are never deleted under it.
    """
    q = shlex.quote
    marker_json = q(json.dumps(url))
    return "\n".join([
        "set -eu; umask 022",
        f"models={q(models_dir)}; sha={q(sha256)}; url={q(url)}; inc=\"$models/.incoming\"; dest=\"$models/$sha\"",
        f"count() {{ {COUNT_FILES}; }}",
        'install -d -m 0755 "$models" "$inc"; work=$(mktemp -d "$inc/$sha.XXXXXX"); trap \'rm -rf "$work"\' EXIT',
        f'curl -fsS --retry 3 --connect-timeout 20 --max-time {int(timeout_s)} -o "$work/archive" "$url" '
        '|| { echo "gpufleet: downloading $url failed" >&2; exit 1; }',
        'got=$(sha256sum "$work/archive" | cut -d" " -f1)',
        'if [ "$got" != "$sha" ]; then echo "gpufleet: $url has sha256 $got, '
        'not the pinned $sha (vllm_model_sha256): refused, nothing staged" >&2; exit 1; fi',
        'mkdir "$work/model"; tar -xf "$work/archive" -C "$work/model" --no-same-owner --no-same-permissions; '
        'rm -f "$work/archive"',
        # An archive of one directory (model-name/config.json ...) is that directory's content.
        'set -- "$work/model"/*; if [ $# -eq 1 ] && [ -d "$1" ] && [ ! -e "$work/model/config.json" ]; then '
        'mv "$1" "$work/one"; rmdir "$work/model"; mv "$work/one" "$work/model"; fi',
        '[ -f "$work/model/config.json" ] || { echo "gpufleet: $url holds no config.json '
        '(at its top or in its one directory): not a model, nothing staged" >&2; exit 1; }',
        # A link would make the served files depend on what it points at on this host.
        'if [ -n "$(find "$work/model" -type l | head -n 1)" ]; then echo "gpufleet: $url holds symbolic links: '
        'a model archive of plain files is expected, nothing staged" >&2; exit 1; fi',
        f'(cd "$work/model" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$work/manifest"; '
        f'mv "$work/manifest" "$work/model/{MANIFEST}"',
        'stats=$(count "$work/model")',
        f"printf '{{\"source\": \"url\", \"url\": %s, \"sha256\": \"%s\", \"files\": %s, \"bytes\": %s}}\\n' "
        f'{marker_json} "$sha" "${{stats% *}}" "${{stats#* }}" > "$work/model/{MARKER}"',
        # The staged directory it replaces goes, unless a container mounts it: then it is kept
        # aside (a running replica keeps its files; the next recreate mounts the new one).
        'if [ -e "$dest" ]; then old="$dest.replaced-$(date +%s)"; mv "$dest" "$old"; '
        'if command -v docker >/dev/null 2>&1 && [ -n "$(docker ps -aq --filter volume="$dest" 2>/dev/null)" ]; '
        'then echo "gpufleet: kept $old: a container still mounts it (remove it once none does)"; '
        'else rm -rf "$old"; fi; fi',
        'mv "$work/model" "$dest"',
        'echo "staged $url (sha256 $sha): ${stats% *} files, ${stats#* } bytes in $dest"',
    ])


def hub_stage_command(image: str, model: str, revision: str | None, hf_cache_dir: str, script: str,
                      token_env_file: str | None, hf_endpoint: str | None, timeout_s: int) -> str:
    """``docker run`` of files/stage_hub_weights.py in the node's vLLM image, online, the cache mounted."""
    args = ["timeout", str(int(timeout_s)), "docker", "run", "--rm", "--network", "host",
            "-e", f"HF_HOME={HUB_CACHE}", "-e", "HF_HUB_DISABLE_TELEMETRY=1"]
    if token_env_file:
        args += ["--env-file", token_env_file]
    if hf_endpoint:
        args += ["-e", f"HF_ENDPOINT={hf_endpoint}"]
    args += ["-v", f"{hf_cache_dir}:{HUB_CACHE}", "-v", f"{script}:/gpufleet-stage-hub.py:ro",
             "--entrypoint", "python3", image, "/gpufleet-stage-hub.py", "--model", model]
    if revision:
        args += ["--revision", revision]
    return " ".join(shlex.quote(a) for a in args)


@operation()
def stage(source: str, model: str, revision: str | None = None, url: str | None = None, sha256: str | None = None,
          models_dir: str = "/var/lib/gpufleet/models", hf_cache_dir: str = "/var/lib/gpufleet/hf-cache",
          image: str | None = None, hf_token_file: str | None = None, hf_endpoint: str | None = None,
          script_dir: str = "/var/lib/gpufleet/build/vllm", timeout_s: int = 7200):
    """
    Stage the pinned model weights on the node, verified, before any replica serves them.

    + source: ``"url"``, ``"hub"`` or ``"image"`` (settings ``vllm_model_source``)
    + model: the hub repository (``hub``); a name only otherwise
    + revision: the hub commit to stage (``hub``; None: the default branch, once)
    + url, sha256: the archive and its sha256 (``url``)
    + models_dir: where URL archives are staged, one directory per sha256
    + hf_cache_dir: the node's Hugging Face cache (mounted into the replicas)
    + image: the node's vLLM image, which runs the hub download (``hub``)
    + hf_token_file: *control-side* token file (``hub``; written as the root-only env file)
    + hf_endpoint: a hub mirror (``HF_ENDPOINT``)
    + script_dir: where files/stage_hub_weights.py is uploaded on the host
    + timeout_s: a download that takes longer fails

    Changes nothing while the staged marker matches the pin and the files are all there. A
    checksum that is not the pinned one fails the operation and stages nothing.

    **Example:**

    .. code:: python

        weights.stage(name="model weights staged", source="url", model="qwen3-32b-awq",
                      url="http://mirror.internal/models/qwen3-32b-awq.tar", sha256="9f86d0...")
    """
    if source == "image":
        host.noop(f"{model}: the weights are in the image")
        return
    if source == "url":
        if not (url and sha256):
            raise OperationValueError("source 'url' needs url and sha256")
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise OperationValueError(f"sha256 {sha256!r}: 64 lowercase hex digits")
        state = host.get_fact(StagedWeights, directory=url_dir(models_dir, sha256))
        if staged_matches(state, "url", sha256):
            host.noop(f"{url} staged (sha256 {sha256[:12]}, {state['files']} files)")
            return
        yield url_stage_command(url, sha256, models_dir, timeout_s)
        return
    if source != "hub":
        raise OperationValueError(f"source {source!r}: one of 'url', 'hub', 'image'")
    if not image:
        raise OperationValueError("source 'hub' needs the vLLM image that runs the download")
    state = host.get_fact(StagedWeights, directory=hub_snapshot_dir(hf_cache_dir, model, revision))
    if staged_matches(state, "hub", revision):
        host.noop(f"{model}@{(revision or state['marker'].get('revision', '?'))[:12]} staged ({state['files']} files)")
        return
    token_env = None
    if hf_token_file:
        token_env = HF_TOKEN_ENV_FILE
        yield from secrets.env_file._inner(dest=token_env, variables=dict.fromkeys(HF_TOKEN_VARIABLES, hf_token_file))
    yield from files.directory._inner(path=hf_cache_dir, user="root", group="root", mode="755")
    yield from files.directory._inner(path=script_dir, user="root", group="root", mode="755")
    script = f"{script_dir}/{HUB_SCRIPT}"
    yield from files.put._inner(src=StringIO((FILES / HUB_SCRIPT).read_text()), dest=script,
                                user="root", group="root", mode="644")
    yield hub_stage_command(image, model, revision, hf_cache_dir, script, token_env, hf_endpoint, timeout_s)


def archives_to_remove(archives: list[dict], keep: str) -> list[str]:
    """Staged archives no replica needs: all but ``keep``, the newest other complete one (what a
    rollback goes back to) and any a container mounts (a replica, or the stopped previous one a
    rollout keeps).

    >>> a = [{"name": "aa", "mtime": 1, "mounted": 0}, {"name": "bb", "mtime": 3, "mounted": 0},
    ...      {"name": "cc", "mtime": 2, "mounted": 0}, {"name": "dd", "mtime": 0, "mounted": 1},
    ...      {"name": "cc.replaced-9", "mtime": 5, "mounted": 0}]
    >>> archives_to_remove(a, keep="cc")
    ['aa', 'cc.replaced-9']
    """
    others = [a for a in archives if a["name"] != keep and "." not in a["name"]]
    previous = max(others, key=lambda a: a["mtime"])["name"] if others else None
    return sorted(a["name"] for a in archives
                  if a["name"] not in (keep, previous) and not a["mounted"])


@operation()
def retain(models_dir: str, keep: str):
    """
    Remove staged URL archives no replica needs any more (20 GB each on a real node).

    + models_dir: where :func:`stage` stages archives (settings ``vllm_models_dir``)
    + keep: the pinned archive's sha256

    Kept: the pinned archive, the newest other one (a rollback's way back), and every directory a
    container (running or stopped) mounts. Run it after the replicas: a replica that moved to the
    new archive frees the old one, which then stays as "the newest other". Nothing runs when there
    is nothing to remove.

    **Example:**

    .. code:: python

        weights.retain(name="Staged archives no replica needs removed",
                       models_dir="/var/lib/gpufleet/models", keep="9f86d0...")
    """
    doomed = archives_to_remove(host.get_fact(StagedArchives, models_dir=models_dir), keep)
    if not doomed:
        host.noop(f"{models_dir}: only archives in use or kept for a rollback")
        return
    yield "rm -rf " + " ".join(shlex.quote(f"{models_dir.rstrip('/')}/{name}") for name in doomed)
