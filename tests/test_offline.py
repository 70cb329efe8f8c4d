"""The offline guarantee: every command that needs no upstream runs with the socket guard on and
an unroutable Hub endpoint configured, and not one connection is attempted."""

from __future__ import annotations

import json

UNROUTABLE = {"HF_ENDPOINT": "http://192.0.2.1", "MODELDEPOT_ENDPOINT": "http://192.0.2.1"}


def test_registry_bundle_and_lock_commands_never_touch_the_network(cli_subprocess, models, tmp_path,
                                                                   guard_log):
    a, b = tmp_path / "a", tmp_path / "b"

    def run(home, *args):
        r = cli_subprocess("--home", home, *args, env=UNROUTABLE)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    run(a, "import", models.get("classifier"), "--repo", "org/clf")
    run(a, "tag", "org/clf", "prod")
    assert [r["name"] for r in json.loads(run(a, "list", "--json"))] == ["org/clf"]
    run(a, "show", "org/clf@prod")
    run(a, "verify")
    lock = tmp_path / "modeldepot.lock"
    run(a, "lock", "org/clf@prod", "-o", lock)
    run(a, "verify", "--lock", lock)
    bundle = tmp_path / "x.bundle"
    run(a, "bundle", "create", bundle, "org/clf")
    run(b, "bundle", "inspect", bundle)
    run(b, "bundle", "import", bundle)
    # An upstream is configured, but everything locked is here: sync must not call it.
    assert run(b, "sync", lock).endswith("all 1 locked revision(s) present\n")
    run(b, "verify", "--lock", lock)
    run(b, "show", "org/clf", "--json")
    assert guard_log() == ""

    # The guard is live in these subprocesses: a sync that does need the upstream is refused
    # by it (and says so), which is what the empty log above is measured against.
    online = {**UNROUTABLE, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    r = cli_subprocess("--home", tmp_path / "c", "sync", lock, env=online)
    assert r.returncode == 1
    assert r.stderr.endswith("Error: 1 locked revision(s) could not be pulled from http://192.0.2.1; "
                             "see the lines above, or import a bundle that holds them\n")
    assert "192.0.2.1" in guard_log()
