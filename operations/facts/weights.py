"""What a GPU node has staged of its model weights (operations/weights.py writes it)."""

from __future__ import annotations

import json
import shlex

from pyinfra.api import FactBase

MARKER = ".gpufleet-staged.json"  # in the staged directory; written last, after verification
MANIFEST = ".gpufleet-manifest.sha256"  # `sha256sum -c` input for every staged file (URL archives)


class StagedWeights(FactBase):
    """
    The staged marker of ``directory`` and what the directory holds now.

    ``{"marker": {...} | None, "files": 7, "bytes": 17893220352}``: the marker is the JSON the
    staging wrote after verifying (None: never staged, or interrupted before the end); files and
    bytes count every regular file (symlinks followed: the Hugging Face cache links snapshots to
    blobs) except the marker and the manifest. The staging records the same two numbers, so a file
    removed, truncated or added since shows without hashing gigabytes on every plan.

    ``directory`` may contain ``$(...)`` resolved on the host (a hub snapshot named by
    ``refs/main``); everything else in it is quoted.
    """

    def command(self, directory: str) -> str:
        d = directory if "$(" in directory else shlex.quote(directory)
        marker, manifest = shlex.quote(MARKER), shlex.quote(MANIFEST)
        return (f'd={d}; if [ -f "$d/"{marker} ]; then cat "$d/"{marker}; echo; '
                f'find -L "$d" -type f ! -name {marker} ! -name {manifest} -printf "%s\\n" '
                "| awk '{n++; s+=$1} END {printf \"%d %d\\n\", n, s}'; else echo absent; fi")

    def process(self, output: list[str]) -> dict:
        lines = [line for line in output if line.strip()]
        if not lines or lines[0].strip() == "absent":
            return {"marker": None, "files": 0, "bytes": 0}
        try:
            marker = json.loads(lines[0])
        except ValueError:
            marker = None  # a marker cut short is no marker: stage again
        files, size = (int(x) for x in lines[-1].split()) if len(lines) > 1 else (0, 0)
        return {"marker": marker if isinstance(marker, dict) else None, "files": files, "bytes": size}
