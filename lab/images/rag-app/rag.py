"""The RAG app's pure logic: chunking, a hashing embedding, the prompt, the key check. No I/O, stdlib only.

The embedding is **feature hashing**, not a neural model: lower-cased word unigrams and bigrams
are hashed (BLAKE2b) into ``dim`` buckets with a hash-derived sign, counted, and L2-normalised.
Two texts are close when they share words and word pairs. It is deterministic (the same text
gives the same vector in every process, on every host), needs no model download, and is honest
about what it is: good enough to prove the retrieval path (embed -> Milvus -> top-k -> vLLM) in
the lab; a production app would use an embedding model instead and keep the same wiring.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re

DEFAULT_DIM = 256
_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")

SYSTEM_PROMPT = (
    "You answer questions about the documents provided. Use only the context below; "
    "if it does not contain the answer, say so. Cite sources by their [number]."
)


def words(text: str) -> list[str]:
    """Lower-cased words; dots and apostrophes inside a word are kept (``v2.3.5``, ``node's``).

    >>> words("Milvus listens on :19530, v2.3.5!")
    ['milvus', 'listens', 'on', '19530', 'v2.3.5']
    """
    return _WORD.findall(text.lower())


def features(text: str) -> list[str]:
    """Unigrams and bigrams of ``text``.

    >>> features("Dual RTX 5090")
    ['dual', 'rtx', '5090', 'dual rtx', 'rtx 5090']
    """
    w = words(text)
    return w + [f"{a} {b}" for a, b in zip(w, w[1:])]


def _bucket(feature: str, dim: int) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "big")
    return value % dim, (1.0 if (value >> 63) & 1 == 0 else -1.0)


def embed(text: str, dim: int = DEFAULT_DIM) -> list[float]:
    """A ``dim``-long L2-normalised hashing vector of ``text`` (all zeros when it has no words)."""
    if dim < 8:
        raise ValueError("dim must be at least 8")
    vector = [0.0] * dim
    for feature in features(text):
        index, sign = _bucket(feature, dim)
        vector[index] += sign
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def chunk(text: str, max_words: int = 60, overlap: int = 15) -> list[str]:
    """Split ``text`` into chunks of at most ``max_words`` words.

    Consecutive paragraphs (blank-line separated) are packed together while they fit, so a
    heading travels with the paragraph after it and a chunk rarely starts mid-thought; a
    paragraph longer than ``max_words`` is cut into windows sharing ``overlap`` words.
    """
    if max_words < 1 or not 0 <= overlap < max_words:
        raise ValueError("need max_words >= 1 and 0 <= overlap < max_words")
    chunks: list[str] = []
    current: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        tokens = paragraph.split()
        if not tokens:
            continue
        if current and len(current) + len(tokens) > max_words:
            chunks.append(" ".join(current))
            current = []
        if len(tokens) <= max_words:
            current += tokens
            continue
        step = max_words - overlap
        for start in range(0, len(tokens), step):
            chunks.append(" ".join(tokens[start:start + max_words]))
            if start + max_words >= len(tokens):
                break
    if current:
        chunks.append(" ".join(current))
    return chunks


def chunk_id(source: str, index: int) -> int:
    """A stable positive 63-bit id for chunk ``index`` of ``source``: loading twice upserts, never duplicates."""
    digest = hashlib.blake2b(f"{source}#{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def documents_to_rows(documents: dict[str, str], dim: int = DEFAULT_DIM, max_words: int = 60,
                      overlap: int = 15, origin: str = "image") -> list[dict]:
    """Milvus rows ``{"id", "vector", "text", "source", "origin"}`` for every chunk of every document.

    ``origin`` says who owns a row: ``"image"`` (the documents shipped in the image, which each
    start re-indexes) or ``"ingested"`` (``POST /documents``: kept until ingested again).
    """
    rows = []
    for source in sorted(documents):
        for index, piece in enumerate(chunk(documents[source], max_words, overlap)):
            rows.append({"id": chunk_id(source, index), "vector": embed(piece, dim), "text": piece,
                         "source": source, "origin": origin})
    return rows


def build_messages(question: str, hits: list[dict]) -> list[dict]:
    """OpenAI chat messages: the system prompt, then the numbered context and the question."""
    context = "\n\n".join(f"[{i}] ({h['source']}) {h['text']}" for i, h in enumerate(hits, 1))
    user = f"Context:\n{context or '(no documents matched)'}\n\nQuestion: {question}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def bearer_ok(authorization: str | None, key: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <key>`` (constant-time compare).

    An empty ``key`` means no authentication: everything passes.

    >>> bearer_ok("Bearer s3cret", "s3cret"), bearer_ok("bearer s3cret", "s3cret"), bearer_ok(None, "s3cret")
    (True, True, False)
    >>> bearer_ok("Basic s3cret", "s3cret"), bearer_ok("Bearer s3cre", "s3cret"), bearer_ok(None, "")
    (False, False, True)
    """
    if not key:
        return True
    scheme, _, given = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())
