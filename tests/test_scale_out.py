"""Blobs in an S3-compatible object store and several ``serve`` replicas behind nginx.

The object store is moto in server mode (a real S3 HTTP endpoint on loopback, conftest
``s3_endpoint``); faults come from a TCP proxy in front of it (tests/lbutil.py); the balancer is
the Debian nginx. Replicas are ``serve`` processes with different homes sharing one registry
(a fresh PostgreSQL database from tests/pg.py, or the server MODELDEPOT_TEST_DB_URL names) and
one bucket: the stack a team deploys.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from lbutil import NGINX, FaultProxy, Replica, nginx_balancer, wait_for
from s3util import bucket_keys, new_bucket, s3_env
from serverutil import ROOT

ERROR_LINE = re.compile(
    r"^Error: object store s3://(?P<bucket>[\w-]+)/depot: (?P<what>[^()]+) failed \(.+\); "
    r"nothing was registered, run the command again\n$")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_keys_sound(endpoint: str, bucket: str) -> dict:
    """Every object under a final key holds exactly the bytes its name says."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    keys = bucket_keys(endpoint, bucket)
    for key in keys:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert sha256(body) == key.rsplit("/", 1)[-1], key
    return keys


@pytest.fixture
def faulty_s3(s3_endpoint, monkeypatch):
    """A fresh bucket reached through a fault-injecting proxy; the env points modeldepot at it."""
    bucket = new_bucket(s3_endpoint)
    port = urlparse(s3_endpoint).port
    with FaultProxy("127.0.0.1", port) as proxy:
        for k, v in s3_env(proxy.url, bucket).items():
            monkeypatch.setenv(k, v)
        yield proxy, bucket


def test_upload_cut_midway_registers_nothing_and_a_retry_completes(cli, models, faulty_s3,
                                                                   s3_endpoint):
    proxy, bucket = faulty_s3
    src = models.get("classifier")
    proxy.cut_uploads_after = 32 * 1024  # model.safetensors (131 KiB) never gets through
    r = cli("import", src, "--repo", "org/clf")
    assert r.exit_code == 1
    m = ERROR_LINE.match(r.output)
    assert m, r.output
    assert (m["bucket"], m["what"].startswith("upload of blob ")) == (bucket, True)
    assert json.loads(cli("list", "--json").output) == []
    keys = assert_keys_sound(s3_endpoint, bucket)
    weights = sha256((src / "model.safetensors").read_bytes())
    assert not any(k.endswith(weights) for k in keys)

    proxy.cut_uploads_after = None
    r = cli("import", src, "--repo", "org/clf")
    assert r.exit_code == 0, r.output
    assert cli("verify").exit_code == 0
    keys = assert_keys_sound(s3_endpoint, bucket)
    assert f"depot/blobs/sha256/{weights[:2]}/{weights}" in keys


def test_a_failed_multipart_upload_is_aborted_and_invisible(cli, faulty_s3, s3_endpoint,
                                                            tmp_path, monkeypatch):
    import boto3

    from registry.store import s3 as s3_backend

    proxy, bucket = faulty_s3
    monkeypatch.setattr(s3_backend, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)  # S3's least part
    src = tmp_path / "big"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "bert"}')
    data = os.urandom(11 * 1024 * 1024)
    (src / "weights.bin").write_bytes(data)
    proxy.cut_uploads_after = 3 * 1024 * 1024  # every 5 MiB part dies midway
    r = cli("import", src, "--repo", "org/big")
    assert r.exit_code == 1
    assert ERROR_LINE.match(r.output), r.output
    client = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert not any(k.endswith(sha256(data)) for k in bucket_keys(s3_endpoint, bucket))
    assert json.loads(cli("list", "--json").output) == []

    proxy.cut_uploads_after = None
    assert cli("import", src, "--repo", "org/big").exit_code == 0
    assert client.head_object(Bucket=bucket, Key=f"depot/blobs/sha256/{sha256(data)[:2]}/"
                              f"{sha256(data)}")["ContentLength"] == len(data)
    assert cli("verify").exit_code == 0


def test_serve_streams_redirects_and_answers_head_from_s3(cli, faulty_s3, tmp_path):
    proxy, bucket = faulty_s3
    src = tmp_path / "src"
    src.mkdir()
    config = b'{"model_type": "bert"}'
    (src / "config.json").write_bytes(config)
    weights = os.urandom(17 * 1024 * 1024)  # above CACHE_ON_GET: streamed, never cached
    (src / "weights.bin").write_bytes(weights)
    assert cli("import", src, "--repo", "org/big").exit_code == 0
    env = {k: os.environ[k] for k in ("MODELDEPOT_BLOB_URL", "AWS_ENDPOINT_URL")}
    db = {"MODELDEPOT_DB_URL": f"sqlite:///{os.environ['MODELDEPOT_HOME']}/depot.db"}
    # Two fresh homes: nothing cached, every byte comes from the bucket.
    stream = Replica(tmp_path / "r1", {**env, **db}).wait()
    redirect = Replica(tmp_path / "r2", {**env, **db, "MODELDEPOT_BLOB_REDIRECT": "1"}).wait()
    try:
        url = "/org/big/resolve/main/weights.bin"
        for replica in (stream, redirect):
            head = requests.head(replica.url + url, timeout=30)
            assert head.status_code == 200
            assert head.headers["Content-Length"] == str(len(weights))
            assert head.headers["ETag"] == f'"{sha256(weights)}"'
            assert head.headers["X-Linked-Etag"] == f'"{sha256(weights)}"'
            assert len(head.headers["X-Repo-Commit"]) == 40
            assert requests.get(replica.url + url, timeout=60).content == weights
            part = requests.get(replica.url + url, headers={"Range": "bytes=1000-1999"}, timeout=30)
            assert (part.status_code, part.content) == (206, weights[1000:2000])
        first = requests.get(redirect.url + url, allow_redirects=False, timeout=30)
        assert first.status_code == 302
        assert first.headers["Location"].startswith(f"{proxy.url}/{bucket}/depot/blobs/sha256/")
        tail = requests.get(stream.url + url, headers={"Range": "bytes=-100"}, timeout=30)
        assert (tail.status_code, tail.headers["Content-Range"], tail.content) == (
            206, f"bytes {len(weights) - 100}-{len(weights) - 1}/{len(weights)}", weights[-100:])
        assert not list((tmp_path / "r1" / "blobs").rglob("*" + sha256(weights)))

        # The object store dies mid-download: the client gets a short body, never wrong bytes,
        # and a small file's cache fill fails with a one-line 503; a retry completes.
        proxy.cut_downloads_after = 64 * 1024
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(stream.url + url, timeout=30).content
        assert requests.head(stream.url + url, timeout=30).status_code == 200
        proxy.cut_downloads_after = 0
        small = requests.get(stream.url + "/org/big/resolve/main/config.json", timeout=60)
        assert small.status_code == 503
        assert re.match(r"object store s3://[\w-]+/depot: download of blob [0-9a-f]{12} failed "
                        r"\(.+\); try again$",
                        small.json()["error"]), small.json()
        proxy.cut_downloads_after = None
        assert requests.get(stream.url + url, timeout=60).content == weights
        small = requests.get(stream.url + "/org/big/resolve/main/config.json", timeout=30)
        assert small.content == config
        assert (tmp_path / "r1" / "blobs" / "sha256" / sha256(config)[:2] / sha256(config)).exists()
        assert "Traceback" not in stream.log_path.read_text()
    finally:
        stream.stop()
        redirect.stop()


CLIENT = r"""
import hashlib, json, os, sys
from huggingface_hub import hf_hub_download, snapshot_download
mode, repo = sys.argv[1], sys.argv[2]
if mode == "snapshot":
    d = snapshot_download(repo)
    print(json.dumps({p: hashlib.sha256(open(os.path.join(d, p), "rb").read()).hexdigest()
                      for p in sorted(os.listdir(d))}))
elif mode == "file":
    # huggingface_hub resumes by itself only on a ConnectionError or ReadTimeout; a body cut
    # short (the replica died) raises ChunkedEncodingError, and calling again resumes from the
    # .incomplete file with a Range request: the retry every training script wraps around it.
    for attempt in range(1, 4):
        try:
            p = hf_hub_download(repo, sys.argv[3])
            break
        except Exception as e:
            print(f"attempt {attempt}: {type(e).__name__}", file=sys.stderr)
    print(attempt, hashlib.sha256(open(p, "rb").read()).hexdigest())
else:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(repo)
    model = AutoModelForSequenceClassification.from_pretrained(repo)
    with torch.no_grad():
        print(json.dumps(model(**tok("hello depot", return_tensors="pt")).logits.tolist()))
"""


@pytest.fixture
def replicas(tmp_path, s3_endpoint, registry_url, pg_url):
    """Two replicas (homes r1, r2) sharing one registry (PostgreSQL, as deployed; or the server
    MODELDEPOT_TEST_DB_URL names) and one bucket, behind nginx."""
    if not Path(NGINX).exists():
        pytest.fail(f"{NGINX} is missing: apt-get install nginx")
    bucket = new_bucket(s3_endpoint)
    env = {**s3_env(s3_endpoint, bucket), "MODELDEPOT_DB_URL": registry_url or pg_url}
    started = []

    def start(limit_rate=None):
        # Both at once: migrate-on-open is a PostgreSQL advisory lock, so the two replicas
        # racing to upgrade a blank registry is part of what is tested.
        pending = [Replica(tmp_path / name, env) for name in ("r1", "r2")]
        started.extend(r.wait() for r in pending)
        return nginx_balancer([r.port for r in started], tmp_path / "nginx", limit_rate)

    def host_cli(name, *args):
        return subprocess.run([sys.executable, "-m", "cli", "--home", str(tmp_path / name), *args],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env},
                              timeout=300)

    yield start, started, host_cli, env
    for r in started:
        r.stop()


def client_env(url: str, tmp_path: Path) -> dict:
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_CACHE": str(tmp_path / "client-cache"),
           "HF_HUB_DISABLE_XET": "1"}
    for var in ("MODELDEPOT_BLOB_URL", "AWS_ENDPOINT_URL", "MODELDEPOT_HOME", "HF_HUB_OFFLINE"):
        env.pop(var, None)
    return env


def run_client(url, tmp_path, *args):
    r = subprocess.run([sys.executable, "-c", CLIENT, *args], capture_output=True, text=True,
                       env=client_env(url, tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout) if r.stdout.strip().startswith(("{", "[")) else r.stdout.strip()


def test_two_replicas_behind_nginx_serve_one_registry(replicas, models, tmp_path):
    start, started, host_cli, _env = replicas
    src = models.get("classifier")
    with start() as lb:
        # Published through host r1's home; r2 has never seen these bytes.
        r = host_cli("r1", "import", str(src), "--repo", "org/clf", "--json")
        assert r.returncode == 0, r.stderr
        commit = json.loads(r.stdout)["commit"]
        want = {p.name: sha256(p.read_bytes()) for p in src.iterdir() if p.is_file()}
        assert run_client(lb, tmp_path, "snapshot", "org/clf") == want
        for replica in started:  # each replica answers alike, whichever got the requests
            info = requests.get(f"{replica.url}/api/models/org/clf", timeout=30).json()
            assert info["sha"] == commit
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(src)
        with torch.no_grad():
            expected = AutoModelForSequenceClassification.from_pretrained(src)(
                **tok("hello depot", return_tensors="pt")).logits.tolist()
        assert run_client(lb, tmp_path, "model", "org/clf") == expected

        # An alias moved through one host is what every replica serves.
        assert host_cli("r2", "tag", "org/clf", "prod").returncode == 0
        for replica in started:
            rev = requests.get(f"{replica.url}/api/models/org/clf/revision/prod", timeout=30)
            assert rev.json()["sha"] == commit
        assert host_cli("r2", "verify").returncode == 0


def test_killing_the_serving_replica_mid_download_the_retry_completes(replicas, tmp_path):
    start, started, host_cli, _env = replicas
    src = tmp_path / "big"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "bert"}')
    # More than the socket buffers between replica, nginx and client hold (several MiB each on
    # loopback), so killing the replica mid-way really cuts the body.
    data = os.urandom(64 * 1024 * 1024)
    (src / "weights.bin").write_bytes(data)
    with start(limit_rate="8m") as lb:  # about 8 s for the file: time to kill mid-way
        assert host_cli("r1", "import", str(src), "--repo", "org/big").returncode == 0
        client = subprocess.Popen([sys.executable, "-c", CLIENT, "file", "org/big", "weights.bin"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=client_env(lb, tmp_path))
        blobs = tmp_path / "client-cache" / "models--org--big" / "blobs"

        def midway():
            partial = list(blobs.glob("*.incomplete")) if blobs.is_dir() else []
            return any(p.stat().st_size > 1024 * 1024 for p in partial)

        assert wait_for(midway, timeout=60)
        serving: list[Replica] = []

        def one_replica_serving() -> bool:
            serving[:] = [r for r in started if r.has_active_connection()]
            return len(serving) == 1

        assert wait_for(one_replica_serving, timeout=10)
        serving[0].proc.send_signal(signal.SIGKILL)
        out, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        assert "attempt 1: ChunkedEncodingError" in err, (out, err)
        assert out.split() == ["2", sha256(data)]


def test_read_through_cache_is_bounded_lru_verified_and_views_pin(cli, models, faulty_s3,
                                                                  monkeypatch, home, raw_blobs_s3):
    import io

    from registry.config import Settings
    from registry.depot import Depot
    from registry.errors import IntegrityError

    monkeypatch.setenv("MODELDEPOT_BLOB_CACHE_SIZE", "250K")
    src = models.get("classifier")
    assert cli("import", src, "--repo", "org/clf").exit_code == 0  # ~146 KiB, pinned by its view
    depot = Depot(Settings.from_env())
    cached = lambda d: depot.store.blob_path(d.sha256).exists()  # noqa: E731
    a = depot.store.ingest_stream(io.BytesIO(b"a" * 60_000), 60_000, label="a")
    b = depot.store.ingest_stream(io.BytesIO(b"b" * 60_000), 60_000, label="b")
    # Over the cap: the least recently used unpinned blob (a) goes; the view's blobs stay.
    assert (cached(a), cached(b)) == (False, True)
    view = home / "hub" / "models--org--clf" / "snapshots"
    assert all(p.read_bytes() == (src / p.name).read_bytes()
               for p in next(view.iterdir()).iterdir())
    # Read through: a comes back from the bucket, and now b is the oldest.
    assert depot.store.local_blob(a.sha256).read_bytes() == b"a" * 60_000
    assert (cached(a), cached(b)) == (True, False)
    # Verified on fill: bytes that do not match their name never enter the cache.
    raw_blobs_s3.write(b.sha256, b"b" * 59_999 + b"x")
    with pytest.raises(IntegrityError, match=f"blob {b.sha256} in the object store .* is corrupt"):
        depot.store.local_blob(b.sha256)
    assert not cached(b)


@pytest.fixture
def raw_blobs_s3(faulty_s3, s3_endpoint, home):
    from s3util import RawBlobs

    return RawBlobs({"kind": "s3", "endpoint": s3_endpoint, "bucket": faulty_s3[1]}, home)


def test_run_on_a_host_that_never_saw_the_revision(cli, models, faulty_s3, tmp_path):
    db = f"sqlite:///{tmp_path}/shared.db"
    src = models.get("classifier")
    first = cli("--home", tmp_path / "h1", "import", src, "--repo", "org/clf",
                env={"MODELDEPOT_DB_URL": db})
    assert first.exit_code == 0, first.output
    here = cli("--home", tmp_path / "h1", "run", "org/clf", "a fine day", env={"MODELDEPOT_DB_URL": db})
    there = cli("--home", tmp_path / "h2", "run", "org/clf", "a fine day", env={"MODELDEPOT_DB_URL": db})
    assert there.exit_code == 0, there.output
    assert there.output == here.output
    # h2 built the view it needed, from its cache, filled from the bucket.
    view = tmp_path / "h2" / "hub" / "models--org--clf" / "snapshots"
    assert (next(view.iterdir()) / "model.safetensors").read_bytes() == \
        (src / "model.safetensors").read_bytes()


def test_copy_blobs_local_to_s3_and_back_is_verified_and_resumable(models, s3_endpoint, tmp_path,
                                                                  monkeypatch):
    from registry.config import Settings
    from registry.store import copy_blobs, open_store

    local = open_store(Settings.from_env(home=tmp_path / "a"))
    shas = [local.ingest_file(p).sha256 for p in sorted(models.get("classifier").iterdir())]
    for k, v in s3_env(s3_endpoint, new_bucket(s3_endpoint)).items():
        monkeypatch.setenv(k, v)
    s3 = open_store(Settings.from_env(home=tmp_path / "b"))
    seen = []
    first = copy_blobs(local, s3, shas[:2], progress=lambda sha, size, copied: seen.append(copied))
    assert (first["copied"], seen) == (2, [True, True])
    again = copy_blobs(local, s3, [(sha, local.blob_path(sha).stat().st_size) for sha in shas])
    assert (again["copied"], again["skipped"]) == (len(shas) - 2, 2)
    assert all(s3.check_blob(sha) is None for sha in shas)
    back = open_store(Settings.from_env(home=tmp_path / "c").with_(blob_url=None))
    assert copy_blobs(s3, back, shas)["copied"] == len(shas)
    assert all(back.check_blob(sha) is None for sha in shas)


def test_two_hosts_importing_the_same_repo_at_once_store_each_blob_once(
        replicas, models, s3_endpoint, tmp_path):
    _start, _started, host_cli, env = replicas
    src = models.get("classifier")
    # No 'db upgrade' first: the two hosts race to migrate the blank PostgreSQL registry too.
    procs = [subprocess.Popen([sys.executable, "-m", "cli", "--home", str(tmp_path / host),
                               "import", str(src), "--repo", "org/clf"],
                              cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for host in ("h1", "h2")]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    bucket = env["MODELDEPOT_BLOB_URL"].split("/")[2]
    keys = assert_keys_sound(s3_endpoint, bucket)
    want = sorted(sha256(p.read_bytes()) for p in src.iterdir() if p.is_file())
    assert sorted(k.rsplit("/", 1)[-1] for k in keys) == sorted(set(want))
    for host in ("h1", "h2"):
        r = subprocess.run([sys.executable, "-m", "cli", "--home", str(tmp_path / host), "verify"],
                           cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
