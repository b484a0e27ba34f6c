"""Version strings in group_data: what an exact pin and a security floor must look like."""

from __future__ import annotations

import re

# An exact Debian version: [epoch:]upstream[-revision]; no wildcards, ranges or spaces.
EXACT_DEBIAN_VERSION = re.compile(r"^(\d+:)?[0-9][0-9A-Za-z.+~]*(-[0-9A-Za-z.+~]+)?$")


def exact_debian_version(value: str | None) -> str | None:
    """A pydantic validator body: ``value`` is one exact Debian version (or None)."""
    if value is not None and not EXACT_DEBIAN_VERSION.match(value):
        raise ValueError("an exact Debian package version such as 1.22.1-9+deb12u11 (no wildcards or ranges)")
    return value
