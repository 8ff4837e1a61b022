"""The controller-manager: runs a chosen set of controllers in one process,
optionally only while it holds the `kube-system/kube-controller-manager` Lease
(so two replicas can run and only one acts)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from dataclasses import dataclass
from types import FrameType
from typing import Any

from kube.client import Client, ConfigError
from kube.client.leaderelection import LeaderElector

from .base import Controller
from .metrics import Metrics

log = logging.getLogger("kubeling.controller-manager")

# name -> "module:Class"; imported only when enabled
CONTROLLERS: dict[str, str] = {
    "replicaset": "controllers.replicaset:ReplicaSetController",
    "deployment": "controllers.deployment:DeploymentController",
    "endpoints": "controllers.endpoints:EndpointsController",
    "endpointslice": "controllers.endpointslice:EndpointSliceController",
    "nodeipam": "controllers.nodeipam:NodeIpamController",
    "nodelifecycle": "controllers.nodelifecycle:NodeLifecycleController",
    "daemonset": "controllers.daemonset:DaemonSetController",
    "garbagecollector": "controllers.garbagecollector:GarbageCollector",
    "namespace": "controllers.namespace:NamespaceController",
    "job": "controllers.job:JobController",
    "ttl-after-finished": "controllers.job:TTLAfterFinishedController",
    "serviceaccount": "controllers.serviceaccount:ServiceAccountController",
}


@dataclass
class Options:
    cluster_cidr: str = "10.244.0.0/16"
    node_cidr_mask_size: int = 24
    node_monitor_grace_period: float = 40.0
    node_monitor_period: float = 5.0

    def for_controller(self, name: str) -> dict[str, Any]:
        if name == "nodeipam":
            return {"cluster_cidr": self.cluster_cidr, "node_cidr_mask_size": self.node_cidr_mask_size}
        if name == "nodelifecycle":
            return {"node_monitor_grace_period": self.node_monitor_grace_period,
                    "monitor_period": self.node_monitor_period}
        return {}


def parse_controllers(text: str) -> list[str]:
    """`*` (all), or a comma list where `-name` removes one: "*,-nodeipam"."""
    wanted: list[str] = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        if part == "*":
            wanted.extend(n for n in CONTROLLERS if n not in wanted)
        elif part.startswith("-"):
            if part[1:] not in CONTROLLERS:
                raise ValueError(f"unknown controller {part[1:]!r}; known: {', '.join(CONTROLLERS)}")
            wanted = [n for n in wanted if n != part[1:]]
        elif part in CONTROLLERS:
            if part not in wanted:
                wanted.append(part)
        else:
            raise ValueError(f"unknown controller {part!r}; known: {', '.join(CONTROLLERS)}")
    return wanted


def default_identity() -> str:
    return f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


class ControllerManager:
    def __init__(self, client: Client, *, controllers: list[str] | None = None, options: Options | None = None,
                 leader_elect: bool = False, identity: str | None = None, lease_duration: float = 15.0,
                 renew_deadline: float = 10.0, retry_period: float = 2.0, metrics: Metrics | None = None) -> None:
        self.client = client
        self.metrics = metrics if metrics is not None else Metrics()
        self.names = controllers if controllers is not None else list(CONTROLLERS)
        self.options = options or Options()
        self.running: list[Controller] = []
        self._lock = threading.Lock()
        self.elector: LeaderElector | None = None
        self._stopper: threading.Thread | None = None
        if leader_elect:
            self.elector = LeaderElector(client, "kube-system", "kube-controller-manager", identity or default_identity(),
                                         lease_duration=lease_duration, renew_deadline=renew_deadline,
                                         retry_period=retry_period, on_started_leading=self._lead,
                                         on_stopped_leading=self._unlead)

    def start(self) -> None:
        if self.elector is not None:
            self.elector.start()
        else:
            self._start_all()

    def stop(self) -> None:
        if self.elector is not None:
            self.elector.stop()
        stopper = self._stopper
        if stopper is not None:  # losing the lease started a stop: wait for it, or stop() returns early
            stopper.join(30)
        self._stop_all()

    def _lead(self) -> None:
        threading.Thread(target=self._start_all, name="controllers-start", daemon=True).start()

    def _unlead(self) -> None:
        self._stopper = threading.Thread(target=self._stop_all, name="controllers-stop", daemon=True)
        self._stopper.start()

    def _start_all(self) -> None:
        """Fresh controller objects each time: a stopped one is not restartable."""
        with self._lock:
            if self.running:
                return
            for name in self.names:
                module, _, cls_name = CONTROLLERS[name].partition(":")
                cls = getattr(importlib.import_module(module), cls_name)
                ctl: Controller = cls(self.client, **self.options.for_controller(name))
                ctl.instrument(self.metrics)
                self.running.append(ctl)
        for ctl in list(self.running):
            if not ctl.start():
                log.warning("controller=%s started before its caches synced; it will catch up", ctl.name)
        log.info("controller-manager running controllers=%s", ",".join(self.names))

    def _stop_all(self) -> None:
        with self._lock:
            running, self.running = self.running, []
        for ctl in running:
            ctl.stop()


def add_args(p: argparse.ArgumentParser, *, standalone: bool = True) -> None:
    if standalone:
        p.add_argument("--kubeconfig", default=None, help="kubeconfig to reach the apiserver (default: $KUBECONFIG)")
        p.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True,
                       help="act only while holding the kube-system/kube-controller-manager Lease (default on)")
        p.add_argument("--metrics-address", default="127.0.0.1:10257", metavar="HOST:PORT",
                       help="serve Prometheus /metrics here (default %(default)s; '' or 0 disables)")
    p.add_argument("--controllers", default="*", metavar="LIST",
                   help=f"controllers to run: '*' for all, or a comma list; '-name' removes one "
                        f"(known: {', '.join(CONTROLLERS)})")
    p.add_argument("--cluster-cidr", default="10.244.0.0/16", help="pod range node IPAM allocates from")
    p.add_argument("--node-cidr-mask-size", type=int, default=24, help="prefix length of each node's podCIDR")
    p.add_argument("--node-monitor-grace-period", type=float, default=40.0, metavar="SECONDS",
                   help="a node whose Lease is older than this becomes Unknown (default %(default)s)")
    p.add_argument("--node-monitor-period", type=float, default=5.0, metavar="SECONDS",
                   help="how often node health is checked (default %(default)s)")


def from_args(client: Client, args: argparse.Namespace, *, leader_elect: bool | None = None) -> ControllerManager:
    options = Options(cluster_cidr=args.cluster_cidr, node_cidr_mask_size=args.node_cidr_mask_size,
                      node_monitor_grace_period=args.node_monitor_grace_period,
                      node_monitor_period=args.node_monitor_period)
    return ControllerManager(client, controllers=parse_controllers(args.controllers), options=options,
                             leader_elect=args.leader_elect if leader_elect is None else leader_elect)


def run(args: argparse.Namespace) -> int:
    try:
        client = Client.from_kubeconfig(args.kubeconfig)
        cm = from_args(client, args)
    except (ConfigError, OSError, ValueError) as e:
        print(f"kubeling controller-manager: {e}", file=sys.stderr)
        return 2
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    metrics_server = None
    if args.metrics_address and args.metrics_address != "0":
        try:
            metrics_server = cm.metrics.serve(args.metrics_address)
        except (OSError, ValueError) as e:
            log.warning("controller-manager: cannot serve metrics on %s: %s", args.metrics_address, e)
    cm.start()
    done.wait()
    cm.stop()
    if metrics_server is not None:
        metrics_server.shutdown()
    client.close()
    return 0
