"""The store protocol the registry talks to.

A store is a revisioned key-value map, shaped after etcd v3: every successful
write gets the next revision of one global counter, the revision is the
object's resourceVersion, updates compare-and-swap on the revision they were
based on, and a watcher can resume from any revision that has not been
compacted yet. Values are opaque bytes (the JSON of the object, without its
resourceVersion: the registry fills that in from ``mod_rev`` on the way out).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

EventType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True, slots=True)
class KV:
    key: str
    value: bytes
    create_rev: int
    mod_rev: int


@dataclass(frozen=True, slots=True)
class Event:
    """One committed change. For DELETED, ``value`` is the last state of the
    object. ``prev`` is the state before the change when the store still knows
    it (live events do; events replayed from disk may not)."""

    type: EventType
    key: str
    value: bytes
    rev: int
    prev: bytes | None = None


class StoreError(Exception):
    pass


class KeyExists(StoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"key {key} already exists")
        self.key = key


class KeyNotFound(StoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"key {key} not found")
        self.key = key


class RevisionConflict(StoreError):
    """The key's current revision is not the one the write was based on."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        super().__init__(f"key {key}: expected revision {expected}, found {actual}")
        self.key = key
        self.expected = expected
        self.actual = actual


class Compacted(StoreError):
    """The requested revision is older than what the store still keeps."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(f"revision {requested} has been compacted (oldest kept: {compacted})")
        self.requested = requested
        self.compacted = compacted


class StoreUnavailable(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class ListResult:
    items: list[KV]
    revision: int  # the store revision the list was read at
    more: bool  # True when limit cut the list short


class Store(Protocol):
    """What the registry needs from a backend (SQLite now, etcd later)."""

    @property
    def revision(self) -> int:
        """The newest committed revision."""
        ...

    @property
    def compacted_revision(self) -> int:
        """Events at or below this revision are gone."""
        ...

    async def get(self, key: str) -> KV | None: ...

    async def list(self, prefix: str, *, start_after: str = "", limit: int = 0) -> ListResult: ...

    async def create(self, key: str, value: bytes) -> KV:
        """Raises KeyExists."""
        ...

    async def update(self, key: str, value: bytes, expected_rev: int) -> KV:
        """Compare-and-swap; raises KeyNotFound or RevisionConflict."""
        ...

    async def delete(self, key: str, expected_rev: int = 0) -> KV:
        """Returns the deleted KV with mod_rev = the deletion's revision.
        expected_rev 0 means unconditional. Raises KeyNotFound, RevisionConflict."""
        ...

    def watch(self, prefix: str, from_rev: int) -> AsyncIterator[Event]:
        """Every event under prefix with revision > from_rev, in order, exactly
        once, then live ones. Raises Compacted (on first iteration) when from_rev
        is older than what is kept."""
        ...

    async def compact(self, rev: int) -> None: ...

    async def close(self) -> None: ...
