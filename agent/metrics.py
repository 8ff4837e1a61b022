"""The agent's Prometheus metrics (names as upstream kubelet's), served on the agent API's /metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from agent import runtime as rt

_START_BUCKETS = (0.5, 1, 2, 3, 4, 5, 6, 8, 10, 20, 30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200)

# Runtime method -> upstream's operation_type (kubelet_runtime_operations_total).
OPERATIONS = {"create": "create_container", "start": "start_container", "stop": "stop_container",
              "remove": "remove_container", "pull": "pull_image", "image_id": "image_status",
              "exec": "exec_sync", "containers": "list_containers", "list_ids": "list_containers",
              "logs": "container_logs", "version": "version"}


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.clock = clock
        r = self.registry
        self.pod_start = Histogram(
            "kubelet_pod_start_sli_duration_seconds",
            "From the agent first seeing a pod to all its containers running (image pulls included).",
            buckets=_START_BUCKETS, registry=r)
        self.running_pods = Gauge("kubelet_running_pods", "Pods with at least one running container.", registry=r)
        self.running_containers = Gauge("kubelet_running_containers", "Containers running, by state.",
                                        ["container_state"], registry=r)
        self.runtime_ops = Counter("kubelet_runtime_operations_total", "Container runtime calls, by operation.",
                                   ["operation_type"], registry=r)
        self.runtime_errors = Counter("kubelet_runtime_operations_errors_total",
                                      "Container runtime calls that raised, by operation.", ["operation_type"],
                                      registry=r)
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}  # uid -> first seen, until all its containers ran
        self._running: dict[str, int] = {}  # uid -> running containers in its last status
        self.running_pods.set_function(lambda: float(sum(1 for n in self._running.values() if n)))
        self.running_containers.labels("running").set_function(lambda: float(sum(self._running.values())))

    def seen(self, uid: str) -> None:
        with self._lock:
            if uid not in self._seen and uid not in self._running:
                self._seen[uid] = self.clock()

    def status(self, uid: str, st: dict[str, Any]) -> None:
        """A status the agent computed for the pod: count its running containers, and observe the
        start SLI the first time all of them run."""
        statuses = st.get("containerStatuses") or []
        n = sum(1 for s in statuses if "running" in (s.get("state") or {}))
        with self._lock:
            self._running[uid] = n
            t0 = self._seen.get(uid)
            if t0 is not None and statuses and n == len(statuses):
                del self._seen[uid]
                self.pod_start.observe(self.clock() - t0)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._seen.pop(uid, None)
            self._running.pop(uid, None)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _Metered:
    def __init__(self, runtime: rt.Runtime, metrics: Metrics) -> None:
        self._runtime = runtime
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._runtime, name)
        op = OPERATIONS.get(name)
        if op is None or not callable(fn):
            return fn
        ops, errs = self._metrics.runtime_ops.labels(op), self._metrics.runtime_errors.labels(op)

        def call(*args: Any, **kwargs: Any) -> Any:
            ops.inc()
            try:
                return fn(*args, **kwargs)
            except Exception:
                errs.inc()
                raise

        return call


def metered(runtime: rt.Runtime, metrics: Metrics) -> rt.Runtime:
    """The runtime, with each call counted into kubelet_runtime_operations_total."""
    return cast(rt.Runtime, _Metered(runtime, metrics))
