"""Rough edges of the CLI a new user hits first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _into_closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI with stdout a pipe whose reader is already gone (``modeldepot list | true``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "cli", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [("list",), ("show", "org/clf"), ("show", "org/clf", "--json"),
                                  ("verify",)])
def test_a_closed_pipe_ends_the_command_quietly(cli, models, args):
    assert cli("import", models.get("classifier"), "--repo", "org/clf").exit_code == 0
    r = _into_closed_pipe(*args)
    assert (r.returncode, r.stderr) == (141, "")


def test_a_broken_pipe_elsewhere_is_still_an_error(cli, monkeypatch):
    """Only stdout's reader going away is quiet; any other EPIPE is reported as before."""
    from registry.depot import Depot

    def broken(self, *a, **kw):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(Depot, "du", broken)
    r = cli("du")
    assert (r.exit_code, r.stderr) == (1, "Error: Broken pipe (BrokenPipeError)\n")
