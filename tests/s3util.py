"""A real S3 endpoint for tests: moto in server mode, in a subprocess on a free loopback port.

    with moto_server() as endpoint:        # "http://127.0.0.1:PORT"
        ...

``s3_env(endpoint, bucket)`` is the environment that points modeldepot (and boto3) at it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from serverutil import free_port, stop_process, wait_http

# Run a test on both blob backends (the fixture lives in conftest.py).
both_backends = pytest.mark.parametrize("blob_backend", ["local", "s3"], indirect=True)
# The two stacks a depot runs on: the embedded default, and what teams deploy past one machine.
# (tests/pg.py's ``backend`` picks the registry, ``blob_backend`` the blob store.)
stacks = pytest.mark.parametrize("backend,blob_backend",
                                 [("sqlite", "local"), ("postgresql", "s3")],
                                 indirect=True, ids=["sqlite-local", "postgresql-s3"])

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
S3_VARS = ("MODELDEPOT_BLOB_URL", "MODELDEPOT_BLOB_REDIRECT", "MODELDEPOT_BLOB_CACHE_SIZE",
           "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN",
           *CREDENTIALS)


@contextmanager
def moto_server(log_dir: Path, port: int | None = None) -> Iterator[str]:
    port = port or free_port()
    log = open(log_dir / f"moto-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **CREDENTIALS})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/moto-api/", timeout=60, proc=proc)
        yield url
    finally:
        stop_process(proc)
        log.close()


def s3_env(endpoint: str, bucket: str, prefix: str = "depot") -> dict:
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint,
            "MODELDEPOT_BLOB_URL": f"s3://{bucket}/{prefix}"}


def new_bucket(endpoint: str) -> str:
    import boto3

    name = "depot-" + uuid.uuid4().hex[:12]
    client = boto3.client("s3", endpoint_url=endpoint, **{
        "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
        "region_name": "us-east-1"})
    client.create_bucket(Bucket=name)
    return name


def bucket_keys(endpoint: str, bucket: str) -> dict[str, int]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


class RawBlobs:
    """Reach past the store to plant, damage or delete bytes where the backend keeps them (for
    tests of ``gc`` and ``verify``)."""

    def __init__(self, backend: dict, home: Path):
        self.backend, self.home = backend, home

    def _local(self, sha: str) -> Path:
        return self.home / "blobs" / "sha256" / sha[:2] / sha

    def _client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.backend["endpoint"],
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name="us-east-1")

    def _key(self, sha: str) -> str:
        return f"depot/blobs/sha256/{sha[:2]}/{sha}"

    def read(self, sha: str) -> bytes:
        if self.backend["kind"] == "local":
            return self._local(sha).read_bytes()
        return self._client().get_object(Bucket=self.backend["bucket"], Key=self._key(sha))["Body"].read()

    def write(self, sha: str, data: bytes) -> None:
        if self.backend["kind"] == "local":
            path = self._local(sha)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                os.chmod(path, 0o644)
            path.write_bytes(data)
        else:
            self._client().put_object(Bucket=self.backend["bucket"], Key=self._key(sha), Body=data)

    def delete(self, sha: str) -> None:
        if self.backend["kind"] == "local":
            self._local(sha).unlink()
        else:
            self._client().delete_object(Bucket=self.backend["bucket"], Key=self._key(sha))
            self.backend.setdefault("deleted", set()).add(sha)
