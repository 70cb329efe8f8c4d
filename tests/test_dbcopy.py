"""`modeldepot db copy`: a populated SQLite depot to PostgreSQL and back, verified, resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def state(cli, env) -> tuple:
    listing = json.loads(cli("list", "--json", env=env).output)
    inventory = json.loads(cli("inventory", env=env).output)
    inventory.pop("depot_id")
    shown = json.loads(cli("show", "org/clf", "--json", env=env).output)
    return listing, inventory, shown


def test_sqlite_to_postgresql_and_back(cli, models, home, pg_url, tmp_path):
    on_sqlite, on_pg = {"MODELDEPOT_DB_URL": None}, {"MODELDEPOT_DB_URL": pg_url}
    assert cli("import", models.get("classifier"), "--repo", "org/clf").exit_code == 0
    assert cli("import", models.get("ner"), "--repo", "org/ner").exit_code == 0
    assert cli("tag", "org/clf", "prod").exit_code == 0
    before = state(cli, on_sqlite)

    r = cli("db", "copy", "--to", pg_url, env=on_sqlite)
    assert r.exit_code == 0, r.output
    rows = json.loads(cli("db", "copy", "--to", pg_url, "--json", env=on_sqlite).output)["rows"]
    assert r.output == (f"copied {sum(rows.values())} row(s) and 0 blob(s) to {pg_url}; "
                        f"verified: {sum(rows.values())} row(s) in {len(rows)} tables and the "
                        "inventory equal on both sides\n")
    assert rows["repos"] == 2 and rows["revisions"] == 2 and rows["refs"] == 3
    assert state(cli, on_pg) == before
    assert cli("verify", env=on_pg).exit_code == 0

    # The PostgreSQL registry lives on: new rows get fresh ids past the copied ones.
    assert cli("import", models.get("qa"), "--repo", "org/qa", env=on_pg).exit_code == 0
    assert cli("tag", "org/qa", "prod", env=on_pg).exit_code == 0
    after = state(cli, on_pg)

    back = f"sqlite:///{tmp_path / 'back.db'}"
    r = cli("db", "copy", "--to", back, env=on_pg)
    assert r.exit_code == 0, r.output
    assert state(cli, {"MODELDEPOT_DB_URL": back}) == after
    assert cli("verify", env={"MODELDEPOT_DB_URL": back}).exit_code == 0


def test_an_interrupted_copy_resumes(cli, models, home, pg_url):
    assert cli("import", models.get("classifier"), "--repo", "org/clf").exit_code == 0
    assert cli("tag", "org/clf", "prod").exit_code == 0
    env = {k: v for k, v in os.environ.items() if k != "MODELDEPOT_DB_URL"}
    r = subprocess.run([sys.executable, "-m", "cli", "db", "copy", "--to", pg_url],
                       env=dict(env, MODELDEPOT_FAILPOINT="dbcopy:after-revisions"),
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 137, r.stderr
    half = json.loads(cli("list", "--json", env={"MODELDEPOT_DB_URL": pg_url}).output)
    assert [x["name"] for x in half] == ["org/clf"]
    r = cli("db", "copy", "--to", pg_url, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["copied"]["repos"] == 0 and report["copied"]["revisions"] == 0
    assert report["copied"]["files"] == 7  # files come after revisions
    assert state(cli, {"MODELDEPOT_DB_URL": pg_url}) == state(cli, {"MODELDEPOT_DB_URL": None})


def test_copy_refuses_bad_targets(cli, models, home):
    r = cli("db", "copy", "--to", "mysql://x/y")
    assert (r.exit_code, r.output) == (1, "Error: unsupported registry URL 'mysql://x/y': use "
                                          "sqlite:///PATH or postgresql+psycopg://USER@HOST/DB\n")
    r = cli("db", "copy", "--to", f"sqlite:///{home / 'depot.db'}")
    assert (r.exit_code, r.output) == (1, "Error: the target registry is the source registry; "
                                          "nothing to copy\n")


def test_sqlite_local_to_postgresql_s3_and_back(cli, models, home, pg_url, s3_endpoint,
                                                monkeypatch, tmp_path):
    """The whole depot moves: registry rows to PostgreSQL and blobs into a bucket, then back to
    SQLite and a local directory on a host that has no blob left; inventories equal, verify
    clean, every object in the bucket holds the bytes its key names."""
    import hashlib
    import shutil

    import boto3
    from s3util import CREDENTIALS, new_bucket

    bucket = new_bucket(s3_endpoint)
    for var, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(var, value)
    blob_url = f"s3://{bucket}/depot"
    assert cli("import", models.get("classifier"), "--repo", "org/clf").exit_code == 0
    assert cli("import", models.get("ner"), "--repo", "org/ner").exit_code == 0
    assert cli("tag", "org/clf", "prod").exit_code == 0
    before = state(cli, {})
    blobs = len(before[1]["blobs"])

    r = cli("db", "copy", "--to", pg_url, "--to-blobs", blob_url)
    assert r.exit_code == 0, r.output
    assert f"row(s) and {blobs} blob(s) to {pg_url}" in r.output
    on_cloud = {"MODELDEPOT_DB_URL": pg_url, "MODELDEPOT_BLOB_URL": blob_url}
    assert state(cli, on_cloud) == before
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == blobs
    for key in keys:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == key.rsplit("/", 1)[-1]
    # a re-run is a no-op: everything is there
    again = json.loads(cli("db", "copy", "--to", pg_url, "--to-blobs", blob_url, "--json").output)
    assert sum(again["copied"].values()) == 0 and again["blobs_copied"] == 0

    # back, onto a host whose local blobs are gone: every byte comes from the bucket
    shutil.rmtree(home / "blobs")
    back = f"sqlite:///{tmp_path / 'back.db'}"
    r = cli("db", "copy", "--to", back, "--to-blobs", "local", env=on_cloud)
    assert r.exit_code == 0, r.output
    on_local = {"MODELDEPOT_DB_URL": back, "MODELDEPOT_BLOB_URL": None}
    assert state(cli, on_local) == before
    r = cli("verify", env=on_local)
    assert r.exit_code == 0, r.output
