"""The SQLite store: durable, one writer, watchers woken on commit.

Layout: ``kv`` holds the live objects, ``events`` one row per committed change
(kept until compaction, so a watcher can resume across a restart), ``meta`` the
revision counter and the compaction mark. Each write puts its object row, its
event row and the new revision in one transaction; the caller's future is
resolved only after COMMIT has returned (WAL + synchronous=FULL: the commit is
on disk). One writer thread owns the write connection and commits whatever
writes are queued together in one transaction (group commit): concurrent
clients share an fsync, a lone client pays exactly one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .base import (
    KV,
    Compacted,
    Event,
    EventType,
    KeyExists,
    KeyNotFound,
    ListResult,
    RevisionConflict,
    StoreError,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from .etcd import EtcdStore

log = logging.getLogger("kubeling.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    rev INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    type TEXT NOT NULL,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta(name, value) VALUES ('revision', 0), ('compacted', 0);
"""

HISTORY_IN_MEMORY = 20_000  # recent events kept in memory for fast watch resumes
WATCHER_BACKLOG = 100_000  # a watcher this far behind is cut off (it re-lists)
MAX_BATCH = 256  # writes committed together at most


def prefix_end(prefix: str) -> str:
    """The smallest string greater than every string starting with prefix."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff"


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


@dataclass
class _Op:
    kind: str  # create | update | delete | compact
    key: str
    value: bytes = b""
    expected_rev: int = 0
    future: Future[Any] = field(default_factory=Future)


@dataclass(eq=False)
class _Watcher:
    prefix: str
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)


Batch = list[_Op]
Outcomes = list[tuple[_Op, Any, BaseException | None]]
Events = list[Event]


class SQLiteStore:
    def __init__(self, path: str, *, check_integrity: bool = True) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise StoreError(f"data directory {directory} does not exist")
        try:
            self._wconn = _connect(path)
            self._wconn.executescript(SCHEMA)
            result = self._wconn.execute("PRAGMA quick_check").fetchone()[0] if check_integrity else "ok"
        except sqlite3.Error as e:
            raise StoreError(f"cannot open SQLite store {path}: {e}") from e
        if result != "ok":
            self._wconn.close()
            raise StoreError(f"SQLite store {path} failed its integrity check: {result}; restore it from a "
                             f"backup or move it away to start empty")
        self._rconn = _connect(path)  # reads on the event loop's thread
        self._local = threading.local()  # reads in the executor's threads
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-read")
        rev, compacted = self._read_meta(self._wconn)
        top = self._wconn.execute(
            "SELECT max(coalesce((SELECT max(rev) FROM events), 0), coalesce((SELECT max(mod_rev) FROM kv), 0))"
        ).fetchone()[0]
        if top > rev:  # cannot happen with one transaction per write; repair rather than reuse revisions
            log.warning("store revision %d behind data %d; advancing", rev, top)
            rev = top
            self._wconn.execute("UPDATE meta SET value=? WHERE name='revision'", (rev,))
        self._wrev = rev  # the writer thread's counter
        self._rev = rev  # what watchers and readers have been told (event loop thread)
        self._compacted = compacted
        self._history: deque[Event] = deque(maxlen=HISTORY_IN_MEMORY)
        self._watchers: set[_Watcher] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._writer.start()

    # -- properties -------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._rev

    @property
    def compacted_revision(self) -> int:
        return self._compacted

    @staticmethod
    def _read_meta(conn: sqlite3.Connection) -> tuple[int, int]:
        rows = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        return int(rows["revision"]), int(rows["compacted"])

    # -- reads ------------------------------------------------------------

    async def get(self, key: str) -> KV | None:
        row = self._rconn.execute(
            "SELECT key, value, create_rev, mod_rev FROM kv WHERE key=?", (key,)
        ).fetchone()
        return KV(*row) if row else None

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path)
        return conn

    def _list_sync(self, prefix: str, start_after: str, limit: int) -> ListResult:
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            rev, _ = self._read_meta(conn)
            lo = max(prefix, start_after)
            sql = "SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ? AND key < ? AND key > ? ORDER BY key"
            args: tuple[Any, ...] = (lo, prefix_end(prefix), start_after)
            if limit > 0:
                sql += " LIMIT ?"
                args += (limit + 1,)
            rows = conn.execute(sql, args).fetchall()
        finally:
            conn.execute("COMMIT")
        more = limit > 0 and len(rows) > limit
        if more:
            rows = rows[:limit]
        return ListResult([KV(*r) for r in rows], rev, more)

    async def list(self, prefix: str, *, start_after: str = "", limit: int = 0) -> ListResult:
        loop = asyncio.get_running_loop()
        # The list may be read at a revision newer than watchers have been told
        # about; a watch from it still works: those events are skipped as old.
        return await loop.run_in_executor(self._readers, self._list_sync, prefix, start_after, limit)

    # -- writes -----------------------------------------------------------

    async def _submit(self, op: _Op) -> Any:
        if self._closed:
            raise StoreUnavailable("store is closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._ops.put(op)
        return await asyncio.wrap_future(op.future)

    async def create(self, key: str, value: bytes) -> KV:
        result: KV = await self._submit(_Op("create", key, value))
        return result

    async def update(self, key: str, value: bytes, expected_rev: int) -> KV:
        result: KV = await self._submit(_Op("update", key, value, expected_rev))
        return result

    async def delete(self, key: str, expected_rev: int = 0) -> KV:
        result: KV = await self._submit(_Op("delete", key, b"", expected_rev))
        return result

    async def compact(self, rev: int) -> None:
        await self._submit(_Op("compact", "", b"", rev))

    def _write_loop(self) -> None:
        conn = self._wconn
        while True:
            op = self._ops.get()
            if op is None:
                return
            batch = [op]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._ops.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._ops.put(None)
                    break
                batch.append(nxt)
            self._commit_batch(conn, batch)

    def _commit_batch(self, conn: sqlite3.Connection, batch: Batch) -> None:
        outcomes: Outcomes = []
        events: Events = []
        compact_to = 0
        start_rev = self._wrev
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                try:
                    if op.kind == "compact":
                        compact_to = max(compact_to, self._do_compact(conn, op.expected_rev))
                        outcomes.append((op, None, None))
                        continue
                    kv, ev = self._apply(conn, op)
                    events.append(ev)
                    outcomes.append((op, kv, None))
                except StoreError as e:
                    outcomes.append((op, None, e))
            if self._wrev != start_rev:
                conn.execute("UPDATE meta SET value=? WHERE name='revision'", (self._wrev,))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            log.error("store commit failed: %s", e)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._wrev = start_rev
            err = StoreUnavailable(f"store write failed: {e}")
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(err)
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            self._resolve(outcomes, events, compact_to)
        else:
            loop.call_soon_threadsafe(self._resolve, outcomes, events, compact_to)

    def _apply(self, conn: sqlite3.Connection, op: _Op) -> tuple[KV, Event]:
        row = conn.execute("SELECT value, create_rev, mod_rev FROM kv WHERE key=?", (op.key,)).fetchone()
        etype: EventType
        if op.kind == "create":
            if row is not None:
                raise KeyExists(op.key)
            self._wrev += 1
            rev = self._wrev
            conn.execute("INSERT INTO kv(key, value, create_rev, mod_rev) VALUES (?,?,?,?)", (op.key, op.value, rev, rev))
            kv, etype, value, prev = KV(op.key, op.value, rev, rev), "ADDED", op.value, None
        elif op.kind == "update":
            if row is None:
                raise KeyNotFound(op.key)
            if op.expected_rev and row[2] != op.expected_rev:
                raise RevisionConflict(op.key, op.expected_rev, row[2])
            self._wrev += 1
            rev = self._wrev
            conn.execute("UPDATE kv SET value=?, mod_rev=? WHERE key=?", (op.value, rev, op.key))
            kv, etype, value, prev = KV(op.key, op.value, row[1], rev), "MODIFIED", op.value, row[0]
        elif op.kind == "delete":
            if row is None:
                raise KeyNotFound(op.key)
            if op.expected_rev and row[2] != op.expected_rev:
                raise RevisionConflict(op.key, op.expected_rev, row[2])
            self._wrev += 1
            rev = self._wrev
            conn.execute("DELETE FROM kv WHERE key=?", (op.key,))
            kv, etype, value, prev = KV(op.key, row[0], row[1], rev), "DELETED", row[0], row[0]
        else:  # pragma: no cover - programming error
            raise StoreError(f"unknown op {op.kind}")
        conn.execute("INSERT INTO events(rev, key, type, value) VALUES (?,?,?,?)", (rev, op.key, etype, value))
        return kv, Event(etype, op.key, value, rev, prev)

    def _do_compact(self, conn: sqlite3.Connection, rev: int) -> int:
        rev = min(rev, self._wrev)
        _, current = self._read_meta(conn)
        if rev <= current:
            return current
        conn.execute("DELETE FROM events WHERE rev <= ?", (rev,))
        conn.execute("UPDATE meta SET value=? WHERE name='compacted'", (rev,))
        return rev

    def _resolve(self, outcomes: Outcomes, events: Events, compact_to: int) -> None:
        """On the event loop: publish the batch's events, then answer the writers."""
        if compact_to > self._compacted:
            self._compacted = compact_to
            while self._history and self._history[0].rev <= compact_to:
                self._history.popleft()
        for ev in events:
            self._rev = ev.rev
            self._history.append(ev)
            for w in list(self._watchers):
                if ev.key.startswith(w.prefix):
                    if w.queue.qsize() >= WATCHER_BACKLOG:
                        log.warning("watcher on %s fell %d events behind; closing it", w.prefix, WATCHER_BACKLOG)
                        self._watchers.discard(w)
                        w.queue.put_nowait(None)
                    else:
                        w.queue.put_nowait(ev)
        for op, result, err in outcomes:
            if op.future.done():
                continue
            if err is not None:
                op.future.set_exception(err)
            else:
                op.future.set_result(result)

    # -- watch ------------------------------------------------------------

    def _events_from_disk(self, prefix: str, after: int, limit: int) -> tuple[int, Events]:
        """(compaction mark, events) read in one transaction, so a compaction
        racing the read cannot hide a gap."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            _, compacted = self._read_meta(conn)
            rows = conn.execute(
                "SELECT rev, key, type, value FROM events WHERE rev > ? AND key >= ? AND key < ? ORDER BY rev LIMIT ?",
                (after, prefix, prefix_end(prefix), limit),
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        return compacted, [Event(t, k, v, r) for r, k, t, v in rows]

    async def watch(self, prefix: str, from_rev: int) -> AsyncIterator[Event]:
        if from_rev < self._compacted:
            raise Compacted(from_rev, self._compacted)
        w = _Watcher(prefix)
        self._watchers.add(w)
        try:
            last = from_rev
            if from_rev < self._rev:
                if self._history and self._history[0].rev <= from_rev + 1:
                    replay: Events = [e for e in self._history if e.rev > from_rev and e.key.startswith(prefix)]
                    for ev in replay:
                        yield ev
                        last = ev.rev
                else:
                    loop = asyncio.get_running_loop()
                    upto = self._rev  # everything after this is in the watcher's queue
                    while last < upto:
                        compacted, chunk = await loop.run_in_executor(
                            self._readers, self._events_from_disk, prefix, last, 1000
                        )
                        if compacted > last:
                            raise Compacted(from_rev, compacted)
                        if not chunk:
                            break
                        for ev in chunk:
                            if ev.rev > upto:
                                break
                            yield ev
                            last = ev.rev
                        if chunk[-1].rev >= upto:
                            break
            while True:
                item = await w.queue.get()
                if item is None:
                    return
                if item.rev > last:
                    yield item
                    last = item.rev
        finally:
            self._watchers.discard(w)

    # -- lifecycle --------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ops.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._writer.join, 10)
        for w in list(self._watchers):
            w.queue.put_nowait(None)
        self._watchers.clear()
        self._readers.shutdown(wait=False)
        for conn in (self._wconn, self._rconn):
            try:
                conn.close()
            except sqlite3.Error:
                pass


def open_store(url: str, data_dir: str) -> SQLiteStore | EtcdStore:
    """``sqlite:///abs/path.db`` (default DIR/state.db) or ``etcd://HOST:PORT[,HOST:PORT]``
    (see apiserver.store.etcd.parse_etcd_url); an etcd store connects on
    ``await store.connect()`` or its first request."""
    if not url:
        return SQLiteStore(os.path.join(data_dir, "state.db"))
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if not path.startswith("/"):
            raise StoreError(f"store URL {url!r}: use sqlite:///absolute/path.db")
        return SQLiteStore(path)
    if url.startswith(("etcd://", "etcds://")):
        from .etcd import open_etcd

        return open_etcd(url)
    raise StoreError(f"unsupported store URL {url!r}: supported: sqlite:///PATH, etcd://HOST:PORT[,HOST:PORT]")
