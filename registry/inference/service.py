"""The entry points: ``predict`` for ``modeldepot run`` (one process, one call) and
``InferenceService`` for ``modeldepot serve`` (cached models, dynamic batching)."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Hashable

from ..errors import InvalidInput
from .cache import MB, ModelCache
from .encoders import InputError
from .source import ModelSource, from_directory, from_registry, is_path
from .tasks import Request, collate, parse_inputs, task_for_inputs

DEFAULT_MAX_BATCH_TOKENS = 16384


@dataclass
class Answer:
    """A pipeline-shaped output plus what answered it and what the caller should be told."""

    output: Any
    model: dict
    truncated: list[int] = field(default_factory=list)
    tokens: int = 0
    limit: int | None = None

    def notes(self) -> list[str]:
        if not self.truncated:
            return []
        which = ", ".join(str(i) for i in self.truncated)
        limit = f" to {self.limit} tokens" if self.limit else ""
        plural = "s" if len(self.truncated) > 1 else ""
        return [f"input{plural} {which} truncated{limit} (the model's maximum input length)"]

    @property
    def warning(self) -> str | None:
        return self.model.get("warning")

    def to_json(self) -> dict:
        return {**self.model, "truncated": self.truncated, "warnings": self.notes(),
                "outputs": self.output}


def answer(model, request: Request, results: list) -> Answer:
    for i, result in enumerate(results):
        if isinstance(result, InputError):
            raise InvalidInput(f"input {i} {result}")
        if isinstance(result, BaseException):
            raise result
    truncated = [i for i, r in enumerate(results) if r.truncated]
    limit = getattr(model.runner, "max_length", None) or getattr(model.runner, "limit", None)
    return Answer(collate(request, [r.output for r in results]), model.describe(), truncated,
                  sum(r.tokens for r in results), limit)


def resolve_source(depot, spec: str) -> ModelSource:
    """A directory path (explicit path syntax) or ``REPO[@REV|ALIAS]`` in the registry."""
    if is_path(spec):
        return from_directory(spec)
    return from_registry(depot, spec)


def prepare(depot, spec: str, task: str | None = None) -> tuple[ModelSource, str]:
    """Resolve ``spec`` and pick the task (the model's own when ``task`` is None)."""
    source = resolve_source(depot, spec)
    return source, source.pick_task(task)


def predict(depot, spec: str, inputs: Any, parameters: dict | None = None, *,
            task: str | None = None, backend: str = "auto", precision: str = "fp32",
            prepared: tuple[ModelSource, str] | None = None) -> Answer:
    """Load and run once (``modeldepot run``): no cache, no batcher, no server."""
    from .backends import load_model

    source, chosen = prepared or prepare(depot, spec, task_for_inputs(task, inputs))
    request = parse_inputs(chosen, inputs, parameters)  # bad input fails before any load
    model = load_model(source, chosen, backend, precision=precision)
    return answer(model, request, model.run(request.items, request.params))


class NullMetrics:
    def batch(self, label: str, size: int) -> None: ...
    def queue(self, label: str, depth: int) -> None: ...
    def models(self, loaded: list) -> None: ...


class InferenceService:
    """Models for the server: resolved through the registry, loaded on first use within a
    memory budget, and fed by one dynamic batcher each."""

    RESOLVE_TTL_S = 1.0  # aliases may move; a second of staleness saves a query per request

    def __init__(self, depot, *, memory_budget_mb: int | None = None, max_batch_size: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 256,
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, only_registered: bool = False,
                 metrics=None, workers: int | None = None):
        self.depot = depot
        self.only_registered = only_registered
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.max_batch_tokens = max_batch_tokens
        self.metrics = metrics or NullMetrics()
        self.cache = ModelCache(memory_budget_mb * MB if memory_budget_mb else None,
                                on_unload=self._unloaded)
        self.adhoc: dict[str, ModelSource] = {}
        self._resolved: dict[tuple, tuple[float, tuple]] = {}
        self._batchers: dict[Hashable, Any] = {}
        # Inference and loading run in separate pools, so a slow load never stalls answers.
        self.executor = ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 2),
                                           thread_name_prefix="inference")
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")

    # -- resolution and loading (blocking; the server calls these in threads) ----------------

    def add_directory(self, name: str, path: str) -> None:
        if self.only_registered:
            raise InvalidInput(
                f"--models {name}={path}: --only-registered refuses models that are not in the "
                f"registry; import it first with 'modeldepot import {path} --repo {name}'"
            )
        from ..naming import validate_repo_id

        validate_repo_id(name)
        self.adhoc[name] = from_directory(path, name)

    def plan(self, spec: str, task: str | None, backend: str, precision: str) -> tuple:
        """(cache key, size, source, task, backend) for a request; registry read, no load."""
        from .backends import estimate_size

        source = self.adhoc.get(spec) or from_registry(self.depot, spec)
        chosen_task = source.pick_task(task)
        chosen, export = source.pick_backend(chosen_task, backend)
        size = estimate_size(source, chosen, export, precision)
        key = (source.name, source.commit, export.commit if export else None, chosen_task,
               chosen, precision)
        return key, size, source, chosen_task, chosen

    def load(self, plan: tuple):
        from .backends import load_model

        key, size, source, task, backend = plan
        precision = key[-1]
        return self.cache.get(
            key, size,
            lambda: load_model(source, task, backend, precision=precision,
                               max_batch_tokens=self.max_batch_tokens),
            label=source.label,
        )

    def preload(self, entry: str) -> None:
        """``--models`` entries: ``REPO[@REV]`` or ``NAME=PATH`` (an ad-hoc directory)."""
        if "=" in entry:
            name, path = entry.split("=", 1)
            self.add_directory(name, path)
            entry = name
        self.load(self.plan(entry, None, "auto", "fp32"))
        self.metrics.models(self.cache.loaded())

    def _unloaded(self, key, model) -> None:
        self._batchers.pop(key, None)

    # -- the async path --------------------------------------------------------------------

    async def _plan(self, spec: str, task: str | None, backend: str, precision: str) -> tuple:
        loop = asyncio.get_running_loop()
        cache_key = (spec, task, backend, precision)
        hit = self._resolved.get(cache_key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        plan = await loop.run_in_executor(None, self.plan, spec, task,
                                          backend, precision)
        self._resolved[cache_key] = (time.monotonic() + self.RESOLVE_TTL_S, plan)
        return plan

    async def model(self, spec: str, task: str | None = None, backend: str = "auto",
                    precision: str = "fp32"):
        plan = await self._plan(spec, task, backend, precision)
        model = self.cache.peek(plan[0])
        if model is None:
            loop = asyncio.get_running_loop()
            model = await loop.run_in_executor(self.loader, self.load, plan)
            self.metrics.models(self.cache.loaded())
        return plan[0], model

    async def apredict(self, spec: str, inputs: Any, parameters: dict | None = None, *,
                       task: str | None = None, backend: str = "auto",
                       precision: str = "fp32") -> Answer:
        key, model = await self.model(spec, task_for_inputs(task, inputs), backend, precision)
        request = parse_inputs(model.task, inputs, parameters)
        batcher = self._batcher(key, model)
        try:
            results = await batcher.submit(request.items, request.params)
        finally:
            self.metrics.queue(model.label, batcher.depth)
        return answer(model, request, results)

    def _batcher(self, key, model):
        from .batcher import Batcher

        batcher = self._batchers.get(key)
        if batcher is None:
            label = model.label
            batcher = self._batchers[key] = Batcher(
                model.run, self.executor, label=label, max_batch_size=self.max_batch_size,
                max_wait_s=self.max_wait_s, max_queue=self.max_queue,
                on_batch=lambda n: self.metrics.batch(label, n),
            )
        return batcher

    async def close(self) -> None:
        for batcher in list(self._batchers.values()):
            await batcher.close()
        self._batchers.clear()
        self.cache.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.loader.shutdown(wait=False, cancel_futures=True)
