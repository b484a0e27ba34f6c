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

from pyinfra.api import FactBase

from . import docker_api
from .util import wrap

CHECKED_DIR = "/var/lib/gpufleet/images/checked"
BASE_ID_LABEL = "io.gpufleet.base-id"
BASE_DIGESTS_LABEL = "io.gpufleet.base-digests"


def checked_marker(image_id: str) -> str:
    """The marker the check writes for one image id (only after it passed).

    >>> checked_marker("sha256:4f2c")
    '/var/lib/gpufleet/images/checked/4f2c.json'
    """
    return f"{CHECKED_DIR}/{image_id.removeprefix('sha256:')}.json"


def _image(raw: dict | None) -> dict | None:
    if raw is None:
        return None
    return {"id": raw.get("Id"), "labels": (raw.get("Config") or {}).get("Labels") or {},
            "digests": raw.get("RepoDigests") or [], "layers": (raw.get("RootFS") or {}).get("Layers") or []}


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
        # One curl asks for both images (a daemon that does not answer fails the read: never "not
        # built"; an image that is not there answers 404), then the shell lists the check's markers.
        return wrap("docker", (
            docker_api.get(docker_api.path_of("images", ref), docker_api.path_of("images", base)) + " || exit $?; "
            f'for f in {CHECKED_DIR}/*.json; do [ ! -f "$f" ] || echo "checked=${{f##*/}}"; done'))

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "docker not installed", "image": None,
                "checked": False, "base": None}

    def process(self, output):
        result, _, body = docker_api.read_answers(output)
        if result["status"] == "missing":
            return self.default()
        # The answers come in the order asked: the built image, then its base.
        answers = [doc if code == 200 and isinstance(doc, dict) else None
                   for code, _, doc in docker_api.responses(body)] + [None, None]
        markers = {line.strip().removeprefix("checked=") for line in body if line.startswith("checked=")}
        image = _image(answers[0])
        return {**self.default(), **result, "image": image, "base": _image(answers[1]),
                "checked": image is not None and checked_marker(image["id"] or "").rsplit("/", 1)[-1] in markers}
