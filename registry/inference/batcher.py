"""Dynamic batching: concurrent requests to one model share forward passes.

Each loaded model has one batcher. Items wait in its queue until ``max_batch_size`` items are
there or the oldest has waited ``max_wait`` seconds; then up to ``max_batch_size`` items with the
same parameters run together in a worker thread (the event loop never runs a model). The token
budget splits a batch further inside the runner (``EncoderRunner.forward``), where token counts
are known. A full queue refuses new work with ``Overloaded`` (HTTP 429) instead of growing; a
request with more inputs than the whole queue holds could never be admitted, so it is refused as
invalid input (HTTP 422) instead of being told to retry.

Whatever a batch raises, every request in it is answered: an ``Exception`` is each item's
result, and anything else (a Rust panic from ``tokenizers`` is a ``BaseException``) becomes
``BatchFailed`` for each item. ``KeyboardInterrupt``, ``SystemExit`` and cancellation answer the
batch too, then go on stopping what they were meant to stop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import InvalidInput, Overloaded
from .tasks import params_key


class BatchFailed(RuntimeError):
    """A batch raised something that is not an ``Exception``; its requests get a plain 500."""


# Stop the process or the task after the batch is answered; never swallow them.
_PROPAGATE = (KeyboardInterrupt, SystemExit, asyncio.CancelledError)


@dataclass
class _Pending:
    item: Any
    params: dict
    key: str
    future: asyncio.Future
    arrived: float


class Batcher:
    def __init__(self, run: Callable[[list, dict], list], executor: Executor, *, label: str,
                 max_batch_size: int = 32, max_wait_s: float = 0.005, max_queue: int = 256,
                 on_batch: Callable[[int], None] | None = None):
        self._run = run
        self._executor = executor
        self.label = label
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, items: list, params: dict) -> list:
        """Per-item results (or the exception for an item) once all items have run."""
        if len(items) > self.max_queue:
            raise InvalidInput(
                f"this request has {len(items)} inputs; {self.label} queues at most "
                f"{self.max_queue} (the server's --max-queue): send at most {self.max_queue} "
                "inputs per request"
            )
        if len(self._queue) + len(items) > self.max_queue:
            raise Overloaded(
                f"{self.label} has {len(self._queue)} inputs waiting (the queue holds "
                f"{self.max_queue}); retry shortly or send fewer inputs at once"
            )
        loop = asyncio.get_running_loop()
        key, now = params_key(params), loop.time()
        futures = []
        for item in items:
            future = loop.create_future()
            self._queue.append(_Pending(item, params, key, future, now))
            futures.append(future)
        self._wakeup.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work())
        return await asyncio.gather(*futures, return_exceptions=True)

    async def _work(self) -> None:
        try:
            await self._serve_queue()
        except BaseException as e:  # cancelled (server shutdown) or stopped: answer who waits
            self._fail_waiting(e)
            raise

    async def _serve_queue(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            deadline = self._queue[0].arrived + self.max_wait_s
            while len(self._queue) < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            if self._on_batch:
                self._on_batch(len(batch))
            stop: BaseException | None = None
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run, [p.item for p in batch], batch[0].params)
                if not isinstance(results, list) or len(results) != len(batch):
                    raise BatchFailed(f"{self.label} gave {type(results).__name__} for a batch "
                                      f"of {len(batch)}")
            except Exception as e:  # a failed batch fails its items, not the server
                results = [e] * len(batch)
            except BaseException as e:
                stop = e if isinstance(e, _PROPAGATE) else None
                failed = BatchFailed(f"{type(e).__name__} in a batch of {self.label}")
                failed.__cause__ = e  # the server log shows the original
                results = [failed] * len(batch)
            self._answer(batch, results)
            if stop is not None:
                raise stop

    @staticmethod
    def _answer(batch: list[_Pending], results: list) -> None:
        for pending, result in zip(batch, results):
            if pending.future.done():  # the client went away
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

    def _fail_waiting(self, reason: BaseException) -> None:
        """The worker stops: nothing left in the queue may wait for it forever."""
        waiting, self._queue = list(self._queue), deque()
        failed = BatchFailed(f"{self.label} stopped ({type(reason).__name__})")
        self._answer(waiting, [failed] * len(waiting))

    def _take(self) -> list[_Pending]:
        """Up to max_batch_size live items with the oldest item's parameters, oldest first."""
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()
        if not self._queue:
            return []
        key = self._queue[0].key
        batch, rest = [], deque()
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.done():
                continue
            if pending.key == key and len(batch) < self.max_batch_size:
                batch.append(pending)
            else:
                rest.append(pending)
        self._queue = rest
        return batch

    async def close(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass
