"""The controller skeleton: informers feed keys, workers reconcile, failures retry."""

from __future__ import annotations

import threading
import time

from controllers.base import Controller, split_key
from kube.client import Client


class Recorder(Controller):
    name = "recorder"

    def setup(self) -> None:
        self.cms = self.watch("configmaps")
        self.seen: list[str] = []
        self.failed_once: set[str] = set()
        self.done = threading.Event()

    def reconcile(self, key: str) -> None:
        ns, name = split_key(key)
        if name.startswith("flaky") and key not in self.failed_once:
            self.failed_once.add(key)
            raise RuntimeError("first attempt fails")
        self.seen.append(key)
        if len(set(self.seen)) >= 3:
            self.done.set()


def test_keys_reach_reconcile_and_failures_retry(apiserver) -> None:
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    client.create("configmaps", {"metadata": {"name": "before"}}, namespace="default")
    c = Recorder(client)
    try:
        assert c.start(20)
        client.create("configmaps", {"metadata": {"name": "after"}}, namespace="default")
        client.create("configmaps", {"metadata": {"name": "flaky-1"}}, namespace="default")
        assert c.done.wait(10), c.seen
        deadline = time.monotonic() + 5
        while "default/flaky-1" not in c.seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert {"default/before", "default/after", "default/flaky-1"} <= set(c.seen)
        assert "default/flaky-1" in c.failed_once
    finally:
        c.stop()
        client.close()
