"""Dynamic batching: queued images are grouped into batches and run off the event loop.

A :class:`Batcher` owns a bounded queue of images and one worker coroutine per inference
worker. A worker takes the first waiting image and everything queued behind it (up to
``max_batch``); while every other worker is busy it also waits at most ``max_wait_ms`` for
more to join, but with another worker idle it starts at once (that worker takes the next
request, so waiting would only add latency). It runs the batch in its own thread, so the
event loop keeps accepting requests while the model runs. A full queue refuses new images
at once (:class:`~cvdeploy.errors.Overloaded`, HTTP 503); an image whose deadline passed
while it waited is not run (:class:`~cvdeploy.errors.DeadlineExceeded`, HTTP 504).
:meth:`Batcher.drain` stops intake (:class:`~cvdeploy.errors.Draining`) and waits for
everything queued to be answered, which is how a model version is retired without failing
a request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvdeploy.errors import DeadlineExceeded, Draining, Overloaded
from cvdeploy.pipeline.predictor import Thresholds

_log = logging.getLogger(__name__)

__all__ = ["BatchFn", "Batcher", "WorkItem"]


@dataclass(slots=True)
class WorkItem:
    """One queued image."""

    image: np.ndarray
    thresholds: Thresholds
    deadline: float
    """Event-loop time after which the image is not run."""
    future: asyncio.Future[Any] = field(repr=False)


BatchFn = Callable[[Sequence[np.ndarray], Sequence[Thresholds]], tuple[list[Any], Any]]
"""Runs one batch in a worker thread: ``(images, thresholds) -> (results, stage_times)``."""


class Batcher:
    """Groups queued images into batches for a set of inference workers.

    Args:
        workers: One batch function per worker; each runs in its own thread, never two
            batches at once.
        max_batch: Most images per batch.
        max_wait_ms: Longest wait for a batch to fill once its first image is taken.
        queue_size: Most images waiting; beyond it :meth:`submit` raises :class:`Overloaded`.
        on_batch: Called on the event loop after each batch with
            ``(batch_size, stage_times)`` (metrics).
        name: Used in thread names and messages.
    """

    def __init__(
        self,
        workers: Sequence[BatchFn],
        *,
        max_batch: int,
        max_wait_ms: float,
        queue_size: int,
        on_batch: Callable[[int, Any], None] | None = None,
        name: str = "model",
    ) -> None:
        if not workers:
            raise ValueError("a Batcher needs at least one worker")
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.name = name
        self._fns = list(workers)
        self._on_batch = on_batch
        self._items: collections.deque[WorkItem] = collections.deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._inflight = 0
        self._waiting = 0  # workers idle, waiting for the first image of a batch
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._executors = [
            ThreadPoolExecutor(1, thread_name_prefix=f"cvdeploy-{name}-{i}")
            for i in range(len(self._fns))
        ]

    @property
    def depth(self) -> int:
        """Images waiting in the queue (not yet in a batch)."""
        return len(self._items)

    @property
    def inflight(self) -> int:
        """Images in batches being run."""
        return self._inflight

    def start(self) -> None:
        """Start the worker coroutines on the running event loop."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.get_running_loop().create_task(self._worker(fn, ex), name=f"{self.name}-{i}")
            for i, (fn, ex) in enumerate(zip(self._fns, self._executors, strict=True))
        ]

    def submit(
        self, images: Sequence[np.ndarray], thresholds: Thresholds, *, deadline: float
    ) -> list[asyncio.Future[Any]]:
        """Queue images (all or none) and return one future per image.

        Must be called on the event loop. It does not await, so a caller that picked this
        batcher is guaranteed to be queued before any later :meth:`drain` starts.

        Raises:
            Overloaded: The queue cannot take all the images.
            Draining: The batcher is being retired.
        """
        if self._closed:
            raise Draining(f"model {self.name} is being replaced; retry")
        if len(self._items) + len(images) > self.queue_size:
            raise Overloaded(
                f"model {self.name} is overloaded ({len(self._items)} images queued, "
                f"limit {self.queue_size})",
                hint="retry after the Retry-After delay, or add workers / a larger --queue",
            )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        for img in images:
            fut: asyncio.Future[Any] = loop.create_future()
            self._items.append(WorkItem(img, thresholds, deadline, fut))
            futures.append(fut)
        self._idle.clear()
        self._wakeup.set()
        return futures

    async def drain(self) -> None:
        """Refuse new work, answer everything queued, then stop the workers and threads."""
        self._closed = True
        self._wakeup.set()
        while self._items or self._inflight:
            self._idle.clear()
            self._wakeup.set()
            await self._idle.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for ex in self._executors:
            ex.shutdown(wait=False)

    # internals ------------------------------------------------------------------------------
    async def _next_batch(self) -> list[WorkItem]:
        """Collect a batch; its images count as in flight from the moment they leave the queue."""
        loop = asyncio.get_running_loop()
        while not self._items:
            self._wakeup.clear()
            self._waiting += 1
            try:
                await self._wakeup.wait()
            finally:
                self._waiting -= 1
        batch = [self._items.popleft()]
        self._inflight += 1
        end = loop.time() + self.max_wait
        try:
            while len(batch) < self.max_batch:
                if self._items:
                    batch.append(self._items.popleft())
                    self._inflight += 1
                    continue
                remaining = end - loop.time()
                if remaining <= 0 or self._closed or self._waiting:
                    break  # an idle worker takes what comes next: no wait for a fuller batch
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
        except asyncio.CancelledError:
            for item in batch:  # never leave a request waiting on a cancelled worker
                if not item.future.done():
                    item.future.set_exception(Draining(f"model {self.name} was stopped; retry"))
            self._inflight -= len(batch)
            raise
        return batch

    async def _worker(self, fn: BatchFn, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            try:
                await self._run(loop, fn, executor, batch)
            finally:
                self._inflight -= len(batch)
                self._check_idle()

    async def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: BatchFn,
        executor: ThreadPoolExecutor,
        batch: list[WorkItem],
    ) -> None:
        now = loop.time()
        live: list[WorkItem] = []
        for item in batch:
            if item.future.done():  # the client gave up (deadline or disconnect)
                continue
            if item.deadline < now:
                item.future.set_exception(
                    DeadlineExceeded(f"the request deadline passed while queued for {self.name}")
                )
                continue
            live.append(item)
        if not live:
            return
        try:
            results, times = await loop.run_in_executor(
                executor, fn, [i.image for i in live], [i.thresholds for i in live]
            )
        except Exception as exc:  # answered to each waiting request, never swallowed
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, res in zip(live, results, strict=True):
            if not item.future.done():
                item.future.set_result((res, times))
        if self._on_batch is not None:
            try:
                self._on_batch(len(live), times)
            except Exception:  # metrics must never stop a worker
                _log.exception("batch metrics callback failed")

    def _check_idle(self) -> None:
        if not self._items and not self._inflight:
            self._idle.set()
