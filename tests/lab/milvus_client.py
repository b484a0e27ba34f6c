"""A real Milvus round trip: create a collection, insert vectors, find them again, drop it.

Two ways to use it from a lab test:

- in process (pymilvus 2.3.8 is in the test extra): ``insert_and_search("http://127.0.0.1:19530")``
  wherever the test machine can reach Milvus;
- inside the lab, where Milvus is published only on a node's private address: pipe this file into
  a Python that has pymilvus on the node, e.g. the RAG app's container::

      ssh gpu-node-1 docker exec -i rag-app /opt/rag/bin/python - http://<node ip>:19530 < tests/lab/milvus_client.py

  which prints the result as one JSON line and exits 0 only when every check passed.

With Milvus authentication on it logs in as ``MILVUS_USER`` with ``MILVUS_PASSWORD`` from its
environment (it creates and drops a collection of its own: root's work, not the app user's).

Stdlib + pymilvus only (no project imports), so that piping works.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time


def insert_and_search(uri: str, count: int = 100, dim: int = 32, timeout: float = 30.0) -> dict:
    """Insert ``count`` random unit vectors into a fresh collection, search each of 5 back, drop it.

    Returns ``{"inserted", "found_self", "checked", "seconds", "collection"}``; raises
    AssertionError when a vector is not its own nearest neighbour (consistency_level="Strong":
    without it a search right after the insert may see nothing).
    """
    from pymilvus import MilvusClient

    started = time.monotonic()
    client = MilvusClient(uri=uri, timeout=timeout, user=os.environ.get("MILVUS_USER", ""),
                          password=os.environ.get("MILVUS_PASSWORD", ""))
    collection = f"gpufleet_check_{int(time.time() * 1000)}_{random.randrange(10**6)}"
    rng = random.Random(1234)
    vectors = []
    for _ in range(count):
        v = [rng.gauss(0, 1) for _ in range(dim)]
        norm = sum(x * x for x in v) ** 0.5
        vectors.append([x / norm for x in v])
    try:
        client.create_collection(collection, dimension=dim, metric_type="COSINE", consistency_level="Strong")
        result = client.insert(collection, [{"id": i, "vector": v, "tag": f"v{i}"} for i, v in enumerate(vectors)])
        inserted = result["insert_count"] if isinstance(result, dict) else len(result)
        assert inserted == count, f"inserted {inserted} of {count}"
        checked = [0, count // 4, count // 2, 3 * count // 4, count - 1]
        hits = client.search(collection, [vectors[i] for i in checked], limit=3, output_fields=["tag"],
                             consistency_level="Strong")
        found = [row[0]["id"] if row else None for row in hits]
        assert found == checked, f"nearest neighbours {found}, expected {checked}"
        assert all(row[0]["entity"]["tag"] == f"v{i}" for row, i in zip(hits, checked)), "dynamic field lost"
        return {"inserted": inserted, "found_self": len(found), "checked": checked,
                "seconds": round(time.monotonic() - started, 2), "collection": collection}
    finally:
        try:
            client.drop_collection(collection)
        finally:
            client.close()


if __name__ == "__main__":
    try:
        print(json.dumps({"ok": True, **insert_and_search(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:19530")}))
    except Exception as exc:  # one JSON line either way, for the caller to parse
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
        sys.exit(1)
