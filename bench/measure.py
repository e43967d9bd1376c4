"""Timing helpers: run calls from concurrent callers, percentiles, rates."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# A call not answered in this time counts as an error; when no call at all was answered
# for that long, the workers have stalled and the run stops instead of hanging.
CALL_TIMEOUT_S = 120.0


class Stalled(RuntimeError):
    pass


class _Progress:
    def __init__(self) -> None:
        self.last = time.monotonic()

    def answered(self) -> None:
        self.last = time.monotonic()

    def check(self) -> None:
        if time.monotonic() - self.last > CALL_TIMEOUT_S:
            raise Stalled(f"no call answered for {CALL_TIMEOUT_S:g}s: the worker has stalled")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Sample:
    """Calls made in one timed stretch: their latencies (seconds) and the wall time."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies)

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "seconds": round(self.seconds, 3),
            "per_s": round(self.count / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(percentile(self.latencies, 50) * 1000, 1),
            "p99_ms": round(percentile(self.latencies, 99) * 1000, 1),
            "max_ms": round(max(self.latencies, default=0.0) * 1000, 1),
            "errors": len(self.errors),
            "first_errors": sorted(set(self.errors))[:3],
        }


def pooled(samples: Iterable[Sample]) -> Sample:
    """Rounds taken together: all latencies, summed wall time."""
    total = Sample()
    for sample in samples:
        total.latencies += sample.latencies
        total.seconds += sample.seconds
        total.errors += sample.errors
    return total


async def timed_calls(items: Iterable[T], callers: int, call: Callable[[T], Awaitable[Any]]) -> Sample:
    """Each item is one call; ``callers`` tasks take items in turn."""
    queue: asyncio.Queue[T] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    sample = Sample()
    progress = _Progress()

    async def caller() -> None:
        while not queue.empty():
            item = queue.get_nowait()
            began = time.perf_counter()
            try:
                await asyncio.wait_for(call(item), CALL_TIMEOUT_S)
            except Exception as exc:
                sample.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                progress.check()
                continue
            progress.answered()
            sample.latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    sample.seconds = time.perf_counter() - began
    return sample


async def timed_sequences(
    keys: list[str], steps: int, callers: int, call: Callable[[str, int], Awaitable[Any]]
) -> Sample:
    """``steps`` ordered calls per key (call k waits for call k-1 of the same key); the
    ``callers`` tasks take whichever key is free, so keys interleave."""
    queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    for key in keys:
        queue.put_nowait((key, 0))
    remaining = len(keys) * steps
    done = asyncio.Event()
    sample = Sample()
    progress = _Progress()

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            getter = asyncio.ensure_future(queue.get())
            finished = asyncio.ensure_future(done.wait())
            await asyncio.wait({getter, finished}, return_when=asyncio.FIRST_COMPLETED)
            finished.cancel()
            if not getter.done():
                getter.cancel()
                return
            key, step = getter.result()
            began = time.perf_counter()
            try:
                await asyncio.wait_for(call(key, step), CALL_TIMEOUT_S)
                sample.latencies.append(time.perf_counter() - began)
                progress.answered()
            except Exception as exc:
                sample.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                progress.check()
            remaining -= 1
            if step + 1 < steps:
                queue.put_nowait((key, step + 1))
            if remaining == 0:
                done.set()

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    sample.seconds = time.perf_counter() - began
    return sample


async def poll_until(check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.2) -> bool:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval)
    return await check()
