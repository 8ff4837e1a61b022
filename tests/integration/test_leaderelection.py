"""LeaderElector over real Leases: one leader at a time, takeover on stop or on expiry."""

from __future__ import annotations

import threading
import time
from typing import Any, TypeVar

from polling import wait_for

from kube.client import Client
from kube.client.leaderelection import LEASES, LeaderElector

T = TypeVar("T")


class Candidate:
    def __init__(self, client: Client, ident: str, **kw: Any) -> None:
        self.started = threading.Event()
        self.stopped = threading.Event()
        self.elector = LeaderElector(client, "kube-system", "test-lock", ident, lease_duration=1.5,
                                     renew_deadline=1.0, retry_period=0.2, on_started_leading=self.started.set,
                                     on_stopped_leading=self.stopped.set, **kw)


def test_one_leader_then_takeover_on_release(apiserver: Any) -> None:
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    a, b = Candidate(client, "a"), Candidate(client, "b")
    a.elector.start()
    wait_for(a.elector.is_leader, 5, "a leads")
    b.elector.start()
    lease = client.get(LEASES, "test-lock", namespace="kube-system")
    spec = lease["spec"]
    assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == 2
    assert spec["leaseTransitions"] == 0 and spec["acquireTime"] and spec["renewTime"]
    # b waits while a renews: well past the lease duration, a still leads.
    wait_for(lambda: client.get(LEASES, "test-lock", namespace="kube-system")["spec"]["renewTime"]
             != spec["renewTime"], 3, "a renews")
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert not b.elector.is_leader()
        assert a.elector.is_leader()
        time.sleep(0.05)
    assert b.elector.leader == "a"
    a.elector.stop()  # releases: b takes over at once
    assert a.stopped.is_set()
    took = time.monotonic()
    wait_for(b.elector.is_leader, 2, "b takes over")
    assert time.monotonic() - took < 1.0
    spec = client.get(LEASES, "test-lock", namespace="kube-system")["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] >= 1
    b.elector.stop()
    client.close()


def test_takeover_after_expiry_when_the_leader_vanishes(apiserver: Any) -> None:
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    a = Candidate(client, "a", release_on_cancel=False)
    b = Candidate(client, "b")
    a.elector.start()
    wait_for(a.elector.is_leader, 5, "a leads")
    b.elector.start()
    a.elector.stop()  # no release: b must wait until the lease expires on its own clock
    gone = time.monotonic()
    wait_for(b.elector.is_leader, 5, "b takes over")
    assert time.monotonic() - gone >= 1.0
    assert client.get(LEASES, "test-lock", namespace="kube-system")["spec"]["holderIdentity"] == "b"
    b.elector.stop()
    client.close()


def test_a_stale_write_loses_the_race(apiserver: Any) -> None:
    """Optimistic concurrency: an update on an old resourceVersion is refused, so only one wins."""
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    a = Candidate(client, "a")
    a.elector.start()
    wait_for(a.elector.is_leader, 5, "a leads")
    a.elector.stop()
    # Both candidates start from the same (released) lease at once: exactly one leads.
    cands = [Candidate(client, f"c{i}") for i in range(3)]
    for c in cands:
        c.elector.start()
    wait_for(lambda: any(c.elector.is_leader() for c in cands), 5, "someone leads")
    for _ in range(20):
        assert sum(c.elector.is_leader() for c in cands) <= 1
        time.sleep(0.05)
    for c in cands:
        c.elector.stop()
    client.close()
