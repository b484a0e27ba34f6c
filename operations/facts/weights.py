"""What a GPU node has staged of its model weights (operations/weights.py writes it)."""

from __future__ import annotations

import json
import re
import shlex

from pyinfra.api import FactBase

from . import docker_api
from .util import answer, wrap_answer

MARKER = ".gpufleet-staged.json"  # in the staged directory; written last, after verification
ARCHIVE_DIR = re.compile(r"[0-9a-f]{64}(\.replaced-\d+)?")  # what operations/weights.py stages
MANIFEST = ".gpufleet-manifest.sha256"  # `sha256sum -c` input for every staged file (URL archives)
# Files and bytes of a staged directory, as the fact counts them: every regular file, symlinks
# followed, but the marker (and its temporary) and the manifest. %.0f, not %d: Debian's mawk
# prints %d no higher than 2^31-1, and weights are tens of GB.
COUNT_FILES = ("find -L \"$1\" -type f ! -name '" + MARKER + "*' ! -name '" + MANIFEST + "' -printf '%s\\n' "
               "| awk '{n++; s+=$1} END {printf \"%.0f %.0f\\n\", n, s}'")


class StagedWeights(FactBase):
    """
    The staged marker of ``directory`` and what the directory holds now.

    ``{"marker": {...} | None, "files": 7, "bytes": 17893220352}``: the marker is the JSON the
    staging wrote after verifying (None: never staged, or interrupted before the end); files and
    bytes count every regular file (symlinks followed: the Hugging Face cache links snapshots to
    blobs) except the marker (and a temporary of it) and the manifest (COUNT_FILES). The staging records the same two numbers, so a file
    removed, truncated or added since shows without hashing gigabytes on every plan.

    ``directory`` may contain ``$(...)`` resolved on the host (a hub snapshot named by
    ``refs/main``); everything else in it is quoted.
    """

    def command(self, directory: str) -> str:
        d = directory if "$(" in directory else shlex.quote(directory)
        marker = shlex.quote(MARKER)
        return wrap_answer(f'd={d}; if [ -f "$d/"{marker} ]; then cat "$d/"{marker}; echo; '
                           f'set -- "$d"; {COUNT_FILES}; else echo absent; fi')

    def process(self, output: list[str]) -> dict:
        lines = [line for line in answer(output, strict=True) if line.strip()]
        if not lines or lines[0].strip() == "absent":
            return {"marker": None, "files": 0, "bytes": 0}
        try:
            marker = json.loads(lines[0])
        except ValueError:
            marker = None  # a marker cut short is no marker: stage again
        files, size = (int(x) for x in lines[-1].split()) if len(lines) > 1 else (0, 0)
        return {"marker": marker if isinstance(marker, dict) else None, "files": files, "bytes": size}


class StagedArchives(FactBase):
    """
    The URL archives staged under ``models_dir`` (``<sha256>`` and ``<sha256>.replaced-<time>``
    directories), each with its modification time and how many containers mount it: for a
    ``<sha256>`` directory, containers (running or stopped) configured with it; for a replaced copy,
    running containers configured with the original path that started before it was replaced
    (their bind mount followed the rename).

    ``[{"name": "9f86...", "mtime": 1764900000, "mounted": 1}, ...]``; ``[]`` when the directory
    does not exist. Docker missing or not answering counts every archive as mounted (kept).
    """

    def command(self, models_dir: str) -> str:
        # A replaced copy (<sha256>.replaced-<time>) is what a container started before that time
        # still has mounted: Docker names the original path, the mount follows the renamed one.
        # Docker is asked through its API (operations/facts/docker_api.py): one ping for the
        # directory, a list per archive, an inspect only for a replaced copy's containers. A list
        # that fails (the daemon stopped meanwhile, an error status) counts as "unknown": kept.
        volume = '--data-urlencode "filters={\\"volume\\":[\\"$PWD/%s\\"]}"'
        return wrap_answer(f"cd {shlex.quote(models_dir)} 2>/dev/null || exit 0; "
                           f"up=yes; command -v docker >/dev/null 2>&1 && {docker_api.ping()} || up=no; "
                           "for d in *; do "
                           '[ -d "$d" ] || continue; case "$d" in '
                           '*.replaced-*) ts="${d##*.replaced-}"; n=0; '
                           f"if l=$({docker_api.list_containers(volume % '${d%%.replaced-*}')}); then "
                           f"for c in $({docker_api.ids_in('l')}); do "
                           f's=$(date -d "$({docker_api.started_at("$c")})" +%s 2>/dev/null || echo 0); '
                           '[ "$s" -lt "$ts" ] && n=$((n + 1)); done; else n=unknown; fi ;; '
                           f"*) if l=$({docker_api.list_containers(volume % '$d' + ' -d all=1')}); then "
                           f"n=$({docker_api.ids_in('l')} | wc -l); else n=unknown; fi ;; esac; "
                           '[ "$up" = yes ] || n=unknown; '
                           'echo "$d $(stat -c %Y "$d") $n"; done')

    def process(self, output: list[str]) -> list[dict]:
        found = []
        for line in answer(output, strict=True):
            parts = line.split()
            if len(parts) != 3 or not parts[1].isdigit() or not ARCHIVE_DIR.fullmatch(parts[0]):
                continue  # not a staged archive (another file an operator keeps there)
            mounted = int(parts[2]) if parts[2].isdigit() else 1  # unknown: keep it
            found.append({"name": parts[0], "mtime": int(parts[1]), "mounted": mounted})
        return found
