"""The shape every controller shares: informers feed keys into one work queue,
workers pop a key and reconcile it from the caches (level-triggered: the key
says what to look at, never what changed), failures are retried with per-key
backoff. Nothing is reconciled before every informer has synced (house rule 8).

    class ReplicaSetController(Controller):
        name = "replicaset"

        def setup(self) -> None:
            self.rs = self.watch("replicasets.apps")                     # enqueues its own keys
            self.pods = self.watch("pods", key_fn=self.owner_key)        # enqueues the owner's key

        def reconcile(self, key: str) -> None:
            ...
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kube.client import Client, Informer, WorkQueue
from kube.client.errors import ApiError, ClientError

from .metrics import Metrics

log = logging.getLogger("kubeling.controllers")

KeyFn = Callable[[dict[str, Any]], "str | list[str] | None"]


def meta_key(obj: dict[str, Any]) -> str:
    m = obj.get("metadata") or {}
    return f"{m['namespace']}/{m['name']}" if m.get("namespace") else str(m.get("name", ""))


def split_key(key: str) -> tuple[str | None, str]:
    ns, sep, name = key.partition("/")
    return (ns, name) if sep else (None, ns)


def controller_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The ownerReference with controller: true, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


class _MeteredQueue(WorkQueue[str]):
    """A WorkQueue counting the keys it really takes in (duplicates of a queued key are not adds)."""

    adds: Any = None

    def _add_locked(self, item: str) -> None:
        if self.adds is not None and not self._shutting_down and item not in self._dirty:
            self.adds.inc()
        super()._add_locked(item)


class Controller:
    name = "controller"
    workers = 2
    resync_period = 0.0  # > 0: every key of the primary informer is re-enqueued this often

    def __init__(self, client: Client, *, workers: int | None = None) -> None:
        self.client = client
        self.queue: WorkQueue[str] = _MeteredQueue(name=self.name)
        self._work_duration: Any = None
        self._retries: Any = None
        self.informers: list[Informer] = []
        self.primary: Informer | None = None
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        if workers is not None:
            self.workers = workers
        self.setup()

    # -- to override -------------------------------------------------------------

    def setup(self) -> None:
        """Create informers with self.watch(...)."""

    def reconcile(self, key: str) -> None:
        """Make the world match the desired state for key. Raise to retry with backoff."""
        raise NotImplementedError

    # -- wiring ------------------------------------------------------------------

    def watch(self, resource: str, *, key_fn: KeyFn | None = None, primary: bool | None = None,
              **informer_args: Any) -> Informer:
        """An informer whose changes enqueue key_fn(obj) (default: the object's own key)."""
        inf = Informer(self.client, resource, **informer_args)
        fn: KeyFn = key_fn or meta_key

        def enqueue(obj: dict[str, Any]) -> None:
            keys = fn(obj)
            for k in [keys] if isinstance(keys, str) else (keys or []):
                if k:
                    self.queue.add(k)

        def enqueue_both(old: dict[str, Any], new: dict[str, Any]) -> None:
            enqueue(old)  # e.g. a pod that moved from one owner to another concerns both
            enqueue(new)

        inf.add_handlers(on_add=enqueue, on_update=enqueue_both, on_delete=enqueue)
        self.informers.append(inf)
        if primary or (primary is None and self.primary is None and key_fn is None):
            self.primary = inf
        return inf

    def instrument(self, metrics: Metrics) -> None:
        """Count this controller's queue into metrics (call before start())."""
        if isinstance(self.queue, _MeteredQueue):
            self.queue.adds = metrics.adds.labels(self.name)
        metrics.depth.labels(self.name).set_function(lambda: float(len(self.queue)))
        self._work_duration = metrics.work_duration.labels(self.name)
        self._retries = metrics.retries.labels(self.name)

    def start(self, sync_timeout: float = 60.0) -> bool:
        """Start informers and, once all have synced, the workers. False if sync timed out."""
        for inf in self.informers:
            inf.start()
        for inf in self.informers:
            if not inf.wait_for_sync(sync_timeout):
                log.warning("controller=%s informer did not sync in %.0fs", self.name, sync_timeout)
                return False
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.resync_period > 0 and self.primary is not None:
            t = threading.Thread(target=self._resync, name=f"{self.name}-resync", daemon=True)
            t.start()
            self._threads.append(t)
        log.info("controller=%s started workers=%d", self.name, self.workers)
        return True

    def stop(self) -> None:
        self.stop_event.set()
        self.queue.shutdown()
        for inf in self.informers:
            inf.stop()
        for t in self._threads:
            t.join(5)

    def _resync(self) -> None:
        assert self.primary is not None
        while not self.stop_event.wait(self.resync_period):
            for k in self.primary.keys():
                self.queue.add(k)

    def _work(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            t0 = time.perf_counter()
            try:
                self.reconcile(key)
            except (ApiError, ClientError) as e:
                log.info("controller=%s key=%s retry: %s", self.name, key, e)
                self._retry(key)
            except Exception:
                log.exception("controller=%s key=%s failed", self.name, key)
                self._retry(key)
            else:
                self.queue.forget(key)
            finally:
                if self._work_duration is not None:
                    self._work_duration.observe(time.perf_counter() - t0)
                self.queue.done(key)

    def _retry(self, key: str) -> None:
        if self._retries is not None:
            self._retries.inc()
        self.queue.add_rate_limited(key)
