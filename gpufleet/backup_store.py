"""Where Milvus backups are kept: a directory on the control host, or an S3-compatible bucket.

A location is a path (``/var/lib/gpufleet/backups``, ``~/backups``) or ``s3://bucket[/prefix]``.
Both hold ``<inventory stem>/<UTC stamp>/`` with ``manifest.json`` and one file per collection
(gpufleet/milvus_dump.py). A backup is *whole* when its manifest is there, and the manifest is
always written last: renamed into place from ``<stamp>.partial`` on disk (every file, the
directory and the rename synced to the disk), uploaded after every data file to a bucket. A
backup cut off halfway is therefore never read as one, by a restore, by retention or by drift.

A bucket backup is exported to a private staging directory on the control host first (the
export needs a file system, and a checksum is taken of what was written), then uploaded, each
object's size checked against its file (HEAD) before the manifest goes up; a restore downloads
it to a private directory and checks every file against the manifest's sha256 before anything
is written to Milvus. Both directories are removed when the run ends. A run that
is killed or loses its machine leaves its directory (owner-only): a ``<stamp>.partial`` beside the
backups, or a staging directory under ``backup-staging/`` in the state directory. Each run claims
its directory (gpufleet/claimed_dirs.py): the next backup of the same inventory to the same
directory removes a dead run's ``.partial``, and the next bucket backup or bucket restore a dead
run's staging directory. Only names gpufleet
gives backups (``YYYYMMDDTHHMMSSZ``) count: an operator's own copy beside them is never pruned
or read as the newest.

S3 access (``milvus_backup_s3_*`` of the Milvus host's settings, gpufleet/settings_data.py):
``endpoint`` (None: AWS), ``region`` and a control-side credentials file in the AWS shared
credentials format (its ``[default]`` section, or its only one); without a file, boto3's own chain
(``AWS_*`` environment, ``~/.aws``, an instance role). The keys are handed to boto3 only: never
on a command line, never printed. Requests are path-style with checksums only where S3 requires
them, which is what S3-compatible servers (MinIO, Ceph RGW, rclone) accept; the lab's target is
``rclone serve s3`` (tests/unit/test_backup_store.py, tests/lab/test_data_tier.py).
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpufleet.claimed_dirs import Claim, lock_path, sweep
from gpufleet.private_files import private_dir, state_root, sync_dir

MANIFEST = "manifest.json"
S3_SCHEME = "s3://"
# gpufleet backup's own names (UTC time): anything else beside them (an operator's copy) is not counted.
STAMP = re.compile(r"\d{8}T\d{6}Z")
PARTIAL_SUFFIX = ".partial"
PARTIAL_PATTERN = "[0-9]" * 8 + "T" + "[0-9]" * 6 + "Z" + PARTIAL_SUFFIX  # STAMP's, as a glob: only gpufleet's
# AWS's rule for bucket names (S3-compatible servers accept at least these).
BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
S3_LOCATION = re.compile(rf"s3://(?P<bucket>{BUCKET})(?:/(?P<prefix>[^\s]*))?")


class BackupError(Exception):
    """A backup or restore that could not run or did not check out; the message says why."""


class StoreError(BackupError):
    """A backup location that cannot be used or read; the message names it, never a secret."""


@dataclass(frozen=True)
class S3Access:
    """How the control host reaches a bucket: endpoint URL (None: AWS), region, credentials file."""

    endpoint: str | None = None
    region: str | None = None
    credentials_file: str | None = None


def is_s3(location: str) -> bool:
    return location.startswith(S3_SCHEME)


def parse_s3(location: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of an ``s3://`` location; the prefix has no slash at either end.

    >>> parse_s3("s3://fleet-backups/milvus/prod/"), parse_s3("s3://fleet-backups")
    (('fleet-backups', 'milvus/prod'), ('fleet-backups', ''))
    >>> parse_s3("s3://Fleet_Backups/x")
    Traceback (most recent call last):
    ...
    gpufleet.backup_store.StoreError: s3://Fleet_Backups/x: expected s3://BUCKET[/PREFIX], BUCKET 3 to 63 lowercase letters, digits, dots or hyphens
    """
    match = S3_LOCATION.fullmatch(location)
    if not match:
        raise StoreError(f"{location}: expected s3://BUCKET[/PREFIX], BUCKET 3 to 63 lowercase letters, digits, "
                         "dots or hyphens")
    return match["bucket"], (match["prefix"] or "").strip("/")


def staging_root() -> Path:
    """Where bucket backups are exported and restores downloaded on the control host (not /tmp:
    a backup can be larger than a tmpfs)."""
    return state_root() / "backup-staging"


def _staging_dir(prefix: str) -> tuple[Path, Claim]:
    """A new private staging directory, claimed before it is made, after removing those whose run died."""
    root = staging_root()
    with _writable(root, "the state directory (GPUFLEET_STATE_DIR) must be one this user can write"):
        private_dir(root)
        sweep(root, "*")
        while True:
            directory = root / f"{prefix}{secrets.token_hex(6)}"
            claim = Claim(directory)
            try:
                directory.mkdir(mode=0o700)
                return directory, claim
            except FileExistsError:  # a name another run has: another name
                claim.release()
            except BaseException:
                claim.release()
                raise


@contextlib.contextmanager
def _writable(directory: Path, advice: str) -> Iterator[None]:
    """An OSError while making or claiming under ``directory`` (permissions, a full disk): a
    StoreError naming it and the error, with ``advice``, not a traceback."""
    try:
        yield
    except BlockingIOError:
        raise
    except OSError as exc:
        raise StoreError(f"{directory}: {exc.strerror or exc}; {advice}") from None


class _Claims:
    """The directories this store's runs work in, each claimed until it is published or removed."""

    def __init__(self):
        self._claims: dict[Path, Claim] = {}

    def _hold(self, directory: Path, claim: Claim) -> Path:
        self._claims[directory] = claim
        return directory

    def _let_go(self, directory: Path) -> None:
        claim = self._claims.pop(directory, None)
        if claim is not None:
            claim.release()

    def discard(self, staged: Path) -> None:
        """Remove a staged directory (a failed export or upload), then its claim."""
        shutil.rmtree(staged, ignore_errors=True)
        self._let_go(staged)


def open_store(location: str, s3: S3Access | None = None):
    """The store at ``location``: :class:`LocalStore` for a path, :class:`S3Store` for ``s3://``."""
    if is_s3(location):
        bucket, prefix = parse_s3(location)
        return S3Store(bucket, prefix, s3 or S3Access())
    return LocalStore(Path(location).expanduser())


class LocalStore(_Claims):
    """Backups in a directory of the control host, owner-only (the documents are the fleet's data)."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def where(self, stem: str, stamp: str) -> str:
        return str(self.root / stem / stamp)

    def whole(self, stem: str) -> list[str]:
        """The stamps of ``stem``'s whole backups, oldest first."""
        base = self.root / stem
        return sorted(p.name for p in base.glob("*") if p.is_dir() and STAMP.fullmatch(p.name) and (p / MANIFEST).is_file())

    def manifest(self, stem: str, stamp: str) -> dict[str, Any]:
        return json.loads((self.root / stem / stamp / MANIFEST).read_text())

    def stage(self, stem: str, stamp: str) -> Path:
        """The directory to export into: ``<stamp>.partial`` beside the whole backups, claimed
        (a ``.partial`` whose run died is removed first)."""
        base = self.root / stem
        with _writable(base, "where this user cannot write, choose another location (--to, or milvus_backup_dir)"):
            private_dir(private_dir(self.root) / stem)
            sweep(base, PARTIAL_PATTERN)
            partial, final = base / f"{stamp}{PARTIAL_SUFFIX}", base / stamp
            if partial.exists() or final.exists():  # another backup of the same second, or one still running
                raise StoreError(f"{partial if partial.exists() else final} exists: another backup is running or "
                                 "ran this second; try again")
            try:
                return self._hold(partial, Claim(partial))
            except BlockingIOError:
                raise StoreError(f"{lock_path(partial)} is held: another backup of this second is running; "
                                 "try again") from None

    def publish(self, staged: Path, stem: str, stamp: str) -> str:
        """Rename ``<stamp>.partial`` to ``<stamp>``, on disk before and after: the staged directory's
        names are synced first (each file's data was synced when it was written), then the rename
        in its parent. A backup whose rename may not have reached the disk is not left as one."""
        final = self.root / stem / stamp
        renamed = False
        try:
            sync_dir(staged)
            staged.rename(final)
            renamed = True
            sync_dir(final.parent)
        except BaseException:
            if renamed:
                (final / MANIFEST).unlink(missing_ok=True)
                shutil.rmtree(final, ignore_errors=True)
            self.discard(staged)
            raise
        self._let_go(staged)
        return str(final)

    def remove(self, stem: str, stamp: str) -> str:
        """Delete a backup, its manifest first (it stops counting as whole before its data goes)."""
        path = self.root / stem / stamp
        (path / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(path)
        return str(path)

    @contextlib.contextmanager
    def fetched(self, location: str) -> Iterator[Path]:
        """A backup's directory to restore from (on disk already: itself)."""
        yield Path(location).expanduser()


class S3Store(_Claims):
    """Backups as objects ``<prefix>/<stem>/<stamp>/<file>`` in a bucket."""

    def __init__(self, bucket: str, prefix: str, access: S3Access):
        super().__init__()
        self.bucket, self.prefix, self.access = bucket, prefix, access
        self._client = None

    # -- names ---------------------------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def where(self, stem: str, stamp: str) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self._key(stem, stamp)}"

    def _backup_prefix(self, location: str) -> str:
        """The key prefix (ending in ``/``) of a backup's location in this bucket."""
        bucket, prefix = parse_s3(location)
        if bucket != self.bucket or not prefix:
            raise StoreError(f"{location} is not a backup in s3://{self.bucket}")
        return prefix + "/"

    # -- reads ---------------------------------------------------------------------------------
    def whole(self, stem: str) -> list[str]:
        base = self._key(stem) + "/"
        stamps = {key[len(base):].split("/", 1)[0] for key in self._keys(base)
                  if key[len(base):].count("/") == 1 and key.endswith("/" + MANIFEST)}
        return sorted(stamp for stamp in stamps if STAMP.fullmatch(stamp))

    def manifest(self, stem: str, stamp: str) -> dict[str, Any]:
        body = self._call("read", self.where(stem, stamp), lambda c: c.get_object(
            Bucket=self.bucket, Key=self._key(stem, stamp, MANIFEST))["Body"].read())
        return json.loads(body)

    @contextlib.contextmanager
    def fetched(self, location: str) -> Iterator[Path]:
        """Download the backup at ``location`` to a private directory; removed afterwards."""
        prefix = self._backup_prefix(location)
        keys = self._keys(prefix)
        if prefix + MANIFEST not in keys:
            raise StoreError(f"{location} holds no {MANIFEST}: not a gpufleet backup (or an unfinished one)")
        directory, claim = _staging_dir("restore-")
        try:
            for key in keys:
                name = key[len(prefix):]
                if not name or "/" in name or name.startswith("."):  # flat layout; "" is a folder marker
                    continue
                fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    self._call("download", location, lambda c, k=key, h=handle: c.download_fileobj(self.bucket, k, h))
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)
            claim.release()

    # -- writes --------------------------------------------------------------------------------
    def stage(self, stem: str, stamp: str) -> Path:
        if stamp in self.whole(stem):
            raise StoreError(f"{self.where(stem, stamp)} exists: a backup ran this second; try again")
        return self._hold(*_staging_dir(f"{stem}-{stamp}-"))

    def publish(self, staged: Path, stem: str, stamp: str) -> str:
        """Upload the data files, then the manifest (the backup is whole from that moment); on a
        failure, remove what was uploaded. The staging directory goes either way."""
        where = self.where(stem, stamp)
        files = sorted(p for p in staged.iterdir() if p.name != MANIFEST) + [staged / MANIFEST]
        uploaded: list[str] = []
        try:
            for path in files:
                key = self._key(stem, stamp, path.name)
                self._call("upload", where, lambda c, p=path, k=key: c.upload_file(str(p), self.bucket, k))
                uploaded.append(key)
                self._check_size(where, path, key)  # each data file before the manifest goes up
        except BaseException:
            # The manifest first, whether or not its upload seemed to fail: a PUT that committed
            # before its answer was lost would otherwise make a whole-looking backup without data.
            with contextlib.suppress(Exception):
                self._delete([self._key(stem, stamp, MANIFEST)])
                self._delete(uploaded)
            raise
        finally:
            shutil.rmtree(staged, ignore_errors=True)
            self._let_go(staged)
        return where

    def _check_size(self, where: str, path: Path, key: str) -> None:
        """The object at ``key`` has as many bytes as ``path`` (an upload the server cut short or
        stored partly fails the backup, not a restore months later)."""
        size = self._call("check", where, lambda c: c.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        local = path.stat().st_size
        if size != local:
            raise StoreError(f"upload {where}: {path.name} is {size} bytes in the bucket, {local} on this host")

    def remove(self, stem: str, stamp: str) -> str:
        """Delete a backup, its manifest first (it stops counting as whole before its data goes)."""
        keys = self._keys(self._key(stem, stamp) + "/")
        manifest = self._key(stem, stamp, MANIFEST)
        self._delete([k for k in keys if k == manifest])
        self._delete([k for k in keys if k != manifest])
        return self.where(stem, stamp)

    # -- boto3 ---------------------------------------------------------------------------------
    def _keys(self, prefix: str) -> list[str]:
        def listing(client) -> list[str]:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        return self._call("list", f"{S3_SCHEME}{self.bucket}/{prefix}", listing)

    def _delete(self, keys: list[str]) -> None:
        """Delete ``keys``; a key S3 refused (access, object lock) is a StoreError naming it."""
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            answer = self._call("delete", f"{S3_SCHEME}{self.bucket}", lambda c, b=batch: c.delete_objects(
                Bucket=self.bucket, Delete={"Objects": b, "Quiet": True}))
            refused = answer.get("Errors") or []
            if refused:
                raise StoreError(f"delete in {S3_SCHEME}{self.bucket}: " + "; ".join(
                    f"{e.get('Key')}: {e.get('Code')}" for e in refused[:5]) + (" ..." if len(refused) > 5 else ""))

    def _call(self, what: str, where: str, request):
        """``request(client)``; boto3's errors become a StoreError naming the location (boto3's
        messages carry no keys)."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError
        from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError, S3UploadFailedError

        try:
            return request(self.client())
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise StoreError(f"{what} {where}: {error.get('Code', 'error')}: {error.get('Message', exc)}") from None
        # boto3's upload_file wraps S3's answer in S3UploadFailedError; s3transfer gives up with its own.
        except (BotoCoreError, Boto3Error, RetriesExceededError, S3DownloadFailedError, S3UploadFailedError) as exc:
            raise StoreError(f"{what} {where}: {exc}") from None

    def client(self):
        if self._client is None:
            self._client = s3_client(self.access)
        return self._client


def s3_client(access: S3Access):
    """A boto3 S3 client for ``access``."""
    import boto3
    from botocore.config import Config

    keys = read_credentials(access.credentials_file) if access.credentials_file else {}
    config = Config(s3={"addressing_style": "path"} if access.endpoint else {},
                    retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=120,
                    # Checksums beyond what S3 requires (botocore >= 1.36) break many S3-compatible servers.
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return boto3.session.Session().client("s3", endpoint_url=access.endpoint, region_name=access.region or "us-east-1",
                                          config=config, **keys)


CREDENTIAL_KEYS = ("aws_access_key_id", "aws_secret_access_key")


def read_credentials(path: str) -> dict[str, str]:
    """The keys of an AWS shared-credentials file: its ``[default]`` section, or its only one.

    Errors name the file and the key, never a value.
    """
    file = Path(path).expanduser()
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(file.read_text())
    except OSError as exc:
        raise StoreError(f"S3 credentials file {path}: {exc.strerror or exc}") from None
    except configparser.Error:
        raise StoreError(f"S3 credentials file {path}: not in the AWS credentials format "
                         "([default] with aws_access_key_id and aws_secret_access_key)") from None
    sections = parser.sections()
    section = "default" if "default" in sections else sections[0] if len(sections) == 1 else None
    if section is None:
        raise StoreError(f"S3 credentials file {path}: expected a [default] section (or exactly one section), "
                         f"found {', '.join(sections) or 'none'}")
    values = parser[section]
    missing = [k for k in CREDENTIAL_KEYS if not values.get(k, "").strip()]
    if missing:
        raise StoreError(f"S3 credentials file {path}: [{section}] has no {' or '.join(missing)}")
    keys = {k: values[k].strip() for k in CREDENTIAL_KEYS}
    if values.get("aws_session_token", "").strip():
        keys["aws_session_token"] = values["aws_session_token"].strip()
    return keys
