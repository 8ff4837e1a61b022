"""The Agent: pods informer (spec.nodeName=<node>) -> WorkQueue of pod UIDs -> PodWorkers.

Also: a relist of this node's Docker containers (period `relist_period`) and a Docker event
stream, both of which only enqueue UIDs; orphans (containers of pods the API no longer has)
are enqueued only after the informer has synced.  Restarting the agent restarts no container:
workers find running containers by label and adopt them.  Docker down -> runtime_ready(False)
with a reason, retries with back-off; the agent never exits because of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent import runtime as rt
from agent.events import EventRecorder
from agent.metrics import Metrics, metered
from agent.sandbox import Sandboxes
from agent.worker import Hooks, PodWorkers
from kube.client import Client, Informer, WorkQueue

log = logging.getLogger("kubeling.agent")

RESYNC_PERIOD = 10.0


class Agent:
    def __init__(self, client: Client, node: str, runtime: rt.Runtime, sandboxes: Sandboxes, *,
                 hooks: Hooks | None = None, host_ip: str = "", workers: int = 8, relist_period: float = 1.0,
                 runtime_ready: Callable[[bool, str], None] | None = None) -> None:
        self.client = client
        self.node = node
        self.metrics = Metrics()
        runtime = metered(runtime, self.metrics)
        self.runtime = runtime
        self.sandboxes = sandboxes
        self.queue: WorkQueue[str] = WorkQueue(name=f"agent-{node}")
        self.events = EventRecorder(client, node)
        self.workers = PodWorkers(client, node, runtime, sandboxes, hooks=hooks, events=self.events,
                                  host_ip=host_ip, requeue=self.queue.add_after,
                                  on_status=self.metrics.status)
        self.n_workers = workers
        self.relist_period = relist_period
        self.runtime_ready_cb = runtime_ready or (lambda ok, reason: None)
        self.pods: dict[str, dict[str, Any]] = {}  # uid -> desired pod (from the informer)
        self.last: dict[str, dict[str, Any]] = {}  # uid -> last pod seen (also after deletion)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._fingerprints: dict[str, frozenset[tuple[str, str]]] = {}
        self._runtime_ok: bool | None = None
        self.started_at = 0.0
        self.first_sync_seconds: float | None = None
        self._first_pending: set[str] | None = None
        self.informer = Informer(client, "pods", field_selector=f"spec.nodeName={node}",
                                 on_add=self._on_upsert, on_update=lambda old, new: self._on_upsert(new),
                                 on_delete=self._on_delete)

    # -- informer handlers --

    def _on_upsert(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            self.pods[uid] = pod
            self.last[uid] = pod
        self.metrics.seen(uid)
        self.queue.add(uid)

    def _on_delete(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            self.pods.pop(uid, None)
            self.last[uid] = pod
        self.queue.add(uid)

    # -- lifecycle --

    def start(self) -> Agent:
        self.started_at = time.monotonic()
        self.events.start()
        self.informer.start()
        for i in range(self.n_workers):
            self._spawn(self._work, f"pod-worker-{i}")
        self._spawn(self._relist_loop, "relist")
        self._spawn(self._events_loop, "docker-events")
        log.info("agent started node=%s workers=%d", self.node, self.n_workers)
        return self

    def _spawn(self, fn: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.informer.stop()
        self.queue.shutdown()
        for t in self._threads:
            if t.name.startswith("pod-worker") or t.name == "relist":
                t.join(5)
        self.events.stop()
        self.workers.close()
        log.info("agent stopped node=%s", self.node)

    def wait_first_sync(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.first_sync_seconds is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.first_sync_seconds is not None

    # -- workers --

    def _work(self) -> None:
        while not self._stop.is_set():
            uid = self.queue.get()
            if uid is None:
                return
            try:
                with self._lock:
                    pod = self.pods.get(uid)
                    last = self.last.get(uid)
                if pod is None and not self.informer.has_synced():
                    self.queue.add_after(uid, 0.2)  # don't act on partial knowledge
                    continue
                self.workers.sync(uid, pod, last)
                self.queue.forget(uid)
                if pod is None and uid not in self.workers.killing:
                    with self._lock:
                        if uid not in self.pods:
                            self.last.pop(uid, None)
                    self.metrics.forget(uid)
                self._done_first(uid)
            except rt.RuntimeUnavailable as e:
                self._set_runtime(False, str(e))
                self.queue.add_rate_limited(uid)
            except Exception:
                log.exception("pod sync failed uid=%s", uid)
                self.queue.add_rate_limited(uid)
            finally:
                self.queue.done(uid)

    def _done_first(self, uid: str) -> None:
        pending = self._first_pending
        if pending is None:
            return
        pending.discard(uid)
        if not pending and self.first_sync_seconds is None:
            self.first_sync_seconds = time.monotonic() - self.started_at
            log.info("first full sync done node=%s pods=%d seconds=%.3f", self.node, len(self.pods),
                     self.first_sync_seconds)

    # -- runtime relist --

    def _set_runtime(self, ok: bool, reason: str) -> None:
        if ok != self._runtime_ok:
            (log.info if ok else log.warning)("container runtime %s reason=%s", "ready" if ok else "NOT ready",
                                              reason)
            self._runtime_ok = ok
            try:
                self.runtime_ready_cb(ok, reason)
            except Exception:
                log.exception("runtime_ready callback failed")

    def relist(self) -> None:
        """One pass: enqueue pods whose containers changed, and (once synced) orphans."""
        ids = self.runtime.list_ids({rt.L_NODE: self.node})
        self._set_runtime(True, "")
        groups: dict[str, set[tuple[str, str]]] = {}
        for cid, (state, labels) in ids.items():
            uid = labels.get(rt.L_POD_UID)
            if uid:
                groups.setdefault(uid, set()).add((cid, state))
        fps = {uid: frozenset(v) for uid, v in groups.items()}
        for uid, fp in fps.items():
            if self._fingerprints.get(uid) != fp:
                self.queue.add(uid)
        for uid in set(self._fingerprints) - set(fps):
            self.queue.add(uid)  # all its containers vanished
        self._fingerprints = fps
        if self.informer.has_synced():
            if self._first_pending is None:
                with self._lock:
                    self._first_pending = set(self.pods) | (set(fps) - set(self.pods))
                if not self._first_pending:
                    self.first_sync_seconds = time.monotonic() - self.started_at
                for uid in list(self._first_pending):
                    self.queue.add(uid)
            with self._lock:
                known = set(self.pods)
            # orphans: containers, sandboxes or volumes (tmpfs mounts) of pods the API no longer has
            left = set(fps) | set(self.sandboxes.known()) | set(self.workers.hooks.known_volumes())
            for uid in left - known:
                self.queue.add(uid)

    def _relist_loop(self) -> None:
        delay = self.relist_period
        last_resync = time.monotonic()
        self.informer.wait_for_sync(2.0)  # the first relist should see the informer synced
        while not self._stop.is_set():
            try:
                self.relist()
                delay = self.relist_period
                if time.monotonic() - last_resync > RESYNC_PERIOD:
                    last_resync = time.monotonic()
                    with self._lock:
                        uids = list(self.pods)
                    for uid in uids:
                        self.queue.add(uid)
            except rt.RuntimeUnavailable as e:
                self._set_runtime(False, str(e))
                delay = min(max(delay * 2, 1.0), 30.0)
            except Exception as e:
                log.warning("relist failed error=%s", e)
                self._set_runtime(False, f"docker: {e}")
                delay = min(max(delay * 2, 1.0), 30.0)
            self._stop.wait(delay)

    def _events_loop(self) -> None:
        events = getattr(self.runtime, "events", None)
        if events is None:
            return
        delay = 1.0
        while not self._stop.is_set():
            try:
                for ev in events({rt.L_NODE: self.node}):
                    delay = 1.0
                    uid = ((ev.get("Actor") or {}).get("Attributes") or {}).get(rt.L_POD_UID)
                    if uid:
                        self.queue.add(uid)
                    if self._stop.is_set():
                        return
            except Exception as e:
                log.debug("docker event stream ended error=%s", e)
            self._stop.wait(delay)
            delay = min(delay * 2, 30.0)

    # -- for the HTTP server --

    def pod_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.pods.values())

    def logs(self, ns: str, pod: str, container: str, follow: bool = False, tail_lines: int | None = None,
             timestamps: bool = False, previous: bool = False, **_ignored: Any) -> Any:
        with self._lock:
            p = next((p for p in self.pods.values()
                      if p["metadata"]["name"] == pod and p["metadata"].get("namespace") == ns), None)
        if p is None:
            raise KeyError(f"pod {ns}/{pod} not found on node {self.node}")
        hist = sorted((c for c in self.runtime.containers({rt.L_NODE: self.node, rt.L_POD_UID: p["metadata"]["uid"]})
                       if c.labels.get(rt.L_CONTAINER) == container), key=lambda c: c.restart_count)
        if len(hist) < (2 if previous else 1):
            raise KeyError(f"container {container} of pod {ns}/{pod} has no {'previous ' if previous else ''}"
                           "instance")
        target = hist[-2] if previous else hist[-1]
        return self.runtime.logs(target.id, follow=follow, tail=tail_lines, timestamps=timestamps)

    def port_forward(self, ns: str, pod: str, uid: str = "") -> Callable[[Any], None]:
        """For GET /portForward/NS/POD[/UID]: a run(transport) serving one kubectl port-forward session
        into the pod's network namespace (agent/portforward.py).  KeyError for a pod this node does not
        run (404), ValueError when it has no network namespace (yet) (400); both before any upgrade."""
        from agent.portforward import PortForwardSession, netns_dialer
        with self._lock:
            p = next((p for p in self.pods.values()
                      if p["metadata"]["name"] == pod and p["metadata"].get("namespace") == ns
                      and (not uid or p["metadata"]["uid"] == uid)), None)
        if p is None:
            raise KeyError(f"pod {ns}/{pod}{f' (uid {uid})' if uid else ''} not found on node {self.node}")
        pod_uid = p["metadata"]["uid"]
        info = self.sandboxes.get(pod_uid)
        if info is None or not self.sandboxes.healthy(info):
            raise ValueError(f"pod {ns}/{pod} has no running sandbox on node {self.node} yet: cannot "
                             "port-forward before it is running")
        dial = netns_dialer(info.netns_path)

        def run(transport: Any) -> None:
            PortForwardSession(transport, dial, pod=f"{ns}/{pod}", uid=pod_uid).run()
        return run
