"""What the Milvus host's generated MinIO credentials file says about itself (never its secrets)."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from .util import answer, wrap_answer

GENERATION_MARK = "# gpufleet-generation "


class CredentialsGeneration(FactBase):
    """The generation recorded on the first line of a generated credentials file, or None.

    Reads only that comment line (``sed -n 1p``): the values below it never leave the host.

    .. code:: python

        host.get_fact(CredentialsGeneration, path="/etc/gpufleet/milvus/minio.env")
        1
    """

    @staticmethod
    def default():
        return None

    def command(self, path: str) -> str:
        q_path = shlex.quote(path)
        return wrap_answer(f"if [ -f {q_path} ]; then sed -n 1p {q_path}; fi")

    def process(self, output):
        line = "\n".join(answer(output, strict=True)).strip()  # a file sed cannot read: no answer
        if not line.startswith(GENERATION_MARK):
            return None
        value = line[len(GENERATION_MARK):].strip()
        return int(value) if value.isdigit() else None
