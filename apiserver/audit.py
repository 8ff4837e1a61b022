"""The audit log: one audit.k8s.io/v1 Event per mutating request, as JSON lines, at level Metadata.

    writer = AuditFileWriter("/var/log/kubeling/audit.log", max_age_days=30, max_backups=10, max_size_mb=100)
    app = AuditMiddleware(app, writer)      # a plain ASGI middleware around the app
    ...
    writer.close()                          # drains the queue

What is logged: create, update, patch, delete and deletecollection of any resource (and their
subresources), and the exec/attach/portforward streams, each with who (user, groups, source
IP, user agent), what (objectRef), the answer's HTTP code and when (received and completed).
Level Metadata means never a request or response body, so a Secret's data never reaches the log
(upstream's recommended policy logs Secrets at Metadata for the same reason). Streams get a
ResponseStarted event when they open and a ResponseComplete event when they end, as upstream's
long-running requests do; every other request one ResponseComplete event.

The request's path, not its body, names the object: a create is logged with the collection
(objectRef without a name), as upstream does at this level. Responses carry an `Audit-Id`
header with the event's auditID.

Writing is off the event loop: the middleware builds a small dict and puts it on a queue; one
writer thread encodes, appends and flushes batches, and rotates the file the way upstream's
lumberjack does: when the next line would pass --audit-log-maxsize MB, the file is renamed to
NAME-YYYY-MM-DDTHH-MM-SS.mmm.EXT (UTC) and a new one started; then backups beyond
--audit-log-maxbackup and older than --audit-log-maxage days (by the time in the name) are
deleted. 0 means no limit (no size rotation, every backup kept), as upstream. Files are 0600.
The path "-" writes to standard output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import USER_KEY

log = logging.getLogger("kubeling.apiserver.audit")


MUTATING_VERBS = frozenset(("create", "update", "patch", "delete", "deletecollection"))
STREAM_SUBRESOURCES = frozenset(("exec", "attach", "portforward"))
_STREAM_SUFFIXES = tuple("/" + s for s in STREAM_SUBRESOURCES)
NAMESPACE_SUBRESOURCES = frozenset(("status", "finalize"))
_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete", "GET": "get"}
_BACKUP_TIME = "%Y-%m-%dT%H-%M-%S"
MIB = 1024 * 1024


# -- what a request is about (upstream's RequestInfo) ---------------------------------------


@dataclass(frozen=True)
class RequestInfo:
    verb: str
    api_group: str
    api_version: str
    resource: str
    namespace: str = ""
    name: str = ""
    subresource: str = ""

    @property
    def audited(self) -> bool:
        return self.verb in MUTATING_VERBS or self.subresource in STREAM_SUBRESOURCES

    def object_ref(self) -> dict[str, str]:
        ref = {"resource": self.resource}
        for key, value in (("namespace", self.namespace), ("name", self.name), ("apiGroup", self.api_group),
                           ("apiVersion", self.api_version), ("subresource", self.subresource)):
            if value:
                ref[key] = value
        return ref


def request_info(method: str, path: str, query: bytes = b"") -> RequestInfo | None:
    """The resource request a path names (/api/v1/namespaces/NS/pods/NAME/SUB, /apis/G/V/...),
    or None for a non-resource path (/healthz, /version, discovery, /openapi)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 2:
        namespace = rest[1]
        if len(rest) >= 3 and rest[2] not in NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else ""
    sub = rest[2] if len(rest) >= 3 else ""
    verb = _METHOD_VERBS.get(method.upper(), method.lower())
    if not name:
        if verb == "get":
            verb = "watch" if _is_watch(query) else "list"
        elif verb == "delete":
            verb = "deletecollection"
    if sub in STREAM_SUBRESOURCES:
        verb = "create"  # what authorization asks for exec/attach/portforward, whatever the method
    return RequestInfo(verb, group, version, resource, namespace, name, sub)


def _is_watch(query: bytes) -> bool:
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == b"watch" and value.lower() in (b"1", b"true"):
            return True
    return False


# -- the event --------------------------------------------------------------------------------


def timestamp(t: float) -> str:
    """RFC 3339 with microseconds in UTC, like upstream's metav1.MicroTime."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def user_of(scope: Scope) -> dict[str, Any]:
    user = scope.get(USER_KEY)
    if user is None:
        return {}
    out: dict[str, Any] = {"username": user.name}
    if user.uid:
        out["uid"] = user.uid
    out["groups"] = list(user.groups)
    return out


def make_event(audit_id: str, stage: str, info: RequestInfo, scope: Scope, code: int, received: float,
               at: float) -> dict[str, Any]:
    """An audit.k8s.io/v1 Event at level Metadata: no request or response body, ever."""
    query: bytes = scope.get("query_string", b"")
    path = scope.get("raw_path") or scope.get("path", "").encode()
    uri = (path + b"?" + query if query else path).decode("latin-1")
    client = scope.get("client")
    agent = ""
    for name, value in scope.get("headers", ()):
        if name == b"user-agent":
            agent = value.decode("latin-1")
            break
    return {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": audit_id,
        "stage": stage, "requestURI": uri, "verb": info.verb, "user": user_of(scope),
        "sourceIPs": [client[0]] if client else [], "userAgent": agent, "objectRef": info.object_ref(),
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": timestamp(received), "stageTimestamp": timestamp(at),
    }


# -- the writer -------------------------------------------------------------------------------


class AuditFileWriter:
    """Appends events as JSON lines from a writer thread; rotation as upstream's lumberjack."""

    def __init__(self, path: str, max_age_days: int = 0, max_backups: int = 0, max_size_mb: int = 0, *,
                 queue_size: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        if min(max_age_days, max_backups, max_size_mb) < 0:
            raise ValueError("--audit-log-maxage, --audit-log-maxbackup and --audit-log-maxsize must be >= 0")
        self.path = path
        self.max_age_s = max_age_days * 86400.0
        self.max_backups = max_backups
        self.max_bytes = max_size_mb * MIB
        self.clock = clock
        self.dropped = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=queue_size)
        self._file: BinaryIO | None = None
        self._size = 0
        if path != "-":
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self._open()  # fails here, at start-up, when the path is unusable
            name = os.path.basename(path)
            stem, ext = os.path.splitext(name)
            self._dir, self._stem, self._ext = directory, stem, ext
            self._backup_re = re.compile(re.escape(stem) + r"-(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3})"
                                         + re.escape(ext) + "$")
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    # called on the event loop
    def submit(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 10_000 == 0:
                log.warning("audit queue full, events dropped dropped=%d", self.dropped)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread and close the file."""
        if not self._thread.is_alive():
            return
        self._queue.put(None)
        self._thread.join(timeout)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything submitted so far is written (tests)."""
        done = threading.Event()
        self._queue.put({"__flush__": done})
        done.wait(timeout)

    # the writer thread
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while len(batch) < 1000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = False
            flushes: list[threading.Event] = []
            lines = []
            for ev in batch:
                if ev is None:
                    stop = True
                elif "__flush__" in ev:
                    flushes.append(ev["__flush__"])
                else:
                    lines.append(orjson.dumps(ev) + b"\n")
            try:
                self._write(lines)
            except OSError as e:
                log.error("audit log write failed path=%s error=%s", self.path, e)
            for done in flushes:
                done.set()
            if stop:
                if self._file is not None:
                    self._file.close()
                    self._file = None
                return

    def _write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self.path == "-":
            sys.stdout.buffer.write(b"".join(lines))
            sys.stdout.buffer.flush()
            return
        for line in lines:
            if self.max_bytes and self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            assert self._file is not None
            self._file.write(line)
            self._size += len(line)
        assert self._file is not None
        self._file.flush()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        self._file = os.fdopen(fd, "ab", buffering=1024 * 1024)
        self._size = os.fstat(fd).st_size

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        now = self.clock()
        ms = int(now * 1000)
        while True:
            stamp = datetime.fromtimestamp(ms / 1000, UTC)
            backup = os.path.join(self._dir, f"{self._stem}-{stamp.strftime(_BACKUP_TIME)}.{ms % 1000:03d}{self._ext}")
            if not os.path.exists(backup):
                break
            ms += 1  # two rotations within one millisecond
        os.rename(self.path, backup)
        self._open()
        self._cleanup(now)

    def backups(self) -> list[tuple[float, str]]:
        """(time in the name, path) of the rotated files, newest first."""
        out = []
        for name in os.listdir(self._dir):
            m = self._backup_re.match(name)
            if m:
                t = datetime.strptime(m.group(1), _BACKUP_TIME + ".%f").replace(tzinfo=UTC).timestamp()
                out.append((t, os.path.join(self._dir, name)))
        return sorted(out, reverse=True)

    def _cleanup(self, now: float) -> None:
        backups = self.backups()
        doomed = backups[self.max_backups:] if self.max_backups else []
        if self.max_age_s:
            doomed += [b for b in backups if now - b[0] > self.max_age_s and b not in doomed]
        for _, path in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


# -- the middleware -----------------------------------------------------------------------------


class AuditMiddleware:
    """Audits mutating requests and streams; everything else passes untouched.

    Reads the user from scope[USER_KEY] when the request is done, so it can sit inside or
    outside the authentication middleware (outside, it also sees requests refused with 401)."""

    def __init__(self, app: ASGIApp, writer: AuditFileWriter, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.writer = writer
        self.clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)  # .state, .routes, ... of the wrapped app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or (kind == "http" and scope.get("method") in ("GET", "HEAD")
                                                 and not scope.get("path", "").endswith(_STREAM_SUFFIXES)):
            await self.app(scope, receive, send)  # the common read: no parsing at all
            return
        info = request_info(scope.get("method", "GET"), scope.get("path", ""), scope.get("query_string", b""))
        if info is None or not info.audited:
            await self.app(scope, receive, send)
            return
        received = self.clock()
        audit_id = str(uuid.uuid4())
        header = (b"audit-id", audit_id.encode())
        code = 0

        async def audited_send(message: MutableMapping[str, Any]) -> None:
            nonlocal code
            mtype = message["type"]
            if mtype in ("http.response.start", "websocket.http.response.start"):
                code = int(message["status"])
                message = {**message, "headers": [*message.get("headers", ()), header]}
            elif mtype == "websocket.accept":
                code = 101
                message = {**message, "headers": [*message.get("headers", ()), header]}
                self.writer.submit(make_event(audit_id, "ResponseStarted", info, scope, code, received,
                                              self.clock()))
            elif mtype == "websocket.close" and not code:
                code = 403  # closed before the handshake: refused
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except BaseException:
            if not code:
                code = 500
            raise
        finally:
            self.writer.submit(make_event(audit_id, "ResponseComplete", info, scope, code or 500, received,
                                          self.clock()))


def add_args(p: Any) -> None:
    """Upstream's audit log flags (level Metadata for mutating requests; no policy file)."""
    g = p.add_argument_group("audit log (audit.k8s.io/v1 Events, level Metadata)")
    g.add_argument("--audit-log-path", default="", metavar="FILE",
                   help="write an audit.k8s.io/v1 Event line per mutating request here ('-': standard out; "
                        "default: no audit log)")
    g.add_argument("--audit-log-maxage", type=int, default=30, metavar="DAYS",
                   help="delete rotated audit logs older than this, by the time in their names (0 = keep; "
                        "default %(default)s)")
    g.add_argument("--audit-log-maxbackup", type=int, default=10, metavar="N",
                   help="keep at most this many rotated audit logs (0 = all; default %(default)s)")
    g.add_argument("--audit-log-maxsize", type=int, default=100, metavar="MB",
                   help="rotate the audit log before it grows past this size (0 = never; default %(default)s)")


def config_from_args(args: Any) -> dict[str, Any]:
    return {"audit_log_path": args.audit_log_path, "audit_log_maxage": args.audit_log_maxage,
            "audit_log_maxbackup": args.audit_log_maxbackup, "audit_log_maxsize": args.audit_log_maxsize}
