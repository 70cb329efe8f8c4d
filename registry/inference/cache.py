"""Loaded models within a memory budget: load on first use, unload the least recently used.

Sizes are estimates from the weight files a load brings in (ONNX graphs and their external data,
or the PyTorch weights); runtimes add some overhead on top, which is why the budget is a budget
and not a limit the kernel enforces. Concurrent first uses of one model load it once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable, Hashable

from ..errors import Unavailable

MB = 1024 * 1024


class ModelCache:
    def __init__(self, budget_bytes: int | None = None,
                 on_unload: Callable[[Hashable, object], None] | None = None):
        self.budget = budget_bytes
        self.on_unload = on_unload
        self._models: OrderedDict[Hashable, object] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
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

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

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
                if self.budget is not None and size > self.budget:
                    raise Unavailable(
                        f"{label} needs about {size / MB:.0f} MB, more than the memory budget of "
                        f"{self.budget / MB:.0f} MB; restart the server with a larger "
                        "--memory-budget-mb"
                    )
                pending = self._loading[key] = Future()
                evicted = self._make_room(size)
        if not owner:
            return pending.result()
        self._notify(evicted)
        try:
            model = load()
        except BaseException as e:
            with self._lock:
                del self._loading[key]
            pending.set_exception(e)
            raise
        with self._lock:
            # Loads that finished meanwhile may have used the room: make it again.
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
