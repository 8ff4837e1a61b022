"""The sync loop: informers -> dirty -> rate-limited sync -> render -> one restore per table.

    proxier = Proxier(client, ProxierConfig(node_name="n1"), RestoreBackend(mode, netns),
                      host=IPRouteHost(netns), conntrack=ExecConntrack(netns), metrics=Metrics())
    proxier.start(); ...; proxier.stop()

- Services, EndpointSlices and this node's Node object are watched by informers. Nothing is
  synced until all three have listed (house rule 8).
- Any change marks the proxier dirty. The sync thread coalesces: at most one sync per
  `min_sync_period` (a change right after an idle spell is applied at once), and a full
  resync every `sync_period` even when nothing changed (level-triggered: the kernel state
  is rewritten from the caches, so lost events or a foreign flush heal).
- Each sync builds every ServicePort from the caches, reads the node's addresses, renders
  the whole ruleset (pure) and hands it to the backend, which applies each table in one
  atomic `iptables-restore --noflush`. Then stale UDP conntrack entries are deleted.
- A failed sync is retried with a doubling backoff (0.5 s .. 30 s); nothing here raises
  out of the thread. Stopping never touches the rules: they stay in the kernel, so
  traffic keeps flowing while the proxy is down or restarting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from kube.client import Client, Informer, object_key

from .conntrack import Conntrack, stale_flushes
from .metrics import Metrics
from .model import SERVICE_NAME_LABEL, NodeInfo, ServicePort, service_ports
from .routes import Host, HostError

log = logging.getLogger("kubeling.proxy")

TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
Obj = dict[str, Any]


class Backend(Protocol):
    """What the proxier needs from proxy.iptables.RestoreBackend (and its FakeBackend)."""

    def apply(self, rendered: Any, *, full: bool = False) -> Any: ...

    def our_chains(self) -> Any: ...

    def cleanup(self) -> Any: ...


class Source(Protocol):
    """What the proxier needs from an Informer (tests may pass a fake)."""

    def add_handlers(self, on_add: Any = None, on_update: Any = None, on_delete: Any = None) -> None: ...

    def start(self) -> Any: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def has_synced(self) -> bool: ...

    def list(self) -> list[Obj]: ...

    def get(self, key: str) -> Obj | None: ...


RenderFn = Callable[..., Any]


@dataclass(frozen=True)
class ProxierConfig:
    node_name: str
    min_sync_period: float = 1.0
    sync_period: float = 30.0
    cluster_cidr: str = ""
    service_cidr: str = "10.96.0.0/12"  # "" = never add a route for it
    masquerade_all: bool = False
    first_backoff: float = 0.5
    max_backoff: float = 30.0


def trigger_time(obj: Obj) -> float | None:
    """The change time an EndpointSlice carries (as upstream's endpointslice controller sets it)."""
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(TRIGGER_TIME_ANNOTATION)
    if not raw:
        return None
    try:
        return datetime.fromisoformat(str(raw)).timestamp()
    except ValueError:
        return None


def node_addresses(node: Obj | None) -> list[str]:
    """InternalIP addresses of a Node object, in order."""
    if not node:
        return []
    return [str(a["address"]) for a in ((node.get("status") or {}).get("addresses") or [])
            if isinstance(a, dict) and a.get("type") == "InternalIP" and a.get("address")]


def default_render() -> tuple[RenderFn, Callable[..., Any]]:
    from proxy import render  # the other half of the proxy; imported late so unit tests can run without it
    return render.render, render.RenderConfig


class Proxier:
    def __init__(self, client: Client | None, cfg: ProxierConfig, backend: Backend, *, host: Host | None = None,
                 conntrack: Conntrack | None = None, metrics: Metrics | None = None,
                 render_fn: RenderFn | None = None, render_cfg: Any = None,
                 sources: tuple[Source, Source, Source] | None = None) -> None:
        """sources: (services, endpointslices, node) informers; made from `client` when not given."""
        self.cfg = cfg
        self.backend = backend
        self.host = host
        self._host_addrs: list[str] | None = None  # the namespace's addresses, re-read on full syncs
        self._host_ready = False  # service route + route_localnet done; redone on full syncs
        self.conntrack = conntrack
        self.metrics = metrics or Metrics()
        if render_fn is None or render_cfg is None:
            fn, cfg_cls = default_render()
            render_fn = render_fn or fn
            if render_cfg is None:
                render_cfg = cfg_cls(masquerade_all=cfg.masquerade_all, cluster_cidr=cfg.cluster_cidr)
        self.render_fn = render_fn
        self.render_cfg = render_cfg
        if sources is None:
            if client is None:
                raise ValueError("a client or the sources are needed")
            sources = (Informer(client, "services"),
                       Informer(client, "endpointslices", label_selector=SERVICE_NAME_LABEL),
                       Informer(client, "nodes", field_selector=f"metadata.name={cfg.node_name}"))
        self.services: Source = sources[0]
        self.slices: Source = sources[1]
        self.nodes: Source = sources[2]
        for kind, src in (("service", self.services), ("endpointslice", self.slices)):
            src.add_handlers(on_add=self._observer(kind), on_update=self._updated(kind),
                             on_delete=self._observer(kind))
        self.nodes.add_handlers(on_add=self._node_changed, on_update=lambda old, new: self._node_changed(new),
                                on_delete=self._node_changed)

        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._dirty = True
        self._synced = False  # all caches listed: from then on changes have a programming latency
        self._pending: dict[tuple[str, str], float] = {}  # (kind, key) -> when it changed (unix time)
        self._last_attempt = -1e9
        self._last_success = -1e9
        self._retry_at = 0.0
        self._backoff = cfg.first_backoff
        self._applied: list[ServicePort] | None = None  # what the kernel has, as far as we know
        self._thread: threading.Thread | None = None
        self.syncs = 0  # successful syncs
        self.failures = 0  # failed sync attempts
        self.synced_event = threading.Event()  # set after the first successful sync

    # -- change notifications (informer threads; quick) --

    def _observer(self, kind: str) -> Callable[[Obj], None]:
        def on_change(obj: Obj) -> None:
            self._mark(kind, obj)
        return on_change

    def _updated(self, kind: str) -> Callable[[Obj, Obj], None]:
        def on_update(old: Obj, new: Obj) -> None:
            self._mark(kind, new)
        return on_update

    def _mark(self, kind: str, obj: Obj) -> None:
        now = time.time()
        with self._cond:
            if self._synced:  # changes from the initial lists have no meaningful latency
                t = trigger_time(obj) if kind == "endpointslice" else None
                self._pending.setdefault((kind, object_key(obj)), t if t is not None and t <= now else now)
            self._dirty = True
            self._cond.notify_all()

    def _node_changed(self, obj: Obj) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify_all()

    # -- lifecycle --

    def start(self) -> Proxier:
        for src in (self.services, self.slices, self.nodes):
            src.start()
        self._thread = threading.Thread(target=self._run, name="proxier-sync", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop syncing. The rules stay as they are."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for src in (self.services, self.slices, self.nodes):
            src.stop(timeout=2.0)
        if self._thread is not None:
            self._thread.join(timeout)

    def has_synced(self) -> bool:
        return all(src.has_synced() for src in (self.services, self.slices, self.nodes))

    def _run(self) -> None:
        while not self.has_synced():
            if self._stop.wait(0.05):
                return
        with self._cond:
            self._synced = True
            self._dirty = True
        log.info("caches synced: services=%d endpointslices=%d", len(self.services.list()),
                 len(self.slices.list()))
        while True:
            with self._cond:
                while True:
                    if self._stop.is_set():
                        return
                    now = time.monotonic()
                    periodic = self._last_success + self.cfg.sync_period
                    if self._dirty:
                        due = max(self._last_attempt + self.cfg.min_sync_period, self._retry_at)
                    else:
                        due = periodic
                    if now >= due:
                        break
                    self._cond.wait(due - now)
                full = now >= periodic
                self._dirty = False
                pending, self._pending = self._pending, {}
            self._last_attempt = time.monotonic()
            ok = self.sync(pending, full=full)
            with self._cond:
                if ok:
                    self._last_success = self._last_attempt
                    self._backoff = self.cfg.first_backoff
                    self._retry_at = 0.0
                else:
                    for k, t in pending.items():  # keep the earliest change time for the retry
                        self._pending[k] = min(t, self._pending.get(k, t))
                    self._dirty = True
                    self._retry_at = time.monotonic() + self._backoff
                    log.warning("sync failed; retrying in %.1fs", self._backoff)
                    self._backoff = min(self._backoff * 2, self.cfg.max_backoff)

    # -- one sync --

    def node_info(self, refresh: bool = False) -> NodeInfo:
        node = self.nodes.get(self.cfg.node_name)
        addrs = node_addresses(node)
        if not addrs and self.host is not None:
            if refresh or self._host_addrs is None:  # an `ip` fork per sync would cost more than the render
                try:
                    self._host_addrs = [a.ip for a in self.host.addresses()]
                except HostError as e:
                    self.metrics.sync_errors.labels("node").inc()
                    log.warning("reading the node's addresses: %s", e)
            addrs = list(self._host_addrs or [])
        pod_cidr = self.cfg.cluster_cidr or str(((node or {}).get("spec") or {}).get("podCIDR") or "")
        return NodeInfo(name=self.cfg.node_name, addresses=tuple(dict.fromkeys(addrs)), pod_cidr=pod_cidr)

    def _prepare_host(self, node: NodeInfo) -> bool:
        """The namespace-wide settings the rules rely on (first sync, then each full resync)."""
        assert self.host is not None
        ok = True
        if self.cfg.service_cidr:
            try:
                done = self.host.ensure_service_route(self.cfg.service_cidr)
                if done:
                    log.info("%s so that ClusterIPs are reachable from the node", done)
            except HostError as e:
                ok = False
                self.metrics.sync_errors.labels("route").inc()
                log.warning("service route: %s", e)
        if node.localhost_nodeports:
            try:
                self.host.enable_route_localnet()
            except HostError as e:
                ok = False
                self.metrics.sync_errors.labels("route").inc()
                log.warning("NodePorts on 127.0.0.1 will not answer: %s", e)
        return ok

    def build(self) -> list[ServicePort]:
        return service_ports(self.services.list(), self.slices.list())

    def sync(self, pending: dict[tuple[str, str], float] | None = None, *, full: bool = False) -> bool:
        """One sync; True if the rules were applied. Never raises.

        The whole ruleset is always rendered; the backend sends only the chains that changed
        since its last apply, unless `full` (the periodic resync): then it re-reads the kernel
        and rewrites all our chains and jumps, which heals anything done behind our back."""
        started = time.monotonic()
        stage = "render"
        try:
            ports = self.build()
            node = self.node_info(refresh=full)
            if self.host is not None and (full or not self._host_ready):
                self._host_ready = self._prepare_host(node)
            rendered = self.render_fn(ports, node, self.render_cfg)
            stage = "apply"
            self.backend.apply(rendered, full=full)
        except Exception as e:
            self.failures += 1
            self.metrics.sync_errors.labels(stage).inc()
            log.warning("sync failed at %s: %s", stage, e, exc_info=log.isEnabledFor(logging.DEBUG))
            return False
        applied_at = time.time()
        took = time.monotonic() - started
        self.metrics.sync_duration.observe(took)
        self.metrics.last_sync.set(applied_at)
        self.metrics.services.set(len(ports))
        self.metrics.endpoints.set(sum(len(sp.usable_endpoints()) for sp in ports))
        for t in (pending or {}).values():
            self.metrics.programming_latency.observe(max(0.0, applied_at - t))
        self._clear_conntrack(ports)
        self.syncs += 1
        if not self.synced_event.is_set():
            log.info("first sync applied: %d service ports on node %s in %.3fs", len(ports), self.cfg.node_name,
                     took)
            self.synced_event.set()
        else:
            log.debug("sync applied: %d service ports in %.3fs", len(ports), took)
        return True

    def _clear_conntrack(self, ports: Sequence[ServicePort]) -> None:
        flushes = stale_flushes(self._applied, ports)
        self._applied = list(ports)
        if self.conntrack is None:
            return
        for e in self.conntrack.flush_many(flushes):
            # The rules are in; a stale UDP flow stays pinned until it idles out. Say so, go on.
            self.metrics.sync_errors.labels("conntrack").inc()
            log.warning("clearing stale conntrack entries: %s", e)
