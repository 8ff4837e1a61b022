"""Two schedulers with leader election: only the leader binds; when it stops the other takes over."""

from __future__ import annotations

from typing import Any

from sim import SimCluster
from test_scheduler import wait_for

from kube.client import Client
from scheduler.scheduler import Scheduler


def test_only_the_leader_binds_and_the_other_takes_over(apiserver: Any) -> None:
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    kw: dict[str, Any] = {"leader_elect": True, "lease_duration": 1.5, "renew_deadline": 1.0, "retry_period": 0.2}
    with SimCluster(client) as sim:
        sim.add_node("n1")
        one = Scheduler(client, identity="one", **kw).start()
        wait_for(one.is_leader, 5, "one leads")
        two = Scheduler(client, identity="two", **kw).start()
        assert two.wait_for_sync(5)
        try:
            for i in range(5):
                client.create("pods", {"metadata": {"name": f"a{i}"}, "spec": {"containers": [
                    {"name": "c", "image": "x"}]}}, namespace="default")
            wait_for(lambda: one.bound == 5, 5, "one binds all")
            assert two.bound == 0 and two.scheduled == 0 and not two.is_leader()
            lease = client.get("leases.coordination.k8s.io", "kube-scheduler", namespace="kube-system")
            assert lease["spec"]["holderIdentity"] == "one"

            one.stop()
            wait_for(two.is_leader, 5, "two takes over")
            for i in range(3):
                client.create("pods", {"metadata": {"name": f"b{i}"}, "spec": {"containers": [
                    {"name": "c", "image": "x"}]}}, namespace="default")
            wait_for(lambda: two.bound == 3, 5, "two binds the new pods")
            assert one.bound == 5
        finally:
            one.stop()
            two.stop()
    client.close()
