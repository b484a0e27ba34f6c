"""Which revision of this repository a run uses, and whether it holds uncommitted changes.

A deploy applies whatever the checkout holds. ``gpufleet drift --fix`` (and the nightly timer
that runs it) must therefore refuse a checkout with uncommitted or untracked changes (``git status
--porcelain`` not empty): an edit left in the working tree would otherwise reach every drifted host
at 03:00, with no commit to say what it was. ``--allow-dirty`` deploys it anyway, and the report
records the commit and the changed paths either way.

Example (the values depend on the checkout, so this is not run as a doctest)::

    state = revision(".")
    state.commit, state.dirty   # ('4c70c43e...', [' M group_data/all.py'])
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Checkout:
    commit: str | None  # None: not a git checkout, or git could not read it
    dirty: list[str] = field(default_factory=list)  # `git status --porcelain` lines
    error: str | None = None

    @property
    def clean(self) -> bool:
        return self.commit is not None and not self.dirty

    def as_dict(self) -> dict:
        return {"commit": self.commit, "dirty": self.dirty, **({"error": self.error} if self.error else {})}

    def refusal(self) -> str | None:
        """Why a deploy from this checkout is refused, or None when it is clean."""
        if self.commit is None:
            return (f"cannot tell what would be deployed: {self.error}. Run from a git checkout "
                    "(or pass --allow-dirty to deploy the tree as it is)")
        if self.dirty:
            shown = ", ".join(line[3:] for line in self.dirty[:5]) + (" ..." if len(self.dirty) > 5 else "")
            return (f"the checkout at {self.commit[:12]} has uncommitted changes ({shown}): --fix deploys the "
                    "working tree, so commit or stash them first, or pass --allow-dirty to deploy them anyway")
        return None


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60)


def revision(root: str | Path) -> Checkout:
    """The commit checked out at ``root`` and ``git status --porcelain`` (untracked files included)."""
    root = Path(root)
    try:
        head = _git(root, "rev-parse", "--verify", "HEAD")
        if head.returncode != 0:
            return Checkout(None, error=f"git rev-parse HEAD in {root}: {head.stderr.strip() or 'failed'}")
        status = _git(root, "status", "--porcelain", "--untracked-files=normal")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Checkout(None, error=f"git in {root}: {exc}")
    if status.returncode != 0:
        return Checkout(head.stdout.strip(), error=f"git status in {root}: {status.stderr.strip()}",
                        dirty=["?? (git status failed)"])
    return Checkout(head.stdout.strip(), dirty=[line for line in status.stdout.splitlines() if line.strip()])
