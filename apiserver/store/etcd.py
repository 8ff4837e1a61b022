"""The etcd v3 store: the same protocol as the SQLite store, kept by an etcd cluster.

etcd already is a revisioned key-value map with compare-and-swap and resumable
watches, so every method is one etcd request:

- create: ``txn(create_revision(key) == 0 -> put)``, else KeyExists;
- update: ``txn(mod_revision(key) == expected -> put(prev_kv))``, else a range
  of the key tells KeyNotFound from RevisionConflict (expected 0: "the key
  exists" instead);
- delete: the same compare, ``-> delete(prev_kv)``; the deleted KV carries the
  deletion's revision (the txn's header revision);
- list: ranges pinned at the first page's revision, so a list is one snapshot;
- watch: a gRPC watch stream from ``from_rev + 1`` with prev_kv (a DELETED
  event's value is the prev kv's value); when the stream breaks it is opened
  again from the last delivered revision + 1, so no event is lost or repeated;
  a compacted start revision raises Compacted.

The client is aetcd's generated etcd v3 gRPC stubs (``aetcd.rpc``) on a
``grpc.aio`` channel of our own: the channel gives several endpoints (gRPC
fails over between them), TLS client certificates, and full responses (header
revisions, prev_kv on watch, the compact revision of a cancelled watch), which
aetcd's higher-level Client does not all expose.

``revision`` and ``compacted_revision`` are read synchronously by the registry:
they are kept current from every response header this store sees. Other
apiservers writing to the same etcd advance the real revision meanwhile; the
value here is then a little behind, which only makes compaction keep more.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
from aetcd import rpc

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

log = logging.getLogger("kubeling.store")

LIST_PAGE = 1000  # keys per range request when the caller asked for everything
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass
class EtcdOptions:
    endpoints: list[tuple[str, int]]
    prefix: str = ""  # prepended to every key in etcd (the registry's keys already start /registry)
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    timeout: float = 10.0  # seconds per request, waiting for a connection included
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return bool(self.cacert or self.cert)

    def describe(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)


def parse_etcd_url(url: str) -> EtcdOptions:
    """``etcd://HOST:PORT[,HOST:PORT...][/PREFIX][?cacert=F&cert=F&key=F&prefix=P&timeout=S]``;
    ``etcds://`` is the same with TLS (system roots unless cacert is given)."""
    parts = urlsplit(url)
    if parts.scheme not in ("etcd", "etcds"):
        raise StoreError(f"store URL {url!r}: expected etcd://HOST:PORT[,HOST:PORT]")
    hosts = parts.netloc
    if not hosts:
        raise StoreError(f"store URL {url!r}: no etcd endpoint; use etcd://127.0.0.1:2379")
    endpoints: list[tuple[str, int]] = []
    for item in hosts.split(","):
        item = item.strip()
        if item.startswith("["):  # [v6]:port
            host, _, rest = item[1:].partition("]")
            port_s = rest.lstrip(":") or "2379"
        else:
            host, _, port_s = item.partition(":")
            port_s = port_s or "2379"
        if not host or not port_s.isdigit():
            raise StoreError(f"store URL {url!r}: bad endpoint {item!r}; use HOST:PORT")
        endpoints.append((host, int(port_s)))
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    prefix = query.pop("prefix", "") or parts.path.rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    opts = EtcdOptions(endpoints, prefix=prefix, cacert=query.pop("cacert", None),
                       cert=query.pop("cert", None), key=query.pop("key", None))
    if "timeout" in query:
        try:
            opts.timeout = float(query.pop("timeout"))
        except ValueError:
            raise StoreError(f"store URL {url!r}: timeout must be a number of seconds") from None
    if query:
        raise StoreError(f"store URL {url!r}: unknown option(s) {', '.join(sorted(query))}; "
                         f"known: cacert, cert, key, prefix, timeout")
    if bool(opts.cert) != bool(opts.key):
        raise StoreError(f"store URL {url!r}: cert and key go together")
    if parts.scheme == "etcds" and not opts.tls:
        opts.extra["tls"] = "1"
    return opts


def _target(endpoints: list[tuple[str, int]]) -> str:
    """One gRPC target for all endpoints: ``ipv4:a:p,b:p`` (names resolved now)."""
    addrs: list[str] = []
    v6 = False
    for host, port in endpoints:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise StoreError(f"etcd endpoint {host}:{port}: cannot resolve {host}: {e}") from None
        for family, _, _, _, sa in infos:
            if family == socket.AF_INET6:
                v6 = True
                addrs.append(f"[{sa[0]}]:{port}")
            else:
                addrs.append(f"{sa[0]}:{port}")
    addrs = list(dict.fromkeys(addrs))
    return ("ipv6:" if v6 else "ipv4:") + ",".join(addrs)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise StoreError(f"etcd TLS file {path}: {e.strerror}") from None


def _prefix_end(key: bytes) -> bytes:
    """etcd's range_end for "every key starting with key"."""
    b = bytearray(key)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"  # all keys


def _is_compacted(e: grpc.aio.AioRpcError) -> bool:
    return e.code() == grpc.StatusCode.OUT_OF_RANGE and "compacted" in (e.details() or "")


class EtcdStore:
    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self._prefix = options.prefix.encode()
        self._channel: grpc.aio.Channel | None = None
        self._kv: Any = None
        self._watch_stub: Any = None
        self._maint: Any = None
        self._rev = 0
        self._compacted = 0
        self._closed = False
        self._connect_lock: asyncio.Lock | None = None
        self._calls: set[Any] = set()  # open watch streams, cancelled on close

    # -- properties -------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._rev

    @property
    def compacted_revision(self) -> int:
        return self._compacted

    def _seen(self, header: Any) -> None:
        rev = int(header.revision)
        if rev > self._rev:
            self._rev = rev

    # -- connection -------------------------------------------------------

    async def connect(self) -> None:
        """Open the channel and check etcd answers; learn the revision and the
        compaction mark. Raises StoreUnavailable with one line saying what failed."""
        if self._closed:
            raise StoreUnavailable("store is closed")
        if self._channel is not None:
            return
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._channel is not None:
                return
            opts = self.options
            target = _target(opts.endpoints)
            channel_opts: list[tuple[str, Any]] = [
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2_000),
            ]
            if opts.tls or opts.extra.get("tls"):
                creds = grpc.ssl_channel_credentials(
                    root_certificates=_read(opts.cacert) if opts.cacert else None,
                    private_key=_read(opts.key) if opts.key else None,
                    certificate_chain=_read(opts.cert) if opts.cert else None)
                channel_opts.append(("grpc.ssl_target_name_override", opts.endpoints[0][0]))
                channel = grpc.aio.secure_channel(target, creds, options=channel_opts)
            else:
                channel = grpc.aio.insecure_channel(target, options=channel_opts)
            kv, maint = rpc.KVStub(channel), rpc.MaintenanceStub(channel)
            try:
                status = await maint.Status(rpc.StatusRequest(), timeout=min(opts.timeout, 5.0),
                                            wait_for_ready=True)
                self._seen(status.header)
                self._kv = kv
                self._compacted = await self._find_compacted()
            except grpc.aio.AioRpcError as e:
                await channel.close()
                self._kv = None
                raise StoreUnavailable(f"cannot reach etcd at {opts.describe()}: "
                                       f"{e.code().name.lower()}: {e.details()}") from None
            self._channel, self._maint = channel, maint
            self._watch_stub = rpc.WatchStub(channel)
            log.info("etcd store endpoints=%s prefix=%r revision=%d compacted=%d version=%s",
                     opts.describe(), opts.prefix, self._rev, self._compacted, status.version)

    async def _find_compacted(self) -> int:
        """etcd does not report its compaction mark directly: a range at a
        revision below it fails, at or above it works. Binary search (a few
        dozen cheap count-only ranges, once at start-up)."""
        lo, hi = 1, max(self._rev, 1)  # find the smallest readable revision in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            try:
                await self._kv.Range(rpc.RangeRequest(key=b"\0", revision=mid, count_only=True),
                                     timeout=self.options.timeout)
                hi = mid
            except grpc.aio.AioRpcError as e:
                if not _is_compacted(e):
                    raise
                lo = mid + 1
        return lo if lo > 1 else 0

    async def _ready(self) -> Any:
        if self._channel is None:
            await self.connect()
        return self._kv

    async def _unary(self, method: str, request: Any) -> Any:
        kv = await self._ready()
        try:
            resp = await getattr(kv, method)(request, timeout=self.options.timeout, wait_for_ready=True)
        except grpc.aio.AioRpcError as e:
            if e.code() in _TRANSIENT:
                raise StoreUnavailable(f"etcd at {self.options.describe()}: {e.code().name.lower()}: "
                                       f"{e.details()}") from None
            if _is_compacted(e):
                raise Compacted(int(getattr(request, "revision", 0)), self._compacted) from None
            raise StoreError(f"etcd {method} failed: {e.code().name.lower()}: {e.details()}") from None
        self._seen(resp.header)
        return resp

    # -- keys -------------------------------------------------------------

    def _k(self, key: str) -> bytes:
        return self._prefix + key.encode()

    def _unk(self, key: bytes) -> str:
        return key[len(self._prefix):].decode()

    def _kvof(self, kv: Any, mod_rev: int | None = None) -> KV:
        return KV(self._unk(kv.key), bytes(kv.value), int(kv.create_revision),
                  int(kv.mod_revision) if mod_rev is None else mod_rev)

    # -- reads ------------------------------------------------------------

    async def get(self, key: str) -> KV | None:
        resp = await self._unary("Range", rpc.RangeRequest(key=self._k(key)))
        return self._kvof(resp.kvs[0]) if resp.kvs else None

    async def list(self, prefix: str, *, start_after: str = "", limit: int = 0) -> ListResult:
        begin = self._k(prefix)
        end = _prefix_end(begin)
        if start_after and start_after >= prefix:
            begin = max(begin, self._k(start_after) + b"\0")
        items: list[KV] = []
        rev = 0  # 0: now; then pinned at the first page's revision
        while True:
            want = limit - len(items) if limit else LIST_PAGE
            resp = await self._unary("Range", rpc.RangeRequest(key=begin, range_end=end, limit=want,
                                                               revision=rev))
            if not rev:
                rev = int(resp.header.revision)
            items.extend(self._kvof(kv) for kv in resp.kvs)
            if not resp.more or not resp.kvs:
                return ListResult(items, rev, False)
            if limit and len(items) >= limit:
                return ListResult(items, rev, True)
            begin = bytes(resp.kvs[-1].key) + b"\0"

    # -- writes -----------------------------------------------------------

    def _exists(self, key: bytes, expected_rev: int) -> Any:
        if expected_rev:
            return rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                               mod_revision=expected_rev)
        return rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.GREATER, create_revision=0)

    def _failed(self, key: str, resp: Any, expected_rev: int) -> StoreError:
        kvs = resp.responses[0].response_range.kvs
        if not kvs:
            return KeyNotFound(key)
        return RevisionConflict(key, expected_rev, int(kvs[0].mod_revision))

    async def create(self, key: str, value: bytes) -> KV:
        k = self._k(key)
        resp = await self._unary("Txn", rpc.TxnRequest(
            compare=[rpc.Compare(key=k, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0)],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=value))]))
        if not resp.succeeded:
            raise KeyExists(key)
        rev = int(resp.header.revision)
        return KV(key, value, rev, rev)

    async def update(self, key: str, value: bytes, expected_rev: int) -> KV:
        k = self._k(key)
        resp = await self._unary("Txn", rpc.TxnRequest(
            compare=[self._exists(k, expected_rev)],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=value, prev_kv=True))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=k))]))
        if not resp.succeeded:
            raise self._failed(key, resp, expected_rev)
        prev = resp.responses[0].response_put.prev_kv
        rev = int(resp.header.revision)
        return KV(key, value, int(prev.create_revision), rev)

    async def delete(self, key: str, expected_rev: int = 0) -> KV:
        k = self._k(key)
        resp = await self._unary("Txn", rpc.TxnRequest(
            compare=[self._exists(k, expected_rev)],
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k, prev_kv=True))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=k))]))
        if not resp.succeeded:
            raise self._failed(key, resp, expected_rev)
        prev = resp.responses[0].response_delete_range.prev_kvs[0]
        return self._kvof(prev, mod_rev=int(resp.header.revision))

    async def compact(self, rev: int) -> None:
        await self._ready()
        rev = min(rev, self._rev)
        if rev <= self._compacted:
            return
        try:
            await self._unary("Compact", rpc.CompactionRequest(revision=rev, physical=False))
        except Compacted:  # someone (another apiserver) compacted further already
            self._compacted = max(self._compacted, await self._find_compacted())
            return
        self._compacted = rev

    # -- watch ------------------------------------------------------------

    def _event(self, ev: Any) -> Event:
        kv = ev.kv
        key = self._unk(kv.key)
        prev = bytes(ev.prev_kv.value) if ev.HasField("prev_kv") else None
        etype: EventType
        if ev.type == rpc.Event.DELETE:
            return Event("DELETED", key, prev if prev is not None else b"", int(kv.mod_revision), prev)
        etype = "ADDED" if kv.create_revision == kv.mod_revision else "MODIFIED"
        return Event(etype, key, bytes(kv.value), int(kv.mod_revision), prev)

    async def watch(self, prefix: str, from_rev: int) -> AsyncIterator[Event]:
        await self._ready()
        if from_rev < self._compacted:
            raise Compacted(from_rev, self._compacted)
        begin = self._k(prefix)
        end = _prefix_end(begin)
        last = from_rev
        failures = 0
        while not self._closed:
            call = self._watch_stub.Watch(wait_for_ready=True)
            self._calls.add(call)
            try:
                await call.write(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                    key=begin, range_end=end, start_revision=last + 1, prev_kv=True, progress_notify=True)))
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        raise StoreUnavailable("etcd closed the watch stream")
                    failures = 0
                    self._seen(resp.header)
                    if resp.compact_revision:
                        self._compacted = max(self._compacted, int(resp.compact_revision))
                        raise Compacted(from_rev if last == from_rev else last, int(resp.compact_revision))
                    if resp.canceled:
                        raise StoreUnavailable(f"etcd cancelled the watch: {resp.cancel_reason}")
                    for ev in resp.events:
                        out = self._event(ev)
                        if out.rev > last:
                            last = out.rev
                            yield out
            except (grpc.aio.AioRpcError, StoreUnavailable) as e:
                if self._closed or (isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.CANCELLED):
                    return
                failures += 1
                log.warning("etcd watch on %s broke after revision %d (%s); re-watching", prefix, last,
                            e.details() if isinstance(e, grpc.aio.AioRpcError) else e)
                # back off only on repeated failures; the channel itself waits for a connection
                await asyncio.sleep(min(0.05 * 2 ** failures, 2.0) if failures > 1 else 0)
            finally:
                self._calls.discard(call)
                call.cancel()

    # -- lifecycle --------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for call in list(self._calls):
            call.cancel()
        self._calls.clear()
        if self._channel is not None:
            await self._channel.close()
        self._channel = None


def open_etcd(url: str) -> EtcdStore:
    """An EtcdStore for the URL; it connects on first use (or ``await store.connect()``)."""
    return EtcdStore(parse_etcd_url(url))
