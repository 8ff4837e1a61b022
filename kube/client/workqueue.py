"""A work queue with the semantics of client-go's workqueue, for reconcile loops.

    q: WorkQueue[str] = WorkQueue()
    informer = Informer(client, "pods", queue=q)          # enqueues "ns/name" keys
    while (key := q.get()) is not None:                  # None once shut down
        try:
            reconcile(key)
            q.forget(key)                                # success: reset its backoff
        except Exception:
            q.add_rate_limited(key)                      # retry later, backing off
        finally:
            q.done(key)

The rules:
- An item is queued at most once (dirty set): adding it again while it waits is a no-op.
- An item handed out by get() is "processing" until done(). If it is added meanwhile, it is
  not handed to a second worker; done() puts it back so it is processed once more,
  afterwards. So one item is never processed concurrently, and a change that arrived during
  processing is never lost.
- add_after() holds an item back for a delay (an earlier deadline wins over a later one);
  add_rate_limited() delays it by the rate limiter's verdict: per-item exponential backoff
  (5 ms doubling up to 1000 s) combined with an overall token bucket (10/s, burst 100) by default.
  forget() resets the item's backoff.
- shutdown() makes get() return None once the queue is empty; adds are then ignored and
  delayed items dropped. shutdown(drain=True) also waits until every item in processing is done.

Items must be hashable and not None (strings, tuples).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T", bound=Hashable)


class RateLimiter(Protocol):
    def when(self, item: Hashable) -> float:
        """Seconds to wait before the item may be retried; counts a failure."""
        ...

    def forget(self, item: Hashable) -> None:
        """The item succeeded: forget its failures."""
        ...

    def num_requeues(self, item: Hashable) -> int:
        ...


class ItemExponentialRateLimiter:
    """base * 2**failures, capped at max_delay, per item."""

    def __init__(self, base_delay: float = 0.005, max_delay: float = 1000.0) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._failures: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def when(self, item: Hashable) -> float:
        with self._lock:
            n = self._failures.get(item, 0)
            self._failures[item] = n + 1
        if n > 64:  # 2**n overflows any sane cap
            return self.max_delay
        return min(self.base_delay * (2 ** n), self.max_delay)

    def forget(self, item: Hashable) -> None:
        with self._lock:
            self._failures.pop(item, None)

    def num_requeues(self, item: Hashable) -> int:
        with self._lock:
            return self._failures.get(item, 0)


class BucketRateLimiter:
    """A token bucket over all items: at most `qps` retries a second after a burst of `burst`."""

    def __init__(self, qps: float = 10.0, burst: int = 100) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError("BucketRateLimiter needs qps > 0 and burst >= 1")
        self.qps = qps
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def when(self, item: Hashable) -> float:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1.0  # reserve a token, possibly one that arrives later
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def forget(self, item: Hashable) -> None:
        pass

    def num_requeues(self, item: Hashable) -> int:
        return 0


class MaxOfRateLimiter:
    """The longest delay any of the limiters asks for."""

    def __init__(self, *limiters: RateLimiter) -> None:
        self.limiters = limiters

    def when(self, item: Hashable) -> float:
        return max((lim.when(item) for lim in self.limiters), default=0.0)

    def forget(self, item: Hashable) -> None:
        for lim in self.limiters:
            lim.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return max((lim.num_requeues(item) for lim in self.limiters), default=0)


def default_rate_limiter() -> RateLimiter:
    return MaxOfRateLimiter(ItemExponentialRateLimiter(0.005, 1000.0), BucketRateLimiter(10.0, 100))


class WorkQueue(Generic[T]):
    """Deduplicating, delaying, rate-limited FIFO work queue; thread-safe."""

    def __init__(self, rate_limiter: RateLimiter | None = None, name: str = "") -> None:
        self.name = name
        self.rate_limiter: RateLimiter = rate_limiter if rate_limiter is not None else default_rate_limiter()
        self._cond = threading.Condition()
        self._queue: deque[T] = deque()
        self._dirty: set[T] = set()  # queued, or re-added while processing
        self._processing: set[T] = set()
        self._waiting: dict[T, float] = {}  # item -> monotonic time it becomes ready
        self._heap: list[tuple[float, int, T]] = []  # lazy: entries not matching _waiting are stale
        self._seq = 0
        self._shutting_down = False

    # -- adding --

    def add(self, item: T) -> None:
        if item is None:
            raise ValueError("None cannot be queued: get() returns None to mean shut down")
        with self._cond:
            self._add_locked(item)

    def _add_locked(self, item: T) -> None:
        if self._shutting_down or item in self._dirty:
            return
        self._dirty.add(item)
        if item in self._processing:
            return  # done() re-queues it
        self._queue.append(item)
        self._cond.notify()

    def add_after(self, item: T, delay: float) -> None:
        """Add the item once `delay` seconds have passed (at once if delay <= 0)."""
        if item is None:
            raise ValueError("None cannot be queued: get() returns None to mean shut down")
        with self._cond:
            if self._shutting_down:
                return
            if delay <= 0:
                self._add_locked(item)
                return
            ready = time.monotonic() + delay
            current = self._waiting.get(item)
            if current is not None and current <= ready:
                return
            self._waiting[item] = ready
            self._seq += 1
            heapq.heappush(self._heap, (ready, self._seq, item))
            self._cond.notify_all()  # a sleeping get() may need to wake earlier

    def add_rate_limited(self, item: T) -> None:
        self.add_after(item, self.rate_limiter.when(item))

    def forget(self, item: T) -> None:
        """Stop tracking the item's failures (call after it was processed successfully)."""
        self.rate_limiter.forget(item)

    def num_requeues(self, item: T) -> int:
        return self.rate_limiter.num_requeues(item)

    # -- taking --

    def _promote_locked(self, now: float) -> float | None:
        """Move ready delayed items into the queue; return when the next one is due."""
        while self._heap:
            ready, _, item = self._heap[0]
            if self._waiting.get(item) != ready:
                heapq.heappop(self._heap)  # superseded by an earlier deadline, or already added
                continue
            if ready > now:
                return ready
            heapq.heappop(self._heap)
            del self._waiting[item]
            self._add_locked(item)
        return None

    def get(self, timeout: float | None = None) -> T | None:
        """The next item, marked as processing; call done(item) when finished. None when the queue
        is shut down and empty, or when `timeout` seconds passed without an item."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                next_ready = self._promote_locked(now)
                if self._queue:
                    item = self._queue.popleft()
                    self._processing.add(item)
                    self._dirty.discard(item)
                    return item
                if self._shutting_down:
                    return None
                wait: float | None = None
                if next_ready is not None:
                    wait = next_ready - now
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def done(self, item: T) -> None:
        """Processing of the item finished; if it was added meanwhile, it is queued again now."""
        with self._cond:
            self._processing.discard(item)
            if item in self._dirty:  # added before any shutdown: get() still hands it out
                self._queue.append(item)
                self._cond.notify()
            if not self._processing:
                self._cond.notify_all()  # shutdown(drain=True) may be waiting

    # -- lifecycle --

    def shutdown(self, drain: bool = False, timeout: float | None = None) -> bool:
        """Stop accepting items and release waiting workers once the queue is empty. With drain, also
        wait (up to timeout) until items in processing are done; returns False if that timed out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._shutting_down = True
            self._waiting.clear()
            self._heap.clear()
            self._cond.notify_all()
            if not drain:
                return True
            while self._processing or self._queue:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def shutting_down(self) -> bool:
        with self._cond:
            return self._shutting_down

    def __len__(self) -> int:
        """Items ready to be handed out (not counting delayed or processing ones)."""
        with self._cond:
            self._promote_locked(time.monotonic())
            return len(self._queue)

    def processing(self) -> int:
        with self._cond:
            return len(self._processing)
