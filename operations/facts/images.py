"""The node's built vLLM image as drift needs it: checked or not, and built on which upstream image.

Two things a tag alone cannot tell:

* **checked**: operations/vllm.image writes ``/var/lib/gpufleet/images/checked/<image id>.json``
  (the check's own report) only after the NCCL/architecture check passed in that exact image.
  An image whose build finished but whose check never ran (an interrupted deploy) has no marker.
* **its base**: the image's layers start with the layers of the upstream image it was built on,
  and the build labels it with that image's id and repo digests. When the upstream tag
  (``vllm_image``) now names another image on this host, the tag was re-pushed upstream and
  pulled here since the build.
"""

from __future__ import annotations

import json
import shlex

from pyinfra.api import FactBase

from .util import envelope, wrap

CHECKED_DIR = "/var/lib/gpufleet/images/checked"
BASE_ID_LABEL = "io.gpufleet.base-id"
BASE_DIGESTS_LABEL = "io.gpufleet.base-digests"
_INSPECT = "'{\"id\":{{json .Id}},\"labels\":{{json .Config.Labels}},\"digests\":{{json .RepoDigests}},\"layers\":{{json .RootFS.Layers}}}'"


def checked_marker(image_id: str) -> str:
    """The marker the check writes for one image id (only after it passed).

    >>> checked_marker("sha256:4f2c")
    '/var/lib/gpufleet/images/checked/4f2c.json'
    """
    return f"{CHECKED_DIR}/{image_id.removeprefix('sha256:')}.json"


def _image(line: str) -> dict | None:
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    return {"id": raw.get("id"), "labels": raw.get("labels") or {}, "digests": raw.get("digests") or [],
            "layers": raw.get("layers") or []}


class BuiltImage(FactBase):
    """The built image ``ref``, whether it passed its check, and the upstream image ``base`` as
    this host has it now (never pulled: a read).

    .. code:: python

        host.get_fact(BuiltImage, ref="gpufleet/vllm-rtx5090:6e73c2a55758470b", base="vllm/vllm-openai:v0.21.0")
        {"status": "ok", "exit_code": 0, "error": None,
         "image": {"id": "sha256:9a..", "labels": {"io.gpufleet.base-id": "sha256:51..", ...},
                   "digests": [], "layers": ["sha256:..", ...]},
         "checked": True,
         "base": {"id": "sha256:51..", "digests": ["vllm/vllm-openai@sha256:e1.."], "labels": {}, "layers": [...]}}

    ``image`` / ``base`` are None when not on the host; a Docker that does not answer is
    ``"status": "failed"`` (never "not built").
    """

    def command(self, ref: str, base: str) -> str:
        r, b = shlex.quote(ref), shlex.quote(base)
        # `docker image inspect` fails alike for "no such image" and for a daemon that does not
        # answer: when it fails, the daemon is asked, so that only the first reads as "not built"
        # (an image that is there costs no extra call).
        return wrap("docker", (
            f"if i=$(docker image inspect --format {_INSPECT} {r} 2>/dev/null); then echo \"image=$i\"; "
            f"id=$(docker image inspect --format '{{{{.Id}}}}' {r}); "
            f"if [ -f \"{CHECKED_DIR}/${{id#sha256:}}.json\" ]; then echo checked=yes; else echo checked=no; fi; "
            "else docker version --format '{{.Server.Version}}' >/dev/null || exit $?; fi; "
            f"if b=$(docker image inspect --format {_INSPECT} {b} 2>/dev/null); then echo \"base=$b\"; fi"))

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "docker not installed", "image": None,
                "checked": False, "base": None}

    def process(self, output):
        result, body = envelope(output)
        found = {**self.default(), **result}
        for line in body:
            key, _, value = line.partition("=")
            if key in ("image", "base"):
                found[key] = _image(value)
            elif key == "checked":
                found["checked"] = value.strip() == "yes"
        return found
