"""The click adapter's command modules (the only part of ``registry`` that imports click).

Each module here defines ``register(group)``; ``cli.py`` discovers and registers them all, so
adding a command family means adding one module, not editing a shared list.
"""

from __future__ import annotations

import importlib
import pkgutil


def register_all(group) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(group)
