"""The scheduling queue, after upstream's PriorityQueue: three parts.

- active: pods to try now, highest priority first, then oldest first;
- backoff: pods that failed recently, each held back 1 s * 2**(attempts-1), at most 10 s;
- unschedulable: pods that fit nowhere; they wait for a cluster event that may help (a node
  added or changed, a pod deleted: `move_all`) or at most `max_unschedulable` seconds.

A move request that arrives while a pod is being scheduled is not lost: if the attempt
then fails, the pod goes to backoff instead of unschedulable (upstream's moveRequestCycle).

When nothing is active, a pod that an event moved out of unschedulable is popped from backoff
before its backoff ends (upstream's SchedulerPopFromBackoffQ, on by default since 1.33): an idle
scheduler does not sit on a pod that may now fit. Pods backing off after an error wait it out.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any

Obj = dict[str, Any]
INITIAL_BACKOFF = 1.0
MAX_BACKOFF = 10.0
MAX_UNSCHEDULABLE = 300.0


class SchedulingQueue:
    def __init__(self, initial_backoff: float = INITIAL_BACKOFF, max_backoff: float = MAX_BACKOFF,
                 max_unschedulable: float = MAX_UNSCHEDULABLE) -> None:
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.max_unschedulable = max_unschedulable
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._pods: dict[str, Obj] = {}  # every pending pod we know of: key -> latest object
        self._active: list[tuple[int, int, str]] = []  # (-priority, seq, key); lazily deleted
        self._in_active: dict[str, int] = {}  # key -> seq of its live heap entry
        self._backoff: dict[str, float] = {}  # key -> when it may be tried again
        self._early: set[str] = set()  # keys in backoff that may be popped early when idle
        self._unschedulable: dict[str, float] = {}  # key -> since when
        self._attempts: dict[str, int] = {}
        self._failed_at: dict[str, float] = {}
        self._cycle = 0
        self._move_cycle = -1
        self._closed = False

    # -- feeding --

    def add(self, key: str, pod: Obj) -> None:
        """A new pending pod, or a change of one that may make it schedulable: try it (again)."""
        with self._cond:
            self._pods[key] = pod
            self._unschedulable.pop(key, None)
            if key in self._in_active or key in self._backoff:
                return
            if self._backing_off(key, time.monotonic()):
                self._backoff[key] = self._backoff_until(key)
                self._early.add(key)
            else:
                self._push(key)
            self._cond.notify()

    def update(self, key: str, pod: Obj) -> None:
        """A change that cannot help scheduling (status only): keep the latest object, nothing else."""
        with self._cond:
            if key in self._pods:
                self._pods[key] = pod

    def delete(self, key: str) -> None:
        with self._cond:
            self._pods.pop(key, None)
            self._in_active.pop(key, None)
            self._backoff.pop(key, None)
            self._early.discard(key)
            self._unschedulable.pop(key, None)
            self._attempts.pop(key, None)
            self._failed_at.pop(key, None)

    def move_all(self) -> None:
        """A cluster event that may make unschedulable pods fit: retry them (after their backoff)."""
        with self._cond:
            self._move_cycle = self._cycle
            now = time.monotonic()
            for key in list(self._unschedulable):
                del self._unschedulable[key]
                if self._backing_off(key, now):
                    self._backoff[key] = self._backoff_until(key)
                    self._early.add(key)
                else:
                    self._push(key)
            self._cond.notify()

    # -- the scheduler's side --

    def pop(self, timeout: float | None = None) -> tuple[str, Obj, int] | None:
        """(key, pod, cycle) of the next pod to schedule; None on timeout or close."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                wait = self._promote(now)
                while self._active:
                    _, seq, key = heapq.heappop(self._active)
                    if self._in_active.get(key) != seq:
                        continue
                    del self._in_active[key]
                    pod = self._pods.get(key)
                    if pod is None:
                        continue
                    self._cycle += 1
                    self._attempts[key] = self._attempts.get(key, 0) + 1
                    return key, pod, self._cycle
                early = [k for k in self._early if k in self._backoff]
                if early:
                    key = min(early, key=lambda k: self._backoff[k])
                    del self._backoff[key]
                    self._early.discard(key)
                    self._push(key)
                    continue
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)
            return None

    def failed(self, key: str, cycle: int, unschedulable: bool) -> None:
        """The attempt failed: unschedulable (no node fits) waits for an event, an error backs off."""
        with self._cond:
            if key not in self._pods:
                return
            now = time.monotonic()
            self._failed_at[key] = now
            if unschedulable and self._move_cycle < cycle:
                self._unschedulable[key] = now
            else:
                self._backoff[key] = self._backoff_until(key)
                if unschedulable:
                    self._early.add(key)  # an event came during the attempt
                else:
                    self._early.discard(key)
            self._cond.notify()

    def done(self, key: str) -> None:
        """Scheduled (assumed): the pod leaves the queue."""
        self.delete(key)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False

    # -- inspection --

    def pending(self) -> dict[str, int]:
        with self._cond:
            return {"active": len(self._in_active), "backoff": len(self._backoff),
                    "unschedulable": len(self._unschedulable)}

    def __len__(self) -> int:
        with self._cond:
            return len(self._pods)

    # -- internals (lock held) --

    def _push(self, key: str) -> None:
        pod = self._pods.get(key) or {}
        prio = int((pod.get("spec") or {}).get("priority") or 0)
        seq = next(self._seq)
        self._in_active[key] = seq
        heapq.heappush(self._active, (-prio, seq, key))

    def _backoff_until(self, key: str) -> float:
        n = max(1, self._attempts.get(key, 1))
        delay = min(self.initial_backoff * 2 ** min(n - 1, 30), self.max_backoff)
        return self._failed_at.get(key, time.monotonic()) + delay

    def _backing_off(self, key: str, now: float) -> bool:
        return key in self._failed_at and self._backoff_until(key) > now

    def _promote(self, now: float) -> float | None:
        """Move due backoff and stale unschedulable pods to active; seconds until the next is due."""
        nxt: float | None = None
        for key, when in list(self._backoff.items()):
            if when <= now:
                del self._backoff[key]
                self._early.discard(key)
                self._push(key)
            else:
                nxt = when - now if nxt is None else min(nxt, when - now)
        for key, since in list(self._unschedulable.items()):
            due = since + self.max_unschedulable
            if due <= now:
                del self._unschedulable[key]
                self._push(key)
            else:
                nxt = due - now if nxt is None else min(nxt, due - now)
        return nxt
