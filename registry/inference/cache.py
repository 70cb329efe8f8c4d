"""Loaded models within a memory budget: load on first use, unload the least recently used.

A model counts for what its load made resident: the growth of the process's resident set
(RSS) while it loaded, and never less than its weight files (ONNX graphs and their external
data, or the PyTorch weights). Before a load is measured, memory freed by earlier unloads is
handed back to the system (``malloc_trim``), so the load's pages show as growth instead of
hiding in reused heap; loads run one at a time (one loader thread), though answers running
meanwhile add noise, so the figure is an honest estimate, not an exact one. What a load costs
once per process (importing torch, ONNX Runtime's environment) is paid before the measurement
and not counted: it is not freed by unloading a model. A size, once measured, is remembered for
the next load of that model, so a model that did not fit is refused before it loads again.
Concurrent first uses of one model load it once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable, Hashable

from ..errors import Unavailable

MB = 1024 * 1024
MEASURED_SIZES = 1024  # models whose measured size is remembered (least recently loaded go)


def resident_bytes() -> int | None:
    """This process's resident set size, or None where /proc is not there."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Collect garbage and return free heap pages to the system (glibc keeps them otherwise)."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)


class ModelCache:
    def __init__(self, budget_bytes: int | None = None,
                 on_unload: Callable[[Hashable, object], None] | None = None):
        self.budget = budget_bytes
        self.on_unload = on_unload
        self._models: OrderedDict[Hashable, object] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._measured: OrderedDict[Hashable, int] = OrderedDict()
        self._loading: dict[Hashable, Future] = {}
        self._lock = threading.Lock()

    def peek(self, key: Hashable):
        """The loaded model (marked as just used), or None; never loads."""
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
            return model

    def loaded(self) -> list:
        with self._lock:
            return list(self._models.values())

    def items(self) -> list[tuple[Hashable, object]]:
        with self._lock:
            return list(self._models.items())

    def contains(self, key: Hashable) -> bool:
        """Whether ``key`` is loaded, without marking it used."""
        with self._lock:
            return key in self._models

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def size_of(self, key: Hashable) -> int | None:
        """The bytes a loaded model counts for (None when it is not loaded)."""
        with self._lock:
            return self._sizes.get(key)

    def _too_big(self, label: str, size: int) -> Unavailable:
        return Unavailable(
            f"{label} needs about {size / MB:.1f} MB resident, more than the memory budget of "
            f"{self.budget / MB:.0f} MB; restart the server with a larger --memory-budget-mb",
            retry_after=3600,
        )

    def get(self, key: Hashable, size: int, load: Callable[[], object], label: str = "model"):
        """The model for ``key``, loading it (once, whoever asks meanwhile) if needed."""
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
            pending = self._loading.get(key)
            owner = pending is None
            if owner:
                size = max(size, self._measured.get(key, 0))
                if self.budget is not None and size > self.budget:
                    raise self._too_big(label, size)
                pending = self._loading[key] = Future()
                evicted = self._make_room(size)
        if not owner:
            return pending.result()
        self._notify(evicted)
        release_free_memory()
        before = resident_bytes()
        try:
            model = load()
            after = resident_bytes()
            if before is not None and after is not None:
                size = max(size, after - before)
            with self._lock:
                self._measured[key] = size
                self._measured.move_to_end(key)
                while len(self._measured) > MEASURED_SIZES:
                    self._measured.popitem(last=False)
            if self.budget is not None and size > self.budget:
                del model
                release_free_memory()
                raise self._too_big(label, size)
        except BaseException as e:
            with self._lock:
                del self._loading[key]
            pending.set_exception(e)
            raise
        with self._lock:
            # Loads that finished meanwhile may have used the room, and the measured size may
            # be larger than the estimate: make room again.
            evicted = self._make_room(size)
            self._models[key] = model
            self._sizes[key] = size
            del self._loading[key]
        self._notify(evicted)
        pending.set_result(model)
        return model

    def _make_room(self, size: int) -> list:
        evicted = []
        if self.budget is None:
            return evicted
        while self._models and sum(self._sizes.values()) + size > self.budget:
            key, model = self._models.popitem(last=False)
            self._sizes.pop(key, None)
            evicted.append((key, model))
        return evicted

    def _notify(self, evicted: list) -> None:
        if self.on_unload:
            for key, model in evicted:
                self.on_unload(key, model)

    def clear(self) -> None:
        with self._lock:
            evicted = list(self._models.items())
            self._models.clear()
            self._sizes.clear()
        self._notify(evicted)
