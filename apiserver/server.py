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
from dataclasses import dataclass
from typing import Any

import uvicorn

from .app import create_app
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


def write_kubeconfig(path: str, server_url: str) -> None:
    """An admin kubeconfig kubectl uses as it is; written atomically, mode 0600."""
    text = f"""apiVersion: v1
kind: Config
clusters:
- name: kubeling
  cluster:
    server: {server_url}
users:
- name: admin
  user: {{}}
contexts:
- name: kubeling
  context:
    cluster: kubeling
    user: admin
    namespace: default
current-context: kubeling
preferences: {{}}
"""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handling: the caller owns SIGTERM/SIGINT and
    shuts the store down cleanly after the last request."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
    app = create_app(registry, extra_metrics=extra_metrics)
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    write_kubeconfig(os.path.join(data_dir, "admin.kubeconfig"), f"http://{url_host}:{port}")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2)
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    tasks = [asyncio.create_task(_compactor(registry, cfg.compact_interval, cfg.compact_keep))]
    stops: list[Callable[[], None]] = []
    if companions:
        tasks.append(asyncio.create_task(_start_companions(
            server, os.path.join(data_dir, "admin.kubeconfig"), companions, stops)))
    log.info("apiserver listening address=%s:%d data_dir=%s revision=%d", host, port, data_dir, store.revision)
    try:
        await server.serve(sockets=[sock])
    finally:
        for task in tasks:
            task.cancel()
        for stop in reversed(stops):
            await asyncio.to_thread(stop)
        await store.close()
        sock.close()
        log.info("apiserver stopped")
