"""High availability, end to end:

1. a three-member etcd cluster with two `kubeling apiserver` processes on it: while a writer
   creates ConfigMaps through a Client that knows both apiservers and a watcher follows them
   (resuming from its last resourceVersion), one etcd member (the raft leader) and one
   apiserver are SIGKILLed. Every acknowledged write survives, the watcher sees every
   acknowledged create exactly once and in order, and writes go on after the kills;
2. controller-manager failover: the leading replica "crashes" (stops without releasing its
   Lease) and a deleted pod of a Deployment is replaced by the other replica within
   lease_duration + 2 s.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apiserver_proc import ApiServer, free_port
from etcd_proc import ETCD_BINARY, EtcdCluster
from polling import wait_for
from sim import SimCluster

from kube.client import Client
from kube.client.errors import ApiError, ClientError

NS = "default"


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    if not os.path.exists(ETCD_BINARY):
        pytest.skip(f"etcd binary {ETCD_BINARY} is missing (apt-get install etcd-server)")
    with EtcdCluster(3) as cluster:
        yield cluster


class Writer(threading.Thread):
    """Creates cm-0, cm-1, ... one at a time; a new name for every attempt, so a create whose fate
    is unknown (the connection died under it) is never confused with a later one."""

    def __init__(self, client: Client) -> None:
        super().__init__(name="ha-writer", daemon=True)
        self.client = client
        self.acked: list[tuple[str, int]] = []  # (name, resourceVersion) of every 201
        self.failed: list[str] = []  # "name: error" of every failed attempt
        self.done = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        i = 0
        while not self.done.is_set():
            name = f"cm-{i}"
            i += 1
            try:
                made = self.client.create("configmaps", {"metadata": {"name": name}, "data": {"i": str(i)}},
                                          namespace=NS)
            except (ApiError, ClientError) as e:
                with self._lock:
                    self.failed.append(f"{name}: {e}")
                continue
            with self._lock:
                self.acked.append((name, int(made["metadata"]["resourceVersion"])))

    def count(self) -> int:
        with self._lock:
            return len(self.acked)


class Watcher(threading.Thread):
    """A raw watch from a fixed resourceVersion, re-opened from the last one seen whenever the
    stream ends or breaks (the client then moves to the other apiserver)."""

    def __init__(self, client: Client, rv: str) -> None:
        super().__init__(name="ha-watcher", daemon=True)
        self.client = client
        self.rv = rv
        self.added: list[tuple[str, int]] = []
        self.other: list[str] = []  # unexpected event types
        self.errors: list[str] = []
        self.reopened = 0
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._watch: Any = None

    def run(self) -> None:
        while not self.done.is_set():
            try:
                w = self.client.watch("configmaps", NS, resource_version=self.rv, timeout_seconds=30)
                with self._lock:
                    self._watch = w
                if self.done.is_set():
                    w.close()
                for kind, obj in w:
                    rv = str(obj["metadata"]["resourceVersion"])
                    if kind == "ADDED":
                        with self._lock:
                            self.added.append((obj["metadata"]["name"], int(rv)))
                    elif kind != "BOOKMARK":
                        self.other.append(f"{kind} {obj['metadata'].get('name')}")
                    self.rv = rv
            except ApiError as e:
                self.errors.append(f"{type(e).__name__}: {e}")  # a 410 here would be a gap: fail
                if e.is_gone():
                    return
            except ClientError as e:  # a broken stream: resume from self.rv
                self.errors.append(f"{type(e).__name__}: {e}")
                self.done.wait(0.05)
            self.reopened += 1

    def server(self) -> str:
        with self._lock:
            return str(getattr(self._watch, "server", "") or "")

    def names(self) -> set[str]:
        with self._lock:
            return {n for n, _ in self.added}

    def stop(self) -> None:
        self.done.set()
        with self._lock:
            w = self._watch
        if w is not None:
            w.close()
        self.join(10)


def test_writes_and_watch_survive_an_etcd_member_and_an_apiserver_dying(etcd_cluster: EtcdCluster,
                                                                        tmp_path: Path) -> None:
    url = f"{etcd_cluster.store_url}?prefix=/kl-ha&timeout=3"
    apis = [ApiServer(tmp_path / n, free_port(), ("--store", url)) for n in ("a", "b")]
    clients: list[Client] = []
    writer: Writer | None = None
    watcher: Watcher | None = None
    try:
        for a in apis:
            a.start()
        servers = ",".join(a.url for a in apis)
        clients = [Client(servers, timeout=5, connect_timeout=1) for _ in range(3)]
        wc, vc, check = clients
        rv0 = vc.list("configmaps", namespace=NS)["metadata"]["resourceVersion"]
        watcher = Watcher(vc, rv0)
        writer = Writer(wc)
        watcher.start()
        writer.start()
        t0 = time.monotonic()
        wait_for(lambda: writer.count() >= 30, timeout=10, what="30 writes before the kills")

        victim = etcd_cluster.leader_index()
        etcd_cluster.members[victim].stop(9)
        t_etcd = time.monotonic()
        before = writer.count()
        wait_for(lambda: writer.count() >= before + 30, timeout=10, what="30 writes after the etcd leader died")
        t_etcd_ok = time.monotonic()

        # kill the apiserver the watch streams from, so the watcher has to resume on the other one
        streaming = wait_for(watcher.server, what="an open watch stream")
        dead = next(a for a in apis if a.url == streaming)
        writer_too = wc.server == dead.url
        dead.kill()
        t_api = time.monotonic()
        before = writer.count()
        wait_for(lambda: writer.count() >= before + 30, timeout=10, what="30 writes after the apiserver died")
        t_api_ok = time.monotonic()
        writer.done.set()
        writer.join(10)
        assert not writer.is_alive()
        acked = list(writer.acked)
        print(f"\nwrites acked={len(acked)} failed={len(writer.failed)} in {time.monotonic() - t0:.1f}s; "
              f"writes resumed {t_etcd_ok - t_etcd:.2f}s after the etcd leader (m{victim}) died and "
              f"{t_api_ok - t_api:.2f}s after the apiserver {dead.url} (writer's too: {writer_too}) died; failures: {writer.failed[:5]}")

        # every acknowledged write is stored, as acknowledged
        stored = {o["metadata"]["name"]: int(o["metadata"]["resourceVersion"])
                  for o in check.list("configmaps", namespace=NS)["items"]}
        missing = [(n, rv) for n, rv in acked if stored.get(n) != rv]
        assert not missing, f"acknowledged writes lost or changed: {missing[:10]}"

        # the watcher saw each acknowledged create exactly once, in order, with no gap
        want = {n for n, _ in acked}
        wait_for(lambda: want | set(stored) <= watcher.names(), timeout=15,
                 what=f"the watcher to see all {len(stored)} stored creates")
        watcher.stop()
        seen = list(watcher.added)
        print(f"watch: {len(seen)} ADDED, reopened {watcher.reopened}x, errors: {watcher.errors[:5]}")
        assert watcher.reopened >= 2, "the watch never had to resume"
        assert not watcher.other, watcher.other[:10]
        rvs = [rv for _, rv in seen]
        assert all(a < b for a, b in zip(rvs, rvs[1:], strict=False)), "resourceVersions not strictly increasing"
        names = [n for n, _ in seen]
        assert len(names) == len(set(names)), "a create was delivered twice"
        # the stream is the store's history: exactly what is stored, nothing made up, nothing skipped
        assert {n: rv for n, rv in seen} == stored
        acked_order = [n for n, _ in acked]
        assert [n for n in names if n in want] == acked_order, "acknowledged creates out of order"
    finally:
        if writer is not None:
            writer.done.set()
        if watcher is not None:
            watcher.stop()
        for c in clients:
            c.close()
        for a in apis:
            a.kill()


DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "ha"},
    "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "ha"}},
             "template": {"metadata": {"labels": {"app": "ha"}},
                          "spec": {"containers": [{"name": "c", "image": "kubeling/test:1"}]}}},
}
LEASE_DURATION = 2.0


def test_controller_manager_failover_replaces_a_deleted_pod(apiserver: ApiServer) -> None:
    from controllers.manager import ControllerManager
    from scheduler.scheduler import Scheduler

    clients = [Client.from_kubeconfig(apiserver.kubeconfig) for _ in range(4)]
    main, sched_client = clients[0], clients[1]
    cms = [ControllerManager(c, controllers=["deployment", "replicaset"], leader_elect=True, identity=f"cm-{i}",
                             lease_duration=LEASE_DURATION, renew_deadline=1.5, retry_period=0.2)
           for i, c in enumerate(clients[2:])]
    sched = Scheduler(sched_client, leader_elect=False)
    try:
        with SimCluster(main) as sim:
            for n in ("n1", "n2"):
                sim.add_node(n)
            sched.start()
            for cm in cms:
                cm.start()
            leader = wait_for(lambda: next((cm for cm in cms if cm.running), None), what="a leader")
            other = cms[1 - cms.index(leader)]
            main.create("deployments.apps", DEPLOYMENT, namespace=NS)

            def live_pods() -> list[dict[str, Any]]:
                return [p for p in main.list("pods", namespace=NS, label_selector="app=ha")["items"]
                        if not p["metadata"].get("deletionTimestamp")]

            def ready() -> bool:
                d = main.get("deployments.apps", "ha", namespace=NS)
                return (d.get("status") or {}).get("readyReplicas") == 3 and len(live_pods()) == 3

            wait_for(ready, timeout=30, what="3 ready replicas")
            before = {p["metadata"]["name"] for p in live_pods()}
            assert not other.running

            # crash the leader: it stops acting but leaves its Lease held, so the other replica must
            # wait for it to expire (lease_duration on its own clock) before taking over
            assert leader.elector is not None
            leader.elector.release_on_cancel = False
            old_ctls = list(leader.running)
            t0 = time.monotonic()
            leader.stop()
            assert not leader.running
            # ControllerManager.stop() can return while the elector's on_stopped_leading thread is still
            # stopping the controllers (it took them off `running` first): wait until they are really
            # down, or the "crashed" leader itself replaces the pod
            wait_for(lambda: all(c.stop_event.is_set() and not any(t.is_alive() for t in c._threads)
                                 for c in old_ctls), timeout=6, what="the crashed leader's controllers to stop")
            victim = sorted(before)[0]
            main.delete("pods", victim, namespace=NS)

            def replacement() -> str | None:
                new = {p["metadata"]["name"] for p in live_pods()} - before
                return next(iter(new), None)

            name = wait_for(replacement, timeout=LEASE_DURATION + 10, interval=0.05, what="a replacement pod")
            took = time.monotonic() - t0
            lease = main.get("leases.coordination.k8s.io", "kube-controller-manager", namespace="kube-system")
            print(f"\nreplacement {name} for {victim} {took:.2f}s after the leader crashed "
                  f"(lease {LEASE_DURATION}s); holder now {lease['spec']['holderIdentity']}")
            assert other.running
            assert lease["spec"]["holderIdentity"] == f"cm-{cms.index(other)}"
            assert took <= LEASE_DURATION + 2, f"replacement took {took:.2f}s"
            wait_for(ready, timeout=15, what="3 ready replicas again")
    finally:
        for cm in cms:
            cm.stop()
        sched.stop()
        for c in clients:
            c.close()
