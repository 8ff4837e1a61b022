"""An informer inside the apiserver: a few resources' objects, mirrored in memory from the store.

    mirror = StoreMirror(registry.store, {"rolebindings": policy, "pods": graph, ...})
    task = asyncio.create_task(mirror.run())
    await mirror.wait_synced()
    await mirror.wait_fresh(0.5)     # caught up with every write committed before this call?

The authorizers read their indexes on every request, so they must never touch the store: this
lists each resource once and then follows ONE watch of the whole registry (every write has a
revision under /registry/, so the mirror's revision tracks the store's exactly and `wait_fresh`
can tell "not allowed" from "not seen yet" — a RoleBinding created a moment ago takes effect for
the very next request). A compacted watch or a store outage relists, as client informers do; the
sinks see `reset` with the fresh list, then `put`/`delete` per event.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import orjson

from kube.api.resources import RESOURCES

from ..registry import collection_prefix, decode
from ..store.base import KV, Compacted, Store, StoreError

log = logging.getLogger("kubeling.apiserver.authcache")

WATCH_PREFIX = "/registry/"
RETRY_SECONDS = 1.0


class Sink(Protocol):
    def reset(self, resource: str, objs: list[dict[str, Any]]) -> None: ...

    def put(self, resource: str, obj: dict[str, Any]) -> None: ...

    def delete(self, resource: str, obj: dict[str, Any]) -> None: ...


def _prefix(resource: str) -> str:
    for rt in RESOURCES:
        if rt.name == resource:
            return collection_prefix(rt, None)
    raise ValueError(f"unknown resource {resource!r}")


class StoreMirror:
    def __init__(self, store: Store, sinks: dict[str, Sink]) -> None:
        self.store = store
        self._sinks = {_prefix(r): (r, s) for r, s in sinks.items()}
        self.revision = 0  # every committed write up to here has been applied
        self._synced = asyncio.Event()
        self._advanced = asyncio.Event()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_fresh(self, timeout: float) -> bool:
        """Wait until every write committed before this call has been applied (bounded)."""
        target = self.store.revision
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.revision < target or not self.synced:
            left = deadline - loop.time()
            if left <= 0:
                return False
            event = self._advanced
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                return False
        return True

    def _advance(self, rev: int) -> None:
        if rev > self.revision:
            self.revision = rev
            event, self._advanced = self._advanced, asyncio.Event()
            event.set()

    async def run(self) -> None:
        """List, then watch; relist after a compaction or a store outage. Runs until cancelled."""
        while True:
            try:
                await self._list_and_watch()
            except asyncio.CancelledError:
                raise
            except Compacted as e:
                log.info("auth cache relists after compaction: %s", e)
            except StoreError as e:
                log.warning("auth cache lost the store, relisting in %.0fs: %s", RETRY_SECONDS, e)
                await asyncio.sleep(RETRY_SECONDS)
            except Exception:  # a bug must not leave authorization on a frozen cache silently
                log.exception("auth cache failed, relisting")
                await asyncio.sleep(RETRY_SECONDS)

    async def _list_and_watch(self) -> None:
        listed_at: dict[str, int] = {}
        for prefix, (resource, sink) in self._sinks.items():
            items: list[KV] = []
            start_after = ""
            rev = 0
            while True:  # paged: one revision for the whole list comes from the first page
                page = await self.store.list(prefix, start_after=start_after, limit=1000)
                rev = rev or page.revision
                items.extend(page.items)
                if not page.more or not page.items:
                    break
                start_after = page.items[-1].key
            sink.reset(resource, [decode(kv) for kv in items])
            listed_at[prefix] = rev
        start = min(listed_at.values(), default=self.store.revision)
        self.revision = start  # the watch replays what happened between the lists
        self._synced.set()
        async for ev in self.store.watch(WATCH_PREFIX, start):
            for prefix, (resource, sink) in self._sinks.items():
                if ev.key.startswith(prefix) and ev.rev > listed_at[prefix]:
                    obj = orjson.loads(ev.value)
                    obj.setdefault("metadata", {})["resourceVersion"] = str(ev.rev)
                    if ev.type == "DELETED":
                        sink.delete(resource, obj)
                    else:
                        sink.put(resource, obj)
                    break
            self._advance(ev.rev)
