"""The scheduling queue: priority order, unschedulable parking, moves, backoff."""

from __future__ import annotations

from scheduler.queue import SchedulingQueue


def p(prio: int = 0) -> dict:  # type: ignore[type-arg]
    return {"spec": {"priority": prio}}


def test_priority_then_fifo() -> None:
    q = SchedulingQueue()
    q.add("a", p(0))
    q.add("b", p(10))
    q.add("c", p(0))
    assert [q.pop(0.1)[0] for _ in range(3)] == ["b", "a", "c"]  # type: ignore[index]
    assert q.pop(0.01) is None


def test_unschedulable_waits_for_a_move_and_early_pop_when_idle() -> None:
    q = SchedulingQueue(initial_backoff=30)
    q.add("a", p())
    key, _, cycle = q.pop(0.1)  # type: ignore[misc]
    q.failed(key, cycle, unschedulable=True)
    assert q.pop(0.05) is None
    q.move_all()  # still backing off for 30 s, but the queue is idle: popped early
    assert q.pop(0.1) is not None


def test_move_during_attempt_is_not_lost() -> None:
    q = SchedulingQueue(initial_backoff=0.01)
    q.add("a", p())
    key, _, cycle = q.pop(0.1)  # type: ignore[misc]
    q.move_all()  # e.g. a node was added while "a" was being scheduled
    q.failed(key, cycle, unschedulable=True)
    assert q.pending()["unschedulable"] == 0
    assert q.pop(1.0) is not None


def test_error_backoff_is_waited_out() -> None:
    q = SchedulingQueue(initial_backoff=0.2)
    q.add("a", p())
    key, _, cycle = q.pop(0.1)  # type: ignore[misc]
    q.failed(key, cycle, unschedulable=False)
    assert q.pop(0.05) is None
    assert q.pop(1.0) is not None
    q.delete("a")
    assert len(q) == 0
