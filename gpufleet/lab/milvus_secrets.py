"""The lab's Milvus passwords: random, made once per checkout under lab/.state (git-ignored), 0600.

group_data/lab.py names these files as ``milvus_root_password_file`` / ``milvus_app_password_file``,
so the lab runs Milvus with authentication as production does, from control-side secret files
made the way an operator would make them. They are made when the lab's data is first read (a
fresh checkout validates and deploys without a separate step), never replaced once there, and
removed with the rest of lab/.state by ``gpufleet lab down``, which removes the hosts' volumes
(Milvus's users with its data) at the same time.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from gpufleet.lab.topology import STATE_DIR

ROOT_PASSWORD_FILE = STATE_DIR / "milvus-root-password"
APP_PASSWORD_FILE = STATE_DIR / "milvus-app-password"


def ensure(path: Path) -> str:
    """``path``, holding a random password (made 0600 from its first byte if missing); its path as text."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: keep theirs
            return str(path)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(24) + "\n")
    return str(path)


def root_password_file() -> str:
    return ensure(ROOT_PASSWORD_FILE)


def app_password_file() -> str:
    return ensure(APP_PASSWORD_FILE)
