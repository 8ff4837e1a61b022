"""The scheduler: informers feed the cache and the queue; one loop pops a pending pod,
runs the framework over the cache's nodes, assumes the pod on the chosen node and hands the
bind to a small pool of binders, so the next pod is scheduled while the bind is on the wire.

    s = Scheduler(client)                       # or leader_elect=True for replicas
    s.start()                                   # returns at once; schedules once synced (and leading)
    ...
    s.stop()

A pod that fits nowhere gets a PodScheduled=False/Unschedulable condition and a Warning
FailedScheduling event, and waits in the queue's unschedulable part until a node is added or
changes or a pod goes away (then it is retried, after its backoff).
"""

from __future__ import annotations

import logging
import os
import queue as stdqueue
import random
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from kube.client import Client, Informer, wait_for_cache_sync
from kube.client.errors import ApiError, ClientError
from kube.client.leaderelection import LeaderElector

from .cache import Cache
from .framework import PodInfo, schedule_one
from .metrics import Metrics
from .queue import SchedulingQueue

log = logging.getLogger("kubeling.scheduler")
DEFAULT_SCHEDULER = "default-scheduler"
Obj = dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(pod: Obj) -> str:
    m = pod.get("metadata") or {}
    return f"{m.get('namespace', '')}/{m.get('name', '')}"


def _sched_relevant(pod: Obj) -> tuple[Any, ...]:
    """What of a pending pod can change its scheduling (upstream ignores status-only updates)."""
    m = pod.get("metadata") or {}
    return (pod.get("spec"), m.get("labels"), m.get("annotations"), m.get("deletionTimestamp"))


def _node_relevant(node: Obj) -> tuple[Any, ...]:
    """What of a node can make a pod fit: not the heartbeat timestamps."""
    spec, status = node.get("spec") or {}, node.get("status") or {}
    conds = tuple((c.get("type"), c.get("status")) for c in status.get("conditions") or [])
    return ((node.get("metadata") or {}).get("labels"), spec.get("taints"), spec.get("unschedulable"),
            status.get("allocatable"), conds)


class EventRecorder:
    """core/v1 Events from worker threads, off the scheduling path. Repeats of the same reason and
    message for one object bump `count` instead of making a new Event (upstream's correlator).
    A full backlog drops events rather than slowing scheduling (as upstream's broadcaster)."""

    def __init__(self, client: Client, component: str, instance: str, workers: int = 2,
                 backlog: int = 1000) -> None:
        self.client = client
        self.component = component
        self.instance = instance
        self._q: stdqueue.Queue[tuple[Obj, str, str, str] | None] = stdqueue.Queue(backlog)
        self._last: dict[tuple[str, str], tuple[str, str, int]] = {}  # (uid, reason) -> (name, msg, count)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True, name=f"events-{i}")
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        try:
            self._q.put_nowait((obj, type_, reason, message))
        except stdqueue.Full:
            log.debug("events: backlog full, dropping %s for %s", reason, _key(obj))

    def forget(self, uid: str) -> None:
        with self._lock:
            for k in [k for k in self._last if k[0] == uid]:
                del self._last[k]

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (within timeout), then end the workers."""
        deadline = time.monotonic() + timeout
        for _ in self._threads:
            try:
                self._q.put(None, timeout=max(0.01, deadline - time.monotonic()))
            except stdqueue.Full:
                pass
        for t in self._threads:
            t.join(max(0.01, deadline - time.monotonic()))

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            try:
                self._write(*item)
            except ClientError as e:
                log.info("events: could not record %s for %s: %s", item[2], _key(item[0]), e)
            except Exception:
                log.exception("events: unexpected error")

    def _write(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        ns, uid = str(meta.get("namespace") or "default"), str(meta.get("uid") or "")
        now = _now()
        with self._lock:
            last = self._last.get((uid, reason))
        if last is not None and last[1] == message:
            name, _, count = last
            try:
                self.client.patch("events", name, {"count": count + 1, "lastTimestamp": now}, ns)
                with self._lock:
                    self._last[(uid, reason)] = (name, message, count + 1)
                return
            except ApiError as e:
                if not e.is_not_found():
                    raise
        name = f"{meta.get('name', 'unknown')}.{time.time_ns():x}"
        self.client.create("events", {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", "Pod"),
                               "namespace": ns, "name": meta.get("name"), "uid": uid,
                               "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message, "type": type_,
            "source": {"component": self.component},
            "reportingComponent": self.component, "reportingInstance": self.instance,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1, "action": "Scheduling",
        }, ns)
        with self._lock:
            self._last[(uid, reason)] = (name, message, 1)


class Scheduler:
    def __init__(self, client: Client, *, scheduler_name: str = DEFAULT_SCHEDULER, binders: int = 16,
                 leader_elect: bool = False, identity: str | None = None,
                 lease_namespace: str = "kube-system", lease_name: str = "kube-scheduler",
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 percentage_of_nodes_to_score: int = 0, initial_backoff: float = 1.0, max_backoff: float = 10.0,
                 scheduled_events: bool = True, seed: int | None = None, metrics: Metrics | None = None) -> None:
        self.client = client
        self.scheduler_name = scheduler_name
        self.identity = identity or f"{socket.gethostname()}_{uuid.uuid4()}"
        self.percentage = percentage_of_nodes_to_score
        self.scheduled_events = scheduled_events
        self.cache = Cache()
        self.queue = SchedulingQueue(initial_backoff, max_backoff)
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.watch_queue(self.queue.pending)
        self.rng = random.Random(seed)
        self.pods = Informer(client, "pods", on_add=self._pod_added, on_update=self._pod_updated,
                             on_delete=self._pod_deleted)
        self.nodes = Informer(client, "nodes", on_add=self._node_added, on_update=self._node_updated,
                              on_delete=self._node_deleted)
        self.events = EventRecorder(client, scheduler_name, self.identity)
        self._binders = ThreadPoolExecutor(max_workers=max(1, binders), thread_name_prefix="scheduler-bind")
        self._stop = threading.Event()
        self._loop_stop: threading.Event | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()
        self._starter: threading.Thread | None = None
        self._next_start = 0
        self.scheduled = 0  # pods handed to the binders
        self.bound = 0  # binds the apiserver accepted
        self.elector: LeaderElector | None = None
        if leader_elect:
            self.elector = LeaderElector(client, lease_namespace, lease_name, self.identity,
                                         lease_duration=lease_duration, renew_deadline=renew_deadline,
                                         retry_period=retry_period, on_started_leading=self._start_loop,
                                         on_stopped_leading=self._stop_loop)

    # -- lifecycle --

    def start(self) -> Scheduler:
        """Start the informers; once they have synced, schedule (or run for leadership first)."""
        self.pods.start()
        self.nodes.start()
        self._starter = threading.Thread(target=self._start_when_synced, daemon=True, name="scheduler-start")
        self._starter.start()
        return self

    def _start_when_synced(self) -> None:
        while not self._stop.is_set():
            if wait_for_cache_sync(self.pods, self.nodes, timeout=1.0):
                break
        if self._stop.is_set():
            return
        log.info("scheduler: caches synced nodes=%d pods=%d", len(self.nodes), len(self.pods))
        if self.elector is not None:
            self.elector.start()
        else:
            self._start_loop()

    def stop(self) -> None:
        self._stop.set()
        if self._starter is not None:
            self._starter.join(5)
        if self.elector is not None:
            self.elector.stop()  # steps down: _stop_loop, then releases the lease
        self._stop_loop()
        self._binders.shutdown(wait=True)
        self.events.stop()
        self.pods.stop()
        self.nodes.stop()

    def is_leader(self) -> bool:
        return self.elector.is_leader() if self.elector is not None else self._loop_thread is not None

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        return wait_for_cache_sync(self.pods, self.nodes, timeout=timeout)

    def _start_loop(self) -> None:
        with self._loop_lock:
            if self._loop_thread is not None or self._stop.is_set():
                return
            self.queue.reopen()
            stop = threading.Event()
            self._loop_stop = stop
            self._loop_thread = threading.Thread(target=self._loop, args=(stop,), daemon=True,
                                                 name="scheduler-loop")
            self._loop_thread.start()
        log.info("scheduler: scheduling started identity=%s", self.identity)

    def _stop_loop(self) -> None:
        with self._loop_lock:
            t, stop = self._loop_thread, self._loop_stop
            self._loop_thread = self._loop_stop = None
        if t is None or stop is None:
            return
        stop.set()
        self.queue.close()
        t.join(5)
        log.info("scheduler: scheduling stopped identity=%s", self.identity)

    # -- informer handlers (informer threads; quick) --

    def _responsible(self, pod: Obj) -> bool:
        spec = pod.get("spec") or {}
        return (spec.get("schedulerName") or DEFAULT_SCHEDULER) == self.scheduler_name

    def _pod_added(self, pod: Obj) -> None:
        key = _key(pod)
        if (pod.get("spec") or {}).get("nodeName"):
            self.cache.add_pod(PodInfo.from_pod(pod))
            self.queue.delete(key)
        elif self._responsible(pod) and not (pod.get("metadata") or {}).get("deletionTimestamp"):
            self.queue.add(key, pod)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        key = _key(new)
        spec = new.get("spec") or {}
        if spec.get("nodeName"):
            pi = PodInfo.from_pod(new)
            self.cache.add_pod(pi)
            self.queue.delete(key)
            if not (old.get("spec") or {}).get("nodeName"):
                self.events.forget(pi.uid)
            elif pi.terminal and (old.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                self.queue.move_all()  # its resources are free now
            return
        if not self._responsible(new) or (new.get("metadata") or {}).get("deletionTimestamp"):
            self.queue.delete(key)
            return
        if self.cache.is_assumed(key):
            return  # being bound: the bind's outcome decides
        if _sched_relevant(old) != _sched_relevant(new):
            self.queue.add(key, new)
        else:
            self.queue.update(key, new)

    def _pod_deleted(self, pod: Obj) -> None:
        key = _key(pod)
        had_node = self.cache.node_of(key) is not None
        self.cache.remove_pod(key)
        self.queue.delete(key)
        self.events.forget(str((pod.get("metadata") or {}).get("uid") or ""))
        if had_node:
            self.queue.move_all()

    def _node_added(self, node: Obj) -> None:
        self.cache.set_node(node)
        self.queue.move_all()

    def _node_updated(self, old: Obj, new: Obj) -> None:
        self.cache.set_node(new)
        if _node_relevant(old) != _node_relevant(new):
            self.queue.move_all()

    def _node_deleted(self, node: Obj) -> None:
        self.cache.remove_node(str((node.get("metadata") or {}).get("name") or ""))

    # -- the loop --

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set() and not self._stop.is_set():
            item = self.queue.pop(timeout=0.5)
            if item is None or stop.is_set():
                continue
            key, pod, cycle = item
            t0 = time.perf_counter()
            try:
                self.schedule_pod(key, cycle)
            except Exception:
                log.exception("scheduler: unexpected error scheduling pod=%s", key)
                self.queue.failed(key, cycle, unschedulable=False)
                self.metrics.attempt("error", time.perf_counter() - t0)

    def schedule_pod(self, key: str, cycle: int = 0) -> str | None:
        """One scheduling cycle for the pod `key`: the chosen node (binding in the background) or None."""
        pod = self.pods.get(key)
        if pod is None or (pod.get("spec") or {}).get("nodeName") or (pod.get("metadata") or {}).get(
                "deletionTimestamp"):
            self.queue.delete(key)
            return None
        t0 = time.perf_counter()
        pi = PodInfo.from_pod(pod)
        with self.cache.lock:
            nodes = self.cache.node_list()
            start = self._next_start % len(nodes) if nodes else 0
            res = schedule_one(pi, nodes, self.rng, start, self.percentage)
            if nodes:
                self._next_start = (start + res.evaluated) % len(nodes)
            if res.node is not None:
                self.cache.assume(pi, res.node)
        if res.node is None:
            message = res.message()
            log.debug("scheduler: unschedulable pod=%s reason=%r", key, message)
            self.queue.failed(key, cycle, unschedulable=True)
            self.metrics.attempt("unschedulable", time.perf_counter() - t0)
            self._binders.submit(self._mark_unschedulable, pod, message)
            return None
        self.queue.done(key)
        self.scheduled += 1
        self.metrics.attempt("scheduled", time.perf_counter() - t0)
        self._binders.submit(self._bind, pod, pi, res.node)
        return res.node

    # -- binders (pool threads) --

    def _bind(self, pod: Obj, pi: PodInfo, node: str) -> None:
        try:
            self.client.bind(pod, node)
        except ApiError as e:
            self.cache.forget(pi.key)
            self.metrics.bind_errors.inc()
            if e.is_not_found() or e.is_conflict():
                log.debug("scheduler: bind pod=%s node=%s not done: %s", pi.key, node, e.message)
                current = self.pods.get(pi.key)
                if e.is_conflict() and current is not None and not (current.get("spec") or {}).get("nodeName"):
                    self._retry(pi.key, current)  # a conflict that did not bind it: try again
                return
            log.info("scheduler: bind pod=%s node=%s failed: %s", pi.key, node, e)
            self._retry(pi.key, pod)
            return
        except ClientError as e:
            self.cache.forget(pi.key)
            self.metrics.bind_errors.inc()
            log.info("scheduler: bind pod=%s node=%s failed: %s", pi.key, node, e)
            self._retry(pi.key, pod)
            return
        except Exception:
            self.cache.forget(pi.key)
            self.metrics.bind_errors.inc()
            log.exception("scheduler: bind pod=%s node=%s: unexpected error", pi.key, node)
            self._retry(pi.key, pod)
            return
        self.bound += 1
        log.debug("scheduler: bound pod=%s node=%s", pi.key, node)
        if self.scheduled_events:
            self.events.event(pod, "Normal", "Scheduled", f"Successfully assigned {pi.key} to {node}")

    def _retry(self, key: str, pod: Obj) -> None:
        current = self.pods.get(key)
        if current is None or (current.get("spec") or {}).get("nodeName"):
            return
        self.queue.add(key, current)
        self.queue.failed(key, -1, unschedulable=False)

    def _mark_unschedulable(self, pod: Obj, message: str) -> None:
        meta = pod.get("metadata") or {}
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        self.events.event(pod, "Warning", "FailedScheduling", message)
        cond = next((c for c in (pod.get("status") or {}).get("conditions") or []
                     if c.get("type") == "PodScheduled"), None)
        if cond and cond.get("status") == "False" and cond.get("reason") == "Unschedulable" \
                and cond.get("message") == message:
            return
        new = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
               "lastProbeTime": None,
               "lastTransitionTime": cond.get("lastTransitionTime") if cond and cond.get("status") == "False"
               else _now()}
        try:
            self.client.patch("pods", name, {"status": {"conditions": [new]}}, ns, patch_type="strategic",
                              subresource="status")
        except ClientError as e:
            log.info("scheduler: could not set PodScheduled=False on pod=%s/%s: %s", ns, name, e)


def default_identity() -> str:
    return f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
