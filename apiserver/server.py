"""Start-up of the apiserver: check the address and data dir, open the store,
write the admin kubeconfig, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from kube import pki

from . import audit, errors, httpproto, ratelimit, security
from .app import create_app
from .auth.authn import AuthnMiddleware
from .auth.authz import DEFAULT_MODES, parse_modes, start_authorization
from .registry import Registry
from .store.base import StoreError
from .store.etcd import EtcdStore
from .store.sqlite import open_store

log = logging.getLogger("kubeling.apiserver")


class StartupError(Exception):
    """A problem the operator must fix; printed as one line."""


@dataclass
class ServerConfig:
    listen: str = "127.0.0.1:6443"
    data_dir: str = "/var/lib/kubeling"
    store: str = ""
    service_cidr: str = "10.96.0.0/12"
    node_port_range: str = "30000-32767"
    compact_interval: float = 300.0  # seconds between compactions
    compact_keep: int = 10_000  # revisions kept behind the newest
    bookmark_interval: float = 30.0
    security: security.SecurityConfig = field(default_factory=security.SecurityConfig)
    # per-client rate limits (ratelimit.py), what one connection may hold (httpproto.py), the audit log (audit.py)
    max_requests_per_client_qps: float = ratelimit.DEFAULT_QPS  # 0: no limit
    max_requests_per_client_burst: int = ratelimit.DEFAULT_BURST
    max_connections: int = 4096
    request_header_timeout: float = 32.0
    request_body_timeout: float = 60.0
    idle_connection_timeout: float = 90.0
    audit_log_path: str = ""  # "" off, "-" standard output
    audit_log_maxage: int = 30  # days
    audit_log_maxbackup: int = 10
    audit_log_maxsize: int = 100  # MB
    authorization_mode: str = ",".join(DEFAULT_MODES)  # --authorization-mode: Node,RBAC; AlwaysAllow only if asked
    companions_have_kubeconfigs: bool = False  # kubeling server --scheduler-/--controller-manager-kubeconfig


def _limits(cfg: ServerConfig) -> tuple[ratelimit.RateLimiter, httpproto.ConnectionLimits]:
    for flag, value in (("--max-requests-per-client-qps", cfg.max_requests_per_client_qps),
                        ("--max-connections", cfg.max_connections),
                        ("--request-header-timeout", cfg.request_header_timeout),
                        ("--request-body-timeout", cfg.request_body_timeout),
                        ("--idle-connection-timeout", cfg.idle_connection_timeout)):
        if value < 0:
            raise StartupError(f"{flag} {value}: must not be negative")
    try:
        limiter = ratelimit.RateLimiter(cfg.max_requests_per_client_qps, cfg.max_requests_per_client_burst)
    except ValueError as e:
        raise StartupError(f"--max-requests-per-client-burst: {e}") from None
    limits = httpproto.ConnectionLimits(header_timeout=cfg.request_header_timeout, body_timeout=cfg.request_body_timeout,
                                        idle_timeout=cfg.idle_connection_timeout,
                                        max_connections=cfg.max_connections or 1_000_000)
    return limiter, limits


def _audit_writer(cfg: ServerConfig) -> audit.AuditFileWriter | None:
    """The audit log's writer (its thread running), or None without --audit-log-path; fails at start."""
    if not cfg.audit_log_path:
        return None
    try:
        return audit.AuditFileWriter(cfg.audit_log_path, cfg.audit_log_maxage, cfg.audit_log_maxbackup,
                                     cfg.audit_log_maxsize)
    except ValueError as e:
        raise StartupError(str(e)) from None
    except OSError as e:
        raise StartupError(f"--audit-log-path {cfg.audit_log_path}: {e.strerror or e}") from None


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not (0 < int(port) < 65536):
        raise StartupError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:6443")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_port_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    if not sep or not lo.isdigit() or not hi.isdigit() or int(lo) > int(hi):
        raise StartupError(f"--service-node-port-range {text!r}: expected LOW-HIGH, e.g. 30000-32767")
    return int(lo), int(hi)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise StartupError(f"cannot listen on {host}:{port}: the address is already in use") from None
        raise StartupError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def prepare_data_dir(path: str) -> str:
    path = os.path.abspath(path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise StartupError(f"data dir {path} is unusable: {e.strerror}") from None
    if not os.path.isdir(path):
        raise StartupError(f"data dir {path} is not a directory")
    probe = os.path.join(path, ".write-test")
    try:
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as e:
        raise StartupError(f"data dir {path} is not writable: {e.strerror}") from None
    return path


def write_kubeconfig(path: str, server_url: str, **credentials: Any) -> None:
    """An admin kubeconfig kubectl uses as it is; written atomically, mode 0600. credentials: see
    kube.pki.kubeconfig_yaml (ca_data, cert_data, key_data, token, ...); none for plain HTTP."""
    pki.write_kubeconfig(path, server_url, **credentials)


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handling: the caller owns SIGTERM/SIGINT and
    shuts the store down cleanly after the last request."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _close(store: Any, sock: socket.socket) -> None:
    await store.close()
    sock.close()


async def _compactor(registry: Registry, interval: float, keep: int) -> None:
    while True:
        await asyncio.sleep(interval)
        target = registry.store.revision - keep
        if target > registry.store.compacted_revision:
            try:
                await registry.store.compact(target)
                log.info("compacted revision=%d", target)
            except StoreError as e:
                log.warning("compaction failed: %s", e)


Companion = Callable[[str], Callable[[], None]]  # started with the admin kubeconfig; returns its stop()


async def _start_companions(server: uvicorn.Server, kubeconfig: str, companions: list[Companion],
                            stops: list[Callable[[], None]]) -> None:
    """Once the server answers, start the in-process components (scheduler, controllers) in threads:
    they talk to this apiserver over HTTP like any other client."""
    while not server.started:
        await asyncio.sleep(0.02)
    for start in companions:
        stops.append(await asyncio.to_thread(start, kubeconfig))


async def serve(cfg: ServerConfig, companions: list[Companion] | None = None,
                extra_metrics: list[Any] | None = None) -> None:
    """extra_metrics: prometheus registries of the companions, served on this /metrics too."""
    host, port = parse_listen(cfg.listen)
    data_dir = prepare_data_dir(cfg.data_dir)
    ports = parse_port_range(cfg.node_port_range)
    try:
        modes = parse_modes(cfg.authorization_mode)
    except ValueError as e:
        raise StartupError(str(e)) from None
    try:
        sec = security.resolve(cfg.security, data_dir, host, port, cfg.service_cidr)
    except security.SecurityError as e:
        raise StartupError(str(e)) from None
    limiter, limits = _limits(cfg)
    audit_writer = _audit_writer(cfg)
    sock = bind_socket(host, port)
    try:
        store = open_store(cfg.store, data_dir)
        if isinstance(store, EtcdStore):
            await store.connect()  # fail now, in one line, when etcd is unreachable
    except StoreError as e:
        sock.close()
        raise StartupError(str(e)) from None
    try:
        registry = Registry(store, service_cidr=cfg.service_cidr, node_port_range=ports,
                            bookmark_interval=cfg.bookmark_interval)
    except ValueError as e:
        sock.close()
        await store.close()
        raise StartupError(str(e)) from None
    await registry.start()
    try:
        authz = await start_authorization(registry, modes)  # default RBAC policy + in-memory caches
    except (TimeoutError, StoreError) as e:
        await _close(store, sock)
        raise StartupError(f"authorization could not start: {e}") from None
    app = create_app(registry, extra_metrics=extra_metrics)
    app.state.authz = authz
    authenticator = sec.authenticator(registry)
    app.state.authenticator, app.state.token_issuer = authenticator, sec.issuer
    app.state.kubelet = sec.kubelet  # how logs/exec/attach/port-forward reach the agents (nodeproxy.KubeletClient)
    # authentication wraps everything: every later layer (authorization, limits, audit) reads scope[USER_KEY];
    # the rate limit sits right inside it (refusals before any routing or body read), the audit log outside
    # it (it also records mutating requests refused with 401) and reads the user when the request is done
    on_reject = ratelimit.rejection_counter(app.state.metrics.registry)
    limited = ratelimit.RateLimitMiddleware(errors.ErrorGuard(app), limiter, on_reject=on_reject)
    asgi: Any = AuthnMiddleware(limited, authenticator)
    if audit_writer is not None:
        asgi = audit.AuditMiddleware(asgi, audit_writer)
    kubeconfig = os.path.join(data_dir, "admin.kubeconfig")
    if sec.insecure:
        log.warning("insecure serving: plain HTTP, no authentication, every request acts as system:insecure "
                    "(system:masters). Never expose this port.")
        write_kubeconfig(kubeconfig, f"http://{security.url_host(host)}:{port}")
    elif sec.admin_credentials:
        write_kubeconfig(kubeconfig, sec.server_url, **sec.admin_credentials)
    elif companions and not cfg.companions_have_kubeconfigs and not os.path.exists(kubeconfig):
        await _close(store, sock)
        raise StartupError(f"with --tls-cert-file the scheduler and controllers need credentials: put an admin "
                           f"kubeconfig at {kubeconfig} (e.g. from `kubeling pki init`)")
    config = uvicorn.Config(asgi, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2,
                            http=httpproto.HttpProtocol, ws=httpproto.WebSocketProtocol or "none",
                            timeout_keep_alive=max(1, int(cfg.idle_connection_timeout)))
    config.load()
    config.connection_limits = limits  # type: ignore[attr-defined]  # read by httpproto.HttpProtocol
    config.ssl = sec.ssl_context  # our own context (TLS versions, ciphers, client CA), not uvicorn's defaults
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    tasks = [asyncio.create_task(_compactor(registry, cfg.compact_interval, cfg.compact_keep))]
    stops: list[Callable[[], None]] = []
    if companions:
        tasks.append(asyncio.create_task(_start_companions(
            server, os.path.join(data_dir, "admin.kubeconfig"), companions, stops)))
    log.info("apiserver listening address=%s:%d scheme=%s data_dir=%s revision=%d", host, port, sec.scheme, data_dir,
             store.revision)
    try:
        await server.serve(sockets=[sock])
    finally:
        for task in tasks:
            task.cancel()
        for stop in reversed(stops):
            await asyncio.to_thread(stop)
        await authz.stop()
        await store.close()
        sock.close()
        if audit_writer is not None:
            await asyncio.to_thread(audit_writer.close)
        log.info("apiserver stopped")
