"""The dynamic batcher on its own: batch sizes, deadlines, a full queue, draining, failures.

Fake batch functions stand in for predictors; every test runs its own event loop under a
timeout of a few seconds, so a batcher that hangs fails the test instead of the session.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest

from cvdeploy.errors import DeadlineExceeded, Draining, Overloaded
from cvdeploy.pipeline.predictor import Thresholds
from cvdeploy.serve.batching import Batcher

T = TypeVar("T")
LIMIT_S = 5.0
FAR = 1e9  # a deadline that never passes (event-loop time)


def run(test: Callable[[], Awaitable[T]]) -> T:
    """Run one async test body on a fresh event loop, failing it after ``LIMIT_S``."""

    async def bounded() -> T:
        return await asyncio.wait_for(test(), LIMIT_S)

    return asyncio.run(bounded())


def img(i: int) -> np.ndarray:
    """A one-pixel "image" whose value names it."""
    return np.full((1, 1, 3), i, np.uint8)


class FakePredictor:
    """A batch function: answers each image with its value, records batch sizes.

    Args:
        delay: Seconds each batch takes.
        gate: When given, every batch waits for it (at most ``LIMIT_S``).
        fail_on: A batch holding an image of this value raises ``ValueError``.
    """

    def __init__(
        self,
        *,
        delay: float = 0.0,
        gate: threading.Event | None = None,
        fail_on: int | None = None,
    ) -> None:
        self.delay = delay
        self.gate = gate
        self.fail_on = fail_on
        self.sizes: list[int] = []
        self.started = threading.Event()

    def __call__(
        self, images: Sequence[np.ndarray], thresholds: Sequence[Thresholds]
    ) -> tuple[list[Any], Any]:
        self.started.set()
        self.sizes.append(len(images))
        if self.gate is not None:
            assert self.gate.wait(LIMIT_S), "the test never opened the gate"
        if self.delay:
            time.sleep(self.delay)
        values = [int(im[0, 0, 0]) for im in images]
        if self.fail_on is not None and self.fail_on in values:
            raise ValueError(f"batch {values} failed")
        return values, {"batch": len(images)}


def batcher(fn: FakePredictor, **kw: Any) -> Batcher:
    opts: dict[str, Any] = {"max_batch": 4, "max_wait_ms": 0.0, "queue_size": 64}
    opts.update(kw)
    return Batcher([fn], name="fake", **opts)


async def answers(futures: Sequence[asyncio.Future[Any]]) -> list[Any]:
    """Each future's result value, or its exception."""
    done = await asyncio.gather(*futures, return_exceptions=True)
    return [d if isinstance(d, BaseException) else d[0] for d in done]


def test_queued_images_are_batched_up_to_max_batch() -> None:
    fn = FakePredictor()
    seen: list[int] = []

    async def body() -> list[Any]:
        b = batcher(fn, max_batch=3, on_batch=lambda n, _times: seen.append(n))
        futures = b.submit([img(i) for i in range(7)], Thresholds(), deadline=FAR)
        b.start()
        out = await answers(futures)
        await b.drain()
        return out

    assert run(body) == list(range(7))  # every request gets its own answer
    assert fn.sizes == [3, 3, 1] and seen == [3, 3, 1]


def test_a_batch_waits_up_to_max_wait_for_more_images() -> None:
    fn = FakePredictor()

    async def body() -> list[Any]:
        b = batcher(fn, max_batch=3, max_wait_ms=1000)
        b.start()
        first = b.submit([img(1)], Thresholds(), deadline=FAR)
        await asyncio.sleep(0.02)  # the worker took image 1 and waits for company
        rest = b.submit([img(2), img(3)], Thresholds(), deadline=FAR)
        out = await answers(first + rest)  # full at 3: runs without waiting out the second
        await b.drain()
        return out

    t0 = time.monotonic()
    assert run(body) == [1, 2, 3]
    assert fn.sizes == [3] and time.monotonic() - t0 < 0.9


def test_an_image_past_its_deadline_is_not_run() -> None:
    fn = FakePredictor(delay=0.1)

    async def body() -> list[Any]:
        b = batcher(fn, max_batch=1)
        loop = asyncio.get_running_loop()
        slow = b.submit([img(1)], Thresholds(), deadline=FAR)
        late = b.submit([img(2)], Thresholds(), deadline=loop.time() + 0.02)
        b.start()
        out = await answers(slow + late)  # image 2 waits behind the 0.1 s batch of image 1
        await b.drain()
        return out

    first, second = run(body)
    assert first == 1
    assert isinstance(second, DeadlineExceeded) and second.http_status == 504
    assert fn.sizes == [1]  # image 2 never reached the model


def test_a_full_queue_refuses_at_once_with_a_retry_hint() -> None:
    gate = threading.Event()
    fn = FakePredictor(gate=gate)

    async def body() -> tuple[list[Any], Overloaded, Overloaded, int]:
        b = batcher(fn, max_batch=1, queue_size=2)
        b.start()
        running = b.submit([img(0)], Thresholds(), deadline=FAR)
        await asyncio.to_thread(fn.started.wait, LIMIT_S)  # image 0 left the queue
        queued = b.submit([img(1), img(2)], Thresholds(), deadline=FAR)
        with pytest.raises(Overloaded) as one:
            b.submit([img(3)], Thresholds(), deadline=FAR)
        depth = b.depth
        gate.set()
        out = await answers(running + queued)
        with pytest.raises(Overloaded) as too_many:  # all or none: 3 never fit in 2
            b.submit([img(4), img(5), img(6)], Thresholds(), deadline=FAR)
        await b.drain()
        return out, one.value, too_many.value, depth

    out, one, too_many, depth = run(body)
    assert out == [0, 1, 2] and depth == 2
    assert "2 images queued, limit 2" in one.message
    assert one.hint is not None and "Retry-After" in one.hint
    assert (one.http_status, one.code, one.retry_after) == (503, "overloaded", True)
    assert "0 images queued" in too_many.message
    assert fn.sizes == [1, 1, 1]


def test_draining_refuses_new_work_and_finishes_what_was_queued() -> None:
    fn = FakePredictor(delay=0.05)

    async def body() -> tuple[list[Any], bool]:
        b = batcher(fn, max_batch=2)
        futures = b.submit([img(i) for i in range(5)], Thresholds(), deadline=FAR)
        b.start()
        drain = asyncio.create_task(b.drain())
        await asyncio.sleep(0)  # drain() has begun: intake is closed
        with pytest.raises(Draining) as refused:
            b.submit([img(9)], Thresholds(), deadline=FAR)
        assert refused.value.http_status == 503 and refused.value.retry_after
        await drain
        done_before_return = all(f.done() for f in futures)
        return await answers(futures), done_before_return

    out, done_before_return = run(body)
    assert done_before_return  # drain() returned only once everything queued was answered
    assert out == [0, 1, 2, 3, 4] and fn.sizes == [2, 2, 1]


def test_a_worker_error_reaches_only_its_own_batch() -> None:
    fn = FakePredictor(fail_on=13)

    async def body() -> tuple[list[Any], list[Any]]:
        b = batcher(fn, max_batch=2)
        futures = b.submit([img(1), img(13), img(2), img(3)], Thresholds(), deadline=FAR)
        b.start()
        out = await answers(futures)
        after = await answers(b.submit([img(4)], Thresholds(), deadline=FAR))
        await b.drain()
        return out, after

    (one, bad, two, three), after = run(body)
    assert isinstance(one, ValueError) and bad is one  # the batch [1, 13] failed together
    assert "failed" in str(one)
    assert (two, three) == (2, 3)  # the next batch is answered
    assert after == [4] and fn.sizes == [2, 2, 1]  # the worker keeps serving


def test_a_failing_metrics_callback_does_not_stop_the_worker() -> None:
    fn = FakePredictor()

    def broken(n: int, times: Any) -> None:
        raise RuntimeError("metrics down")

    async def body() -> list[Any]:
        b = batcher(fn, max_batch=1, on_batch=broken)
        b.start()
        out = await answers(b.submit([img(1), img(2)], Thresholds(), deadline=FAR))
        await b.drain()
        return out

    assert run(body) == [1, 2]
