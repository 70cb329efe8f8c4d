"""One place isolates everything: the home dir, HF caches, tokens, colours, and the network.

Every test runs with a fresh MODELDEPOT_HOME under tmp_path, no token, and a socket guard that
refuses (and logs) any non-loopback connection, in this process and in subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from registry import netguard
from pg import backend, pg_url, shutdown as _stop_postgresql  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent
GUARD_DIR = Path(__file__).resolve().parent / "guard"

# Set before transformers / huggingface_hub are imported anywhere in the test session.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DISABLE_SAFETENSORS_CONVERSION", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HUGGING_FACE_HUB_TOKEN", None)


@pytest.fixture(scope="session", autouse=True)
def socket_guard(tmp_path_factory):
    log = tmp_path_factory.mktemp("guard") / "connections.log"
    log.touch()
    os.environ["MODELDEPOT_SOCKET_GUARD"] = "1"
    os.environ["MODELDEPOT_SOCKET_GUARD_LOG"] = str(log)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(GUARD_DIR), str(ROOT), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    netguard.install()
    yield log


@pytest.fixture
def guard_log(socket_guard):
    """The socket guard's log; a test can assert it stayed empty."""
    start = socket_guard.stat().st_size

    def read() -> str:
        with open(socket_guard) as f:
            f.seek(start)
            return f.read()

    return read


@pytest.fixture(scope="session", autouse=True)
def postgresql_session():
    """Stops the session's PostgreSQL (started on first use by tests/pg.py) at the end."""
    yield
    _stop_postgresql()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """One moto S3 server (a real S3 HTTP endpoint on loopback) for the session, started on
    first use."""
    from s3util import moto_server

    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


@pytest.fixture
def blob_backend(request):
    """Where blobs go: "local" (the default) or "s3" (a fresh bucket on the session's moto
    server). Parametrize with ``indirect=True``, or set MODELDEPOT_TEST_BLOBS=s3 for a run."""
    kind = getattr(request, "param", None) or os.environ.get("MODELDEPOT_TEST_BLOBS", "local")
    if kind == "local":
        yield {"kind": "local", "env": {}}
        return
    from s3util import new_bucket, s3_env

    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = new_bucket(endpoint)
    backend = {"kind": "s3", "endpoint": endpoint, "bucket": bucket, "env": s3_env(endpoint, bucket),
               "deleted": set()}
    yield backend
    # The test really ran on S3: every blob the registry of its home holds is in the bucket
    # (minus what the test itself deleted there to see 'verify' notice).
    import sqlite3

    from s3util import bucket_keys

    db = request.getfixturevalue("tmp_path") / "home" / "depot.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            registered = {sha for (sha,) in conn.execute("select sha256 from blobs")}
        stored = {k.rsplit("/", 1)[-1] for k in bucket_keys(endpoint, bucket)}
        assert registered - backend["deleted"] <= stored


@pytest.fixture(scope="session")
def registry_url():
    """The registry server replica tests share when MODELDEPOT_TEST_DB_URL names one; None: a
    fresh database on the session's PostgreSQL (tests/pg.py)."""
    return os.environ.get("MODELDEPOT_TEST_DB_URL") or None


@pytest.fixture
def raw_blobs(blob_backend, home):
    from s3util import RawBlobs

    return RawBlobs(blob_backend, home)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, request, blob_backend):
    home = tmp_path / "home"
    monkeypatch.setenv("MODELDEPOT_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    for var in ("MODELDEPOT_DB_URL", "MODELDEPOT_ENDPOINT", "MODELDEPOT_TOKEN", "HF_TOKEN",
                "MODELDEPOT_DEBUG", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_CACHE",
                "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE", "MODELDEPOT_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    if "backend" in request.fixturenames:
        request.getfixturevalue("backend")  # sets MODELDEPOT_DB_URL before any depot opens
    from s3util import S3_VARS

    for var in S3_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in blob_backend["env"].items():
        monkeypatch.setenv(var, value)
    return home


@pytest.fixture
def home(isolated) -> Path:
    return isolated


@pytest.fixture
def settings(home):
    from registry.config import Settings

    return Settings.from_env()


@pytest.fixture
def depot(settings):
    from registry.depot import Depot

    return Depot(settings)


@pytest.fixture
def cli():
    """Run the CLI in-process: cli("list", "--json") -> click Result."""
    from cli import main

    runner = CliRunner()

    def run(*args, input=None, env=None):
        return runner.invoke(main, [str(a) for a in args], input=input, env=env,
                             catch_exceptions=False)

    return run


@pytest.fixture
def cli_subprocess(home):
    """Run the real console script in a subprocess (for kill tests and the offline guard)."""

    def run(*args, env=None, timeout=300, **kwargs):
        full_env = dict(os.environ)
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "cli", *map(str, args)],
            capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT, **kwargs,
        )

    return run


class ModelFactory:
    """Tiny models built once per test session and shared (treat them as read-only)."""

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[str, Path] = {}

    def get(self, kind: str) -> Path:
        if kind not in self._built:
            from registry import samples

            out = self.root / kind
            builders = {
                "classifier": lambda: samples.bert_model(out, "sequence-classification",
                                                         card={"license": "mit", "tags": ["test"]}),
                "classifier2": lambda: samples.bert_model(out, "sequence-classification", seed=1),
                "ner": lambda: samples.bert_model(out, "token-classification"),
                "qa": lambda: samples.bert_model(out, "question-answering"),
                "fill-mask": lambda: samples.bert_model(out, "masked-lm"),
                "encoder": lambda: samples.bert_model(out, "base"),
                "embedder": lambda: samples.sentence_transformer(out),
                "gpt2": lambda: samples.gpt2_model(out),
                "bart": lambda: samples.bart_model(out),
            }
            builders[kind]()
            self._built[kind] = out
        return self._built[kind]


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> ModelFactory:
    return ModelFactory(tmp_path_factory.mktemp("models"))
