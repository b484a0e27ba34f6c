"""One short content digest for everything gpufleet labels, names or compares by content.

>>> short_digest("abc")
'ba7816bf8f01cfea'
>>> short_digest({"b": 1, "a": [2]}) == short_digest({"a": [2], "b": 1})
True
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def short_digest(value: Any) -> str:
    """The first 16 hex digits of the SHA-256 of ``value``: a string as UTF-8, anything else as sorted JSON."""
    data = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]
