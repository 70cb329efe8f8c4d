"""Schemathesis over the served OpenAPI, against the real ``modeldepot serve`` on loopback.

Every check schemathesis has (no 5xx, statuses, content types, headers and bodies as
documented, schema-valid input accepted and invalid input refused, exact ``Allow`` on 405), a
fixed seed and a bounded number of examples per operation, so a run takes well under a minute;
a request left unanswered (reset, timeout) is an error too. Any failure fails the test with
schemathesis's report, which prints a curl line to reproduce each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from serverutil import running_server


def _home(tmp_path, model_dir=None):
    from registry.config import Settings
    from registry.depot import Depot
    from registry.importer import import_dir

    # The spec's examples name org/name@main and config.json: give them something to find.
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "bert"}')
    (src / "model.safetensors").write_bytes(b"\0" * 2048)
    depot = Depot(Settings.from_env(home=tmp_path / "home"))
    import_dir(depot, model_dir or src, "org/name")
    import_dir(depot, src, "org/name", repo_type="dataset")
    return tmp_path / "home"


def _schemathesis(tmp_path, url, *extra) -> str:
    schemathesis = Path(sys.executable).parent / "schemathesis"
    run = subprocess.run(
        [str(schemathesis), "run", f"{url}/openapi.json", "--max-examples", "5", "--seed", "11",
         "--workers", "1", "--request-timeout", "10", "--no-shrink",
         "--report-dir", str(tmp_path / "report"), *extra],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-8000:]
    return out


def test_schemathesis_finds_nothing_on_the_hub_routes(tmp_path):
    with running_server(_home(tmp_path), ["--no-inference"]) as url:
        out = _schemathesis(tmp_path, url, "--checks", "all")
    assert "Tested: 18" in out, out[-3000:]


def test_schemathesis_over_the_full_spec_hub_and_inference(tmp_path, models):
    """The whole served spec, the inference routes against a real (tiny) classifier: no 5xx, no
    request left unanswered, statuses, content types and bodies as documented. Only the check
    that every schema-valid body is accepted is left out: a body the spec allows for every model
    (a question/context pair, say) is a 422 for a classifier, and no per-path schema can know
    the model's task."""
    with running_server(_home(tmp_path, models.get("classifier"))) as url:
        out = _schemathesis(tmp_path, url, "--checks", "all",
                            "--exclude-checks", "positive_data_acceptance")
    tested = int(out.split("Tested: ", 1)[1].split()[0])
    assert tested > 18, out[-3000:]  # the inference operations joined the Hub's
