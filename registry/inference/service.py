"""The entry points: ``predict`` for ``modeldepot run`` (one process, one call) and
``InferenceService`` for ``modeldepot serve`` (cached models, dynamic batching)."""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Hashable

from ..errors import InvalidInput
from .cache import MB, ModelCache
from .encoders import MAX_CHARS_PER_TOKEN, InputError
from .source import ModelSource, from_directory, from_registry, is_path
from .tasks import Request, collate, parse_inputs, task_for_inputs

DEFAULT_MAX_BATCH_TOKENS = 16384


@dataclass
class Answer:
    """A pipeline-shaped output plus what answered it and what the caller should be told."""

    output: Any
    model: dict
    truncated: list[int] = field(default_factory=list)  # cut in any way (the header's list)
    tokens: int = 0
    limit: int | None = None
    cut: list[int] = field(default_factory=list)  # cut to max_chars before tokenizing
    max_chars: int | None = None
    token_truncated: list[int] | None = None  # None: all of ``truncated``

    def notes(self) -> list[str]:
        notes = []
        by_tokens = self.truncated if self.token_truncated is None else self.token_truncated
        if by_tokens:
            limit = f" to {self.limit} tokens" if self.limit else ""
            notes.append(f"{_inputs(by_tokens)} truncated{limit} (the model's maximum input "
                         "length)")
        if self.cut:
            notes.append(f"{_inputs(self.cut)} cut to {self.max_chars:,} characters before "
                         f"tokenizing ({MAX_CHARS_PER_TOKEN} per token of the model's maximum "
                         "input length)")
        return notes

    @property
    def warning(self) -> str | None:
        return self.model.get("warning")

    def to_json(self) -> dict:
        return {**self.model, "truncated": self.truncated, "warnings": self.notes(),
                "outputs": self.output}


def _inputs(which: list[int]) -> str:
    """``inputs 0-63, 70``: runs as ranges, so the warning header of a 1,024-input request
    stays short (clients refuse header lines over 8 KB)."""
    runs: list[list[int]] = []
    for i in sorted(which):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return f"input{'s' if len(which) > 1 else ''} {text}"


def answer(model, request: Request, results: list) -> Answer:
    for i, result in enumerate(results):
        if isinstance(result, InputError):
            raise InvalidInput(f"input {i} {result}")
        if isinstance(result, BaseException):
            raise result
    cut = [i for i, r in enumerate(results) if r.cut]
    by_tokens = [i for i, r in enumerate(results) if r.truncated]
    limit = getattr(model.runner, "max_length", None) or getattr(model.runner, "limit", None)
    return Answer(collate(request, [r.output for r in results]), model.describe(),
                  sorted(set(by_tokens) | set(cut)), sum(r.tokens for r in results), limit,
                  cut, getattr(model.runner, "max_chars", None), by_tokens)


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
    RESOLVE_MAX = 1024  # resolutions kept: request paths are the client's choice, memory is not

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
        self._resolved: OrderedDict[tuple, tuple[float, tuple]] = OrderedDict()
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
        """(cache key, size, source, task, backend) for a request; registry read, no load.

        The key names the weights and the runtime that holds them, not the task: tasks of one
        engine (``backends.engine_task``) share one loaded model."""
        from .backends import engine_task, estimate_size

        source = self.adhoc.get(spec) or from_registry(self.depot, spec)
        chosen_task = source.pick_task(task)
        chosen, export = source.pick_backend(chosen_task, backend)
        size = estimate_size(source, chosen, export, precision)
        key = (source.name, source.commit, export.commit if export else None,
               engine_task(chosen_task), chosen, precision)
        return key, size, source, chosen_task, chosen

    def load(self, plan: tuple):
        """The loaded model for ``plan``, answering the plan's task."""
        from .backends import load_model, prepare_runtime

        key, size, source, task, backend = plan
        precision = key[-1]
        prepare_runtime(task, backend)
        return self.cache.get(
            key, size,
            lambda: load_model(source, task, backend, precision=precision,
                               max_batch_tokens=self.max_batch_tokens),
            label=source.label,
        ).for_task(task)

    def preload(self, entry: str) -> None:
        """``--models`` entries: ``REPO[@REV]`` or ``NAME=PATH`` (an ad-hoc directory)."""
        if "=" in entry:
            name, path = entry.split("=", 1)
            self.add_directory(name, path)
            entry = name
        self.load(self.plan(entry, None, "auto", "fp32"))
        self._report_models()

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
        self._resolved.move_to_end(cache_key)
        while len(self._resolved) > self.RESOLVE_MAX:
            self._resolved.popitem(last=False)
        return plan

    async def model(self, spec: str, task: str | None = None, backend: str = "auto",
                    precision: str = "fp32"):
        plan = await self._plan(spec, task, backend, precision)
        model = self.cache.peek(plan[0])
        if model is None:
            loop = asyncio.get_running_loop()
            try:
                model = await loop.run_in_executor(self.loader, self.load, plan)
            finally:  # a load evicts others even when it then fails
                self._report_models()
        return plan[0], model.for_task(plan[3])

    def _report_models(self) -> None:
        self.metrics.models([(m, self.cache.size_of(k)) for k, m in self.cache.items()])

    async def apredict(self, spec: str, inputs: Any, parameters: dict | None = None, *,
                       task: str | None = None, backend: str = "auto",
                       precision: str = "fp32") -> Answer:
        key, model = await self.model(spec, task_for_inputs(task, inputs), backend, precision)
        request = parse_inputs(model.task, inputs, parameters)
        batcher = self._batcher(key, model)
        try:
            # One queue per loaded model; its tasks share it but never a batch.
            results = await batcher.submit(request.items,
                                           {"task": model.task, "params": request.params})
        finally:
            self.metrics.queue(model.label, batcher.depth)
        return answer(model, request, results)

    def _batcher(self, key, model):
        from .batcher import Batcher

        batcher = self._batchers.get(key)
        if batcher is None:
            label = model.label

            def run(items: list, job: dict) -> list:
                return model.for_task(job["task"]).run(items, job["params"])

            batcher = Batcher(
                run, self.executor, label=label, max_batch_size=self.max_batch_size,
                max_wait_s=self.max_wait_s, max_queue=self.max_queue,
                on_batch=lambda n: self.metrics.batch(label, n),
            )
            # A model unloaded while this request was on its way gets a batcher for this one
            # request: kept, it would keep the unloaded model in memory.
            if self.cache.contains(key):
                self._batchers[key] = batcher
        return batcher

    async def close(self) -> None:
        for batcher in list(self._batchers.values()):
            await batcher.close()
        self._batchers.clear()
        self.cache.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.loader.shutdown(wait=False, cancel_futures=True)
