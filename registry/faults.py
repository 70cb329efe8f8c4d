"""Failpoints: let tests crash a process at a named step, to prove crash safety.

``MODELDEPOT_FAILPOINT=<name>`` makes the process die (``os._exit``, no clean-up, like SIGKILL)
when it reaches ``failpoint("<name>")``. Unset, a failpoint costs one dict lookup.
"""

from __future__ import annotations

import os


def failpoint(name: str) -> None:
    if os.environ.get("MODELDEPOT_FAILPOINT") == name:
        os._exit(137)
