"""The SQLite store on its own: compare-and-swap, revisions, watch replay and compaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from apiserver.store.base import Compacted, Event, KeyExists, KeyNotFound, RevisionConflict
from apiserver.store.sqlite import SQLiteStore, open_store


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def collect(store: SQLiteStore, prefix: str, rev: int, n: int) -> list[Event]:
    out: list[Event] = []

    async def go() -> None:
        async for ev in store.watch(prefix, rev):
            out.append(ev)
            if len(out) == n:
                return

    await asyncio.wait_for(go(), 5)
    return out


def test_create_update_delete_and_cas(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStore(str(tmp_path / "s.db"))
        a = await s.create("/r/a", b"1")
        assert (a.create_rev, a.mod_rev) == (1, 1)
        with pytest.raises(KeyExists):
            await s.create("/r/a", b"x")
        b = await s.update("/r/a", b"2", 1)
        assert b.mod_rev == 2 and b.create_rev == 1
        with pytest.raises(RevisionConflict):
            await s.update("/r/a", b"3", 1)
        with pytest.raises(KeyNotFound):
            await s.update("/r/nope", b"3", 0)
        d = await s.delete("/r/a", 2)
        assert d.mod_rev == 3 and d.value == b"2"
        with pytest.raises(KeyNotFound):
            await s.delete("/r/a")
        assert await s.get("/r/a") is None
        assert s.revision == 3
        await s.close()

    run(main())


def test_revisions_never_reused_after_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")

    async def first() -> None:
        s = SQLiteStore(path)
        await s.create("/r/a", b"1")
        await s.delete("/r/a")
        await s.close()

    async def second() -> None:
        s = SQLiteStore(path)
        assert s.revision == 2
        kv = await s.create("/r/a", b"1")
        assert kv.mod_rev == 3
        await s.close()

    run(first())
    run(second())


def test_list_prefix_paging(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStore(str(tmp_path / "s.db"))
        for name in ("a", "b", "c", "d"):
            await s.create(f"/r/ns1/{name}", name.encode())
        await s.create("/r/ns10/x", b"x")  # must not show up under /r/ns1/
        page = await s.list("/r/ns1/", limit=3)
        assert [kv.key for kv in page.items] == ["/r/ns1/a", "/r/ns1/b", "/r/ns1/c"] and page.more
        rest = await s.list("/r/ns1/", start_after="/r/ns1/c", limit=3)
        assert [kv.key for kv in rest.items] == ["/r/ns1/d"] and not rest.more
        assert page.revision == 5
        await s.close()

    run(main())


def test_watch_replays_from_disk_after_reopen_then_goes_live(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")

    async def first() -> None:
        s = SQLiteStore(path)
        await s.create("/r/a", b"1")
        await s.update("/r/a", b"2", 0)
        await s.create("/other/z", b"z")
        await s.delete("/r/a")
        await s.close()

    async def second() -> None:
        s = SQLiteStore(path)
        task = asyncio.create_task(collect(s, "/r/", 1, 3))
        await asyncio.sleep(0.05)
        await s.create("/r/b", b"3")
        evs = await task
        assert [(e.type, e.key, e.rev) for e in evs] == [
            ("MODIFIED", "/r/a", 2), ("DELETED", "/r/a", 4), ("ADDED", "/r/b", 5)]
        await s.close()

    run(first())
    run(second())


def test_compacted_revision_raises(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStore(str(tmp_path / "s.db"))
        for i in range(10):
            await s.create(f"/r/{i}", b"v")
        await s.compact(6)
        assert s.compacted_revision == 6
        with pytest.raises(Compacted):
            await collect(s, "/r/", 3, 1)
        evs = await collect(s, "/r/", 6, 4)
        assert [e.rev for e in evs] == [7, 8, 9, 10]
        await s.close()

    run(main())


def test_concurrent_writes_share_commits_and_stay_ordered(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStore(str(tmp_path / "s.db"))
        kvs = await asyncio.gather(*(s.create(f"/r/{i:03d}", b"v") for i in range(200)))
        assert sorted(kv.mod_rev for kv in kvs) == list(range(1, 201))
        evs = await collect(s, "/r/", 0, 200)
        assert [e.rev for e in evs] == list(range(1, 201))
        await s.close()

    run(main())


def test_bad_store_url(tmp_path: Path) -> None:
    from apiserver.store.base import StoreError

    with pytest.raises(StoreError):
        open_store("etcd://", str(tmp_path))  # no endpoint
    with pytest.raises(StoreError):
        open_store("redis://nowhere", str(tmp_path))
    with pytest.raises(StoreError):
        open_store("sqlite://relative.db", str(tmp_path))
