"""One behaviour suite for every store backend (SQLite and etcd): compare-and-swap,
revisions never reused, list paging at a revision, watch replay then live,
compaction, concurrent writes in order. Revisions are relative to the store's
revision when the test began (etcd's first write is revision 2, and the etcd is
shared by the module's tests, each under its own key prefix).

The etcd variant runs against a throwaway etcd on free 127.0.0.1 ports; it is
skipped only when the etcd binary is missing. Below the shared cases come a few
etcd-only ones: reconnecting watches, several endpoints, URL parsing."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from etcd_proc import ETCD_BINARY, EtcdServer

from apiserver.store.base import (
    Compacted,
    Event,
    KeyExists,
    KeyNotFound,
    RevisionConflict,
    StoreError,
    StoreUnavailable,
)
from apiserver.store.etcd import EtcdStore, parse_etcd_url
from apiserver.store.sqlite import SQLiteStore, open_store


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


class Backend(Protocol):
    name: str

    async def open(self) -> Any:
        """A new store instance on the backend's state (the same state every call)."""
        ...


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    async def open(self) -> SQLiteStore:
        return SQLiteStore(self.path)


class EtcdBackend:
    name = "etcd"

    def __init__(self, server: EtcdServer, prefix: str) -> None:
        self.server = server
        self.url = f"{server.store_url}?prefix={prefix}"

    async def open(self) -> EtcdStore:
        store = open_store(self.url, "/nonexistent")
        assert isinstance(store, EtcdStore)
        await store.connect()
        return store


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[EtcdServer]:
    if not os.path.exists(ETCD_BINARY):
        pytest.skip(f"etcd binary {ETCD_BINARY} is missing (apt-get install etcd-server)")
    with EtcdServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "etcd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SQLiteBackend(tmp_path / "s.db")
    server = request.getfixturevalue("etcd_server")
    return EtcdBackend(server, f"/t-{uuid.uuid4().hex[:8]}")


async def collect(store: Any, prefix: str, rev: int, n: int, timeout: float = 10) -> list[Event]:
    out: list[Event] = []

    async def go() -> None:
        async for ev in store.watch(prefix, rev):
            out.append(ev)
            if len(out) == n:
                return

    await asyncio.wait_for(go(), timeout)
    return out


# -- the shared cases ------------------------------------------------------


def test_create_update_delete_and_cas(backend: Backend) -> None:
    async def main() -> None:
        s = await backend.open()
        base = s.revision
        a = await s.create("/r/a", b"1")
        assert (a.create_rev, a.mod_rev) == (base + 1, base + 1)
        with pytest.raises(KeyExists):
            await s.create("/r/a", b"x")
        b = await s.update("/r/a", b"2", base + 1)
        assert b.mod_rev == base + 2 and b.create_rev == base + 1
        with pytest.raises(RevisionConflict) as conflict:
            await s.update("/r/a", b"3", base + 1)
        assert conflict.value.actual == base + 2
        with pytest.raises(KeyNotFound):
            await s.update("/r/nope", b"3", 0)
        with pytest.raises(RevisionConflict):
            await s.delete("/r/a", base + 1)
        d = await s.delete("/r/a", base + 2)
        assert d.mod_rev == base + 3 and d.value == b"2" and d.create_rev == base + 1
        with pytest.raises(KeyNotFound):
            await s.delete("/r/a")
        assert await s.get("/r/a") is None
        c = await s.create("/r/c", b"x")
        assert (await s.update("/r/c", b"y", 0)).mod_rev == c.mod_rev + 1  # 0: unconditional
        got = await s.get("/r/c")
        assert got is not None and got.value == b"y" and got.create_rev == c.create_rev
        assert s.revision == base + 5
        await s.close()

    run(main())


def test_revisions_never_reused_after_reopen(backend: Backend) -> None:
    """SQLite: across a restart of the store. etcd: across a new client connection."""
    async def main() -> None:
        s = await backend.open()
        base = s.revision
        await s.create("/r/a", b"1")
        await s.delete("/r/a")
        await s.close()
        s = await backend.open()
        assert s.revision == base + 2
        kv = await s.create("/r/a", b"1")
        assert kv.mod_rev == base + 3 and kv.create_rev == base + 3
        await s.close()

    run(main())


def test_list_prefix_paging_at_a_revision(backend: Backend) -> None:
    async def main() -> None:
        s = await backend.open()
        base = s.revision
        for name in ("a", "b", "c", "d"):
            await s.create(f"/r/ns1/{name}", name.encode())
        await s.create("/r/ns10/x", b"x")  # must not show up under /r/ns1/
        page = await s.list("/r/ns1/", limit=3)
        assert [kv.key for kv in page.items] == ["/r/ns1/a", "/r/ns1/b", "/r/ns1/c"] and page.more
        assert page.revision == base + 5
        assert [kv.mod_rev for kv in page.items] == [base + 1, base + 2, base + 3]
        rest = await s.list("/r/ns1/", start_after="/r/ns1/c", limit=3)
        assert [kv.key for kv in rest.items] == ["/r/ns1/d"] and not rest.more
        everything = await s.list("/r/")
        assert len(everything.items) == 5 and not everything.more and everything.revision == base + 5
        exact = await s.list("/r/ns1/", limit=4)
        assert len(exact.items) == 4 and not exact.more
        await s.close()

    run(main())


def test_watch_replays_after_reopen_then_goes_live(backend: Backend) -> None:
    async def main() -> None:
        s = await backend.open()
        base = s.revision
        await s.create("/r/a", b"1")
        await s.update("/r/a", b"2", 0)
        await s.create("/other/z", b"z")
        await s.delete("/r/a")
        await s.close()
        s = await backend.open()
        task = asyncio.create_task(collect(s, "/r/", base + 1, 3))
        await s.create("/r/b", b"3")  # live or replayed, it comes exactly once, in order
        evs = await task
        assert [(e.type, e.key, e.value, e.rev) for e in evs] == [
            ("MODIFIED", "/r/a", b"2", base + 2), ("DELETED", "/r/a", b"2", base + 4),
            ("ADDED", "/r/b", b"3", base + 5)]
        live = asyncio.create_task(collect(s, "/r/", base + 5, 1))
        await s.update("/r/b", b"4", base + 5)
        (ev,) = await live
        assert (ev.type, ev.value, ev.rev) == ("MODIFIED", b"4", base + 6)
        await s.close()

    run(main())


def test_compacted_revision_raises(backend: Backend) -> None:
    async def main() -> None:
        s = await backend.open()
        base = s.revision
        for i in range(10):
            await s.create(f"/r/{i}", b"v")
        await s.compact(base + 6)
        assert s.compacted_revision == base + 6
        with pytest.raises(Compacted) as gone:
            await collect(s, "/r/", base + 3, 1)
        assert gone.value.compacted == base + 6
        evs = await collect(s, "/r/", base + 6, 4)
        assert [e.rev for e in evs] == [base + 7, base + 8, base + 9, base + 10]
        await s.compact(base + 2)  # older than the mark: nothing to do
        assert s.compacted_revision == base + 6
        await s.close()
        s = await backend.open()  # a new instance learns the mark from the backend
        assert s.compacted_revision == base + 6
        await s.close()

    run(main())


def test_concurrent_writes_stay_ordered(backend: Backend) -> None:
    async def main() -> None:
        s = await backend.open()
        base = s.revision
        kvs = await asyncio.gather(*(s.create(f"/r/{i:03d}", b"v") for i in range(200)))
        assert sorted(kv.mod_rev for kv in kvs) == list(range(base + 1, base + 201))
        evs = await collect(s, "/r/", base, 200)
        assert [e.rev for e in evs] == list(range(base + 1, base + 201))
        assert {e.key for e in evs} == {kv.key for kv in kvs}
        assert s.revision == base + 200
        await s.close()

    run(main())


# -- etcd only ---------------------------------------------------------------


@pytest.fixture
def etcd_backend(etcd_server: EtcdServer) -> EtcdBackend:
    return EtcdBackend(etcd_server, f"/t-{uuid.uuid4().hex[:8]}")


def test_etcd_watch_survives_an_etcd_restart_without_loss_or_duplicates(etcd_backend: EtcdBackend) -> None:
    async def main() -> None:
        s = await etcd_backend.open()
        base = s.revision
        got: list[Event] = []

        async def watch() -> None:
            async for ev in s.watch("/r/", base):
                got.append(ev)
                if len(got) == 6:
                    return

        task = asyncio.create_task(watch())
        for i in range(3):
            await s.create(f"/r/{i}", b"before")
        while len(got) < 3:  # poll (bounded by run()'s timeout)
            await asyncio.sleep(0.01)
        await asyncio.to_thread(etcd_backend.server.restart)  # SIGKILL, then the same data and ports
        for i in range(3, 6):
            await s.create(f"/r/{i}", b"after")  # the channel reconnects
        await asyncio.wait_for(task, 20)
        assert [e.rev for e in got] == list(range(base + 1, base + 7))
        assert [e.value for e in got] == [b"before"] * 3 + [b"after"] * 3
        await s.close()

    run(main())


def test_etcd_two_stores_one_etcd(etcd_backend: EtcdBackend) -> None:
    """Two apiservers' stores: a write through one reaches the other's watch; a compaction
    made by one is reported by the other's watch even though it had not heard of it."""
    async def main() -> None:
        a, b = await etcd_backend.open(), await etcd_backend.open()
        base = a.revision
        task = asyncio.create_task(collect(b, "/r/", base, 1))
        kv = await a.create("/r/x", b"1")
        (ev,) = await task
        assert (ev.type, ev.key, ev.rev) == ("ADDED", "/r/x", kv.mod_rev)
        assert b.revision >= kv.mod_rev
        await a.update("/r/x", b"2", kv.mod_rev)
        await a.update("/r/x", b"3", 0)
        await a.compact(a.revision)
        assert b.compacted_revision < a.compacted_revision
        with pytest.raises(Compacted):
            await collect(b, "/r/", base, 1)
        assert b.compacted_revision == a.compacted_revision
        with pytest.raises(RevisionConflict):
            await b.update("/r/x", b"4", kv.mod_rev)
        await a.close()
        await b.close()

    run(main())


def test_etcd_several_endpoints_fail_over(etcd_server: EtcdServer) -> None:
    async def main() -> None:
        from apiserver_proc import free_port

        dead = free_port()
        s = open_store(f"etcd://127.0.0.1:{dead},{etcd_server.endpoint}?prefix=/multi", "/x")
        assert isinstance(s, EtcdStore)
        await s.connect()
        kv = await s.create(f"/r/{uuid.uuid4().hex}", b"1")
        assert kv.mod_rev == s.revision
        await s.close()

    run(main())


def test_etcd_unreachable_is_one_clear_error() -> None:
    from apiserver_proc import free_port

    async def main() -> None:
        s = open_store(f"etcd://127.0.0.1:{free_port()}?timeout=1", "/x")
        assert isinstance(s, EtcdStore)
        with pytest.raises(StoreUnavailable, match="cannot reach etcd at 127.0.0.1:"):
            await s.connect()
        await s.close()

    run(main())


def test_store_urls() -> None:
    o = parse_etcd_url("etcd://10.0.0.1:2379,etcd2,[::1]:2380/kube?cacert=/ca.pem&cert=/c.pem&key=/k.pem")
    assert o.endpoints == [("10.0.0.1", 2379), ("etcd2", 2379), ("::1", 2380)]
    assert (o.prefix, o.cacert, o.cert, o.key, o.tls) == ("/kube", "/ca.pem", "/c.pem", "/k.pem", True)
    assert parse_etcd_url("etcd://h:1?prefix=/p").prefix == "/p"
    assert not parse_etcd_url("etcd://h:1").tls
    for bad in ("etcd://", "etcd://h:x", "etcd://h:1?cert=/c.pem", "etcd://h:1?bogus=1", "redis://h:1"):
        with pytest.raises(StoreError):
            parse_etcd_url(bad)
    with pytest.raises(StoreError):
        open_store("sqlite://relative.db", "/tmp")
    with pytest.raises(StoreError):
        open_store("memcached://h", "/tmp")


def test_migrate_sqlite_to_etcd_and_rerun(tmp_path: Path, etcd_backend: EtcdBackend) -> None:
    from apiserver.store.migrate import migrate

    async def main() -> None:
        src = SQLiteStore(str(tmp_path / "src.db"))
        for i in range(1203):  # more than two pages
            await src.create(f"/registry/configmaps/default/cm{i:04d}", f"v{i}".encode())
        await src.create("/other/x", b"not copied")
        await src.close()
        url = f"sqlite://{tmp_path}/src.db"
        assert await migrate(url, etcd_backend.url) == (1203, 0, 0)
        assert await migrate(url, etcd_backend.url) == (0, 1203, 0)  # re-run: nothing twice
        dst = await etcd_backend.open()
        got = await dst.list("/")
        assert len(got.items) == 1203 and got.items[7].value == b"v7"
        await dst.update(got.items[0].key, b"changed", 0)
        with pytest.raises(StoreError, match="--overwrite"):
            await migrate(url, etcd_backend.url)
        assert await migrate(url, etcd_backend.url, overwrite=True) == (0, 1202, 1)
        await dst.close()

    run(main())
