"""`kubeling pki init|node`: make (or complete) a cluster's PKI directory. See kube/pki.py."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from kube import pki


def add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="pki_command", metavar="PKI_COMMAND", required=True)
    sp = sub.add_parser(
        "init", help="the cluster CA, the apiserver's certificates, the SA key pair and client kubeconfigs",
        description="Create what is missing in DIR: ca.crt/ca.key, apiserver.crt (SANs: kubernetes, "
                    "kubernetes.default[.svc[.cluster.local]], the first service IP, 127.0.0.1, localhost and "
                    "--apiserver-san), apiserver-kubelet-client.crt, sa.key/sa.pub, and a certificate + "
                    "kubeconfig for admin, scheduler, controller-manager, proxy and dns. Existing files are kept.")
    sp.add_argument("--dir", required=True, metavar="DIR", help="the PKI directory (made 0700)")
    sp.add_argument("--apiserver-san", action="append", default=[], metavar="NAME_OR_IP",
                    help="another DNS name or IP address for the apiserver's certificate (repeatable)")
    sp.add_argument("--cluster-ip", default=pki.DEFAULT_CLUSTER_IP, metavar="IP",
                    help="the kubernetes Service's ClusterIP, the first of the service range (default %(default)s)")
    sp.add_argument("--server", default=pki.DEFAULT_SERVER, metavar="URL",
                    help="the apiserver URL written into the kubeconfigs (default %(default)s)")
    sp.set_defaults(func=run_init)
    sp = sub.add_parser(
        "node", help="an agent's client and serving certificates and kubeconfig",
        description="Create DIR/nodes/NAME/: client.crt (CN system:node:NAME, O system:nodes), serving.crt "
                    "(SANs: NAME and IP) and kubeconfig. DIR must hold the CA (`kubeling pki init`).")
    sp.add_argument("--dir", required=True, metavar="DIR", help="the PKI directory")
    sp.add_argument("--node-name", required=True, metavar="NAME")
    sp.add_argument("--node-ip", required=True, metavar="IP")
    sp.add_argument("--server", default=pki.DEFAULT_SERVER, metavar="URL",
                    help="the apiserver URL written into the kubeconfig (default %(default)s)")
    sp.set_defaults(func=run_node)


def _run(what: str, make: Callable[[], pki.Report]) -> int:
    try:
        report = make()
    except pki.PKIError as e:
        print(f"kubeling pki {what}: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def run_init(args: argparse.Namespace) -> int:
    return _run("init", lambda: pki.init_cluster(args.dir, args.apiserver_san, args.cluster_ip, args.server))


def run_node(args: argparse.Namespace) -> int:
    return _run("node", lambda: pki.add_node(args.dir, args.node_name, args.node_ip, args.server))
