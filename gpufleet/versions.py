"""Version strings in group_data: what an exact pin, a security floor and a pinned image must look like."""

from __future__ import annotations

import re

# An exact Debian version: [epoch:]upstream[-revision]; no wildcards, ranges or spaces.
EXACT_DEBIAN_VERSION = re.compile(r"(\d+:)?[0-9][0-9A-Za-z.+~]*(-[0-9A-Za-z.+~]+)?")


def exact_debian_version(value: str | None) -> str | None:
    """A pydantic validator body: ``value`` is one exact Debian version (or None)."""
    if value is not None and not EXACT_DEBIAN_VERSION.fullmatch(value):
        raise ValueError("an exact Debian package version such as 1.22.1-9+deb12u11 (no wildcards or ranges)")
    return value


# registry/path/name:tag or ...@sha256:<64 hex>; "latest" is not a pin.
IMAGE_REF = re.compile(r"[a-z0-9][a-z0-9._/:-]*[a-z0-9](:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(@sha256:[0-9a-f]{64})?")


def pinned_image(value: str) -> str:
    """A pydantic validator body: ``value`` is an image reference with an explicit tag (not
    ``:latest``) or an @sha256 digest. The one image-pin rule of every ``*_image`` setting."""
    last = value.rsplit("/", 1)[-1]
    if not IMAGE_REF.fullmatch(value) or (":" not in last and "@sha256:" not in value):
        raise ValueError("an image reference with an explicit tag or @sha256 digest")
    if last.split("@")[0].endswith(":latest"):
        raise ValueError("a pinned tag or digest, not :latest")
    return value
