"""REST client for the apiserver: `Client` (sync, thread-safe) and `AsyncClient`
(asyncio) with the same methods.

Objects are plain dicts, as they travel on the wire. A resource is named by a
`ResourceType` from kube.api.resources or by a string kubectl would accept:
"pods", "po", "Pod", "deployments.apps", "deployments.v1.apps".

    client = Client.from_kubeconfig("/var/lib/kubeling/admin.kubeconfig")
    pod = client.get("pods", "web-0", namespace="default")
    for kind, obj in client.watch("pods", resource_version=rv):
        ...

Errors: the server's `Status` becomes `ApiError(code, reason, message, status)`;
no answer at all becomes `TransportError`. Connection failures are retried
with bounded, jittered backoff when that is safe: always if the request was
never sent (connect failed), and for idempotent verbs (GET, PUT, DELETE)
otherwise. A POST or PATCH whose fate is unknown is never repeated.

Failover: a config may name several apiservers of one cluster (`Client(servers=[URL1, URL2])`,
`Client("URL1,URL2")`, or a comma-separated kubeconfig `server`). The client uses one at a
time and sticks to it while it works; a transport error (refused, reset, connect timeout, no
answer) moves it to the next one. A retry that is safe by the rule above goes at once to the
next server; only after every server has failed once more does the client back off, so
`max_retries` counts rounds over all servers. A watch whose stream breaks raises
TransportError as before and moves the client on, so the next watch (the informer's
re-watch, or relist) goes to the next server; resourceVersions are valid on every apiserver
of one store.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from kube.api.resources import RESOURCES, ResourceType

from .config import ClientConfig, load_kubeconfig
from .errors import ApiError, TransportError

log = logging.getLogger("kubeling.client")

USER_AGENT = "kubeling-client/0.1"
PATCH_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
# Failures that happen before the request left this process: safe to retry for any verb.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
Obj = dict[str, Any]


# -- naming resources -------------------------------------------------------------


def resolve(resource: ResourceType | str) -> ResourceType:
    """A ResourceType from itself or from a kubectl-style name: plural, singular, short name or kind,
    optionally qualified as NAME.GROUP or NAME.VERSION.GROUP."""
    if isinstance(resource, ResourceType):
        return resource
    return _resolve_name(resource)


@functools.lru_cache(maxsize=256)
def _resolve_name(resource: str) -> ResourceType:
    text = resource.strip()
    want = text.lower()
    candidates: list[ResourceType] = []
    for rt in RESOURCES:
        names = {rt.name, rt.singular, rt.kind.lower(), *rt.short_names}
        if want in names:
            candidates.append(rt)
            continue
        for n in names:
            if want == f"{n}.{rt.group}" or want == f"{n}.{rt.version}.{rt.group}":
                candidates.append(rt)
                break
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        known = ", ".join(r.name if not r.group else f"{r.name}.{r.group}" for r in RESOURCES)
        raise ValueError(f"unknown resource {text!r}: expected one of {known}")
    options = ", ".join(f"{r.name}.{r.group or 'core'}" for r in candidates)
    raise ValueError(f"resource {text!r} is ambiguous ({options}): qualify it with its group")


def resource_path(rt: ResourceType, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None) -> str:
    """The URL path of a collection, an object or a subresource."""
    path = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
    if rt.namespaced and namespace:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{rt.name}"
    if name is not None:
        if not name:
            raise ValueError(f"an empty name was given for a {rt.kind}")
        path += f"/{quote(name, safe='')}"
    if subresource:
        path += f"/{subresource}"
    return path


def object_key(obj: Obj) -> str:
    """"namespace/name", or "name" for cluster-scoped objects (client-go's MetaNamespaceKey)."""
    meta = obj.get("metadata") or {}
    ns, name = meta.get("namespace"), meta.get("name", "")
    return f"{ns}/{name}" if ns else str(name)


def resource_version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


# -- requests, independent of sync/async -------------------------------------------


@dataclass
class _Request:
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    content_type: str | None = None


def _selectors(params: dict[str, str], label_selector: str | dict[str, str] | None,
               field_selector: str | dict[str, str] | None) -> None:
    if label_selector:
        params["labelSelector"] = _selector_text(label_selector)
    if field_selector:
        params["fieldSelector"] = _selector_text(field_selector)


def _selector_text(sel: str | dict[str, str]) -> str:
    if isinstance(sel, dict):
        return ",".join(f"{k}={v}" for k, v in sel.items())
    return sel


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _meta(obj: Obj, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise TypeError(f"{what}: the object must be a dict, not {type(obj).__name__}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise ValueError(f"{what}: the object has no metadata")
    return meta


class _Builder:
    """Turns a method call into a `_Request`; shared by Client and AsyncClient."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def _ns(self, rt: ResourceType, namespace: str | None, obj: Obj | None = None) -> str | None:
        if not rt.namespaced:
            return None
        if namespace:
            return namespace
        if obj is not None:
            ns = (obj.get("metadata") or {}).get("namespace")
            if ns:
                return str(ns)
        return self.namespace

    @staticmethod
    def _write_params(field_manager: str | None, dry_run: bool) -> dict[str, str]:
        params: dict[str, str] = {}
        if field_manager:
            params["fieldManager"] = field_manager
        if dry_run:
            params["dryRun"] = "All"
        return params

    def get(self, rt: ResourceType, name: str, namespace: str | None, subresource: str | None) -> _Request:
        return _Request("GET", resource_path(rt, self._ns(rt, namespace), name, subresource))

    def list(self, rt: ResourceType, namespace: str | None, label_selector: str | dict[str, str] | None,
             field_selector: str | dict[str, str] | None, limit: int | None, continue_: str | None,
             resource_version: str | None) -> _Request:
        params: dict[str, str] = {}
        _selectors(params, label_selector, field_selector)
        if limit:
            params["limit"] = str(limit)
        if continue_:
            params["continue"] = continue_
        if resource_version is not None:
            params["resourceVersion"] = resource_version
        # namespace=None lists across all namespaces
        return _Request("GET", resource_path(rt, namespace if rt.namespaced else None), params)

    def create(self, rt: ResourceType, obj: Obj, namespace: str | None, subresource: str | None = None,
               name: str | None = None, field_manager: str | None = None, dry_run: bool = False) -> _Request:
        _meta(obj, f"create {rt.kind}")
        return _Request("POST", resource_path(rt, self._ns(rt, namespace, obj), name, subresource),
                        self._write_params(field_manager, dry_run), _json(obj), "application/json")

    def update(self, rt: ResourceType, obj: Obj, namespace: str | None, subresource: str | None,
               field_manager: str | None, dry_run: bool) -> _Request:
        meta = _meta(obj, f"update {rt.kind}")
        name = meta.get("name")
        if not name:
            raise ValueError(f"update {rt.kind}: the object has no metadata.name")
        return _Request("PUT", resource_path(rt, self._ns(rt, namespace, obj), str(name), subresource),
                        self._write_params(field_manager, dry_run), _json(obj), "application/json")

    def patch(self, rt: ResourceType, name: str, patch: Any, namespace: str | None, patch_type: str,
              subresource: str | None, field_manager: str | None, force: bool | None, dry_run: bool) -> _Request:
        ctype = PATCH_CONTENT_TYPES.get(patch_type)
        if ctype is None:
            raise ValueError(f"patch_type {patch_type!r}: expected one of {', '.join(PATCH_CONTENT_TYPES)}")
        if patch_type == "apply" and not field_manager:
            raise ValueError("an apply patch needs a field_manager (who owns the fields)")
        params = self._write_params(field_manager, dry_run)
        if force is not None:
            params["force"] = "true" if force else "false"
        body = patch.encode() if isinstance(patch, str) else patch if isinstance(patch, bytes) else _json(patch)
        return _Request("PATCH", resource_path(rt, self._ns(rt, namespace), name, subresource), params, body, ctype)

    @staticmethod
    def _delete_options(grace_period_seconds: int | None, propagation_policy: str | None,
                        preconditions: dict[str, str] | None, dry_run: bool) -> bytes:
        opts: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_seconds is not None:
            opts["gracePeriodSeconds"] = grace_period_seconds
        if propagation_policy is not None:
            if propagation_policy not in ("Orphan", "Background", "Foreground"):
                raise ValueError(f"propagation_policy {propagation_policy!r}: expected Orphan, Background or "
                                 f"Foreground")
            opts["propagationPolicy"] = propagation_policy
        if preconditions:
            opts["preconditions"] = preconditions
        if dry_run:
            opts["dryRun"] = ["All"]
        return _json(opts)

    def delete(self, rt: ResourceType, name: str, namespace: str | None, grace_period_seconds: int | None,
               propagation_policy: str | None, preconditions: dict[str, str] | None, dry_run: bool) -> _Request:
        body = self._delete_options(grace_period_seconds, propagation_policy, preconditions, dry_run)
        return _Request("DELETE", resource_path(rt, self._ns(rt, namespace), name), {}, body, "application/json")

    def delete_collection(self, rt: ResourceType, namespace: str | None, label_selector: str | dict[str, str] | None,
                          field_selector: str | dict[str, str] | None, grace_period_seconds: int | None,
                          propagation_policy: str | None, dry_run: bool) -> _Request:
        params: dict[str, str] = {}
        _selectors(params, label_selector, field_selector)
        body = self._delete_options(grace_period_seconds, propagation_policy, None, dry_run)
        return _Request("DELETE", resource_path(rt, namespace if rt.namespaced else None), params, body,
                        "application/json")

    def watch(self, rt: ResourceType, namespace: str | None, resource_version: str | None,
              label_selector: str | dict[str, str] | None, field_selector: str | dict[str, str] | None,
              timeout_seconds: int | None, allow_bookmarks: bool,
              send_initial_events: bool | None = None) -> _Request:
        params = {"watch": "1"}
        if resource_version is not None:
            params["resourceVersion"] = resource_version
        _selectors(params, label_selector, field_selector)
        if timeout_seconds:
            params["timeoutSeconds"] = str(int(timeout_seconds))
        if allow_bookmarks:
            params["allowWatchBookmarks"] = "true"
        if send_initial_events is not None:
            params["sendInitialEvents"] = "true" if send_initial_events else "false"
        return _Request("GET", resource_path(rt, namespace if rt.namespaced else None), params)

    def bind(self, pod: Obj | str, node_name: str, namespace: str | None) -> _Request:
        rt = resolve("pods")
        meta: dict[str, Any]
        if isinstance(pod, str):
            meta = {"name": pod}
        else:
            m = _meta(pod, "bind pod")
            meta = {k: m[k] for k in ("name", "namespace", "uid") if m.get(k)}
        ns = namespace or meta.get("namespace") or self.namespace
        meta["namespace"] = ns
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": meta,
                   "target": {"apiVersion": "v1", "kind": "Node", "name": node_name}}
        return _Request("POST", resource_path(rt, ns, meta["name"], "binding"), {}, _json(binding),
                        "application/json")


# -- responses ---------------------------------------------------------------------


def _decode(resp: httpx.Response) -> Obj:
    if 200 <= resp.status_code < 300:
        if not resp.content:
            return {}
        try:
            out = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise ApiError(resp.status_code, "InvalidResponse",
                           f"the server answered {resp.status_code} with a body that is not JSON: "
                           f"{resp.text[:200]!r}") from None
        if not isinstance(out, dict):
            raise ApiError(resp.status_code, "InvalidResponse", f"the server answered {resp.status_code} with "
                           f"JSON that is not an object: {resp.text[:200]!r}")
        return out
    raise _error(resp)


def _error(resp: httpx.Response) -> ApiError:
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return ApiError.from_text(resp.status_code, resp.text)
    if isinstance(body, dict) and body.get("kind") == "Status":
        return ApiError.from_status(body, resp.status_code)
    return ApiError.from_text(resp.status_code, resp.text)


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds to wait when the server refused without doing anything (429, 503 with Retry-After)."""
    if resp.status_code not in (429, 503):
        return None
    raw = resp.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return min(max(float(raw), 0.0), 10.0)
    except ValueError:
        return 1.0


def _parse_events(buf: bytearray, chunk: bytes) -> Iterator[Obj]:
    """Feed a chunk of a newline-delimited JSON stream; yield every complete event."""
    buf.extend(chunk)
    while True:
        nl = buf.find(b"\n")
        if nl < 0:
            return
        line = bytes(buf[:nl])
        del buf[:nl + 1]
        if line.strip():
            try:
                ev = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise TransportError(f"the watch stream sent a line that is not JSON: {line[:200]!r}") from None
            if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
                raise TransportError(f"the watch stream sent something that is not an event: {line[:200]!r}")
            yield ev


def _event(ev: Obj) -> tuple[str, Obj]:
    typ, obj = ev["type"], ev.get("object")
    if typ == "ERROR":
        raise ApiError.from_status(obj)
    if not isinstance(obj, dict):
        raise TransportError(f"the watch stream sent a {typ} event without an object")
    return typ, obj


Servers = str | Sequence[str]
TOKEN_FILE_PERIOD = 60.0  # seconds between reads of a kubeconfig's tokenFile / the in-cluster token


class _Common:
    """Construction and failover shared by both clients."""

    def __init__(self, config: ClientConfig | str | None, timeout: float, connect_timeout: float,
                 max_retries: int, user_agent: str | None, servers: Servers | None = None) -> None:
        override = None if servers is None else [servers] if isinstance(servers, str) else list(servers)
        if config is None:
            config = ClientConfig(servers=tuple(override)) if override else load_kubeconfig()
        elif isinstance(config, str):
            config = ClientConfig(server=config)
        if override:
            config = config.with_servers(override)
        self.config = config
        self.servers: tuple[str, ...] = config.servers
        self._index = 0  # the server in use: sticky until it fails
        self._index_lock = threading.Lock()
        self.max_retries = max(0, max_retries)
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._connect_timeout = connect_timeout
        self._b = _Builder(config.namespace)
        headers = {"User-Agent": user_agent or USER_AGENT, "Accept": "application/json"}
        token = config.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._fixed_headers = headers
        self._token_read_at = time.monotonic()  # a token file is read again after TOKEN_FILE_PERIOD (rotation)
        self._verify: Any = config.ssl_context() if config.is_tls else True
        self._extensions: dict[str, Any] = {}
        if config.tls_server_name:
            self._extensions["sni_hostname"] = config.tls_server_name
        self._limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=30)

    @property
    def _headers(self) -> dict[str, str]:
        """The request headers; with a token file (a projected service-account token, which the agent
        rotates) its token is read again every TOKEN_FILE_PERIOD seconds, as client-go does."""
        if self.config.token_file and not self.config.token and \
                time.monotonic() - self._token_read_at >= TOKEN_FILE_PERIOD:
            self._token_read_at = time.monotonic()
            try:
                token = self.config.bearer_token()
            except Exception as e:  # noqa: BLE001 - keep the last token; the server will say if it is stale
                log.warning("cannot read the token file again: %s", e)
                token = None
            if token:
                self._fixed_headers = {**self._fixed_headers, "Authorization": f"Bearer {token}"}
        return self._fixed_headers

    @property
    def namespace(self) -> str:
        """The namespace used when a call on a namespaced resource names none."""
        return self._b.namespace

    @property
    def server(self) -> str:
        """The apiserver in use now."""
        return self.servers[self._index]

    def _failed(self, server: str, exc: Exception) -> None:
        """`server` did not answer: move on to the next one, unless another request already did (so that
        concurrent failures do not skip past a server that works)."""
        if len(self.servers) < 2 or isinstance(exc, httpx.PoolTimeout):
            return  # a full local pool says nothing about the server
        with self._index_lock:
            if self.servers[self._index] != server:
                return
            self._index = (self._index + 1) % len(self.servers)
            nxt = self.servers[self._index]
        log.warning("apiserver %s failed (%s: %s); switching to %s", server, type(exc).__name__,
                    exc or "no detail", nxt)

    def _backoff(self, attempt: int) -> float:
        return min(0.1 * (2 ** attempt), 2.0) * random.uniform(0.5, 1.0)

    def _should_retry(self, method: str, exc: httpx.TransportError, attempt: int) -> bool:
        """attempt: failures so far in this request, before this one."""
        if attempt + 1 >= (self.max_retries + 1) * len(self.servers):
            return False
        return isinstance(exc, NOT_SENT) or method in IDEMPOTENT

    def _retry_delay(self, attempt: int) -> float:
        """The pause before the next try after failure number attempt+1: none while servers of this round
        are left to try, a backoff once every server has failed again."""
        n = len(self.servers)
        if (attempt + 1) % n:
            return 0.0
        return self._backoff((attempt + 1) // n - 1)

    def _watch_timeout(self, timeout_seconds: int | None) -> httpx.Timeout:
        # The server ends the stream at timeout_seconds; give it slack before calling the connection dead.
        read = float(timeout_seconds) + 30.0 if timeout_seconds else None
        return httpx.Timeout(self.timeout.write, connect=self._connect_timeout, read=read)

    def _transport_error(self, req: _Request, exc: Exception, server: str) -> TransportError:
        others = f" (servers: {', '.join(self.servers)})" if len(self.servers) > 1 else ""
        return TransportError(f"{req.method} {server}{req.path}: {type(exc).__name__}: {exc or 'no detail'}{others} "
                              f"(is the apiserver running and the kubeconfig server right?)")


# -- sync --------------------------------------------------------------------------


class Watch:
    """An open watch: iterate for (type, object) events; ends when the server ends the stream
    (timeout). `close()` may be called from any thread and makes the iteration end promptly.
    A watch ERROR event raises ApiError (is_gone() for a compacted resourceVersion)."""

    def __init__(self, client: Client, req: _Request, timeout: httpx.Timeout) -> None:
        self._client = client
        self._req = req
        self._timeout = timeout
        self._lock = threading.Lock()
        self._closed = False
        self._resp: httpx.Response | None = None
        self._gen = self._events()
        self._reader: int | None = None  # the thread iterating
        self.resource_version: str = req.params.get("resourceVersion", "")
        self.server = ""  # the apiserver the stream came from, once open

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> tuple[str, Obj]:
        self._reader = threading.get_ident()
        return next(self._gen)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the watch; safe from any thread. A blocked read returns at once because the socket is
        shut down under it; the reading thread then closes the response and the iteration ends."""
        with self._lock:
            self._closed = True
            resp = self._resp
        if self._reader == threading.get_ident():
            self._gen.close()  # the iterating thread itself (e.g. after a break): release the connection now
            return
        if resp is None:
            return
        stream = resp.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _open(self) -> httpx.Response:
        c, http, req = self._client._c, self._client._http, self._req
        attempt = 0
        while True:
            server = c.server
            try:
                http_req = http.build_request(req.method, server + req.path, params=req.params, headers=c._headers,
                                              timeout=self._timeout, extensions=c._extensions)
                resp = http.send(http_req, stream=True)
                self.server = server
                return resp
            except httpx.TransportError as e:
                c._failed(server, e)
                if self._closed or not c._should_retry(req.method, e, attempt):
                    raise c._transport_error(req, e, server) from e
                time.sleep(c._retry_delay(attempt))
                attempt += 1

    def _events(self) -> Generator[tuple[str, Obj], None, None]:
        if self._closed:
            return
        resp = self._open()
        try:
            with self._lock:
                self._resp = resp
                if self._closed:
                    return
            if resp.status_code != 200:
                resp.read()
                raise _error(resp)
            buf = bytearray()
            try:
                for chunk in resp.iter_bytes():
                    for ev in _parse_events(buf, chunk):
                        typ, obj = _event(ev)
                        rv = resource_version(obj)
                        if rv:
                            self.resource_version = rv
                        yield typ, obj
                        if self._closed:
                            return
            except httpx.TransportError as e:
                if self._closed:
                    return
                self._client._c._failed(self.server, e)  # the stream broke: the next watch goes elsewhere
                raise self._client._c._transport_error(self._req, e, self.server) from e
            if buf.strip() and not self._closed:
                raise TransportError(f"the watch stream on {self._req.path} ended inside an event")
        finally:
            resp.close()


class Client:
    """Synchronous, thread-safe client with a connection pool. Use one per process."""

    def __init__(self, config: ClientConfig | str | None = None, *, timeout: float = 30.0,
                 connect_timeout: float = 5.0, max_retries: int = 3, user_agent: str | None = None,
                 transport: httpx.BaseTransport | None = None, servers: Servers | None = None) -> None:
        """config: a ClientConfig, a server URL ("URL1,URL2" for several) or None for the default
        kubeconfig. servers: apiserver URL(s) that replace the config's, keeping its credentials."""
        self._c = _Common(config, timeout, connect_timeout, max_retries, user_agent, servers)
        self.config = self._c.config
        self._b = self._c._b
        self._http = httpx.Client(base_url=self._c.server, verify=self._c._verify, timeout=self._c.timeout,
                                  limits=self._c._limits, transport=transport, trust_env=False)

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None, **kw: Any) -> Client:
        return cls(load_kubeconfig(path, context), **kw)

    @property
    def server(self) -> str:
        """The apiserver in use now (see `servers` for all of them)."""
        return self._c.server

    @property
    def servers(self) -> tuple[str, ...]:
        return self._c.servers

    @property
    def namespace(self) -> str:
        return self._c.namespace

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, req: _Request) -> Obj:
        c = self._c
        attempt = 0
        headers = dict(c._headers)
        if req.content_type:
            headers["Content-Type"] = req.content_type
        waited = 0
        while True:
            server = c.server
            try:
                resp = self._http.request(req.method, server + req.path, params=req.params, content=req.body,
                                          headers=headers, extensions=c._extensions)
            except httpx.TransportError as e:
                c._failed(server, e)
                if not c._should_retry(req.method, e, attempt):
                    raise c._transport_error(req, e, server) from e
                delay = c._retry_delay(attempt)
                log.debug("retrying method=%s path=%s in=%.2fs error=%r", req.method, req.path, delay, e)
                if delay:
                    time.sleep(delay)
                attempt += 1
                continue
            wait = _retry_after(resp)
            if wait is not None and waited < c.max_retries:
                time.sleep(wait)
                waited += 1
                continue
            return _decode(resp)

    # -- verbs --

    def get(self, resource: ResourceType | str, name: str, namespace: str | None = None, *,
            subresource: str | None = None) -> Obj:
        return self._send(self._b.get(resolve(resource), name, namespace, subresource))

    def list(self, resource: ResourceType | str, namespace: str | None = None, *,
             label_selector: str | dict[str, str] | None = None, field_selector: str | dict[str, str] | None = None,
             limit: int | None = None, continue_: str | None = None, resource_version: str | None = None) -> Obj:
        """One List (a page if `limit` is set; metadata.continue names the next). namespace=None lists
        every namespace."""
        return self._send(self._b.list(resolve(resource), namespace, label_selector, field_selector, limit,
                                       continue_, resource_version))

    def list_all(self, resource: ResourceType | str, namespace: str | None = None, *,
                 label_selector: str | dict[str, str] | None = None,
                 field_selector: str | dict[str, str] | None = None, page_size: int = 500) -> Obj:
        """Every matching object, fetched in pages, as one List with one consistent resourceVersion.
        If the snapshot expires between pages (410), starts over with a single unpaged list."""
        rt = resolve(resource)
        first = self.list(rt, namespace, label_selector=label_selector, field_selector=field_selector,
                          limit=page_size)
        items = list(first.get("items") or [])
        token = (first.get("metadata") or {}).get("continue")
        while token:
            try:
                page = self.list(rt, namespace, label_selector=label_selector, field_selector=field_selector,
                                 limit=page_size, continue_=token)
            except ApiError as e:
                if not e.is_gone():
                    raise
                return self.list(rt, namespace, label_selector=label_selector, field_selector=field_selector)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
        first["items"] = items
        first.setdefault("metadata", {}).pop("continue", None)
        return first

    def create(self, resource: ResourceType | str, obj: Obj, namespace: str | None = None, *,
               field_manager: str | None = None, dry_run: bool = False, name: str | None = None,
               subresource: str | None = None) -> Obj:
        """POST obj; with name + subresource to that subresource (e.g. serviceaccounts NAME "token")."""
        return self._send(self._b.create(resolve(resource), obj, namespace, subresource, name,
                                         field_manager=field_manager, dry_run=dry_run))

    def update(self, resource: ResourceType | str, obj: Obj, *, namespace: str | None = None,
               field_manager: str | None = None, dry_run: bool = False, subresource: str | None = None) -> Obj:
        """PUT the whole object; metadata.resourceVersion makes it a compare-and-swap (409 if stale).
        subresource: e.g. "finalize" for namespaces (update_status() for "status")."""
        return self._send(self._b.update(resolve(resource), obj, namespace, subresource, field_manager, dry_run))

    def update_status(self, resource: ResourceType | str, obj: Obj, *, namespace: str | None = None,
                      field_manager: str | None = None, dry_run: bool = False) -> Obj:
        return self._send(self._b.update(resolve(resource), obj, namespace, "status", field_manager, dry_run))

    def patch(self, resource: ResourceType | str, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None, dry_run: bool = False) -> Obj:
        """patch_type: "merge" (RFC 7386), "strategic", "json" (RFC 6902, a list of ops) or "apply"
        (server-side apply: needs field_manager)."""
        return self._send(self._b.patch(resolve(resource), name, patch, namespace, patch_type, subresource,
                                        field_manager, force, dry_run))

    def delete(self, resource: ResourceType | str, name: str, namespace: str | None = None, *,
               grace_period_seconds: int | None = None, propagation_policy: str | None = None,
               preconditions: dict[str, str] | None = None, dry_run: bool = False) -> Obj:
        """Returns the deleted object, the object marked for deletion, or a Success Status.
        preconditions: {"uid": ..., "resourceVersion": ...}."""
        return self._send(self._b.delete(resolve(resource), name, namespace, grace_period_seconds,
                                         propagation_policy, preconditions, dry_run))

    def delete_collection(self, resource: ResourceType | str, namespace: str | None = None, *,
                          label_selector: str | dict[str, str] | None = None,
                          field_selector: str | dict[str, str] | None = None,
                          grace_period_seconds: int | None = None, propagation_policy: str | None = None,
                          dry_run: bool = False) -> Obj:
        return self._send(self._b.delete_collection(resolve(resource), namespace, label_selector, field_selector,
                                                    grace_period_seconds, propagation_policy, dry_run))

    def watch(self, resource: ResourceType | str, namespace: str | None = None, *,
              resource_version: str | None = None, label_selector: str | dict[str, str] | None = None,
              field_selector: str | dict[str, str] | None = None, timeout_seconds: int | None = None,
              allow_bookmarks: bool = True, send_initial_events: bool | None = None) -> Watch:
        """Stream (type, object) events: ADDED, MODIFIED, DELETED, BOOKMARK. Without a resource_version
        the server first sends the current objects as ADDED. An ERROR event raises ApiError."""
        rt = resolve(resource)
        req = self._b.watch(rt, namespace, resource_version, label_selector, field_selector, timeout_seconds,
                            allow_bookmarks, send_initial_events)
        return Watch(self, req, self._c._watch_timeout(timeout_seconds))

    # -- subresource helpers --

    def bind(self, pod: Obj | str, node_name: str, namespace: str | None = None) -> Obj:
        """Assign a pod to a node (POST pods/NAME/binding), as the scheduler does."""
        return self._send(self._b.bind(pod, node_name, namespace))

    def get_scale(self, resource: ResourceType | str, name: str, namespace: str | None = None) -> Obj:
        return self.get(resource, name, namespace, subresource="scale")

    def scale(self, resource: ResourceType | str, name: str, replicas: int, namespace: str | None = None) -> Obj:
        """Set spec.replicas through the scale subresource; returns the new autoscaling/v1 Scale."""
        return self.patch(resource, name, {"spec": {"replicas": replicas}}, namespace, subresource="scale")


# -- async -------------------------------------------------------------------------


class AsyncClient:
    """The asyncio twin of `Client`: same methods, awaited; watch() is an async iterator."""

    def __init__(self, config: ClientConfig | str | None = None, *, timeout: float = 30.0,
                 connect_timeout: float = 5.0, max_retries: int = 3, user_agent: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, servers: Servers | None = None) -> None:
        self._c = _Common(config, timeout, connect_timeout, max_retries, user_agent, servers)
        self.config = self._c.config
        self._b = self._c._b
        self._http = httpx.AsyncClient(base_url=self._c.server, verify=self._c._verify, timeout=self._c.timeout,
                                       limits=self._c._limits, transport=transport, trust_env=False)

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None, **kw: Any) -> AsyncClient:
        return cls(load_kubeconfig(path, context), **kw)

    @property
    def server(self) -> str:
        """The apiserver in use now (see `servers` for all of them)."""
        return self._c.server

    @property
    def servers(self) -> tuple[str, ...]:
        return self._c.servers

    @property
    def namespace(self) -> str:
        return self._c.namespace

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, req: _Request) -> Obj:
        c = self._c
        attempt = 0
        headers = dict(c._headers)
        if req.content_type:
            headers["Content-Type"] = req.content_type
        waited = 0
        while True:
            server = c.server
            try:
                resp = await self._http.request(req.method, server + req.path, params=req.params, content=req.body,
                                                headers=headers, extensions=c._extensions)
            except httpx.TransportError as e:
                c._failed(server, e)
                if not c._should_retry(req.method, e, attempt):
                    raise c._transport_error(req, e, server) from e
                delay = c._retry_delay(attempt)
                if delay:
                    await asyncio.sleep(delay)
                attempt += 1
                continue
            wait = _retry_after(resp)
            if wait is not None and waited < c.max_retries:
                await asyncio.sleep(wait)
                waited += 1
                continue
            return _decode(resp)

    async def get(self, resource: ResourceType | str, name: str, namespace: str | None = None, *,
                  subresource: str | None = None) -> Obj:
        return await self._send(self._b.get(resolve(resource), name, namespace, subresource))

    async def list(self, resource: ResourceType | str, namespace: str | None = None, *,
                   label_selector: str | dict[str, str] | None = None,
                   field_selector: str | dict[str, str] | None = None, limit: int | None = None,
                   continue_: str | None = None, resource_version: str | None = None) -> Obj:
        return await self._send(self._b.list(resolve(resource), namespace, label_selector, field_selector, limit,
                                             continue_, resource_version))

    async def list_all(self, resource: ResourceType | str, namespace: str | None = None, *,
                       label_selector: str | dict[str, str] | None = None,
                       field_selector: str | dict[str, str] | None = None, page_size: int = 500) -> Obj:
        rt = resolve(resource)
        first = await self.list(rt, namespace, label_selector=label_selector, field_selector=field_selector,
                                limit=page_size)
        items = list(first.get("items") or [])
        token = (first.get("metadata") or {}).get("continue")
        while token:
            try:
                page = await self.list(rt, namespace, label_selector=label_selector, field_selector=field_selector,
                                       limit=page_size, continue_=token)
            except ApiError as e:
                if not e.is_gone():
                    raise
                return await self.list(rt, namespace, label_selector=label_selector, field_selector=field_selector)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
        first["items"] = items
        first.setdefault("metadata", {}).pop("continue", None)
        return first

    async def create(self, resource: ResourceType | str, obj: Obj, namespace: str | None = None, *,
                     field_manager: str | None = None, dry_run: bool = False, name: str | None = None,
                     subresource: str | None = None) -> Obj:
        return await self._send(self._b.create(resolve(resource), obj, namespace, subresource, name,
                                               field_manager=field_manager, dry_run=dry_run))

    async def update(self, resource: ResourceType | str, obj: Obj, *, namespace: str | None = None,
                     field_manager: str | None = None, dry_run: bool = False, subresource: str | None = None) -> Obj:
        return await self._send(self._b.update(resolve(resource), obj, namespace, subresource, field_manager,
                                               dry_run))

    async def update_status(self, resource: ResourceType | str, obj: Obj, *, namespace: str | None = None,
                            field_manager: str | None = None, dry_run: bool = False) -> Obj:
        return await self._send(self._b.update(resolve(resource), obj, namespace, "status", field_manager,
                                               dry_run))

    async def patch(self, resource: ResourceType | str, name: str, patch: Any, namespace: str | None = None, *,
                    patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
                    force: bool | None = None, dry_run: bool = False) -> Obj:
        return await self._send(self._b.patch(resolve(resource), name, patch, namespace, patch_type, subresource,
                                              field_manager, force, dry_run))

    async def delete(self, resource: ResourceType | str, name: str, namespace: str | None = None, *,
                     grace_period_seconds: int | None = None, propagation_policy: str | None = None,
                     preconditions: dict[str, str] | None = None, dry_run: bool = False) -> Obj:
        return await self._send(self._b.delete(resolve(resource), name, namespace, grace_period_seconds,
                                               propagation_policy, preconditions, dry_run))

    async def delete_collection(self, resource: ResourceType | str, namespace: str | None = None, *,
                                label_selector: str | dict[str, str] | None = None,
                                field_selector: str | dict[str, str] | None = None,
                                grace_period_seconds: int | None = None, propagation_policy: str | None = None,
                                dry_run: bool = False) -> Obj:
        return await self._send(self._b.delete_collection(resolve(resource), namespace, label_selector,
                                                          field_selector, grace_period_seconds, propagation_policy,
                                                          dry_run))

    async def watch(self, resource: ResourceType | str, namespace: str | None = None, *,
                    resource_version: str | None = None, label_selector: str | dict[str, str] | None = None,
                    field_selector: str | dict[str, str] | None = None, timeout_seconds: int | None = None,
                    allow_bookmarks: bool = True, send_initial_events: bool | None = None,
                    ) -> AsyncIterator[tuple[str, Obj]]:
        """Async generator of (type, object) events; cancel the task or aclose() it to stop.
        An ERROR event raises ApiError."""
        c = self._c
        req = self._b.watch(resolve(resource), namespace, resource_version, label_selector, field_selector,
                            timeout_seconds, allow_bookmarks, send_initial_events)
        attempt = 0
        while True:
            server = c.server
            try:
                http_req = self._http.build_request(req.method, server + req.path, params=req.params,
                                                    headers=c._headers, timeout=c._watch_timeout(timeout_seconds),
                                                    extensions=c._extensions)
                resp = await self._http.send(http_req, stream=True)
                break
            except httpx.TransportError as e:
                c._failed(server, e)
                if not c._should_retry(req.method, e, attempt):
                    raise c._transport_error(req, e, server) from e
                delay = c._retry_delay(attempt)
                if delay:
                    await asyncio.sleep(delay)
                attempt += 1
        try:
            if resp.status_code != 200:
                await resp.aread()
                raise _error(resp)
            buf = bytearray()
            try:
                async for chunk in resp.aiter_bytes():
                    for ev in _parse_events(buf, chunk):
                        yield _event(ev)
            except httpx.TransportError as e:
                c._failed(server, e)
                raise c._transport_error(req, e, server) from e
            if buf.strip():
                raise TransportError(f"the watch stream on {req.path} ended inside an event")
        finally:
            await resp.aclose()

    async def bind(self, pod: Obj | str, node_name: str, namespace: str | None = None) -> Obj:
        return await self._send(self._b.bind(pod, node_name, namespace))

    async def get_scale(self, resource: ResourceType | str, name: str, namespace: str | None = None) -> Obj:
        return await self.get(resource, name, namespace, subresource="scale")

    async def scale(self, resource: ResourceType | str, name: str, replicas: int,
                    namespace: str | None = None) -> Obj:
        return await self.patch(resource, name, {"spec": {"replicas": replicas}}, namespace, subresource="scale")
