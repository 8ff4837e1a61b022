"""WorkQueue semantics (client-go's): dedup, processing rule, delays, rate limiting, shutdown."""

from __future__ import annotations

import threading
import time

import pytest

from kube.client.workqueue import (
    BucketRateLimiter,
    ItemExponentialRateLimiter,
    MaxOfRateLimiter,
    WorkQueue,
)


def test_fifo_and_dedup() -> None:
    q: WorkQueue[str] = WorkQueue()
    for k in ["a", "b", "a", "c", "b"]:
        q.add(k)
    assert len(q) == 3
    got = [q.get(0), q.get(0), q.get(0)]
    assert got == ["a", "b", "c"]
    assert q.get(timeout=0.01) is None  # empty: times out


def test_readd_while_processing_is_processed_again_after_done() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert q.get(0) == "a"
    q.add("a")  # changed while being processed
    q.add("a")  # and again: still only one more round
    assert len(q) == 0, "must not be handed to a second worker while processing"
    assert q.get(timeout=0.01) is None
    q.done("a")
    assert len(q) == 1
    assert q.get(0) == "a"
    q.done("a")
    assert q.get(timeout=0.01) is None


def test_done_without_readd_does_not_requeue() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert q.get(0) == "a"
    q.done("a")
    assert len(q) == 0 and q.processing() == 0


def test_none_is_rejected() -> None:
    q: WorkQueue[str] = WorkQueue()
    with pytest.raises(ValueError):
        q.add(None)  # type: ignore[arg-type]


def test_never_processed_concurrently_under_threads() -> None:
    q: WorkQueue[str] = WorkQueue()
    active: dict[str, int] = {}
    overlaps: list[str] = []
    processed: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while (key := q.get()) is not None:
            with lock:
                active[key] = active.get(key, 0) + 1
                if active[key] > 1:
                    overlaps.append(key)
            time.sleep(0.0005)  # hold it a moment so re-adds land during processing
            with lock:
                active[key] -= 1
                processed.append(key)
            q.done(key)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(400):
        q.add(f"k{i % 5}")
    # wait until everything added has been processed
    deadline = time.monotonic() + 10
    while (len(q) or q.processing()) and time.monotonic() < deadline:
        time.sleep(0.005)
    q.shutdown()
    for t in threads:
        t.join(5)
    assert not overlaps
    assert {f"k{i}" for i in range(5)} <= set(processed)


def test_last_add_after_processing_starts_is_not_lost() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("x")
    item = q.get(0)
    seen_during = threading.Event()

    def adder() -> None:
        q.add("x")
        seen_during.set()

    threading.Thread(target=adder).start()
    assert seen_during.wait(5)
    q.done(item)  # type: ignore[arg-type]
    assert q.get(1) == "x"


def test_add_after_delays_and_earliest_deadline_wins() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add_after("late", 0.3)
    q.add_after("soon", 0.05)
    q.add_after("late", 5.0)  # a later deadline does not postpone
    assert len(q) == 0
    t0 = time.monotonic()
    assert q.get(2) == "soon"
    assert q.get(2) == "late"
    assert 0.25 <= time.monotonic() - t0 < 2
    q.add_after("x", 5.0)
    q.add_after("x", 0.01)  # an earlier one does bring it forward
    assert q.get(1) == "x"


def test_add_after_dedups_with_queued_item() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add_after("a", 0.01)
    assert q.get(0) == "a"
    q.done("a")
    # the delayed copy becomes ready and is queued once more (it is a separate add, later)
    assert q.get(1) == "a"
    q.done("a")
    assert q.get(0.05) is None


def test_add_after_zero_is_immediate() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add_after("a", 0)
    assert len(q) == 1


def test_get_wakes_for_delayed_item_added_while_waiting() -> None:
    q: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(q.get(5)))
    t.start()
    q.add_after("a", 0.05)
    t.join(5)
    assert got == ["a"]


def test_item_exponential_backoff_and_forget() -> None:
    rl = ItemExponentialRateLimiter(0.005, 1.0)
    assert [rl.when("a") for _ in range(5)] == [0.005, 0.01, 0.02, 0.04, 0.08]
    assert rl.when("b") == 0.005  # per item
    for _ in range(20):
        rl.when("a")
    assert rl.when("a") == 1.0  # capped
    assert rl.num_requeues("a") == 26
    rl.forget("a")
    assert rl.num_requeues("a") == 0
    assert rl.when("a") == 0.005


def test_bucket_rate_limiter() -> None:
    rl = BucketRateLimiter(qps=10, burst=2)
    assert rl.when("a") == 0.0
    assert rl.when("b") == 0.0
    third = rl.when("c")
    assert 0.05 < third <= 0.1  # waits for the next token
    fourth = rl.when("d")
    assert fourth > third


def test_add_rate_limited_uses_backoff_and_forget_resets() -> None:
    q: WorkQueue[str] = WorkQueue(MaxOfRateLimiter(ItemExponentialRateLimiter(0.02, 10.0)))
    q.add_rate_limited("a")  # 20 ms
    assert len(q) == 0
    assert q.get(1) == "a"
    q.done("a")
    assert q.num_requeues("a") == 1
    q.add_rate_limited("a")  # 40 ms
    q.add_rate_limited("a")  # 80 ms, but the earlier deadline stands
    t0 = time.monotonic()
    assert q.get(1) == "a"
    assert time.monotonic() - t0 < 0.5
    q.done("a")
    assert q.num_requeues("a") == 3
    q.forget("a")
    assert q.num_requeues("a") == 0


def test_shutdown_drains_queued_items_then_returns_none() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("b")
    q.add_after("later", 10)
    q.shutdown()
    q.add("c")  # ignored
    assert q.shutting_down()
    assert q.get() == "a"
    assert q.get() == "b"
    assert q.get() is None  # delayed items are dropped, and get() no longer blocks


def test_shutdown_wakes_blocked_workers() -> None:
    q: WorkQueue[str] = WorkQueue()
    results: list[str | None] = []
    threads = [threading.Thread(target=lambda: results.append(q.get())) for _ in range(3)]
    for t in threads:
        t.start()
    q.shutdown()
    for t in threads:
        t.join(5)
    assert results == [None, None, None]


def test_shutdown_with_drain_waits_for_processing() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    item = q.get(0)
    assert item == "a"
    assert q.shutdown(drain=True, timeout=0.05) is False  # "a" is still being processed
    finished = threading.Event()

    def drain() -> None:
        q.shutdown(drain=True, timeout=5)
        finished.set()

    t = threading.Thread(target=drain)
    t.start()
    assert not finished.wait(0.05)
    q.done(item)
    assert finished.wait(5)
    t.join(5)
