"""The lab's RAG application image, built from lab/images/rag-app/ on the base image.

A small real app (stdlib HTTP server + pymilvus 2.3.8 + urllib to vLLM's OpenAI API; see
lab/images/rag-app/app.py). pymilvus is installed offline from a wheelhouse downloaded on this
machine into lab/.cache/wheels-rag-app (see images_milvus.py for why). Published to the lab
registry as gpufleet-lab/rag-app:1, which group_data/lab.py names as ``app_image``.
"""

from __future__ import annotations

from gpufleet.lab.images_milvus import IMAGES_DIR, build_image, cached, input_digest, wheelhouse
from gpufleet.lab.progress import say, step

APP_REQUIREMENTS = ["pymilvus==2.3.8", "setuptools<81", "marshmallow<4"]
APP_REPO = "gpufleet-lab/rag-app-local"
APP_NAME = "gpufleet-lab/rag-app:1"


def build(client, base_image: str) -> list[tuple[str, str]]:
    wheels = wheelhouse("wheels-rag-app", APP_REQUIREMENTS)
    source = IMAGES_DIR / "rag-app"
    tag = f"{APP_REPO}:{input_digest(source, wheels, extra=base_image)}"
    if cached(client, tag):
        say(f"rag-app image {tag} cached")
    else:
        with step(f"build {tag} (RAG app)"):
            build_image(client, tag, source, wheels, base_image)
    return [(tag, APP_NAME)]
