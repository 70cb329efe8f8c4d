"""``gc`` racing live writers: it must never remove what a writer holds but has not published.

Each test runs a real ``gc`` (another Depot on the same home, as another process would) inside a
writer's window, through a failpoint hook: ``publish:start`` (every blob stored, nothing
published) and ``publish:after-snapshot`` (the snapshot in place, the registry commit not yet
made). Then the writer must succeed and ``verify`` must find everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from registry import faults
from registry.bundle import create_bundle, import_bundle
from registry.config import Settings
from registry.depot import Depot
from registry.importer import import_dir

ROOT = Path(__file__).resolve().parent.parent
WINDOWS = ["publish:start", "publish:after-snapshot"]


def gc_in_window(settings: Settings, window: str, runs: list):
    def run_gc():
        runs.append(Depot(settings).gc())

    return faults.hook(window, run_gc)


def assert_whole(depot: Depot, name: str, runs: list) -> None:
    assert len(runs) == 1  # the gc did run inside the window
    assert runs[0]["blobs"] == 0 and runs[0]["stray_views"] == 0
    report = depot.verify()
    assert report["problems"] == [] and report["ok"]
    snap = Path(depot.resolve("model", name)["snapshot"])
    assert (snap / "config.json").is_file()


@pytest.mark.parametrize("window", WINDOWS)
def test_gc_during_import_keeps_the_writers_blobs_and_snapshot(backend, depot, models, window):
    runs: list = []
    with gc_in_window(depot.settings, window, runs):
        result = import_dir(depot, models.get("classifier"), "org/clf")
    assert result.created
    assert_whole(depot, "org/clf", runs)


@pytest.mark.parametrize("window", WINDOWS)
def test_gc_during_bundle_import_keeps_the_writers_blobs_and_snapshot(depot, models, tmp_path,
                                                                      window):
    sender = Depot(Settings.from_env(home=tmp_path / "sender"))
    import_dir(sender, models.get("classifier"), "org/clf")
    create_bundle(sender, tmp_path / "b.tar", ["org/clf"])
    runs: list = []
    with gc_in_window(depot.settings, window, runs):
        result = import_bundle(depot, [tmp_path / "b.tar"])
    assert result["created"] == 1
    assert_whole(depot, "org/clf", runs)


def test_gc_keeps_a_stray_blob_a_writer_found_and_will_reuse(depot, models, tmp_path):
    """The writer finds the content already in the store (left unreferenced by an earlier rm)
    and publishes without writing it again: gc must not take it away in between."""
    src = models.get("classifier")
    import_dir(depot, src, "org/clf")
    depot.rm("model", "org/clf")
    sender = Depot(Settings.from_env(home=tmp_path / "sender"))
    import_dir(sender, src, "org/clf")
    create_bundle(sender, tmp_path / "b.tar", ["org/clf"])
    # Put the blobs back as unreferenced leftovers, as a crashed import would leave them.
    for sha in sender.inventory()["blobs"]:
        depot.store.ingest_file(sender.store.blob_path(sha))
    runs: list = []
    with gc_in_window(depot.settings, "publish:start", runs):
        result = import_bundle(depot, [tmp_path / "b.tar"])
    assert result["blobs_written"] == 0 and result["blobs_held"] > 0
    assert_whole(depot, "org/clf", runs)


def test_a_dead_writers_lease_protects_nothing(cli, cli_subprocess, models, home):
    """kill -9 between storing and publishing: the next gc removes the lease and the blobs."""
    r = cli_subprocess("import", models.get("classifier"), "--repo", "org/clf",
                       env={"MODELDEPOT_FAILPOINT": "publish:start"})
    assert r.returncode == 137
    leases = list((home / "locks" / "leases").iterdir())
    assert len(leases) == 1
    held = {line.split()[1] for line in leases[0].read_text().splitlines()}
    assert held == {p.name for p in (home / "blobs" / "sha256").glob("*/*")}
    assert json.loads(cli("gc", "--json", "--dry-run").output)["blobs"] == len(held)
    assert list((home / "locks" / "leases").iterdir()) == leases  # a dry run changes nothing
    gc = json.loads(cli("gc", "--json").output)
    assert gc["blobs"] == len(held)
    assert list((home / "locks" / "leases").iterdir()) == []
    assert list((home / "blobs" / "sha256").glob("*/*")) == []


def test_gc_in_another_process_waits_for_nothing_and_respects_the_lease(backend, depot, models, home):
    """The lease is read across processes: a gc subprocess runs while this process is inside
    the window, and leaves the writer's snapshot alone."""
    outputs: list = []

    def gc_subprocess():
        r = subprocess.run([sys.executable, "-m", "cli", "gc", "--json"], capture_output=True,
                           text=True, cwd=ROOT, timeout=120)
        outputs.append(r)

    with faults.hook("publish:after-snapshot", gc_subprocess):
        import_dir(depot, models.get("classifier"), "org/clf")
    assert outputs[0].returncode == 0, outputs[0].stderr
    assert json.loads(outputs[0].stdout)["stray_views"] == 0
    assert depot.verify()["ok"]


def test_gc_during_publish_of_known_content_leaves_the_view(depot, models):
    """Same bytes under a second name: every blob is already referenced, so only the new
    snapshot is at stake (what 'verify' reported as VIEW MISSING)."""
    src = models.get("classifier")
    import_dir(depot, src, "org/clf")
    runs: list = []
    with gc_in_window(depot.settings, "publish:after-snapshot", runs):
        import_dir(depot, src, "org/clf-again")
    assert_whole(depot, "org/clf-again", runs)


def test_gc_during_onnx_export_keeps_the_exported_graph(depot, models):
    """The export's new onnx/ files are stored before its derived revision is published."""
    from registry.export import export_onnx

    import_dir(depot, models.get("classifier"), "org/clf")
    runs: list = []
    with gc_in_window(depot.settings, "publish:start", runs):
        result = export_onnx(depot, "model", "org/clf")
    assert result["created"] and "onnx/model.onnx" in result["files"]
    assert len(runs) == 1 and runs[0]["blobs"] == 0
    report = depot.verify()
    assert report["problems"] == [] and report["ok"]
