"""The lab's PKI: what `scripts/lab up` makes in <lab dir>/state/pki before anything starts.

    pki = make(paths.pki, topo, store="etcd")
    pki.kubeconfig("proxy")            # state/pki/proxy.kubeconfig (system:kube-proxy)
    pki.node_kubeconfig("node1")       # state/pki/nodes/node1/kubeconfig (system:node:node1)

Library calls of kube/pki.py (the same as `kubeling pki init|node`), so the layout is the one the
README describes for every cluster:

    state/pki/                       0700; keys and kubeconfigs 0600, certificates 0644
      ca.crt ca.key                  the cluster CA: apiserver, agents and every client chain to it
      apiserver.crt/.key             SANs: 192.168.56.10 (the control node), 127.0.0.1 (the loopback
                                     forwarder kubectl uses), 10.96.0.1 (the kubernetes Service), ...
      apiserver-kubelet-client.crt   the apiserver as a client of the agents (kubectl logs/exec)
      sa.key sa.pub                  service-account token signing pair
      admin|scheduler|controller-manager|proxy|dns .crt/.key/.kubeconfig
      nodes/NODE/client.crt serving.crt kubeconfig        one agent's identity and serving cert
      etcd/                          only with --store etcd: a CA of its own (etcd trusts nothing else)
        ca.crt ca.key server.crt peer.crt apiserver-etcd-client.crt (+ keys)

The kubeconfigs point at https://192.168.56.10:6443, where the programs inside the lab's namespaces
reach the apiserver; the lab's own admin kubeconfig (<lab dir>/kubeconfig) points at the loopback
forwarder instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kube import pki

from .state import LabError
from .topology import Topology

ETCD_CA_NAME = "kubeling-etcd-ca"
CLUSTER_IP = pki.DEFAULT_CLUSTER_IP  # the kubernetes Service's ClusterIP (first of 10.96.0.0/12)


@dataclass(frozen=True)
class LabPKI:
    dir: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    @property
    def ca(self) -> str:
        return self.path("ca.crt")

    def cert(self, stem: str) -> tuple[str, str]:
        """(stem.crt, stem.key)."""
        return self.path(stem + ".crt"), self.path(stem + ".key")

    def kubeconfig(self, identity: str) -> str:
        """admin, scheduler, controller-manager, proxy or dns."""
        return self.path(identity + ".kubeconfig")

    def node_kubeconfig(self, node: str) -> str:
        return self.path("nodes", node, "kubeconfig")

    def node_serving(self, node: str) -> tuple[str, str]:
        return self.cert(f"nodes/{node}/serving")

    @property
    def etcd_dir(self) -> str:
        return self.path("etcd")

    def etcd(self, stem: str) -> tuple[str, str]:
        return self.cert(f"etcd/{stem}")

    @property
    def etcd_ca(self) -> str:
        return self.path("etcd", "ca.crt")


def make(directory: str, topo: Topology, store: str = "sqlite") -> LabPKI:
    """The cluster PKI, one identity per worker, and (store etcd) etcd's own PKI. Idempotent."""
    try:
        pki.init_cluster(directory, apiserver_sans=[topo.control.ip], cluster_ip=CLUSTER_IP, server=topo.api_url)
        for node in topo.workers:
            pki.add_node(directory, node.name, node.ip, server=topo.api_url)
        lab = LabPKI(os.path.abspath(directory))
        if store == "etcd":
            make_etcd(lab.etcd_dir)
    except pki.PKIError as e:
        raise LabError(f"the lab's PKI in {directory}: {e}") from None
    return lab


def make_etcd(directory: str) -> None:
    """etcd's CA (kubeling-etcd-ca), its serving+client and peer certificates for 127.0.0.1 (it
    listens on the control namespace's loopback only), and the apiserver's client certificate.
    A separate CA: a certificate of the cluster CA (an agent's, a user's) must not open etcd."""
    pki.ensure_dir(directory)
    crt, key = os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key")
    if not os.path.exists(crt) and not os.path.exists(key):
        ca_key, ca_cert = pki.create_ca(ETCD_CA_NAME)
        pki.write_atomic(key, pki.key_pem(ca_key), pki.KEY_MODE)
        pki.write_atomic(crt, pki.cert_pem(ca_cert), pki.CERT_MODE)
    d = pki.PKIDir(directory)
    for stem, cn in (("server", "kube-etcd"), ("peer", "kube-etcd-peer")):
        d.ensure_cert(pki.CertSpec(stem, cn, dns_names=("localhost",), ip_addresses=("127.0.0.1",), server=True,
                                   client=True))
    d.ensure_cert(pki.CertSpec("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True))
