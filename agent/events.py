"""Kubernetes Events about pods (Pulled, Created, Started, Killing, BackOff, Failed...).

Posted by one background thread so a sync never waits for them; a full queue drops events
(they are advisory).  `dedup` keys suppress repeats of the same happening.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from typing import Any

from agent.status import rfc3339

log = logging.getLogger("kubeling.agent.events")
MAX_DEDUP = 10_000


class EventRecorder:
    def __init__(self, client: Any, node: str, component: str = "kubelet") -> None:
        self.client = client
        self.node = node
        self.component = component
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1000)
        self._seen: set[str] = set()
        self._thread: threading.Thread | None = None
        self.sent: list[dict[str, Any]] = []  # kept when client is None (unit tests)

    def start(self) -> EventRecorder:
        if self.client is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="events", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(5)
            self._thread = None

    def normal(self, pod: dict[str, Any], reason: str, message: str, container: str = "",
               dedup: str | None = None) -> None:
        self.emit(pod, "Normal", reason, message, container, dedup)

    def warn(self, pod: dict[str, Any], reason: str, message: str, container: str = "",
             dedup: str | None = None) -> None:
        self.emit(pod, "Warning", reason, message, container, dedup)

    def emit(self, pod: dict[str, Any], typ: str, reason: str, message: str, container: str = "",
             dedup: str | None = None) -> None:
        m = pod["metadata"]
        key = f"{m['uid']}/{reason}/{dedup if dedup is not None else message}"
        if key in self._seen:
            return
        if len(self._seen) > MAX_DEDUP:
            self._seen.clear()
        self._seen.add(key)
        now = rfc3339(time.time())
        ns = m.get("namespace", "default")
        ev: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{m['name']}.{secrets.token_hex(8)}", "namespace": ns},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "name": m["name"], "namespace": ns,
                               "uid": m["uid"], **({"fieldPath": f"spec.containers{{{container}}}"}
                                                   if container else {})},
            "reason": reason, "message": message, "type": typ, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": self.component, "host": self.node},
            "reportingComponent": self.component, "reportingInstance": self.node,
        }
        log.debug("event pod=%s/%s type=%s reason=%s message=%s", ns, m["name"], typ, reason, message)
        if self.client is None:
            self.sent.append(ev)
            return
        try:
            self._q.put_nowait(ev)
        except queue.Full:
            log.warning("event dropped (queue full) reason=%s pod=%s/%s", reason, ns, m["name"])

    def _run(self) -> None:
        while True:
            ev = self._q.get()
            if ev is None:
                return
            try:
                self.client.create("events", ev, ev["metadata"]["namespace"])
            except Exception as e:  # advisory: never let events hurt the agent
                log.debug("event not posted reason=%s error=%s", ev["reason"], e)
