"""Failpoints: let tests crash a process at a named step, to prove crash safety, or run
something there, to race it.

``MODELDEPOT_FAILPOINT=<name>`` makes the process die (``os._exit``, no clean-up, like SIGKILL)
when it reaches ``failpoint("<name>")``. In-process tests can instead run a function there
(``with faults.hook("<name>", fn):``), e.g. a ``gc`` in the window between a writer storing its
blobs and publishing them. Unset, a failpoint costs two dict lookups.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator

_hooks: dict[str, Callable[[], None]] = {}


@contextmanager
def hook(name: str, fn: Callable[[], None]) -> Iterator[None]:
    _hooks[name] = fn
    try:
        yield
    finally:
        _hooks.pop(name, None)


def failpoint(name: str) -> None:
    fn = _hooks.get(name)
    if fn is not None:
        fn()
    if os.environ.get("MODELDEPOT_FAILPOINT") == name:
        os._exit(137)
