"""Shared pieces of the CLI: the app context, common options, and output formatting."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Sequence

import click

from ..config import Settings
from ..units import human_size  # noqa: F401  (re-exported for the command modules)


class App:
    """Per-invocation state: settings, and the depot opened on first use."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._depot = None

    @property
    def depot(self):
        if self._depot is None:
            from ..depot import Depot

            self._depot = Depot(self.settings)
        return self._depot


pass_app = click.make_pass_decorator(App)


# What a shell reports for a process that SIGPIPE ended (``modeldepot list | head``): Unix tools
# die of SIGPIPE silently; Python ignores the signal and raises BrokenPipeError instead.
SIGPIPE_EXIT = 128 + 13


def stdout_gone() -> bool:
    """True when stdout is a pipe (or socket) whose reader has gone away."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _fd, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        if not stdout_gone():
            raise
        quiet_exit_on_broken_pipe()


def quiet_exit_on_broken_pipe() -> None:
    """Exit as ``head``'s writer does: no message, status 141. Whatever is still buffered for
    stdout goes to /dev/null, so the interpreter's final flush cannot complain either."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(SIGPIPE_EXIT)


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def repo_type_option(f: Callable) -> Callable:
    return click.option(
        "--type",
        "repo_type",
        type=click.Choice(["model", "dataset"]),
        default="model",
        show_default=True,
        help="Repository type.",
    )(f)


def dry_run_option(f: Callable) -> Callable:
    return click.option(
        "--dry-run", is_flag=True, help="Show what would happen; change nothing."
    )(f)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain aligned text table (no colour, so it pipes and diffs cleanly)."""
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    line = lambda row: "  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip()  # noqa: E731
    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def progress_bar(total: int, desc: str, unit: str = "B"):
    """A tqdm bar on stderr when it is a terminal, else a silent stand-in."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        unit_divisor=1024,
        disable=not sys.stderr.isatty(),
        file=sys.stderr,
        leave=False,
    )


def parse_spec_arg(spec: str):
    from ..naming import parse_spec

    return parse_spec(spec)
