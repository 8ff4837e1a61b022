"""Informer: a local, watch-fed cache of one resource, with change notifications.

    pods = Informer(client, "pods", field_selector=f"spec.nodeName={node}", queue=q)
    pods.add_handlers(on_add=..., on_update=..., on_delete=...)
    pods.start()
    if not pods.wait_for_sync(30): ...
    pod = pods.get("default/web-0")

The loop, on its own thread:
1. list (paged) -> replace the cache -> mark synced;
2. watch from the list's resourceVersion with bookmarks; apply each event to the cache, then
   notify handlers and enqueue the object's key ("namespace/name", or "name" if cluster-scoped);
3. when the stream just ends (the server's timeoutSeconds), watch again from the last
   resourceVersion seen, bookmarks included;
4. on a 410 ERROR event (compacted), a broken stream or a failed request: wait a jittered,
   growing backoff, list again and reconcile the cache against the new list, synthesizing
   on_add for new objects, on_update for changed ones and on_delete (with the last state
   known) for objects that vanished. No change is lost, only delayed.

Handlers run on the informer thread, one at a time, in event order; the cache already
reflects the event when they run. They must be quick (hand work to a queue) and must not
mutate the objects they get: those are the cached objects themselves. An exception in a
handler is logged and does not stop the informer.
"""

from __future__ import annotations

import builtins
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from kube.api.resources import ResourceType

from .errors import ApiError, ClientError
from .rest import Client, Obj, Watch, object_key, resolve, resource_version
from .workqueue import WorkQueue

log = logging.getLogger("kubeling.client.informer")

AddHandler = Callable[[Obj], None]
UpdateHandler = Callable[[Obj, Obj], None]
DeleteHandler = Callable[[Obj], None]
HEALTHY_AFTER = 10.0  # seconds a watch must live before past failures are forgiven


class Informer:
    def __init__(self, client: Client, resource: ResourceType | str, *, namespace: str | None = None,
                 label_selector: str | dict[str, str] | None = None,
                 field_selector: str | dict[str, str] | None = None, queue: WorkQueue[str] | None = None,
                 on_add: AddHandler | None = None, on_update: UpdateHandler | None = None,
                 on_delete: DeleteHandler | None = None, page_size: int = 500,
                 watch_timeout: tuple[int, int] = (300, 600), backoff: tuple[float, float] = (0.2, 30.0)) -> None:
        """namespace=None watches every namespace. watch_timeout: each watch asks the server to end the
        stream after a random number of seconds in this range. backoff: (first, max) delay between
        failed attempts, doubled per failure, with jitter."""
        self.client = client
        self.resource = resolve(resource)
        self.namespace = namespace if self.resource.namespaced else None
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        self._queues: list[WorkQueue[str]] = [queue] if queue is not None else []
        self._handlers: list[tuple[AddHandler | None, UpdateHandler | None, DeleteHandler | None]] = []
        if on_add or on_update or on_delete:
            self._handlers.append((on_add, on_update, on_delete))
        self._store: dict[str, Obj] = {}
        self._lock = threading.Lock()  # guards _store and _watch
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Watch | None = None
        self._rv = ""
        self._failures = 0
        self.relists = 0  # how many times the cache was (re)built from a list
        self.watches = 0  # how many watch streams were opened

    # -- configuration --

    def add_handlers(self, on_add: AddHandler | None = None, on_update: UpdateHandler | None = None,
                     on_delete: DeleteHandler | None = None) -> None:
        """Register handlers; only before start(), so every handler sees every object from the start."""
        if self._thread is not None:
            raise RuntimeError("add handlers before starting the informer")
        self._handlers.append((on_add, on_update, on_delete))

    def add_queue(self, queue: WorkQueue[str]) -> None:
        if self._thread is not None:
            raise RuntimeError("add queues before starting the informer")
        self._queues.append(queue)

    # -- lifecycle --

    def start(self) -> Informer:
        if self._thread is not None:
            raise RuntimeError("the informer is already started")
        self._thread = threading.Thread(target=self.run, name=f"informer-{self.resource.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching and wait (up to timeout) for the thread to end. The cache stays readable."""
        self._stop.set()
        with self._lock:
            w = self._watch
        if w is not None:
            w.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def has_synced(self) -> bool:
        return self._synced.is_set()

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        """True once the first list is in the cache; False if timeout passed first or it was stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._synced.is_set():
            if self._stop.is_set():
                return False
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                return False
            self._synced.wait(left)
        return True

    # -- the cache --

    def get(self, key: str) -> Obj | None:
        """The cached object for "namespace/name" (or "name" if cluster-scoped). Do not mutate it."""
        with self._lock:
            return self._store.get(key)

    def get_by_name(self, name: str, namespace: str | None = None) -> Obj | None:
        return self.get(f"{namespace}/{name}" if namespace and self.resource.namespaced else name)

    def list(self) -> list[Obj]:
        with self._lock:
            return list(self._store.values())

    def keys(self) -> builtins.list[str]:
        with self._lock:
            return list(self._store)

    def __len__(self) -> int:
        with self._lock:
            return len(self._store)

    @property
    def resource_version(self) -> str:
        """The last resourceVersion this cache is known to be complete at."""
        return self._rv

    # -- the loop --

    def run(self) -> None:
        """The informer loop, in the calling thread, until stop()."""
        while not self._stop.is_set():
            try:
                self._relist()
            except ClientError as e:
                self._fail(f"list failed: {e}")
                continue
            except Exception:
                log.exception("informer %s: unexpected error in list", self.resource.name)
                self._fail("unexpected error in list")
                continue
            self._watch_loop()

    def _fail(self, why: str) -> None:
        self._failures += 1
        first, cap = self.backoff
        delay = min(first * 2 ** min(self._failures - 1, 20), cap) * random.uniform(0.5, 1.5)
        if not self._stop.is_set():
            log.info("informer %s: %s; retrying in %.2fs", self.resource.name, why, delay)
        self._stop.wait(delay)

    def _relist(self) -> None:
        lst = self.client.list_all(self.resource, self.namespace, label_selector=self.label_selector,
                                   field_selector=self.field_selector, page_size=self.page_size)
        if self._stop.is_set():
            return
        rt = self.resource
        fresh: dict[str, Obj] = {}
        for obj in lst.get("items") or []:
            obj.setdefault("kind", rt.kind)
            obj.setdefault("apiVersion", rt.api_version)
            fresh[object_key(obj)] = obj
        with self._lock:
            old = self._store
            self._store = fresh
        self._rv = str((lst.get("metadata") or {}).get("resourceVersion") or "")
        self.relists += 1
        self._synced.set()
        # Reconcile: tell the handlers what changed while we were not watching.
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None:
                self._notify_add(key, obj)
            elif resource_version(before) != resource_version(obj):
                self._notify_update(key, before, obj)
        for key, obj in old.items():
            if key not in fresh:
                self._notify_delete(key, obj)

    def _watch_loop(self) -> None:
        """Watch from self._rv until the cache must be rebuilt from a list (or we stop)."""
        while not self._stop.is_set():
            timeout = random.randint(*self.watch_timeout)
            w = self.client.watch(self.resource, self.namespace, resource_version=self._rv,
                                  label_selector=self.label_selector, field_selector=self.field_selector,
                                  timeout_seconds=timeout, allow_bookmarks=True)
            with self._lock:
                if self._stop.is_set():
                    return
                self._watch = w
            self.watches += 1
            started, events = time.monotonic(), 0
            try:
                for typ, obj in w:
                    if self._stop.is_set():
                        return
                    events += 1
                    self._apply(typ, obj)
                    if self._failures and time.monotonic() - started > HEALTHY_AFTER:
                        self._failures = 0  # it has been working for a while: the next failure starts small
            except ApiError as e:
                if e.is_gone():
                    self._fail(f"resourceVersion {self._rv} has expired ({e.message}); relisting")
                else:
                    self._fail(f"watch failed: {e}")
                return
            except ClientError as e:
                self._fail(f"watch broke: {e}")
                return
            except Exception:
                log.exception("informer %s: unexpected error in watch", self.resource.name)
                self._fail("unexpected error in watch")
                return
            finally:
                with self._lock:
                    self._watch = None
                w.close()
            if events == 0 and time.monotonic() - started < 1.0 and not self._stop.is_set():
                # A stream that ends at once, again and again, must not spin.
                self._fail("the watch ended at once without events")
                continue
            self._failures = 0  # a healthy stream ended: resume from the last resourceVersion

    def _apply(self, typ: str, obj: Obj) -> None:
        rv = resource_version(obj)
        if typ == "BOOKMARK":
            if rv:
                self._rv = rv
            return
        key = object_key(obj)
        if typ in ("ADDED", "MODIFIED"):
            with self._lock:
                old = self._store.get(key)
                self._store[key] = obj
            if rv:
                self._rv = rv
            if old is None:
                self._notify_add(key, obj)
            else:
                self._notify_update(key, old, obj)
        elif typ == "DELETED":
            with self._lock:
                old = self._store.pop(key, None)
            if rv:
                self._rv = rv
            if old is not None:
                self._notify_delete(key, obj)
        else:
            log.warning("informer %s: ignoring a watch event of unknown type %r", self.resource.name, typ)

    # -- notifications --

    def _enqueue(self, key: str) -> None:
        for q in self._queues:
            q.add(key)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("informer %s: a handler failed", self.resource.name)

    def _notify_add(self, key: str, obj: Obj) -> None:
        for on_add, _, _ in self._handlers:
            if on_add is not None:
                self._call(on_add, obj)
        self._enqueue(key)

    def _notify_update(self, key: str, old: Obj, new: Obj) -> None:
        for _, on_update, _ in self._handlers:
            if on_update is not None:
                self._call(on_update, old, new)
        self._enqueue(key)

    def _notify_delete(self, key: str, obj: Obj) -> None:
        for _, _, on_delete in self._handlers:
            if on_delete is not None:
                self._call(on_delete, obj)
        self._enqueue(key)


def wait_for_cache_sync(*informers: Informer, timeout: float | None = None) -> bool:
    """True once every informer has synced (house rule 8: act only on complete knowledge)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for inf in informers:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not inf.wait_for_sync(left):
            return False
    return True
